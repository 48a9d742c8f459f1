package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/images"
	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/kvm/kvmtest"
)

// serialBuffer collects guest serial output for tests.
type serialBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *serialBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *serialBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitFor polls until the output contains want, or fails the test.
func (s *serialBuffer) waitFor(t testing.TB, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(s.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("guest did not print %q within %v; output so far:\n%s", want, timeout, s.String())
		}
		time.Sleep(time.Millisecond)
	}
}

// poll waits until cond holds, or fails the test after timeout.
func poll(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

type testVM struct {
	*VM
	out  *serialBuffer
	done chan struct{}
	res  Result
	err  error
}

// newTestVM creates a VM with the given built-in guest loaded.
func newTestVM(t testing.TB, cfg Config, guest string, args []uint64) *testVM {
	t.Helper()
	kvmtest.Open(t)
	out := &serialBuffer{}
	cfg.SerialOut = out
	if cfg.Memory.Bytes == 0 {
		cfg.Memory.Bytes = 16 << 20
	}
	if cfg.VCPUs == 0 {
		cfg.VCPUs = 1
	}
	vm, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { vm.Close() })
	if guest != "" {
		g, ok := images.Lookup(guest)
		if !ok {
			t.Fatalf("no built-in guest %q", guest)
		}
		if err := vm.LoadFlat(g.Image, g.Mode, args); err != nil {
			t.Fatal(err)
		}
	}
	return &testVM{VM: vm, out: out}
}

// start runs the VM in the background.
func (tv *testVM) start(t testing.TB) {
	tv.done = make(chan struct{})
	go func() {
		defer close(tv.done)
		tv.res, tv.err = tv.Run(context.Background())
	}()
	t.Cleanup(func() {
		tv.Stop()
		<-tv.done
	})
}

// wait waits for the run to end.
func (tv *testVM) wait(t testing.TB, timeout time.Duration) (Result, error) {
	t.Helper()
	select {
	case <-tv.done:
		return tv.res, tv.err
	case <-time.After(timeout):
		t.Fatalf("VM still running after %v; serial output:\n%s", timeout, tv.out.String())
	}
	return Result{}, nil
}

func TestHelloGuest(t *testing.T) {
	for _, vcpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("vcpus=%d", vcpus), func(t *testing.T) {
			tv := newTestVM(t, Config{VCPUs: vcpus, Memory: MemoryConfig{Bytes: 32 << 20}}, "hello", nil)
			tv.start(t)
			res, err := tv.wait(t, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if res != (Result{Kind: ExitGuest, Code: 0}) {
				t.Errorf("result %+v, want guest exit 0", res)
			}
			want := fmt.Sprintf("hello: Tandem guest up, %d vCPUs, 32 MiB\n", vcpus)
			if got := tv.out.String(); got != want {
				t.Errorf("serial output %q, want %q", got, want)
			}
			// Every byte of it is one OUT to the 8250: one KVM_EXIT_IO.
			var io uint64
			for _, e := range tv.Exits() {
				if e.Reason == kvm.ExitIO {
					io = e.Count
				}
			}
			if io < uint64(len(want)) {
				t.Errorf("Exits: %d KVM_EXIT_IO (%v), want at least one per byte of output (%d)", io, tv.Exits(), len(want))
			}
		})
	}
}

func TestHello16RealMode(t *testing.T) {
	tv := newTestVM(t, Config{}, "hello16", nil)
	tv.start(t)
	res, err := tv.wait(t, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Kind: ExitGuest}) {
		t.Errorf("result %+v, want guest exit 0", res)
	}
	if got, want := tv.out.String(), "hello16: real mode\n"; got != want {
		t.Errorf("serial output %q, want %q", got, want)
	}
}

// counterSession sends lines to a counter guest and checks each reply.
func counterSession(t *testing.T, tv *testVM, script [][2]string) {
	t.Helper()
	for _, step := range script {
		before := len(tv.out.String())
		if _, err := tv.Serial().Write([]byte(step[0] + "\n")); err != nil {
			t.Fatal(err)
		}
		poll(t, "reply to "+step[0], 30*time.Second, func() bool {
			return strings.Contains(tv.out.String()[before:], "\n")
		})
		if got := tv.out.String()[before:]; got != step[1]+"\n" {
			t.Fatalf("%q: reply %q, want %q", step[0], got, step[1])
		}
	}
}

