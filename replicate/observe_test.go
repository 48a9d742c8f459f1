package replicate

import (
	"context"
	"sync"
	"testing"
	"time"
)

// TestObserveSeesEveryEpoch: PrimaryConfig.Observe receives each epoch's
// record, in order, with its commit latency (at least its pause's
// harvest, at most the whole pause, sync) and the output the gate held
// when the epoch was sealed; Status reports the newest record as
// LastEpoch.
func TestObserveSeesEveryEpoch(t *testing.T) {
	c := newCluster(t, 1)
	vm := newFakeVM(t, 64)
	gate := NewOutputGate(&lockedWriter{}, 1<<20)
	var mu sync.Mutex
	var recs []EpochTrace
	held := false
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0x0B5E, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFT, SGMax: 8,
		Observe: func(rec *EpochTrace) {
			mu.Lock()
			defer mu.Unlock()
			recs = append(recs, *rec)
			if rec.HeldBytes >= len("held until committed") {
				held = true
			}
		},
	}, vm, gate)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait() // before the fake VM's memory goes
	defer cancel()
	wg.Go(func() { vm.run(ctx, 4) })
	wg.Go(func() { p.Run(ctx) })
	waitCommitted(t, p, 3, 10*time.Second, nil)
	gate.Write([]byte("held until committed"))
	waitCommitted(t, p, p.Status().Committed+3, 10*time.Second, nil)
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if !held {
		t.Error("no epoch record held the 20 bytes written to the gate")
	}
	for i, r := range recs {
		if i > 0 && r.Epoch != recs[i-1].Epoch+1 {
			t.Fatalf("record %d is epoch %d after %d: want every epoch in order", i, r.Epoch, recs[i-1].Epoch)
		}
		if r.Failed != "" || r.Epoch == 0 {
			continue
		}
		if r.Commit < r.Pause.Harvest || r.Commit > r.Pause.Total {
			t.Errorf("epoch %d: commit after %v, want between its harvest %v and its whole pause %v (sync)", r.Epoch, r.Commit, r.Pause.Harvest, r.Pause.Total)
		}
	}
	last := p.Status().LastEpoch
	if last == nil || last.Epoch < recs[len(recs)-1].Epoch-1 {
		t.Fatalf("Status().LastEpoch = %+v, want the newest epoch (%d)", last, recs[len(recs)-1].Epoch)
	}
}
