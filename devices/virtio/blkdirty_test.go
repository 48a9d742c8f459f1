package virtio

import (
	"bytes"
	"slices"
	"testing"
)

func TestTrackedBackendRecordsBlocks(t *testing.T) {
	// 3 blocks and a half: the last block is short.
	mem := &memBackend{data: make([]byte, 3*DiskBlockSize+512)}
	tb := NewTrackedBackend(mem)
	for _, w := range []struct {
		off int64
		n   int
	}{
		{0, 512},                   // block 0
		{DiskBlockSize - 1, 2},     // blocks 0 and 1
		{3 * DiskBlockSize, 512},   // block 3, the short one
		{DiskBlockSize + 100, 100}, // block 1 again
	} {
		if _, err := tb.WriteAt(bytes.Repeat([]byte{0xAB}, w.n), w.off); err != nil {
			t.Fatal(err)
		}
	}
	var got DiskWrites
	tb.Harvest(&got)
	if want := []uint64{0, 1, 3}; !slices.Equal(got.Blocks, want) || got.Flushed {
		t.Fatalf("harvest = %+v, want blocks %v and no flush", got, want)
	}
	// A new record starts empty; a flush is recorded.
	if err := tb.Flush(); err != nil {
		t.Fatal(err)
	}
	got = DiskWrites{}
	tb.Harvest(&got)
	if len(got.Blocks) != 0 || !got.Flushed || mem.flushes != 1 {
		t.Fatalf("harvest after a flush = %+v (backend flushes %d), want no blocks and the flush", got, mem.flushes)
	}
	got = DiskWrites{}
	tb.Harvest(&got)
	if got.Flushed {
		t.Fatal("a flush is reported by two harvests")
	}

	// Blocks read back with their current content; the last one short.
	buf := make([]byte, DiskBlockSize)
	n, err := tb.ReadBlock(3, buf)
	if err != nil || n != 512 || buf[0] != 0xAB {
		t.Fatalf("ReadBlock(3) = %d, %v, first byte %#x", n, err, buf[0])
	}
	if _, err := tb.ReadBlock(4, buf); err == nil {
		t.Fatal("ReadBlock past the end succeeded")
	}
}

func TestTrackedBackendRecordsFailedWrites(t *testing.T) {
	mem := &memBackend{data: make([]byte, 4*DiskBlockSize), failIO: true}
	tb := NewTrackedBackend(mem)
	if _, err := tb.WriteAt(make([]byte, 10), 2*DiskBlockSize); err == nil {
		t.Fatal("the injected error was lost")
	}
	var got DiskWrites
	tb.Harvest(&got)
	if !slices.Equal(got.Blocks, []uint64{2}) {
		t.Fatalf("a failed write, which may have changed its block, harvested as %v", got.Blocks)
	}
}

// A tracked disk behind a virtio-blk device records what the guest writes.
func TestTrackedBackendBehindTheDevice(t *testing.T) {
	mem := &memBackend{data: make([]byte, 16*DiskBlockSize)}
	tb := NewTrackedBackend(mem)
	d, _ := newMMIODriver(t, NewBlock(tb, "tracked"))
	d.setup(^uint64(0), 16)
	q := d.qs[0]
	blkRequest(q, blkTOut, 5*DiskBlockSize/SectorSize, bytes.Repeat([]byte{7}, 2*SectorSize), 0)
	d.write(RegQueueNotify, 0)
	if u := q.used(); len(u) != 1 {
		t.Fatalf("used = %+v", u)
	}
	var got DiskWrites
	tb.Harvest(&got)
	if !slices.Equal(got.Blocks, []uint64{5}) {
		t.Fatalf("the guest's write harvested as %v, want block 5", got.Blocks)
	}
}