func TestCounterGuest(t *testing.T) {
	tv := newTestVM(t, Config{}, "counter", nil)
	tv.start(t)
	tv.out.waitFor(t, "counter: ready\n", 30*time.Second)
	counterSession(t, tv, [][2]string{
		{"GET", "VALUE 0"},
		{"INC a", "OK a 1"},
		{"INC client-7", "OK client-7 2"},
		{"INC a", "OK a 3"},
		{"GET", "VALUE 3"},
		{"FROB", "ERR unknown command"},
		{"INC " + strings.Repeat("x", 70), "ERR line too long"},
		{"GET", "VALUE 3"},
	})
}

func TestGuestFaultsAreClearErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		image []byte
		exits []kvm.ExitReason
	}{
		// No IDT: #UD escalates to a triple fault.
		{"ud2", []byte{0x0F, 0x0B}, []kvm.ExitReason{kvm.ExitShutdown}},
		// int3 is not emulated on PVM hosts (emulation failure); on hardware
		// it triple-faults without an IDT. Either must be a clear error.
		{"int3", []byte{0xCC}, []kvm.ExitReason{kvm.ExitInternalError, kvm.ExitShutdown}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tv := newTestVM(t, Config{}, "", nil)
			if err := tv.LoadFlat(tc.image, boot.ModeLong64, nil); err != nil {
				t.Fatal(err)
			}
			tv.start(t)
			_, err := tv.wait(t, 30*time.Second)
			var ve *VCPUError
			if !errors.As(err, &ve) {
				t.Fatalf("run error %v, want a *VCPUError", err)
			}
			ok := false
			for _, e := range tc.exits {
				ok = ok || ve.Exit == e
			}
			if !ok {
				t.Errorf("exit %v, want one of %v", ve.Exit, tc.exits)
			}
			if ve.Exit == kvm.ExitInternalError && ve.RIP != boot.FlatLoadAddr {
				t.Errorf("RIP %#x, want the faulting instruction at %#x", ve.RIP, boot.FlatLoadAddr)
			}
			if msg := err.Error(); !strings.Contains(msg, ve.Exit.String()) || !strings.Contains(msg, "RIP 0x") {
				t.Errorf("error %q does not name the exit and the RIP", msg)
			}
		})
	}
}

func TestI8042ResetStopsVM(t *testing.T) {
	tv := newTestVM(t, Config{}, "", nil)
	// mov al, 0xfe; out 0x64, al
	if err := tv.LoadFlat([]byte{0xB0, 0xFE, 0xE6, 0x64}, boot.ModeLong64, nil); err != nil {
		t.Fatal(err)
	}
	tv.start(t)
	res, err := tv.wait(t, 30*time.Second)
	if err != nil || res.Kind != ExitReset {
		t.Fatalf("result %+v, %v; want a reset", res, err)
	}
}

func TestStopInterruptsHaltedGuest(t *testing.T) {
	tv := newTestVM(t, Config{VCPUs: 2}, "counter", nil)
	tv.start(t)
	tv.out.waitFor(t, "counter: ready\n", 30*time.Second)
	tv.Stop()
	res, err := tv.wait(t, 10*time.Second)
	if err != nil || res.Kind != ExitStopped {
		t.Fatalf("result %+v, %v; want stopped", res, err)
	}
}

// pagesAbove1MiB returns the pages of set at or above 1 MiB, except
// those in [skipFirst, skipEnd), and fails t for a page below 1 MiB other
// than the status page and the stacks of vcpus vCPUs: all that the dirty
// guest may write there.
func pagesAbove1MiB(t *testing.T, set *DirtySet, vcpus int, skipFirst, skipEnd uint64) []uint64 {
	t.Helper()
	var high []uint64
	stacks := stackPages(vcpus)
	for _, pg := range set.AppendPages(nil) {
		switch {
		case pg >= skipFirst && pg < skipEnd:
		case pg >= boot.FlatLoadAddr/PageSize:
			high = append(high, pg)
		case pg == boot.StatusPageGPA/PageSize || stacks[pg]:
		default:
			t.Errorf("page %#x dirtied, outside the status page and the stacks", pg)
		}
	}
	return high
}

// stackPages are the pages holding vCPU stacks of a flat guest.
func stackPages(vcpus int) map[uint64]bool {
	m := map[uint64]bool{}
	for i := 0; i < vcpus; i++ {
		top := uint64(boot.StackTop - i*boot.StackBytes)
		for a := top - boot.StackBytes; a < top; a += PageSize {
			m[a/PageSize] = true
		}
	}
	return m
}

