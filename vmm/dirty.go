package vmm

import (
	"errors"
	"fmt"
)

// ErrNotPaused is returned by operations that need every vCPU stopped.
var ErrNotPaused = errors.New("vmm: VM is not paused")

// HarvestDirty adds to dst every page written since the previous harvest —
// by the guest, as KVM's dirty ring or bitmap reports it, and by the VMM's
// device models — and re-arms tracking for those pages. The VM must be
// paused (or not yet running) so no page is written while it is harvested.
func (v *VM) HarvestDirty(dst *DirtySet) error {
	if !v.still() {
		return ErrNotPaused
	}
	return v.harvest(dst)
}

// ErrRunningHarvest is HarvestDirtyRunning on a VM whose dirty tracking
// cannot be harvested while its vCPUs run.
var ErrRunningHarvest = errors.New("vmm: only the dirty bitmap can be harvested while the VM runs")

// HarvestDirtyRunning is HarvestDirty while the vCPUs run, with the dirty
// bitmap only (a dirty ring's entries are also taken by the vCPU threads
// when it fills). It is what live migration's pre-copy relies on: the
// pages reported are write-protected again before the call returns, so a
// page the guest writes after it, even while it is being read, is in the
// next harvest; a caller that reads a reported page after this call sees
// every write made before it. The VMM's own writes (WriteAt) mark their
// pages after writing, so the same holds for them. Calls must not overlap
// one another or HarvestDirty.
func (v *VM) HarvestDirtyRunning(dst *DirtySet) error {
	if v.cfg.Dirty != DirtyBitmap {
		return ErrRunningHarvest
	}
	return v.harvest(dst)
}

func (v *VM) harvest(dst *DirtySet) error {
	if dst.Capacity() < v.mem.Pages() {
		return fmt.Errorf("vmm: dirty set holds %d pages, guest has %d", dst.Capacity(), v.mem.Pages())
	}
	switch v.cfg.Dirty {
	case DirtyOff:
		return errors.New("vmm: dirty tracking is off for this VM")
	case DirtyBitmap:
		for i, s := range v.mem.slots {
			buf := v.logBuf[i]
			if err := v.vm.GetDirtyLog(s.ID, buf); err != nil {
				return fmt.Errorf("vmm: slot %d: %w", s.ID, err)
			}
			any := false
			for _, w := range buf {
				if w != 0 {
					any = true
					break
				}
			}
			if !any {
				continue
			}
			// With manual protection, GET only reads the log; CLEAR
			// write-protects exactly the pages we are about to report.
			if err := v.vm.ClearDirtyLog(s.ID, 0, uint32(s.npages), buf); err != nil {
				return fmt.Errorf("vmm: slot %d: %w", s.ID, err)
			}
			dst.orWords(s.firstPg, buf)
		}
	case DirtyRing:
		for _, c := range v.vcpus {
			v.harvestRing(c, dst.Add)
		}
		if _, err := v.vm.ResetDirtyRings(); err != nil {
			return fmt.Errorf("vmm: %w", err)
		}
		if v.ringOverflow.Swap(false) {
			dst.AddAll()
		}
	}
	v.mem.takeVMMDirty(dst)
	return nil
}

// harvestRing collects vCPU c's dirty-ring entries, in ring order. A ring
// found completely full may have been overfilled by KVM (see
// kvm.DirtyRing.SkipHole): pages were lost, so the whole of guest memory is
// reported dirty at the next HarvestDirty, and the hole the overflow leaves
// is skipped once KVM's next entries show where it ends.
func (v *VM) harvestRing(c *vcpu, add func(page uint64)) int {
	if c.ringHole {
		if skipped, found := c.ring.SkipHole(); found {
			c.ringHole = false
			if skipped > 0 {
				v.log.Debug("skipped a hole in the dirty ring", "vcpu", c.index, "entries", skipped)
			}
		}
	}
	slots := v.mem.slots
	n := c.ring.Harvest(func(slot uint32, offset uint64) {
		if int(slot) < len(slots) && offset < slots[slot].npages {
			add(slots[slot].firstPg + offset)
		}
	})
	if n == c.ring.Entries() {
		c.ringHole = true
		if !v.ringOverflow.Swap(true) {
			v.log.Warn("a dirty ring overflowed: KVM did not stop the vCPU at the ring's soft limit; treating all guest memory as dirty once",
				"vcpu", c.index, "ring_entries", n)
		}
	}
	return n
}

// drainRing runs on vCPU c's own thread when its ring is full: the entries
// go to the pending set, harvested with the rest at the next HarvestDirty.
//
// On hosts that emulate guest code (PVM), KVM pushes one ring entry per
// emulated store and may run far past the ring's soft limit before it
// exits — hundreds of thousands of entries were seen — so rings overflow
// (see harvestRing). When KVM reports the ring full yet none of its entries
// is marked dirty, the ring holds nothing but the hole an overflow left.
// The exit itself proves that KVM counts at least its soft limit of entries
// as used, so each such exit releases kvm.DirtyRing.StallDiscard entries
// (less than any soft limit) until KVM lets the vCPU run again; an overrun
// of any length ends after overrun ÷ that many exits. The lost pages are
// covered by reporting all memory dirty.
func (v *VM) drainRing(c *vcpu) error {
	// Overruns of up to a few hundred thousand entries were seen; releasing
	// far more than that in a row (2^24, some 8,000 exits, well under a
	// second) without KVM letting the vCPU run means KVM and the VMM
	// disagree about where the ring starts, and the vCPU would spin for
	// ever: it stops with an error instead (its pages are not lost, the VM
	// is).
	const maxStallEntries = 1 << 24
	n := v.harvestRing(c, func(page uint64) { v.mem.MarkDirty(page*PageSize, 1) })
	if n == 0 {
		c.ringHole = true
		v.ringOverflow.Store(true)
		d := c.ring.StallDiscard()
		c.ring.Discard(d)
		c.ringStalls += int64(d)
		if c.ringStalls > maxStallEntries {
			return fmt.Errorf("dirty ring: KVM keeps reporting the ring full with nothing to harvest (%d entries released); use --dirty bitmap", c.ringStalls)
		}
	} else {
		c.ringStalls = 0
	}
	if _, err := v.vm.ResetDirtyRings(); err != nil {
		return fmt.Errorf("dirty ring: %w", err)
	}
	return nil
}

// still reports whether no vCPU is running guest code.
func (v *VM) still() bool {
	v.ctl.mu.Lock()
	defer v.ctl.mu.Unlock()
	return v.ctl.allStill()
}
