package kvm

import (
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DirtyGFN is struct kvm_dirty_gfn, one entry of a vCPU's dirty ring.
type DirtyGFN struct {
	Flags  uint32 // DirtyGFNFlagDirty, DirtyGFNFlagReset
	Slot   uint32 // memory slot (address space in bits 16-31)
	Offset uint64 // page offset inside the slot
}

// Flags of DirtyGFN (KVM_DIRTY_GFN_F_*).
const (
	DirtyGFNFlagDirty = 1 << 0 // set by KVM: the entry holds a dirty page
	DirtyGFNFlagReset = 1 << 1 // set by userspace: the entry was harvested
)

// DirtyRing is a mapped vCPU dirty ring (VCPU.MapDirtyRing) and the index of
// the next entry to harvest.
type DirtyRing struct {
	mem  []byte
	gfns []DirtyGFN // view of mem
	next uint32     // fetch index: entries harvested so far, modulo len(gfns)
}

// Entries returns the number of entries in the ring.
func (r *DirtyRing) Entries() int { return len(r.gfns) }

// Harvest collects dirty pages from the ring: starting at the fetch index,
// in ring order, it loads each entry's flags with acquire semantics, stops
// at the first entry not marked DirtyGFNFlagDirty, calls fn(slot, offset),
// marks the entry DirtyGFNFlagReset with a release store, and advances the
// index (modulo Entries). It returns the number of entries collected, at
// most Entries.
//
// Afterwards the caller issues VM.ResetDirtyRings so that KVM re-protects
// the pages and reuses the entries. Harvest must not run concurrently with
// itself on the same ring; it is safe while the vCPU runs (that is what the
// acquire/release protocol is for) and while it is paused.
func (r *DirtyRing) Harvest(fn func(slot uint32, offset uint64)) int {
	n := uint32(len(r.gfns))
	collected := 0
	for collected < int(n) {
		e := &r.gfns[r.next%n]
		if atomic.LoadUint32(&e.Flags)&DirtyGFNFlagDirty == 0 {
			break
		}
		fn(e.Slot, e.Offset)
		atomic.StoreUint32(&e.Flags, DirtyGFNFlagReset)
		r.next = (r.next + 1) % n
		collected++
	}
	return collected
}

// SkipHole moves the fetch index over a hole that KVM left in the ring.
//
// KVM is meant to stop a vCPU (KVM_EXIT_DIRTY_RING_FULL) while the ring
// still has reserved entries, but some hosts (the instruction emulator on
// PVM, for one) keep pushing and wrap around, overwriting entries. After
// userspace harvests and resets such a ring, the entries KVM pushed twice are
// invalid and later pushes land after them: a hole at the fetch index that
// Harvest would never pass, and that KVM_RESET_DIRTY_RINGS would never pass
// either. SkipHole finds the first entry marked dirty at or after the fetch
// index (within one lap); if there is one, it marks the invalid entries
// before it as harvested so the next reset walks over them, moves the fetch
// index to it, and returns how many entries it skipped and true. It returns
// false when no entry is marked dirty (nothing to resynchronise on yet).
// Pages in the hole were lost: the caller must treat them as dirty.
func (r *DirtyRing) SkipHole() (skipped int, found bool) {
	n := uint32(len(r.gfns))
	for k := uint32(0); k < n; k++ {
		if atomic.LoadUint32(&r.gfns[(r.next+k)%n].Flags)&DirtyGFNFlagDirty == 0 {
			continue
		}
		for j := uint32(0); j < k; j++ {
			atomic.StoreUint32(&r.gfns[(r.next+j)%n].Flags, DirtyGFNFlagReset)
		}
		r.next = (r.next + k) % n
		return int(k), true
	}
	return 0, false
}

// Discard marks the k entries from the fetch index harvested without
// reading them and advances the index past them. It is for a ring whose
// whole content is a hole (see SkipHole): KVM stops the vCPU as full, no
// entry is marked dirty, and resetting hole entries is the only way to let
// KVM's count of used entries fall below its limit. KVM's reset walks every
// entry marked harvested, so the caller must never discard more entries
// than KVM counts as used, or the reset would pass KVM's own write index.
func (r *DirtyRing) Discard(k int) {
	n := uint32(len(r.gfns))
	for i := 0; i < k; i++ {
		atomic.StoreUint32(&r.gfns[r.next%n].Flags, DirtyGFNFlagReset)
		r.next = (r.next + 1) % n
	}
}

// StallDiscard is how many hole entries one ring-full exit that found
// nothing dirty allows to be discarded. KVM stops a vCPU only once the
// entries in use reach the ring's soft limit: its size less a reserve of
// 64 entries and the CPU's own dirty-log buffer (Intel PML: 512 entries).
// Half the ring, and never more than the ring less that largest reserve,
// stays within the limit; a ring too small for that discards one entry per
// exit.
func (r *DirtyRing) StallDiscard() int {
	const largestReserve = 64 + 512
	e := len(r.gfns)
	return max(1, min(e/2, e-largestReserve))
}

// Close unmaps the ring. Closing twice is a no-op.
func (r *DirtyRing) Close() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem, r.gfns = nil, nil
	if err != nil {
		return fmt.Errorf("kvm: munmap dirty ring: %w", err)
	}
	return nil
}
