package vmm

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// PageSize is the guest page size Tandem tracks and replicates.
const PageSize = 4096

// MinMemBytes and MaxMemBytes bound the guest RAM size a VM accepts.
const (
	MinMemBytes = 1 << 20
	MaxMemBytes = 1 << 40
)

// lowMemTop is where RAM below 4 GiB ends: [3 GiB, 4 GiB) is left for the
// LAPIC, IOAPIC, TSS and other device windows.
const lowMemTop = 3 << 30

// MemSlot is one KVM memory slot: a range of guest-physical addresses backed
// by a range of the VM's single guest-memory mapping.
type MemSlot struct {
	ID      uint32
	GPA     uint64 // first guest-physical address
	Size    uint64 // bytes
	Offset  uint64 // offset of GPA inside the mapping
	Log     bool   // dirty logging enabled
	npages  uint64
	firstPg uint64 // Offset / PageSize
}

// Pages is the number of guest pages in the slot.
func (s MemSlot) Pages() uint64 { return s.npages }

// FirstPage is the index, in the mapping, of the slot's first page.
func (s MemSlot) FirstPage() uint64 { return s.firstPg }

// Memory is guest RAM: one host mapping, mapped once for the VM's lifetime
// and split into slots around the MMIO hole below 4 GiB. Pages are named by
// their index in the mapping, which is what dirty tracking and replication
// use: page i is mapping bytes [i*PageSize, (i+1)*PageSize).
//
// Memory records the pages the VMM itself writes through WriteAt (device
// models), because KVM's dirty log only sees writes made by the guest.
type Memory struct {
	mapping []byte
	slots   []MemSlot
	file    *os.File
	// vmmDirty has one bit per page written by the VMM since the last harvest.
	vmmDirty []atomic.Uint64
}

// MemoryConfig says how to back guest RAM.
type MemoryConfig struct {
	Bytes uint64
	// File, when set, backs guest RAM with this file mapped MAP_SHARED, so it
	// can be persistent storage or registered for RDMA. It is created or
	// extended to Bytes; an existing larger file is an error rather than a
	// silent truncation.
	File string
}

// ErrMemSize reports a guest RAM size Tandem cannot use.
var ErrMemSize = errors.New("vmm: bad guest memory size")

// NewMemory maps guest RAM.
func NewMemory(cfg MemoryConfig) (*Memory, error) {
	n := cfg.Bytes
	switch {
	case n < MinMemBytes:
		return nil, fmt.Errorf("%w: %d bytes is below the minimum of 1 MiB", ErrMemSize, n)
	case n > MaxMemBytes:
		return nil, fmt.Errorf("%w: %d bytes is above the maximum of 1 TiB", ErrMemSize, n)
	case n%PageSize != 0:
		return nil, fmt.Errorf("%w: %d bytes is not a multiple of the 4 KiB page size", ErrMemSize, n)
	}
	m := &Memory{}
	var err error
	if cfg.File == "" {
		m.mapping, err = unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		if err != nil {
			return nil, fmt.Errorf("vmm: map %d MiB of anonymous guest memory: %w", n>>20, err)
		}
	} else {
		if m.file, m.mapping, err = mapFile(cfg.File, n); err != nil {
			return nil, err
		}
	}
	// Guest RAM must not be copied into a child by fork: it is large, and
	// RDMA-registered pages must not become copy-on-write.
	_ = unix.Madvise(m.mapping, unix.MADV_DONTFORK)
	m.slots = layoutSlots(n)
	m.vmmDirty = make([]atomic.Uint64, (n/PageSize+63)/64)
	return m, nil
}

func mapFile(path string, n uint64) (*os.File, []byte, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("vmm: guest memory file: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("vmm: guest memory file: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("vmm: guest memory file %s is not a regular file", path)
	}
	if uint64(st.Size()) > n {
		f.Close()
		return nil, nil, fmt.Errorf("vmm: guest memory file %s holds %d bytes, more than the %d-byte guest RAM; use a new file or the matching --mem", path, st.Size(), n)
	}
	if err := f.Truncate(int64(n)); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("vmm: size guest memory file %s: %w", path, err)
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("vmm: map guest memory file %s: %w", path, err)
	}
	return f, b, nil
}

