package persist

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tandemvm/tandem/replicate/disk"
)

// diskGuest is a guest with disks whose epochs write random blocks.
type diskGuest struct {
	*guest
	disks [][]byte
}

// writes writes a few random blocks of every disk for epoch e and
// returns them as the epoch's Writes.
func (g *diskGuest) writes(e uint64) []*disk.Writes {
	out := make([]*disk.Writes, len(g.disks))
	for i, d := range g.disks {
		w := &disk.Writes{}
		blocks := (len(d) + disk.BlockSize - 1) / disk.BlockSize
		var idx []uint64
		for range g.r.IntN(4) {
			idx = append(idx, g.r.Uint64N(uint64(blocks)))
		}
		slices.Sort(idx)
		for _, b := range slices.Compact(idx) {
			blk := d[b*disk.BlockSize : min(uint64(len(d)), (b+1)*disk.BlockSize)]
			for j := range blk {
				blk[j] = byte(e) ^ byte(g.r.Uint32())
			}
			w.Blocks = append(w.Blocks, disk.Block{Index: b, Data: slices.Clone(blk)})
		}
		out[i] = w
	}
	return out
}

func checkDisks(t *testing.T, rec *Recovered, want [][]byte) {
	t.Helper()
	if len(rec.Disks) != len(want) {
		t.Fatalf("%d disks recovered, want %d", len(rec.Disks), len(want))
	}
	for i, p := range rec.Disks {
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[i]) {
			t.Fatalf("disk %d of epoch %d differs", i, rec.Epoch)
		}
	}
}

// TestDisks: a VM's disks are copied in when the directory is made, and
// every epoch's blocks come back with its memory, across a checkpoint; a
// record torn in the middle of its disk blocks leaves the disks of the
// epoch before, exactly.
func TestDisks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm")
	vm := testVM
	vm.Disks = []int64{5*disk.BlockSize + 1000, 3 * disk.BlockSize}
	g := &diskGuest{guest: newGuest(9)}
	var srcs []*os.File
	for i, n := range vm.Disks {
		d := make([]byte, n)
		r := rand.NewChaCha8([32]byte{byte(i)})
		r.Read(d)
		g.disks = append(g.disks, d)
		p := filepath.Join(t.TempDir(), "src.img")
		if err := os.WriteFile(p, d, 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		srcs = append(srcs, f)
	}
	if _, err := Create(filepath.Join(t.TempDir(), "x"), vm, srcs[0]); err == nil {
		t.Fatal("Create with one disk of two succeeded")
	}
	d, err := Create(dir, vm, srcs...)
	if err != nil {
		t.Fatal(err)
	}
	for e := uint64(1); e <= 7; e++ {
		var w []*disk.Writes
		if e != 5 { // epoch 5 writes no disk
			w = g.writes(e)
		}
		if err := d.Append(e, g.epoch(e), g.mem, stateOf(e), w...); err != nil {
			t.Fatal(err)
		}
		if e == 3 {
			if err := d.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Epoch 7's blocks are in the log alone: Open replays them.
	d.Close()
	d, rec, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Epoch != 7 || !rec.VM.Equal(vm) {
		t.Fatalf("recovered epoch %d of %+v", rec.Epoch, rec.VM)
	}
	checkDisks(t, rec, g.disks)
	disks7 := [][]byte{slices.Clone(g.disks[0]), slices.Clone(g.disks[1])}

	// Bad writes are refused before anything is staged.
	for _, bad := range [][]*disk.Writes{
		{{}},
		{{Blocks: []disk.Block{{Index: 6, Data: make([]byte, disk.BlockSize)}}}, {}},
		{{Blocks: []disk.Block{{Index: 5, Data: make([]byte, disk.BlockSize)}}}, {}},
		{{}, {Blocks: []disk.Block{{Index: 1, Data: make([]byte, disk.BlockSize)}, {Index: 0, Data: make([]byte, disk.BlockSize)}}}},
	} {
		if err := d.Stage(8, nil, g.mem, nil, bad...); err == nil {
			t.Fatalf("Stage took %d disks' writes %+v", len(bad), bad)
		}
	}

	// Epoch 8 is torn inside its disk blocks: the power fails.
	pages, writes := g.epoch(8), g.writes(8)
	for len(writes[0].Blocks)+len(writes[1].Blocks) == 0 {
		writes = g.writes(8)
	}
	d.Tear = &Tear{Epoch: 8, Bytes: recordHeader + len(pages)*(8+PageSize) + 20, Then: func() {}}
	if err := d.Append(8, pages, g.mem, stateOf(8), writes...); err == nil {
		t.Fatal("the torn append succeeded")
	}
	d.Close()
	d, rec, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if rec.Epoch != 7 || rec.TornBytes == 0 {
		t.Fatalf("after the tear: epoch %d, %d torn bytes", rec.Epoch, rec.TornBytes)
	}
	checkDisks(t, rec, disks7)
}

// TestFormatOne: a directory of the first format is refused as not
// persisted by this build, saying so.
func TestFormatOne(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, vmFile), append([]byte("TNDMVM01"), make([]byte, 30)...), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Open(dir)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("older Tandem")) {
		t.Fatalf("Open: %v", err)
	}
}
