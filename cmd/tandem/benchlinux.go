package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/tandemvm/tandem/replicate"
)

// putLatency is what one configuration of the Linux HA latency
// measurement found: PUT round trips as the client saw them, and from the
// primary's trace the epochs that ran meanwhile.
type putLatency struct {
	epoch             time.Duration // 0: without --ha
	p50, p99          time.Duration
	epochs            int
	pause             time.Duration // mean per epoch
	stateKiB, diskKiB float64       // mean per epoch
}

// measurePutLatency boots the key-value guest of the Linux HA story (root)
// without --ha (epoch 0) or with it at epoch (fast, sync), and times puts
// PUTs, each one fsynced disk write in the guest, over TCP on its TAP.
func measurePutLatency(ctx context.Context, self string, epoch time.Duration, puts int) (putLatency, error) {
	res := putLatency{epoch: epoch}
	dir, err := os.MkdirTemp("", "tandem-bench-linux")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	key := filepath.Join(dir, "replication.key")
	if err := newKeyFile(key); err != nil {
		return res, err
	}
	s, err := newLinuxHAStory(ctx, self, dir, key)
	if err != nil {
		return res, err
	}
	defer s.Close()
	trace := filepath.Join(dir, "trace.jsonl")
	var args []string
	if epoch > 0 {
		if err := s.startCluster(ctx); err != nil {
			return res, err
		}
		args = append(s.haArgs("fast", "sync", epoch), "--trace", trace)
	}
	if _, err := s.bootPrimary(ctx, args...); err != nil {
		return res, err
	}
	conn, err := s.dial()
	if err != nil {
		return res, err
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	put := func(i int) (time.Duration, error) {
		t0 := time.Now()
		conn.SetDeadline(time.Now().Add(time.Minute))
		fmt.Fprintf(conn, "PUT bench%d value%d\n", i, i)
		if line, err := r.ReadString('\n'); err != nil || line != "OK\n" {
			return 0, fmt.Errorf("PUT %d: %q, %v", i, line, err)
		}
		return time.Since(t0), nil
	}
	for i := 0; i < 10; i++ { // warm the connection and the guest up
		if _, err := put(i); err != nil {
			return res, err
		}
	}
	lat := make([]time.Duration, puts)
	start := time.Now()
	for i := range lat {
		if lat[i], err = put(10 + i); err != nil {
			return res, err
		}
	}
	end := time.Now()
	slices.Sort(lat)
	res.p50, res.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	if epoch == 0 {
		return res, nil
	}
	s.primary.stop() // flushes the trace
	f, err := os.Open(trace)
	if err != nil {
		return res, err
	}
	defer f.Close()
	var pause time.Duration
	var stateBytes, diskBytes int
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e replicate.EpochTrace
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Time.Before(start) || e.Time.After(end) || e.Mode == "initial" {
			continue
		}
		pause += e.Pause.Total
		stateBytes += e.StateBytes
		diskBytes += e.DiskBytes
		res.epochs++
	}
	if res.epochs == 0 {
		return res, fmt.Errorf("no epoch traced while the PUTs ran")
	}
	n := float64(res.epochs)
	res.pause = pause / time.Duration(res.epochs)
	res.stateKiB, res.diskKiB = float64(stateBytes)/1024/n, float64(diskBytes)/1024/n
	return res, nil
}

// benchLinux is `tandem bench --linux`: the PUT latency of a replicated
// Linux guest's client without --ha and at each epoch, as a table.
func benchLinux(ctx context.Context, epochs []time.Duration, puts int) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	fmt.Printf("Linux HA latency: %d PUTs per configuration (an fsynced disk write each), over TCP on a TAP; fast policy, sync mode\n\n", puts)
	fmt.Println("| configuration | PUT p50 | PUT p99 | pause per epoch | state per epoch | of it, disk writes |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, e := range append([]time.Duration{0}, epochs...) {
		r, err := measurePutLatency(ctx, self, e, puts)
		if err != nil {
			return err
		}
		if e == 0 {
			fmt.Printf("| no --ha | %v | %v | — | — | — |\n", r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond))
			continue
		}
		fmt.Printf("| --ha, %v epochs | %v | %v | %v | %.1f KiB | %.1f KiB |\n", e, r.p50.Round(100*time.Microsecond), r.p99.Round(100*time.Microsecond),
			r.pause.Round(10*time.Microsecond), r.stateKiB, r.diskKiB)
	}
	return nil
}
