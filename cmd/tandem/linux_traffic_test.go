package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate"
)

// TestLinuxTrafficReplay records a replicated Linux guest running the
// init's memory-writing workload (tandem_work: text, records, zeroed
// buffers, code copies) with --record-epochs, then replays the recording
// through seed 003's grouping and through every reduction technique:
// each replay decodes every page back to its recorded content, and the
// techniques together send a fraction of the bytes seed 003's grouping
// does. tandem bench --traffic --recording linux=FILE reports the figures.
func TestLinuxTrafficReplay(t *testing.T) {
	snap, _ := bootedSnapshot(t, "tandem_work=32", "work 1")
	lab := newNetLab(t, "primary", "r1", "r2", "leader")
	dir := t.TempDir()
	c := startHACluster(t, lab, dir)
	rec := filepath.Join(dir, "linux.rec")
	p := c.startPrimary(t, lab, dir, "fast", "sync", "--restore", snap, "--record-epochs", rec)
	console := filepath.Join(dir, "primary.txt")
	var from int
	pollFor(t, "the restored workload to report", 2*time.Minute, func() bool {
		b, _ := os.ReadFile(console)
		from = strings.Count(string(b), "tandem-init: work ")
		return from > 0
	})
	// Three more seconds of the workload: its output is released only as
	// epochs commit, so each line is a replicated second.
	pollFor(t, "three more seconds of work", 2*time.Minute, func() bool {
		b, _ := os.ReadFile(console)
		return strings.Count(string(b), "tandem-init: work ") >= from+3
	})
	p.cmd.Process.Signal(syscall.SIGTERM)
	p.wait(t, time.Minute)

	replay := func(sgMax int, red replicate.Reduction) (wire, dirty uint64, epochs int) {
		t.Helper()
		f, err := os.Open(rec)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var rp *replicate.TrafficReplay
		err = replicate.ReadRecording(f, func(mem uint64, e *replicate.RecordedEpoch) error {
			if rp == nil {
				var err error
				if rp, err = replicate.NewTrafficReplay(mem, replicate.PolicyFast, 1, sgMax, red); err != nil {
					return err
				}
			}
			r, err := rp.Epoch(e.Dirty, e.Contents)
			wire += r.WireBytes
			dirty += uint64(r.DirtyPages) * replicate.PageSize
			epochs++
			return err
		})
		if err != nil {
			t.Fatalf("replay: %v", err)
		}
		rp.Close()
		return wire, dirty, epochs
	}
	seed, dirty, epochs := replay(32, replicate.Reduction{})
	if epochs < 40 {
		t.Fatalf("%d epochs recorded in over three seconds of 50 ms epochs", epochs)
	}
	byCost, _, _ := replay(0, replicate.Reduction{})
	all, _, _ := replay(0, replicate.Reduction{Zero: true, CacheBytes: 64 << 20, Similar: true, Compress: true})
	t.Logf("%d epochs, %.1f MiB dirty: seed 003 grouping %.2f× the dirty bytes, by cost %.2f×, all techniques %.3f× (%.1f× fewer bytes than seed 003)",
		epochs, float64(dirty)/(1<<20), float64(seed)/float64(dirty), float64(byCost)/float64(dirty), float64(all)/float64(dirty), float64(seed)/float64(all))
	if byCost > seed {
		t.Errorf("grouping by cost sent %d bytes, seed 003's grouping %d", byCost, seed)
	}
	if all*2 > byCost {
		t.Errorf("every technique together sent %d bytes, raw pages %d: not even half", all, byCost)
	}
}
