// Package disk owns what replication does with a protected VM's disks,
// apart from moving bytes: bringing the leader's copy of a disk to the
// primary's content without sending what is already equal, and the
// encoding of the disk writes an epoch carries.
//
// # Initial copy
//
// Both sides cut a disk into chunks of ChunkSize bytes (the last one may
// be short) and hash each with SHA-256 ([Hashes]); an all-zero chunk — a
// hole of a sparse file, or a block never written — has the fixed hash
// [ZeroHash] and is not read twice. The primary sends its hash list, the
// leader answers with the chunks whose hash differs from its own copy's
// ([Diff]), and the primary sends just those ([Chunk]), which the leader
// writes and then makes durable before replication starts. A copy of
// another size is refused: [CheckSize].
//
// # An epoch's writes
//
// The blocks a guest wrote during an epoch travel with that epoch as a
// [Writes] record: for each block its index (in blocks of BlockSize bytes)
// and its content at the end of the epoch, and whether the guest flushed.
// The leader applies an epoch's record to its copy only once the epoch is
// committed, in epoch order, and makes the copy durable when the record
// says the guest flushed. So the disk of a recovered VM is always of the
// same epoch as its memory.
//
// Every decoder here takes bytes from an authenticated peer and still
// checks every count, index and length against the disk it describes.
package disk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ChunkSize is the unit of the initial copy.
const ChunkSize = 64 << 10

// BlockSize is the unit of an epoch's writes (the virtio-blk tracker's).
const BlockSize = 4096

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("disk: malformed record")

// Hash is a chunk's SHA-256.
type Hash = [sha256.Size]byte

// ZeroHash is the hash of a chunk of ChunkSize zero bytes.
var ZeroHash = sha256.Sum256(make([]byte, ChunkSize))

// Chunks is the number of chunks of a disk of size bytes.
func Chunks(size int64) int { return int((size + ChunkSize - 1) / ChunkSize) }

// chunkLen is the length of chunk i of a disk of size bytes.
func chunkLen(i int, size int64) int {
	return int(min(ChunkSize, size-int64(i)*ChunkSize))
}

// Hashes returns the hash of every chunk of the disk r of size bytes.
// progress, if not nil, is called after each chunk with the chunks done.
func Hashes(r io.ReaderAt, size int64, progress func(done, total int)) ([]Hash, error) {
	n := Chunks(size)
	out := make([]Hash, n)
	buf := make([]byte, ChunkSize)
	zero := make([]byte, ChunkSize)
	for i := range out {
		b := buf[:chunkLen(i, size)]
		if _, err := r.ReadAt(b, int64(i)*ChunkSize); err != nil && !(errors.Is(err, io.EOF) && i == n-1) {
			return nil, fmt.Errorf("disk: read chunk %d: %w", i, err)
		}
		if len(b) == ChunkSize && bytes.Equal(b, zero) {
			out[i] = ZeroHash
		} else {
			out[i] = sha256.Sum256(b)
		}
		if progress != nil {
			progress(i+1, n)
		}
	}
	return out, nil
}

// Diff returns the indices of the chunks whose hashes differ, in order.
// Both lists must describe disks of the same size.
func Diff(primary, copy []Hash) ([]uint32, error) {
	if len(primary) != len(copy) {
		return nil, fmt.Errorf("disk: %d chunks against %d: the disks differ in size", len(primary), len(copy))
	}
	var out []uint32
	for i := range primary {
		if primary[i] != copy[i] {
			out = append(out, uint32(i))
		}
	}
	return out, nil
}

// CheckSize refuses a copy whose size is not the primary's.
func CheckSize(name string, primary, copy int64) error {
	if primary != copy {
		return fmt.Errorf("disk %s: the copy holds %d bytes, the primary's disk %d: give a copy of the same size", name, copy, primary)
	}
	return nil
}

// AppendHashes encodes a hash list: a u32 count, then the hashes.
func AppendHashes(b []byte, hs []Hash) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(hs)))
	for _, h := range hs {
		b = append(b, h[:]...)
	}
	return b
}

// ParseHashes decodes a hash list for a disk of size bytes.
func ParseHashes(b []byte, size int64) ([]Hash, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: hash list of %d bytes", ErrMalformed, len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if int64(n) != int64(Chunks(size)) || uint64(len(b)-4) != uint64(n)*sha256.Size {
		return nil, fmt.Errorf("%w: %d hashes in %d bytes for a disk of %d chunks", ErrMalformed, n, len(b)-4, Chunks(size))
	}
	out := make([]Hash, n)
	for i := range out {
		copy(out[i][:], b[4+i*sha256.Size:])
	}
	return out, nil
}

// AppendIndices encodes a list of chunk indices: a u32 count, then each.
func AppendIndices(b []byte, idx []uint32) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(idx)))
	for _, i := range idx {
		b = binary.LittleEndian.AppendUint32(b, i)
	}
	return b
}

// ParseIndices decodes chunk indices for a disk of size bytes: each in
// range and in strictly ascending order.
func ParseIndices(b []byte, size int64) ([]uint32, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: index list of %d bytes", ErrMalformed, len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if uint64(len(b)-4) != uint64(n)*4 {
		return nil, fmt.Errorf("%w: %d indices in %d bytes", ErrMalformed, n, len(b)-4)
	}
	out := make([]uint32, n)
	for i := range out {
		out[i] = binary.LittleEndian.Uint32(b[4+4*i:])
		if int64(out[i]) >= int64(Chunks(size)) || (i > 0 && out[i] <= out[i-1]) {
			return nil, fmt.Errorf("%w: chunk index %d out of range or order", ErrMalformed, out[i])
		}
	}
	return out, nil
}

// Chunk is one chunk of the initial copy.
type Chunk struct {
	Index uint32
	Data  []byte
}

// AppendChunk encodes a chunk: u32 index, u32 length, the data.
func AppendChunk(b []byte, c Chunk) []byte {
	b = binary.LittleEndian.AppendUint32(b, c.Index)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(c.Data)))
	return append(b, c.Data...)
}

// ParseChunk decodes one chunk for a disk of size bytes; its length must
// be the chunk's. Data aliases b.
func ParseChunk(b []byte, size int64) (Chunk, error) {
	if len(b) < 8 {
		return Chunk{}, fmt.Errorf("%w: chunk of %d bytes", ErrMalformed, len(b))
	}
	c := Chunk{Index: binary.LittleEndian.Uint32(b)}
	n := binary.LittleEndian.Uint32(b[4:])
	if int64(c.Index) >= int64(Chunks(size)) || int(n) != chunkLen(int(c.Index), size) || uint64(len(b)-8) != uint64(n) {
		return Chunk{}, fmt.Errorf("%w: chunk %d of %d bytes (record %d) for a disk of %d bytes", ErrMalformed, c.Index, n, len(b)-8, size)
	}
	c.Data = b[8:]
	return c, nil
}

// WriteChunk writes c to the copy w.
func WriteChunk(w io.WriterAt, c Chunk) error {
	if _, err := w.WriteAt(c.Data, int64(c.Index)*ChunkSize); err != nil {
		return fmt.Errorf("disk: write chunk %d: %w", c.Index, err)
	}
	return nil
}
