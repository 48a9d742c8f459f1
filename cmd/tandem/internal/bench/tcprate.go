package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// tcpRates measures TCP goodput over several streams at once, stream i from
// this process to lns[i] (dialled at lns[i].Addr()), each sending 1 MiB
// writes for d. With creds, every connection first runs the replication
// handshake and then carries the bytes as a replication connection of
// that mode does (TLS 1.3 when encrypted). It returns each stream's
// received bytes per second and closes the listeners.
func tcpRates(lns []net.Listener, d time.Duration, creds *auth.Credentials) ([]float64, error) {
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
			if err == nil && creds != nil {
				c, _, err = creds.Server(context.Background(), c)
			}
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
			if err == nil && creds != nil {
				c, err = creds.Client(context.Background(), c, rateProbeRole)
			}
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
			if creds == nil {
				// A plain stream stops mid-write at the deadline; a TLS
				// one must not (a cut record breaks the stream), so it
				// stops after the write that passes the deadline.
				c.SetWriteDeadline(deadline)
			}
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

// rateProbeRole is the role the rate probes' connections claim in the
// handshake: they speak to the bench's own receiver, no replica.
const rateProbeRole auth.Role = 200

// loopbackRate measures aggregate TCP bandwidth over streams loopback
// connections for d, in bytes per second; with creds, as replication
// connections of that mode (tcpRates).
func loopbackRate(streams int, d time.Duration, creds *auth.Credentials) (float64, error) {
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
	rates, err := tcpRates(lns, d, creds)
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, r := range rates {
		sum += r
	}
	return sum, nil
}
