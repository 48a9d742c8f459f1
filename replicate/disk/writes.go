package disk

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Block is one block an epoch wrote, with its content at the end of the
// epoch (shorter than BlockSize only for the last block of a disk whose
// size is not a multiple of it).
type Block struct {
	Index uint64
	Data  []byte
}

// Writes is one disk's writes of one epoch.
type Writes struct {
	Blocks  []Block // strictly ascending indices
	Flushed bool    // the guest asked for a flush during the epoch
}

// Bytes is the data the record carries.
func (w *Writes) Bytes() int {
	n := 0
	for _, b := range w.Blocks {
		n += len(b.Data)
	}
	return n
}

// AppendWrites encodes w: u8 flushed, u32 count, then per block u64
// index, u32 length, the data.
func AppendWrites(b []byte, w *Writes) []byte {
	flushed := byte(0)
	if w.Flushed {
		flushed = 1
	}
	b = append(b, flushed)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(w.Blocks)))
	for _, blk := range w.Blocks {
		b = binary.LittleEndian.AppendUint64(b, blk.Index)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(blk.Data)))
		b = append(b, blk.Data...)
	}
	return b
}

// ParseWrites decodes one disk's writes for a disk of size bytes from the
// front of b and returns the rest of b. Every block must lie on the disk,
// have the length of that block, and come after the one before. The
// blocks' data alias b.
func ParseWrites(b []byte, size int64) (*Writes, []byte, error) {
	if len(b) < 5 || b[0] > 1 {
		return nil, nil, fmt.Errorf("%w: disk writes header", ErrMalformed)
	}
	w := &Writes{Flushed: b[0] == 1}
	n := binary.LittleEndian.Uint32(b[1:])
	b = b[5:]
	blocks := uint64((size + BlockSize - 1) / BlockSize)
	if uint64(n) > blocks || uint64(n)*12 > uint64(len(b)) {
		return nil, nil, fmt.Errorf("%w: %d written blocks for a disk of %d in %d bytes", ErrMalformed, n, blocks, len(b))
	}
	w.Blocks = make([]Block, 0, n)
	for i := uint32(0); i < n; i++ {
		if len(b) < 12 {
			return nil, nil, fmt.Errorf("%w: block %d truncated", ErrMalformed, i)
		}
		idx := binary.LittleEndian.Uint64(b)
		ln := uint64(binary.LittleEndian.Uint32(b[8:]))
		b = b[12:]
		if idx >= blocks || (i > 0 && idx <= w.Blocks[i-1].Index) {
			return nil, nil, fmt.Errorf("%w: block %d out of range or order", ErrMalformed, idx)
		}
		if want := uint64(min(BlockSize, size-int64(idx)*BlockSize)); ln != want || ln > uint64(len(b)) {
			return nil, nil, fmt.Errorf("%w: block %d of %d bytes, want %d", ErrMalformed, idx, ln, want)
		}
		w.Blocks = append(w.Blocks, Block{Index: idx, Data: b[:ln]})
		b = b[ln:]
	}
	return w, b, nil
}

// Syncer is a disk copy that can be made durable (an *os.File).
type Syncer interface {
	Sync() error
}

// Apply writes an epoch's blocks to the copy w, and makes it durable when
// the guest flushed (if w is a Syncer).
func Apply(w io.WriterAt, wr *Writes) error {
	for _, b := range wr.Blocks {
		if _, err := w.WriteAt(b.Data, int64(b.Index)*BlockSize); err != nil {
			return fmt.Errorf("disk: write block %d: %w", b.Index, err)
		}
	}
	if s, ok := w.(Syncer); ok && wr.Flushed {
		if err := s.Sync(); err != nil {
			return fmt.Errorf("disk: flush: %w", err)
		}
	}
	return nil
}