func TestDirtyGuestPagesMatchPattern(t *testing.T) {
	const mem = 64 << 20
	for _, tracker := range []DirtyTracking{DirtyBitmap, DirtyRing} {
		for _, spec := range []string{
			"pattern=sequential,pages=300,passes=1",
			"pattern=random,pages=2000,count=500,passes=1,seed=7",
			"pattern=scattered,pages=3000,passes=1,seed=3",
			"pattern=scattered,pages=3000,passes=2,seed=11",
			"pattern=sequential,pages=10000,passes=1",
		} {
			for _, vcpus := range []int{1, 2} {
				t.Run(fmt.Sprintf("%v/%s/vcpus=%d", tracker, spec, vcpus), func(t *testing.T) {
					p, err := images.ParseDirtyParams(spec, mem, vcpus)
					if err != nil {
						t.Fatal(err)
					}
					// The emulator on PVM hosts pushes a ring entry per store, not
					// per page, and can overflow a ring that fills mid-run (see
					// TestDirtyRingOverflowStaysSafe): size the ring so it does not.
					tv := newTestVM(t, Config{VCPUs: vcpus, Dirty: tracker, DirtyRingBytes: 1 << 20, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
					tv.start(t)
					res, err := tv.wait(t, 60*time.Second)
					if err != nil || res != (Result{Kind: ExitGuest}) {
						t.Fatalf("result %+v, %v; output %q", res, err, tv.out.String())
					}
					got := NewDirtySet(tv.Memory().Pages())
					if err := tv.HarvestDirty(got); err != nil {
						t.Fatal(err)
					}
					want := p.PassPages(vcpus)
					high := pagesAbove1MiB(t, got, vcpus, 0, 0)
					if !equalPages(high, want) {
						t.Errorf("dirty pages above 1 MiB differ from the pattern: got %d pages, want %d; first difference %s",
							len(high), len(want), firstDifference(high, want))
					}
					if !got.Has(boot.StatusPageGPA / PageSize) {
						t.Error("the status page the guest writes is not in the dirty set")
					}
					// A second harvest right away finds nothing: tracking was re-armed
					// and the guest has stopped.
					again := NewDirtySet(tv.Memory().Pages())
					if err := tv.HarvestDirty(again); err != nil {
						t.Fatal(err)
					}
					if n := again.Len(); n != 0 {
						t.Errorf("second harvest found %d pages, want 0", n)
					}
				})
			}
		}
	}
}

// TestDirtyRingOverflowStaysSafe drives a small ring through many ring-full
// exits. Where KVM overfills the ring (PVM's emulator does), pages are lost
// and the VMM must fall back to reporting everything dirty: the harvest must
// always cover the pattern, and the guest must never stall. (PVM overruns
// a 64 KiB ring on every run, by more than 64 laps on a loaded host: more
// than releasing one entry per exit could catch up with.)
//
// In ring 3 the guest's stores reach the ring through page faults, one
// entry per page as on hardware: the same checks hold.
func TestDirtyRingOverflowStaysSafe(t *testing.T) {
	const mem = 64 << 20
	for _, c := range []struct{ ring, vcpus int }{{0, 1}, {0, 2}, {3, 1}, {3, 2}} {
		ring, vcpus := c.ring, c.vcpus
		t.Run(fmt.Sprintf("ring=%d/vcpus=%d", ring, vcpus), func(t *testing.T) {
			p, err := images.ParseDirtyParams(fmt.Sprintf("pattern=sequential,pages=12000,passes=2,ring=%d", ring), mem, vcpus)
			if err != nil {
				t.Fatal(err)
			}
			tv := newTestVM(t, Config{VCPUs: vcpus, Dirty: DirtyRing, DirtyRingBytes: 64 << 10, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
			tv.start(t)
			res, err := tv.wait(t, 60*time.Second)
			if err != nil && strings.Contains(err.Error(), "keeps reporting the ring full") {
				// A host that overfills the ring (PVM) beyond where the
				// VMM can find its start again: the VM must stop, with
				// this error, rather than spin or lose pages.
				t.Logf("the ring could not be resynchronised; the VM stopped: %v", err)
				return
			}
			if err != nil || res != (Result{Kind: ExitGuest}) {
				t.Fatalf("result %+v, %v", res, err)
			}
			got := NewDirtySet(tv.Memory().Pages())
			if err := tv.HarvestDirty(got); err != nil {
				t.Fatal(err)
			}
			for _, pg := range p.PassPages(vcpus) {
				if !got.Has(pg) {
					t.Fatalf("page %#x written by the guest is missing from the harvest", pg)
				}
			}
		})
	}
}

func equalPages(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func firstDifference(got, want []uint64) string {
	for i := 0; i < min(len(got), len(want)); i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("at index %d: got page %#x, want %#x", i, got[i], want[i])
		}
	}
	return fmt.Sprintf("one list is a prefix of the other (lengths %d, %d)", len(got), len(want))
}

func TestHarvestIncludesVMMWrites(t *testing.T) {
	tv := newTestVM(t, Config{Dirty: DirtyBitmap}, "", nil)
	if _, err := tv.Memory().WriteAt([]byte("device data spanning two pages"), 0x300000-10); err != nil {
		t.Fatal(err)
	}
	got := NewDirtySet(tv.Memory().Pages())
	if err := tv.HarvestDirty(got); err != nil {
		t.Fatal(err)
	}
	if pages := got.AppendPages(nil); !equalPages(pages, []uint64{0x2FF, 0x300}) {
		t.Errorf("dirty pages %#x, want [0x2ff 0x300]", pages)
	}
}

// TestHarvestWhileRunning is pre-copy's invariant, which speculative
// transfer relies on: pages copied right after HarvestDirtyRunning, with
// the guest writing all the while, plus the pages of a final harvest with
// the guest paused, make up exactly guest memory. A dirty ring cannot be
// harvested while running, and says so.
func TestHarvestWhileRunning(t *testing.T) {
	const mem = 16 << 20
	p, err := images.ParseDirtyParams("pattern=random,pages=2000,count=300,passes=0,seed=5", mem, 1)
	if err != nil {
		t.Fatal(err)
	}
	tv := newTestVM(t, Config{Dirty: DirtyBitmap, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
	tv.start(t)
	ram := tv.Memory().Bytes()
	set := NewDirtySet(tv.Memory().Pages())
	copyPages := func(shadow []byte) int {
		pages := set.AppendPages(nil)
		for _, pg := range pages {
			copy(shadow[pg*PageSize:(pg+1)*PageSize], ram[pg*PageSize:])
		}
		set.Reset()
		return len(pages)
	}
	poll(t, "the guest to write", 10*time.Second, func() bool { n, _ := dirtyStatus(ram, 0); return n > 1000 })
	if err := tv.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := tv.HarvestDirty(set); err != nil {
		t.Fatal(err)
	}
	set.Reset()
	shadow := bytes.Clone(ram)
	tv.Resume()
	running := 0
	for range 20 {
		from, _ := dirtyStatus(ram, 0)
		poll(t, "the guest to write more", 10*time.Second, func() bool { n, _ := dirtyStatus(ram, 0); return n > from+200 })
		if err := tv.HarvestDirtyRunning(set); err != nil {
			t.Fatal(err)
		}
		running += copyPages(shadow)
	}
	if err := tv.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := tv.HarvestDirty(set); err != nil {
		t.Fatal(err)
	}
	final := copyPages(shadow)
	if running == 0 {
		t.Fatal("no page harvested while the guest ran")
	}
	if !bytes.Equal(shadow, ram) {
		for pg := uint64(0); pg < mem/PageSize; pg++ {
			if !bytes.Equal(shadow[pg*PageSize:(pg+1)*PageSize], ram[pg*PageSize:(pg+1)*PageSize]) {
				t.Fatalf("page %#x changed but its last copy is older: a write escaped the harvests (%d pages while running, %d paused)", pg, running, final)
			}
		}
	}
	t.Logf("%d pages harvested while running, %d in the final pause", running, final)

	ring := newTestVM(t, Config{Dirty: DirtyRing}, "", nil)
	if err := ring.HarvestDirtyRunning(NewDirtySet(ring.Memory().Pages())); !errors.Is(err, ErrRunningHarvest) {
		t.Errorf("dirty ring harvested while running: %v", err)
	}
}

// dirtyStatus reads vCPU i's status slot of the dirty guest.
func dirtyStatus(mem []byte, i int) (pages, passes uint64) {
	slot := mem[boot.StatusPageGPA+i*images.StatusSlotBytes:]
	return binary.LittleEndian.Uint64(slot[0:]), binary.LittleEndian.Uint64(slot[8:])
}

func TestPauseResumeKeepsGuestConsistent(t *testing.T) {
	const (
		vcpus  = 2
		cycles = 1000
		mem    = 16 << 20
	)
	p, err := images.ParseDirtyParams("pattern=sequential,pages=512,passes=0", mem, vcpus)
	if err != nil {
		t.Fatal(err)
	}
	tv := newTestVM(t, Config{VCPUs: vcpus, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
	tv.start(t)
	ram := tv.Memory().Bytes()
	partLen := p.Pages / vcpus
	last := make([]uint64, vcpus)
	for cycle := 0; cycle < cycles; cycle++ {
		// Let every vCPU make progress, then stop them all.
		poll(t, "every vCPU to make progress", 10*time.Second, func() bool {
			for i := range last {
				if n, _ := dirtyStatus(ram, i); n <= last[i] {
					return false
				}
			}
			return true
		})
		if err := tv.Pause(); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < vcpus; i++ {
			n, passes := dirtyStatus(ram, i)
			// The sequential pattern fixes what memory must hold after n pages:
			// pages before the cursor carry this pass, pages after it the last.
			pass, cursor := n/partLen+1, n%partLen
			// The guest counts the pass after its last page.
			if passes != pass-1 && !(cursor == 0 && passes+2 == pass) {
				t.Fatalf("cycle %d vCPU %d: %d pages written but %d passes completed", cycle, i, n, passes)
			}
			first := p.FirstPage + uint64(i)*partLen
			for k := uint64(0); k < partLen; k++ {
				v := binary.LittleEndian.Uint64(ram[(first+k)*PageSize:])
				want := pass
				if k > cursor || (k == cursor && v != pass) {
					want = pass - 1 // the page at the cursor may already be written
				}
				if v != want {
					t.Fatalf("cycle %d vCPU %d: page %d of its part holds pass %d, want %d (cursor %d, pass %d)",
						cycle, i, k, v, want, cursor, pass)
				}
			}
			last[i] = n
		}
		// Nothing runs while paused.
		for i := 0; i < vcpus; i++ {
			if n, _ := dirtyStatus(ram, i); n != last[i] {
				t.Fatalf("cycle %d: vCPU %d advanced from %d to %d while paused", cycle, i, last[i], n)
			}
		}
		tv.Resume()
	}
	tv.Stop()
	if _, err := tv.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("after %d pause/resume cycles the vCPUs wrote %v pages", cycles, last)
}

func TestPauseBeforeRunHoldsVCPUs(t *testing.T) {
	tv := newTestVM(t, Config{}, "hello", nil)
	if err := tv.Pause(); err != nil {
		t.Fatal(err)
	}
	tv.start(t)
	// The vCPU thread parks before its first KVM_RUN: poll until it is parked.
	poll(t, "the vCPU to park", 10*time.Second, func() bool {
		tv.ctl.mu.Lock()
		defer tv.ctl.mu.Unlock()
		return tv.ctl.state[0] == vcpuParked
	})
	if out := tv.out.String(); out != "" {
		t.Fatalf("guest ran while paused: %q", out)
	}
	tv.Resume()
	if res, err := tv.wait(t, 30*time.Second); err != nil || res.Kind != ExitGuest {
		t.Fatalf("result %+v, %v", res, err)
	}
}

// TestPauseHoldsDevices checks that pausing the VM holds its devices too:
// virtio queue processing and host input to COM1 wait for the last
// Resume, and a VM closed while paused lets them go.
func TestPauseHoldsDevices(t *testing.T) {
	tv := newTestVM(t, Config{}, "counter", nil)
	rng, err := tv.AddVirtio(virtio.NewRNG())
	if err != nil {
		t.Fatal(err)
	}
	lsr := func() byte {
		var b [1]byte
		if err := tv.Serial().ReadPort(devices.COM1Base+5, b[:]); err != nil {
			t.Fatal(err)
		}
		return b[0]
	}
	for range 2 {
		if err := tv.Pause(); err != nil {
			t.Fatal(err)
		}
	}
	if !rng.Transport.Paused() {
		t.Fatal("virtio transport not paused with the VM")
	}
	written := make(chan error, 1)
	go func() {
		_, err := tv.Serial().Write([]byte("GET\n"))
		written <- err
	}()
	tv.Resume()
	if !rng.Transport.Paused() || lsr()&1 != 0 {
		t.Fatal("devices released before the last Resume")
	}
	tv.Resume()
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if rng.Transport.Paused() || lsr()&1 == 0 {
		t.Fatalf("devices still held after Resume (LSR %#x)", lsr())
	}

	// Closed while paused, with host input waiting: Close returns.
	if err := tv.Pause(); err != nil {
		t.Fatal(err)
	}
	go tv.Serial().Write([]byte("more input than the queue holds, and then some"))
	closed := make(chan struct{})
	go func() {
		tv.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("Close of a paused VM did not return")
	}
}
