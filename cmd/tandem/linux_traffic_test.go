package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate"
)

// TestLinuxTrafficReplay records a replicated Linux guest running the
// init's memory-writing workload (tandem_work: text, records, zeroed
// buffers, code copies) with --record-epochs, as tandem bench --traffic
// --linux-workload does, then replays the recording through seed 003's
// grouping and through every reduction technique: each replay decodes
// every page back to its recorded content, and the techniques together
// send a fraction of the bytes seed 003's grouping does.
func TestLinuxTrafficReplay(t *testing.T) {
	linuxGuest(t) // builds or finds the guest, or fails where it must not skip
	dir := t.TempDir()
	rec := filepath.Join(dir, "linux.rec")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := recordLinuxWorkload(ctx, tandemBin, dir, rec, 50*time.Millisecond, 3); err != nil {
		t.Fatal(err)
	}

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
	if epochs < 10 { // epochs last longer than their interval: pauses, a loaded host
		t.Fatalf("%d epochs recorded in three seconds of 50 ms epochs", epochs)
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
