package vmm

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/images"
	"github.com/tandemvm/tandem/kvm/kvmtest"
)

const (
	shadowTestMem   = 16 << 20
	shadowTestVCPUs = 2
)

// shadowSource boots the dirty guest (sequential, forever), lets every vCPU
// write some pages, and returns its encoded state, a copy of its memory and
// the guest's parameters.
func shadowSource(t *testing.T) (state, mem []byte, p images.DirtyParams) {
	t.Helper()
	p, err := images.ParseDirtyParams("pattern=sequential,pages=512,passes=0", shadowTestMem, shadowTestVCPUs)
	if err != nil {
		t.Fatal(err)
	}
	tv := newTestVM(t, Config{VCPUs: shadowTestVCPUs, Memory: MemoryConfig{Bytes: shadowTestMem}}, "dirty", p.Args())
	tv.start(t)
	ram := tv.Memory().Bytes()
	poll(t, "every vCPU of the primary to write pages", 10*time.Second, func() bool {
		for i := range shadowTestVCPUs {
			if n, _ := dirtyStatus(ram, i); n < 20 {
				return false
			}
		}
		return true
	})
	if err := tv.Pause(); err != nil {
		t.Fatal(err)
	}
	st, err := tv.CaptureState()
	if err != nil {
		t.Fatal(err)
	}
	if state, err = st.MarshalBinary(); err != nil {
		t.Fatal(err)
	}
	mem = bytes.Clone(ram)
	tv.Stop()
	if _, err := tv.wait(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return state, mem, p
}

func newTestShadow(t *testing.T) *Shadow {
	t.Helper()
	kvmtest.Open(t)
	sh, err := NewShadow(ShadowConfig{MemBytes: shadowTestMem, VCPUs: shadowTestVCPUs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	return sh
}

// TestShadowRunsAndReportsWrites runs a shadow from a primary's state twice,
// resetting the pages it wrote in between, as an active backup does every
// epoch: the second run restores into vCPUs that have run.
func TestShadowRunsAndReportsWrites(t *testing.T) {
	state, primary, p := shadowSource(t)
	sh := newTestShadow(t)
	if got := len(sh.Memory()); got != len(primary) {
		t.Fatalf("shadow memory is %d bytes, want %d", got, len(primary))
	}
	copy(sh.Memory(), primary)
	from := make([]uint64, shadowTestVCPUs)
	for i := range from {
		from[i], _ = dirtyStatus(primary, i)
	}

	// runOnce runs the shadow from state until every vCPU wrote more pages
	// than the primary had, stops it and checks the pages it reports.
	runOnce := func(round string) []uint64 {
		t.Helper()
		if err := sh.Run(state); err != nil {
			t.Fatalf("%s run: %v", round, err)
		}
		mem := sh.Memory()
		poll(t, round+" run: every shadow vCPU to write pages", 10*time.Second, func() bool {
			for i := range from {
				if n, _ := dirtyStatus(mem, i); n < from[i]+20 {
					return false
				}
			}
			return true
		})
		pages, err := sh.Stop(nil)
		if err != nil {
			t.Fatalf("%s stop: %v", round, err)
		}
		if len(pages) == 0 {
			t.Fatalf("%s stop: no pages reported", round)
		}
		if !slices.IsSorted(pages) || len(slices.Compact(slices.Clone(pages))) != len(pages) {
			t.Errorf("%s stop: pages not in ascending order without repeats: %v", round, pages)
		}
		if !slices.Contains(pages, boot.StatusPageGPA/PageSize) {
			t.Errorf("%s stop: the status page the guest writes is not reported", round)
		}
		changed := 0
		for _, pg := range pages {
			if pg >= p.FirstPage && pg < p.FirstPage+p.Pages &&
				!bytes.Equal(mem[pg*PageSize:(pg+1)*PageSize], primary[pg*PageSize:(pg+1)*PageSize]) {
				changed++
			}
		}
		if changed == 0 {
			t.Errorf("%s stop: no reported page of the guest's region differs from the primary's copy", round)
		}
		// Stopped, the shadow writes nothing and reports nothing.
		stopped := make([]uint64, len(from))
		for i := range stopped {
			stopped[i], _ = dirtyStatus(mem, i)
		}
		if again, err := sh.Stop(nil); err != nil || len(again) != 0 {
			t.Errorf("%s: Stop on a stopped shadow: %d pages, %v", round, len(again), err)
		}
		for i := range stopped {
			if n, _ := dirtyStatus(mem, i); n != stopped[i] {
				t.Errorf("%s: vCPU %d advanced from %d to %d while stopped", round, i, stopped[i], n)
			}
		}
		t.Logf("%s run: %d pages reported, %d of them in the guest's region changed", round, len(pages), changed)
		return pages
	}

	pages := runOnce("first")

	// Reset: every page the shadow changed must be among those reported,
	// so copying those back gives the primary's memory again.
	mem := sh.Memory()
	for _, pg := range pages {
		copy(mem[pg*PageSize:(pg+1)*PageSize], primary[pg*PageSize:])
	}
	if !bytes.Equal(mem, primary) {
		for pg := uint64(0); pg < shadowTestMem/PageSize; pg++ {
			if !bytes.Equal(mem[pg*PageSize:(pg+1)*PageSize], primary[pg*PageSize:(pg+1)*PageSize]) {
				t.Fatalf("page %#x was changed by the shadow but not reported by Stop", pg)
			}
		}
	}

	var st State
	if err := st.UnmarshalBinary(state); err != nil {
		t.Fatal(err)
	}
	// The vCPUs that ran hold the state's CPUID, so the second Run keeps it
	// without KVM_SET_CPUID2.
	for i, c := range sh.vm.vcpus {
		cur, err := c.k.GetCPUID2()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(cur, st.VCPUs[i].CPUID) {
			t.Errorf("vCPU %d: CPUID after the run differs from the state's: %s", i, cpuidDifference(cur, st.VCPUs[i].CPUID))
		}
	}

	// A state whose CPUID differs cannot be loaded into vCPUs that ran
	// (KVM_SET_CPUID2 after KVM_RUN takes only the same table); the shadow
	// stays stopped and usable.
	flipped := false
	for i := range st.VCPUs[0].CPUID {
		if e := &st.VCPUs[0].CPUID[i]; e.Function == 1 {
			e.ECX ^= cpuidHypervisor
			flipped = true
		}
	}
	if !flipped {
		t.Fatal("the state's CPUID has no leaf 1")
	}
	other, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Run(other); err == nil || !strings.Contains(err.Error(), "CPUID cannot change once a vCPU ran") {
		t.Errorf("Run with a changed CPUID after a run: %v, want the CPUID change refused", err)
	}
	if got, err := sh.Stop(nil); err != nil || len(got) != 0 {
		t.Errorf("Stop after a refused Run: %d pages, %v", len(got), err)
	}

	runOnce("second")

	if err := sh.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sh.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := sh.Run(state); !errors.Is(err, ErrShadowClosed) {
		t.Errorf("Run after Close: %v, want ErrShadowClosed", err)
	}
	if _, err := sh.Stop(nil); !errors.Is(err, ErrShadowClosed) {
		t.Errorf("Stop after Close: %v, want ErrShadowClosed", err)
	}
}

// TestShadowReportsGuestExit: a shadow whose guest ends on its own says so,
// with the reason, from Stop and Run.
func TestShadowReportsGuestExit(t *testing.T) {
	p, err := images.ParseDirtyParams("pattern=sequential,pages=8,passes=1", shadowTestMem, 1)
	if err != nil {
		t.Fatal(err)
	}
	// The state of a loaded guest that has not run yet.
	tv := newTestVM(t, Config{Memory: MemoryConfig{Bytes: shadowTestMem}}, "dirty", p.Args())
	st, err := tv.CaptureState()
	if err != nil {
		t.Fatal(err)
	}
	state, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	sh, err := NewShadow(ShadowConfig{MemBytes: shadowTestMem, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Close()
	copy(sh.Memory(), tv.Memory().Bytes())
	if err := sh.Run(state); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sh.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the shadow's guest did not finish its pass")
	}
	for what, err := range map[string]error{
		"Stop": func() error { _, err := sh.Stop(nil); return err }(),
		"Run":  sh.Run(state),
	} {
		if !errors.Is(err, ErrShadowExited) || !strings.Contains(err.Error(), "guest exit with status 0") {
			t.Errorf("%s after the guest exited: %v, want ErrShadowExited for a guest exit with status 0", what, err)
		}
	}
}

// TestShadowRejectsBadState: states that cannot be decoded or loaded are
// errors that leave the shadow stopped, and a good state runs afterwards.
func TestShadowRejectsBadState(t *testing.T) {
	state, primary, _ := shadowSource(t)
	var good State
	if err := good.UnmarshalBinary(state); err != nil {
		t.Fatal(err)
	}
	encode := func(change func(*State)) []byte {
		var st State
		if err := st.UnmarshalBinary(state); err != nil {
			t.Fatal(err)
		}
		change(&st)
		b, err := st.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	sh := newTestShadow(t)
	copy(sh.Memory(), primary)
	for _, tc := range []struct {
		name  string
		state []byte
		want  string
	}{
		{"empty", nil, "malformed"},
		{"garbage", []byte("not a state at all, just some bytes"), "malformed"},
		{"truncated", state[:len(state)/2], "malformed"},
		{"memory size", encode(func(st *State) { st.MemBytes *= 2 }), "MiB of RAM"},
		{"vCPU count", encode(func(st *State) { st.VCPUs = st.VCPUs[:1] }), "vCPUs"},
		{"unknown device", encode(func(st *State) {
			st.Devices = append(st.Devices, DeviceState{Name: "virtio-blk@0xd0000000", Data: []byte{1}})
		}), "lacks"},
		{"invalid CR0", encode(func(st *State) { st.VCPUs[0].Sregs.CR0 = 1 << 31 }), "KVM_SET_SREGS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := sh.Run(tc.state)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Run: %v, want an error mentioning %q", err, tc.want)
			}
			if pages, err := sh.Stop(nil); err != nil || len(pages) != 0 {
				t.Errorf("Stop after a refused Run: %d pages, %v", len(pages), err)
			}
		})
	}
	if err := sh.Run(state); err != nil {
		t.Fatalf("Run with the good state after the bad ones: %v", err)
	}
	from, _ := dirtyStatus(primary, 0)
	poll(t, "the shadow to write pages", 10*time.Second, func() bool { n, _ := dirtyStatus(sh.Memory(), 0); return n > from })
	if pages, err := sh.Stop(nil); err != nil || len(pages) == 0 {
		t.Errorf("Stop: %d pages, %v", len(pages), err)
	}
}
