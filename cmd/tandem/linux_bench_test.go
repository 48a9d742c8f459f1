package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
)

// BenchmarkLinuxPutLatency measures what a client of a replicated Linux
// guest sees: the round trip of one PUT to the test guest's key-value
// store (a disk write fsynced before the answer) over TCP on a TAP,
// without --ha and with it at 10, 25 and 50 ms epochs (fast, sync); and,
// from the primary's per-epoch trace, the pause of the epochs it ran
// meanwhile, the state each carried and the part of it that was the
// epoch's disk writes. It needs root (the story's network namespace) and boots one
// guest per configuration, so give it a fixed count:
//
//	TANDEM_REQUIRE_KVM=1 go test ./cmd/tandem -run X -bench LinuxPutLatency -benchtime 200x
func BenchmarkLinuxPutLatency(b *testing.B) {
	kvmtest.Open(b)
	for _, epoch := range []time.Duration{0, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond} {
		name := "no-ha"
		if epoch > 0 {
			name = "ha-" + epoch.String()
		}
		b.Run(name, func(b *testing.B) {
			if b.N == 1 {
				return // the probe run: each run boots a guest; see -benchtime above
			}
			benchPutLatency(b, epoch)
		})
	}
}

func benchPutLatency(b *testing.B, epoch time.Duration) {
	ctx := context.Background()
	dir := b.TempDir()
	s, err := newLinuxHAStory(ctx, tandemBin, dir, testKeyFile(b))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	trace := filepath.Join(dir, "trace.jsonl")
	var args []string
	if epoch > 0 {
		if err := s.startCluster(ctx); err != nil {
			b.Fatal(err)
		}
		args = append(s.haArgs("fast", "sync", epoch), "--trace", trace)
	}
	if _, err := s.bootPrimary(ctx, args...); err != nil {
		b.Fatal(err)
	}
	conn, err := s.dial()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	put := func(i int) time.Duration {
		t0 := time.Now()
		conn.SetDeadline(time.Now().Add(time.Minute))
		fmt.Fprintf(conn, "PUT bench%d value%d\n", i, i)
		if line, err := r.ReadString('\n'); err != nil || line != "OK\n" {
			b.Fatalf("PUT %d: %q, %v", i, line, err)
		}
		return time.Since(t0)
	}
	for i := 0; i < 10; i++ { // warm the connection and the guest up
		put(i)
	}
	lat := make([]time.Duration, b.N)
	start := time.Now()
	b.ResetTimer()
	for i := range lat {
		lat[i] = put(10 + i)
	}
	b.StopTimer()
	end := time.Now()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "ms-p99")
	if epoch == 0 {
		return
	}
	s.primary.stop() // flushes the trace
	f, err := os.Open(trace)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var pause time.Duration
	var stateBytes, diskBytes, epochs int
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
		epochs++
	}
	if epochs == 0 {
		b.Fatal("no epoch traced while the PUTs ran")
	}
	b.ReportMetric(float64(pause.Microseconds())/1000/float64(epochs), "ms-pause/epoch")
	b.ReportMetric(float64(stateBytes)/1024/float64(epochs), "KiB-state/epoch")
	b.ReportMetric(float64(diskBytes)/1024/float64(epochs), "KiB-disk/epoch")
	b.ReportMetric(float64(epochs)/float64(b.N), "epochs/put")
}