// layoutSlots places RAM below the 3 GiB boundary and continues above 4 GiB.
func layoutSlots(n uint64) []MemSlot {
	low := min(n, lowMemTop)
	slots := []MemSlot{{ID: 0, GPA: 0, Size: low, Offset: 0}}
	if n > low {
		slots = append(slots, MemSlot{ID: 1, GPA: 4 << 30, Size: n - low, Offset: low})
	}
	for i := range slots {
		slots[i].npages = slots[i].Size / PageSize
		slots[i].firstPg = slots[i].Offset / PageSize
	}
	return slots
}

// Close unmaps guest RAM. The Memory must not be used afterwards.
func (m *Memory) Close() error {
	var err error
	if m.mapping != nil {
		err = unix.Munmap(m.mapping)
		m.mapping = nil
	}
	if m.file != nil {
		if cerr := m.file.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// Bytes is the whole guest-memory mapping. Callers that write it directly
// bypass dirty recording (the loader, snapshot restore, replica apply).
func (m *Memory) Bytes() []byte { return m.mapping }

// Size is the guest RAM size in bytes.
func (m *Memory) Size() uint64 { return uint64(len(m.mapping)) }

// Pages is the number of guest pages.
func (m *Memory) Pages() uint64 { return uint64(len(m.mapping)) / PageSize }

// Slots lists the memory slots.
func (m *Memory) Slots() []MemSlot { return m.slots }

// LowBytes returns guest RAM from GPA 0 up to the first slot's end: the part
// a loader that addresses RAM by GPA may write.
func (m *Memory) LowBytes() []byte { return m.mapping[:m.slots[0].Size] }

// translate maps [gpa, gpa+n) to an offset in the mapping; the range must
// lie inside one slot.
func (m *Memory) translate(gpa, n uint64) (uint64, error) {
	for _, s := range m.slots {
		if gpa >= s.GPA && gpa-s.GPA < s.Size {
			if n > s.Size-(gpa-s.GPA) {
				break
			}
			return s.Offset + (gpa - s.GPA), nil
		}
	}
	return 0, fmt.Errorf("vmm: guest range [%#x, %#x) is not RAM", gpa, gpa+n)
}

// ReadAt copies guest RAM at gpa into p.
func (m *Memory) ReadAt(p []byte, gpa uint64) (int, error) {
	off, err := m.translate(gpa, uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, m.mapping[off:]), nil
}

// WriteAt copies p into guest RAM at gpa and records the pages as dirty.
func (m *Memory) WriteAt(p []byte, gpa uint64) (int, error) {
	off, err := m.translate(gpa, uint64(len(p)))
	if err != nil {
		return 0, err
	}
	n := copy(m.mapping[off:], p)
	m.MarkDirty(off, uint64(n))
	return n, nil
}

// MarkDirty records that the VMM wrote n bytes at mapping offset off.
func (m *Memory) MarkDirty(off, n uint64) {
	if n == 0 {
		return
	}
	for pg := off / PageSize; pg <= (off+n-1)/PageSize; pg++ {
		m.vmmDirty[pg/64].Or(1 << (pg % 64))
	}
}

// redirty reports the pages of d dirty again at the next harvest, for a
// harvest whose pages were not used.
func (m *Memory) redirty(d *DirtySet) {
	for i, w := range d.words {
		if w != 0 {
			m.vmmDirty[i].Or(w)
		}
	}
}

// takeVMMDirty moves the VMM-written pages into dst and clears them.
func (m *Memory) takeVMMDirty(dst *DirtySet) {
	for i := range m.vmmDirty {
		if m.vmmDirty[i].Load() != 0 {
			dst.words[i] |= m.vmmDirty[i].Swap(0)
		}
	}
}
