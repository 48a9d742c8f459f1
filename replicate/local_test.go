package replicate

import (
	"bytes"
	"context"
	"encoding/binary"
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
			e, _ := recoverDir(t, vm, dir, committed)
			t.Logf("committed %d, durable %d, recovered epoch %d from the directory", committed, per.durable.Load(), e)
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

// stoppableVM is a fakeVM that can stop: from then on it cannot be paused.
type stoppableVM struct {
	*fakeVM
	stopped atomic.Bool
}

var errVMStopped = errors.New("the VM stopped")

func (s *stoppableVM) Pause() error {
	if s.stopped.Load() {
		return errVMStopped
	}
	return s.fakeVM.Pause()
}

// TestLocal: local persistence alone releases no epoch's output before
// the epoch is durable, traces every epoch, stops with the output held
// when persisting fails, and leaves the directory holding the newest
// durable epoch with exactly its memory. A VM that stops ends Run with
// the source's error, and Finish makes its last epoch durable.
func TestLocal(t *testing.T) {
	setup := func(t *testing.T, failAt uint64) (*stoppableVM, *dirPersister, *durableGate, string) {
		vm := &stoppableVM{fakeVM: newFakeVM(t, 256)}
		dir := filepath.Join(t.TempDir(), "vm")
		d, err := persist.Create(dir, persist.VM{ID: 0x10CA1, MemBytes: uint64(len(vm.mem)), VCPUs: 1, Guest: "fake"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		per := &dirPersister{d: d, failAt: failAt, slow: time.Millisecond}
		return vm, per, &durableGate{t: t, p: per}, dir
	}
	recover := func(t *testing.T, vm *stoppableVM, dir string, atLeast uint64) (uint64, []byte) {
		t.Helper()
		return recoverDir(t, vm.fakeVM, dir, atLeast)
	}

	t.Run("failure", func(t *testing.T) {
		vm, per, gate, dir := setup(t, 30)
		var trace strings.Builder
		var lines atomic.Int32
		l, err := NewLocal(LocalConfig{Epoch: 2 * time.Millisecond, Persist: per, Trace: NewTraceWriter(&trace),
			Summary: func(string) { lines.Add(1) }}, vm, gate)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go vm.run(ctx, 1)
		err = l.Run(ctx)
		if err == nil || !strings.Contains(err.Error(), "persisting epoch 30: the persistent memory failed") {
			t.Fatalf("Run: %v", err)
		}
		if r := gate.released.Load(); r != 29 {
			t.Fatalf("released up to epoch %d, want 29: the last durable one", r)
		}
		recs, err := ReadTrace(strings.NewReader(trace.String()))
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 29 {
			t.Fatalf("%d epochs traced, want 29", len(recs))
		}
		for i, r := range recs {
			if r.Epoch != uint64(i+1) || r.Mode != "local" || r.Durable < r.Pause.Total || r.Pause.Total <= 0 {
				t.Fatalf("trace record %d: epoch %d mode %q pause %v durable %v", i, r.Epoch, r.Mode, r.Pause.Total, r.Durable)
			}
		}
		if got, _ := recover(t, vm, dir, 29); got != 29 {
			t.Fatalf("recovered epoch %d, want 29", got)
		}
	})

	t.Run("stop", func(t *testing.T) {
		vm, per, gate, dir := setup(t, 0)
		l, err := NewLocal(LocalConfig{Epoch: 2 * time.Millisecond, Persist: per, FirstEpoch: 7}, vm, gate)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		guest := make(chan struct{})
		go func() { vm.run(ctx, 2); close(guest) }()
		vm.waitWrites(t, 2000, "guest writes")
		vm.stopped.Store(true)
		cancel()
		<-guest
		if err := l.Run(context.Background()); !errors.Is(err, errVMStopped) {
			t.Fatalf("Run of a stopped VM: %v", err)
		}
		if err := l.Finish(); err != nil {
			t.Fatal(err)
		}
		if l.Committed() < 7 || gate.released.Load() != l.Committed() {
			t.Fatalf("last epoch %d, released %d", l.Committed(), gate.released.Load())
		}
		// The directory holds the memory the guest ended with.
		_, state := recover(t, vm, dir, l.Committed())
		vm.mu.Lock()
		final := bytes.Equal(vm.snaps[binary.LittleEndian.Uint64(state)], vm.mem)
		vm.mu.Unlock()
		if !final {
			t.Fatal("the directory's last epoch is not the memory the guest ended with")
		}
	})
}

// TestLocalSummary: the per-second line gives the epochs, the mean dirty
// pages and the percentiles of pause and durability, then starts over.
func TestLocalSummary(t *testing.T) {
	var s localSummary
	if s.line() != "" {
		t.Fatal("a line without epochs")
	}
	for i := 1; i <= 100; i++ {
		s.add(&EpochTrace{DirtyPages: 10, Pause: Durations{Total: time.Duration(i) * time.Millisecond}, Durable: time.Duration(2*i) * time.Millisecond})
	}
	want := "persisted epochs 100 | dirty 10 pg/epoch | pause p50 50ms p99 99ms | durable p50 100ms p99 198ms"
	if got := s.line(); got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if s.line() != "" {
		t.Fatal("the summary did not start over")
	}
}

// recoverDir opens the persisted VM in dir, checks its newest epoch is at
// least atLeast with exactly the memory of its state, and returns the
// epoch and state.
func recoverDir(t *testing.T, vm *fakeVM, dir string, atLeast uint64) (uint64, []byte) {
	t.Helper()
	pd, rec, err := persist.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer pd.Close()
	mem, err := os.ReadFile(rec.Memory)
	if err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, vm, &Recovered{Epoch: rec.Epoch, State: rec.State, Memory: mem}, atLeast)
	return rec.Epoch, rec.State
}
