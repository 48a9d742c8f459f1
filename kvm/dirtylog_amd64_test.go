package kvm_test

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/kvm"
)

const guestPages = guestMemSize / kvm.PageSize

// dirtyPages lists the set bits of a dirty bitmap.
func dirtyPages(bitmap []uint64) []int {
	var pages []int
	for w, word := range bitmap {
		for b := 0; b < 64; b++ {
			if word&(1<<b) != 0 {
				pages = append(pages, w*64+b)
			}
		}
	}
	return pages
}

func TestDirtyLog(t *testing.T) {
	g := newGuest(t, guestConfig{memFlags: kvm.MemLogDirtyPages}, guestDirtyPage5)
	bitmap := make([]uint64, guestPages/64)

	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	if pages := dirtyPages(bitmap); len(pages) != 0 {
		t.Fatalf("dirty before running: pages %v", pages)
	}

	g.mem[7*kvm.PageSize] = 1 // a VMM write: not logged
	g.runToOutHLT(t)
	if g.mem[5*kvm.PageSize] != 1 {
		t.Fatalf("guest write to 0x5000 not visible in the mapping")
	}
	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	if pages := dirtyPages(bitmap); fmt.Sprint(pages) != "[5]" {
		t.Fatalf("dirty pages %v, want [5]", pages)
	}
	// Without manual protection, reading the log clears it.
	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	if pages := dirtyPages(bitmap); len(pages) != 0 {
		t.Fatalf("dirty pages %v on the second read, want none", pages)
	}

	if err := g.vm.GetDirtyLog(0, bitmap[:len(bitmap)-1]); !errors.Is(err, unix.EINVAL) {
		t.Errorf("GetDirtyLog with a short bitmap: %v, want EINVAL", err)
	}
	if err := g.vm.GetDirtyLog(3, bitmap); !errors.Is(err, unix.ENOENT) {
		t.Errorf("GetDirtyLog of a missing slot: %v, want ENOENT", err)
	}
}

func TestClearDirtyLog(t *testing.T) {
	g := newGuest(t, guestConfig{
		memFlags: kvm.MemLogDirtyPages,
		beforeVCPU: func(vm *kvm.VM) {
			if err := vm.EnableCap(kvm.CapManualDirtyLogProtect2, 0, kvm.DirtyLogManualProtectEnable); err != nil {
				t.Fatal(err)
			}
		},
	}, guestDirtyPage5)
	bitmap := make([]uint64, guestPages/64)

	g.runToOutHLT(t)
	for i := 0; i < 2; i++ { // with manual protection, reading does not clear
		if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
			t.Fatal(err)
		}
		if pages := dirtyPages(bitmap); fmt.Sprint(pages) != "[5]" {
			t.Fatalf("read %d: dirty pages %v, want [5]", i, pages)
		}
	}
	if err := g.vm.ClearDirtyLog(0, 0, guestPages, bitmap); err != nil {
		t.Fatal(err)
	}
	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	if pages := dirtyPages(bitmap); len(pages) != 0 {
		t.Fatalf("dirty pages %v after ClearDirtyLog, want none", pages)
	}

	// The page is write-protected again: running the guest again dirties it.
	g.resetRealMode(t)
	g.runToOutHLT(t)
	if err := g.vm.GetDirtyLog(0, bitmap); err != nil {
		t.Fatal(err)
	}
	if pages := dirtyPages(bitmap); fmt.Sprint(pages) != "[5]" {
		t.Fatalf("dirty pages %v after the second run, want [5]", pages)
	}

	// Clearing part of the slot: 64 pages from page 0.
	if err := g.vm.ClearDirtyLog(0, 0, 64, bitmap[:1]); err != nil {
		t.Fatal(err)
	}
	if err := g.vm.ClearDirtyLog(0, 0, 65, bitmap[:1]); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ClearDirtyLog with a short bitmap: %v, want EINVAL", err)
	}
	if err := g.vm.ClearDirtyLog(0, 1, 64, bitmap); !errors.Is(err, unix.EINVAL) {
		t.Errorf("ClearDirtyLog from page 1: %v, want EINVAL from the kernel", err)
	}
}

func TestDirtyRing(t *testing.T) {
	const ringBytes = 65536
	g := newGuest(t, guestConfig{
		memFlags: kvm.MemLogDirtyPages,
		beforeVCPU: func(vm *kvm.VM) {
			c := kvm.CapDirtyLogRingAcqRel
			limit, err := vm.CheckExtension(c)
			if err != nil {
				t.Fatal(err)
			}
			if limit == 0 {
				c = kvm.CapDirtyLogRing
				if limit, err = vm.CheckExtension(c); err != nil {
					t.Fatal(err)
				}
			}
			if limit < ringBytes {
				t.Skipf("dirty ring: %v reports %d bytes", c, limit)
			}
			if err := vm.EnableCap(c, 0, ringBytes); err != nil {
				t.Fatal(err)
			}
		},
	}, guestDirtyPage5)

	ring, err := g.vcpu.MapDirtyRing(ringBytes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ring.Close(); err != nil {
			t.Error(err)
		}
	})
	if got, want := ring.Entries(), ringBytes/16; got != want {
		t.Fatalf("Entries() = %d, want %d", got, want)
	}
	if n := ring.Harvest(func(uint32, uint64) { t.Error("entry in a fresh ring") }); n != 0 {
		t.Fatalf("Harvest of a fresh ring = %d", n)
	}

	g.runToOutHLT(t)
	var got []string
	n := ring.Harvest(func(slot uint32, offset uint64) {
		got = append(got, fmt.Sprintf("%d:%d", slot, offset))
	})
	if n != 1 || fmt.Sprint(got) != "[0:5]" {
		t.Fatalf("Harvest = %d %v, want 1 [0:5] (slot 0, page 5)", n, got)
	}
	reset, err := g.vm.ResetDirtyRings()
	if err != nil {
		t.Fatal(err)
	}
	if reset != 1 {
		t.Errorf("ResetDirtyRings() = %d, want 1", reset)
	}

	// The page is protected again: a second run reports it again, in the
	// next ring entry.
	g.resetRealMode(t)
	g.runToOutHLT(t)
	got = got[:0]
	n = ring.Harvest(func(slot uint32, offset uint64) {
		got = append(got, fmt.Sprintf("%d:%d", slot, offset))
	})
	if n != 1 || fmt.Sprint(got) != "[0:5]" {
		t.Fatalf("second Harvest = %d %v, want 1 [0:5]", n, got)
	}
	if _, err := g.vm.ResetDirtyRings(); err != nil {
		t.Fatal(err)
	}
}
