package replicate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/persist"
)

// dirPersister is a LocalPersister on a persist.Dir, its first record
// every page; failAt, when set, makes the Sync of that epoch fail.
type dirPersister struct {
	d       *persist.Dir
	started bool
	staged  uint64
	durable atomic.Uint64
	failAt  uint64
	slow    time.Duration // each Sync takes this much longer: slow media
}

func (p *dirPersister) Stage(e uint64, pages []uint64, mem []byte, state []byte) error {
	if !p.started {
		pages = nil
		for i := range uint64(len(mem) / PageSize) {
			pages = append(pages, i)
		}
		p.started = true
	}
	p.staged = e
	return p.d.Stage(e, pages, mem, state)
}

func (p *dirPersister) Sync() error {
	if p.failAt != 0 && p.staged >= p.failAt {
		return errors.New("the persistent memory failed")
	}
	time.Sleep(p.slow)
	if err := p.d.Sync(); err != nil {
		return err
	}
	p.durable.Store(p.staged)
	return nil
}

// durableGate fails the test when a sealed epoch's output is released
// before the epoch is durable (the initial copy's commit seals nothing).
type durableGate struct {
	t        *testing.T
	p        *dirPersister
	sealed   atomic.Uint64
	released atomic.Uint64
}

func (g *durableGate) BeginPause()       {}
func (g *durableGate) EndPause()         {}
func (g *durableGate) Seal(epoch uint64) { g.sealed.Store(epoch) }
func (g *durableGate) Release(epoch uint64) error {
	if d := g.p.durable.Load(); min(epoch, g.sealed.Load()) > d {
		g.t.Errorf("the output of epoch %d was released with epoch %d the newest durable", epoch, d)
	}
	g.released.Store(epoch)
	return nil
}

// TestLocalPersist: with a local persister, no epoch's output leaves
// before the epoch is durable on the primary's host; after the whole
// cluster loses power, the directory holds an epoch no older than the
// last committed, with exactly its memory; and a failure to persist stops
// replication with the output held. Both modes.
func TestLocalPersist(t *testing.T) {
	for _, mode := range []Mode{ModeSync, ModeAsync} {
		t.Run(mode.String(), func(t *testing.T) {
			c := newCluster(t, 2)
			vm := newFakeVM(t, 512)
			dir := filepath.Join(t.TempDir(), "vm")
			d, err := persist.Create(dir, persist.VM{ID: 0x7E57, MemBytes: uint64(len(vm.mem)), VCPUs: 1, Guest: "fake"})
			if err != nil {
				t.Fatal(err)
			}
			// Persistent memory slower than the links: an epoch would
			// commit before it is durable if the primary did not wait.
			per := &dirPersister{d: d, failAt: 40, slow: 2 * time.Millisecond}
			gate := &durableGate{t: t, p: per}
			p := mustConnectPrimary(t, PrimaryConfig{Links: []string{c.addrs[0], c.addrs[1]}, Leader: c.leadAddr, VMID: 0x7E57, Guest: "fake", VCPUs: 1,
				Epoch: 5 * time.Millisecond, Policy: PolicyFT, Mode: mode, Persist: per}, vm, gate)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go vm.run(ctx, 1)
			runErr := make(chan error, 1)
			go func() { runErr <- p.Run(ctx) }()
			var err2 error
			select {
			case err2 = <-runErr:
			case <-time.After(60 * time.Second):
				t.Fatal("the primary went on past the failed persist")
			}
			if err2 == nil || !strings.Contains(err2.Error(), "persisting epoch 40 locally: the persistent memory failed") {
				t.Fatalf("Run: %v", err2)
			}
			committed := p.Committed()
			if committed >= 40 || gate.released.Load() >= 40 {
				t.Fatalf("committed %d, released %d: past the epoch that was never durable", committed, gate.released.Load())
			}
			p.Close()
			d.Close()
			// The power fails everywhere: the directory alone holds the VM.
			pd, rec, err := persist.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer pd.Close()
			mem, err := os.ReadFile(rec.Memory)
			if err != nil {
				t.Fatal(err)
			}
			checkRecovered(t, vm, &Recovered{Epoch: rec.Epoch, State: rec.State, Memory: mem}, committed)
			t.Logf("committed %d, durable %d, recovered epoch %d from the directory", committed, per.durable.Load(), rec.Epoch)
		})
	}
}

// TestLocalPersistNeedsNoSpeculation: pages sent ahead would be missing
// from the epoch's record.
func TestLocalPersistNeedsNoSpeculation(t *testing.T) {
	_, err := NewPrimary(PrimaryConfig{Links: []string{"x:1"}, Leader: "y:1", VMID: 1, Epoch: time.Millisecond, Auth: testCreds,
		Policy: PolicyFT, Speculate: 0.5, Persist: &dirPersister{}}, newFakeVM(t, 4), NewOutputGate(nil, 1))
	if !errors.Is(err, errPersistSpeculate) {
		t.Fatalf("NewPrimary: %v", err)
	}
}
