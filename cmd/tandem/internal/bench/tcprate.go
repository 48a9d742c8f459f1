package bench

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// tcpRates measures TCP goodput over several streams at once, stream i from
// this process to lns[i] (dialled at lns[i].Addr()), each sending 1 MiB
// writes for d. It returns each stream's received bytes per second and
// closes the listeners.
func tcpRates(lns []net.Listener, d time.Duration) ([]float64, error) {
	n := len(lns)
	got := make([]int64, n)
	took := make([]time.Duration, n)
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	for i, ln := range lns {
		wg.Add(2)
		go func() { // receiver
			defer wg.Done()
			defer ln.Close()
			c, err := ln.Accept()
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			buf := make([]byte, 1<<20)
			var start time.Time
			for {
				k, err := c.Read(buf)
				if k > 0 && start.IsZero() {
					start = time.Now()
				}
				got[i] += int64(k)
				if err != nil {
					if !errors.Is(err, io.EOF) {
						errs[i] = err
					}
					took[i] = time.Since(start)
					return
				}
			}
		}()
		go func() { // sender
			defer wg.Done()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				errs[n+i] = err
				return
			}
			defer c.Close()
			buf := make([]byte, 1<<20)
			for i := range buf {
				buf[i] = byte(i)
			}
			deadline := time.Now().Add(d)
			c.SetWriteDeadline(deadline)
			for time.Now().Before(deadline) {
				if _, err := c.Write(buf); err != nil {
					var ne net.Error
					if !errors.As(err, &ne) || !ne.Timeout() {
						errs[n+i] = err
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	rates := make([]float64, n)
	for i := range rates {
		if took[i] > 0 {
			rates[i] = float64(got[i]) / took[i].Seconds()
		}
	}
	return rates, nil
}

// loopbackRate measures aggregate TCP bandwidth over streams loopback
// connections for d, in bytes per second.
func loopbackRate(streams int, d time.Duration) (float64, error) {
	lns := make([]net.Listener, streams)
	for i := range lns {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, l := range lns[:i] {
				l.Close()
			}
			return 0, err
		}
		lns[i] = ln
	}
	rates, err := tcpRates(lns, d)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, r := range rates {
		sum += r
	}
	return sum, nil
}
