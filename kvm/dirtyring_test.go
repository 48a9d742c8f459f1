package kvm

import "testing"

func TestDirtyRingHarvestAndSkipHole(t *testing.T) {
	r := newDirtyRing(make([]byte, PageSize)) // 256 entries
	if r.Entries() != 256 {
		t.Fatalf("%d entries, want 256", r.Entries())
	}
	push := func(i int, offset uint64) {
		r.gfns[i] = DirtyGFN{Slot: 1, Offset: offset, Flags: DirtyGFNFlagDirty}
	}
	var got []uint64
	collect := func(slot uint32, offset uint64) { got = append(got, offset) }

	// In order, stopping at the first entry KVM has not filled.
	push(0, 100)
	push(1, 101)
	push(3, 103) // beyond a not-yet-filled entry: must not be taken
	if n := r.Harvest(collect); n != 2 || len(got) != 2 || got[1] != 101 {
		t.Fatalf("harvested %d: %v", n, got)
	}
	if r.gfns[0].Flags != DirtyGFNFlagReset || r.gfns[3].Flags != DirtyGFNFlagDirty {
		t.Fatalf("flags after harvest: %d, %d", r.gfns[0].Flags, r.gfns[3].Flags)
	}

	// Entry 2 is a hole (KVM invalidated it after an overflow): SkipHole
	// marks it harvested and moves on to entry 3.
	if k, ok := r.SkipHole(); !ok || k != 1 {
		t.Fatalf("SkipHole = %d, %v; want 1, true", k, ok)
	}
	if r.gfns[2].Flags != DirtyGFNFlagReset {
		t.Errorf("hole entry flags %d, want reset", r.gfns[2].Flags)
	}
	got = nil
	if n := r.Harvest(collect); n != 1 || got[0] != 103 {
		t.Fatalf("harvested %d: %v after skipping the hole", n, got)
	}
	// Nothing dirty: nothing to resynchronise on.
	if k, ok := r.SkipHole(); ok || k != 0 {
		t.Errorf("SkipHole on an empty ring = %d, %v", k, ok)
	}
	// A dirty entry right at the fetch index is no hole.
	push(4, 104)
	if k, ok := r.SkipHole(); !ok || k != 0 {
		t.Errorf("SkipHole = %d, %v; want 0, true", k, ok)
	}

	// Discard releases entries without reading them, wrapping the index.
	r.Harvest(func(uint32, uint64) {})
	before := r.next
	r.Discard(len(r.gfns) + 1)
	if r.next != (before+1)%uint32(len(r.gfns)) {
		t.Errorf("Discard(%d): index %d -> %d", len(r.gfns)+1, before, r.next)
	}
	for i, e := range r.gfns {
		if e.Flags != DirtyGFNFlagReset {
			t.Errorf("after Discard, entry %d has flags %d, want reset", i, e.Flags)
		}
	}
}

func TestStallDiscardStaysBelowTheSoftLimit(t *testing.T) {
	// The largest reserve KVM keeps on x86: 64 entries and Intel's PML buffer.
	const reserve = 64 + 512
	for _, entries := range []int{256, 1024, 2048, 4096, 65536} {
		r := &DirtyRing{gfns: make([]DirtyGFN, entries)}
		d := r.StallDiscard()
		if d < 1 {
			t.Errorf("%d entries: discard %d, want at least 1", entries, d)
		}
		if soft := entries - reserve; soft > 0 && d > soft {
			t.Errorf("%d entries: discard %d passes the soft limit %d", entries, d, soft)
		}
	}
}
