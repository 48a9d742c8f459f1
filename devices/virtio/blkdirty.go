package virtio

import (
	"fmt"
	"math/bits"
	"sync"
)

// DiskBlockSize is the granularity at which TrackedBackend records writes.
const DiskBlockSize = 4096

// TrackedBackend is a BlockBackend that records which blocks of the disk
// were written, and whether the guest asked for a flush, since the last
// Harvest. It is how replication learns what an epoch changed on a disk:
// the replicator harvests the record while the device is paused and reads
// the blocks' current content from the disk itself, so a disk costs one
// bit per DiskBlockSize bytes whatever the guest writes in an epoch, and
// several writes to a block in one epoch travel once.
//
// The guest still sees a write complete when the disk has it; holding what
// the outside world learns of it until the epoch commits is the output
// gate's job (disk contents only ever leave with their epoch).
type TrackedBackend struct {
	BlockBackend

	mu      sync.Mutex
	dirty   []uint64 // one bit per block
	flushed bool
}

// NewTrackedBackend wraps b.
func NewTrackedBackend(b BlockBackend) *TrackedBackend {
	blocks := (b.Size() + DiskBlockSize - 1) / DiskBlockSize
	return &TrackedBackend{BlockBackend: b, dirty: make([]uint64, (blocks+63)/64)}
}

// WriteAt writes to the disk and records the blocks the write touched,
// also when it fails part-way (those blocks may have changed).
func (t *TrackedBackend) WriteAt(p []byte, off int64) (int, error) {
	n, err := t.BlockBackend.WriteAt(p, off)
	if len(p) > 0 && off >= 0 {
		t.mark(off, int64(len(p)))
	}
	return n, err
}

// Flush makes completed writes durable and records that the guest asked
// for it: the copy of the disk the epoch's writes go to must then be made
// durable too once the epoch commits.
func (t *TrackedBackend) Flush() error {
	err := t.BlockBackend.Flush()
	t.mu.Lock()
	t.flushed = true
	t.mu.Unlock()
	return err
}

func (t *TrackedBackend) mark(off, n int64) {
	first, last := off/DiskBlockSize, (off+n-1)/DiskBlockSize
	t.mu.Lock()
	defer t.mu.Unlock()
	for b := first; b <= last && b/64 < int64(len(t.dirty)); b++ {
		t.dirty[b/64] |= 1 << (b % 64)
	}
}

// DiskWrites is what one epoch changed on a disk: the written blocks in
// ascending order, and whether the guest flushed.
type DiskWrites struct {
	Blocks  []uint64
	Flushed bool
}

// Harvest appends the blocks written since the previous Harvest to
// dst.Blocks, in ascending order, sets dst.Flushed if the guest flushed
// meanwhile, and starts a new record. Call it while the device is paused,
// so no write lands between the harvest and reading the blocks.
func (t *TrackedBackend) Harvest(dst *DiskWrites) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, w := range t.dirty {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			dst.Blocks = append(dst.Blocks, uint64(i)*64+uint64(b))
			w &^= 1 << b
		}
		t.dirty[i] = 0
	}
	dst.Flushed = dst.Flushed || t.flushed
	t.flushed = false
}

// ReadBlock reads block b's current content into p, which must hold
// DiskBlockSize bytes; it returns the block's length, which is shorter
// for the last block of a disk whose size is not a multiple of the block.
func (t *TrackedBackend) ReadBlock(b uint64, p []byte) (int, error) {
	size := t.Size()
	off := int64(b) * DiskBlockSize
	if off >= size || len(p) < DiskBlockSize {
		return 0, fmt.Errorf("virtio-blk: block %d is outside a disk of %d bytes", b, size)
	}
	n := int(min(DiskBlockSize, size-off))
	if _, err := t.BlockBackend.ReadAt(p[:n], off); err != nil {
		return 0, fmt.Errorf("virtio-blk: read block %d: %w", b, err)
	}
	return n, nil
}
