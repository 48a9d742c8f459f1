package disk

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// testDisk writes a sparse disk of size bytes with the given chunks
// filled with their fill byte.
func testDisk(t *testing.T, size int64, fill map[int]byte) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, b := range fill {
		if _, err := f.WriteAt(bytes.Repeat([]byte{b}, chunkLen(i, size)), int64(i)*ChunkSize); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// TestInitialCopySendsOnlyWhatDiffers runs the initial copy between two
// disks, step by step: hash both, diff, move the differing chunks, and
// the copy then hashes as the primary does.
func TestInitialCopySendsOnlyWhatDiffers(t *testing.T) {
	const size = 10*ChunkSize + 1000 // a short last chunk
	primary := testDisk(t, size, map[int]byte{0: 1, 3: 3, 7: 7, 10: 10})
	copyDisk := testDisk(t, size, map[int]byte{0: 1, 3: 9, 5: 5, 10: 10})
	var progress []int
	ph, err := Hashes(primary, size, func(done, total int) {
		if total != 11 {
			t.Errorf("progress total %d, want 11 chunks", total)
		}
		progress = append(progress, done)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(progress) != 11 || progress[10] != 11 {
		t.Errorf("progress %v", progress)
	}
	if ph[1] != ZeroHash || ph[0] == ZeroHash {
		t.Error("a hole does not hash as ZeroHash, or data does")
	}
	// The lists cross the wire.
	ph, err = ParseHashes(AppendHashes(nil, ph), size)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := Hashes(copyDisk, size, nil)
	if err != nil {
		t.Fatal(err)
	}
	want, err := Diff(ph, ch)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(want, []uint32{3, 5, 7}) {
		t.Fatalf("differing chunks %v, want 3, 5, 7", want)
	}
	if want, err = ParseIndices(AppendIndices(nil, want), size); err != nil {
		t.Fatal(err)
	}
	for _, i := range want {
		data := make([]byte, chunkLen(int(i), size))
		primary.ReadAt(data, int64(i)*ChunkSize)
		c, err := ParseChunk(AppendChunk(nil, Chunk{Index: i, Data: data}), size)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteChunk(copyDisk, c); err != nil {
			t.Fatal(err)
		}
	}
	after, _ := Hashes(copyDisk, size, nil)
	if d, _ := Diff(ph, after); len(d) != 0 {
		t.Errorf("chunks %v still differ after the copy", d)
	}
	if _, err := Diff(ph, after[:5]); err == nil {
		t.Error("hash lists of different disks compared")
	}
	if err := CheckSize("vda", size, size+1); err == nil {
		t.Error("a copy of another size accepted")
	}
}

func TestWritesRoundTripAndApply(t *testing.T) {
	const size = 3*BlockSize + 100
	w := &Writes{Flushed: true, Blocks: []Block{
		{0, bytes.Repeat([]byte{1}, BlockSize)},
		{3, bytes.Repeat([]byte{3}, 100)},
	}}
	enc := AppendWrites(nil, w)
	enc = append(enc, "next"...)
	got, rest, err := ParseWrites(enc, size)
	if err != nil || string(rest) != "next" || !got.Flushed || len(got.Blocks) != 2 || got.Bytes() != BlockSize+100 {
		t.Fatalf("ParseWrites = %+v, %q, %v", got, rest, err)
	}
	f := testDisk(t, size, nil)
	if err := Apply(f, got); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	f.ReadAt(b, 0)
	if b[0] != 1 || b[BlockSize] != 0 || b[3*BlockSize+99] != 3 {
		t.Error("the blocks did not land where they belong")
	}
}

func TestDecodersRefuseMalformedRecords(t *testing.T) {
	const size = 4 * ChunkSize
	blk := func(idx uint64, n int) Block { return Block{idx, make([]byte, n)} }
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"hashes: short", func() error { _, err := ParseHashes([]byte{1}, size); return err }()},
		{"hashes: wrong count", func() error { _, err := ParseHashes(AppendHashes(nil, make([]Hash, 3)), size); return err }()},
		{"hashes: huge count", func() error { _, err := ParseHashes([]byte{0xff, 0xff, 0xff, 0xff}, size); return err }()},
		{"indices: out of range", func() error { _, err := ParseIndices(AppendIndices(nil, []uint32{4}), size); return err }()},
		{"indices: repeated", func() error { _, err := ParseIndices(AppendIndices(nil, []uint32{1, 1}), size); return err }()},
		{"indices: truncated", func() error { _, err := ParseIndices([]byte{2, 0, 0, 0, 1}, size); return err }()},
		{"chunk: out of range", func() error {
			_, err := ParseChunk(AppendChunk(nil, Chunk{9, make([]byte, ChunkSize)}), size)
			return err
		}()},
		{"chunk: wrong length", func() error { _, err := ParseChunk(AppendChunk(nil, Chunk{0, make([]byte, 10)}), size); return err }()},
		{"chunk: truncated", func() error {
			_, err := ParseChunk(AppendChunk(nil, Chunk{0, make([]byte, ChunkSize)})[:100], size)
			return err
		}()},
		{"writes: bad flag", func() error { _, _, err := ParseWrites([]byte{7, 0, 0, 0, 0}, size); return err }()},
		{"writes: block past the end", func() error {
			_, _, err := ParseWrites(AppendWrites(nil, &Writes{Blocks: []Block{blk(size/BlockSize, BlockSize)}}), size)
			return err
		}()},
		{"writes: out of order", func() error {
			_, _, err := ParseWrites(AppendWrites(nil, &Writes{Blocks: []Block{blk(2, BlockSize), blk(1, BlockSize)}}), size)
			return err
		}()},
		{"writes: short block", func() error {
			_, _, err := ParseWrites(AppendWrites(nil, &Writes{Blocks: []Block{blk(0, 10)}}), size)
			return err
		}()},
		{"writes: huge count", func() error { _, _, err := ParseWrites([]byte{0, 0xff, 0xff, 0xff, 0xff}, size); return err }()},
	} {
		if !errors.Is(tc.err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", tc.name, tc.err)
		}
	}
}

// FuzzDecoders: no record a peer sends makes a decoder panic or accept
// something outside the disk.
func FuzzDecoders(f *testing.F) {
	const size = 5*ChunkSize + 512
	f.Add(AppendHashes(nil, make([]Hash, Chunks(size))))
	f.Add(AppendIndices(nil, []uint32{0, 2}))
	f.Add(AppendChunk(nil, Chunk{5, make([]byte, 512)}))
	f.Add(AppendWrites(nil, &Writes{Flushed: true, Blocks: []Block{{0, make([]byte, BlockSize)}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseHashes(b, size)
		if idx, err := ParseIndices(b, size); err == nil {
			for _, i := range idx {
				if int(i) >= Chunks(size) {
					t.Fatalf("index %d accepted", i)
				}
			}
		}
		if c, err := ParseChunk(b, size); err == nil && int64(c.Index)*ChunkSize+int64(len(c.Data)) > size {
			t.Fatalf("chunk %d of %d bytes accepted past the end", c.Index, len(c.Data))
		}
		if w, _, err := ParseWrites(b, size); err == nil {
			for _, blk := range w.Blocks {
				if int64(blk.Index)*BlockSize+int64(len(blk.Data)) > size {
					t.Fatalf("block %d accepted past the end", blk.Index)
				}
			}
		}
	})
}
