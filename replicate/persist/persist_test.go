package persist

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

const testPages = 64

var testVM = VM{ID: 0x9E75, MemBytes: testPages * PageSize, VCPUs: 2, Guest: "test"}

// guest is guest RAM that a test dirties epoch by epoch.
type guest struct {
	mem []byte
	r   *rand.Rand
}

func newGuest(seed uint64) *guest {
	return &guest{mem: make([]byte, testVM.MemBytes), r: rand.New(rand.NewPCG(seed, 3))}
}

// epoch writes a few random pages and returns them, ascending.
func (g *guest) epoch(e uint64) []uint64 {
	var pages []uint64
	for range 1 + g.r.IntN(12) {
		p := g.r.Uint64N(testPages)
		for i := range PageSize / 8 {
			g.mem[p*PageSize+uint64(i)*8] = byte(e)
		}
		g.mem[p*PageSize+1] = byte(g.r.Uint32())
		pages = append(pages, p)
	}
	slices.Sort(pages)
	return slices.Compact(pages)
}

func stateOf(e uint64) []byte { return []byte(fmt.Sprintf("state of epoch %d", e)) }

// appendEpochs appends epochs from..to of g to d.
func appendEpochs(t *testing.T, d *Dir, g *guest, from, to uint64) {
	t.Helper()
	for e := from; e <= to; e++ {
		if err := d.Append(e, g.epoch(e), g.mem, stateOf(e)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkRecovered opens dir and checks it holds epoch e with memory mem.
func checkRecovered(t *testing.T, dir string, e uint64, mem []byte) (*Dir, *Recovered) {
	t.Helper()
	d, rec, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if rec.Epoch != e || !bytes.Equal(rec.State, stateOf(e)) || !rec.VM.Equal(testVM) {
		t.Fatalf("recovered epoch %d, state %q, VM %+v; want epoch %d", rec.Epoch, rec.State, rec.VM, e)
	}
	got, err := os.ReadFile(rec.Memory)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, mem) {
		t.Fatalf("recovered memory of epoch %d differs", e)
	}
	return d, rec
}

// TestRoundTrip: epochs appended, with a checkpoint among them, come
// back as the newest epoch's memory and state, and a recovered directory
// takes further epochs.
func TestRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm")
	g := newGuest(1)
	d, err := Create(dir, testVM)
	if err != nil {
		t.Fatal(err)
	}
	appendEpochs(t, d, g, 1, 3)
	if err := d.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	small := d.LogBytes()
	appendEpochs(t, d, g, 5, 7) // epochs need not be consecutive
	if d.Epoch() != 7 || d.LogBytes() <= small {
		t.Fatalf("epoch %d, log %d bytes after the checkpoint's %d", d.Epoch(), d.LogBytes(), small)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d, rec := checkRecovered(t, dir, 7, g.mem)
	if rec.Records != 4 || rec.TornBytes != 0 {
		t.Errorf("%d records replayed, %d torn bytes; want the checkpoint's and 3 more", rec.Records, rec.TornBytes)
	}
	if err := d.Append(7, nil, g.mem, nil); err == nil {
		t.Error("an epoch not newer than the last was taken")
	}
	appendEpochs(t, d, g, 8, 9)
	d.Close()
	d, _ = checkRecovered(t, dir, 9, g.mem)
	d.Close()
}

// files is a persisted VM's directory's content.
type files map[string][]byte

func readFiles(t testing.TB, dir string) files {
	t.Helper()
	f := files{}
	for _, n := range []string{vmFile, memoryFile, logFile} {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		f[n] = b
	}
	return f
}

func (f files) write(t *testing.T, dir string) {
	t.Helper()
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for n, b := range f {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTornLastRecord: a power cut while epoch 5's record is written,
// after any of its bytes, leaves epoch 4 exactly (its memory file was
// not written yet: Append writes pages only once the record is durable),
// and epoch 5 once the record is whole; the recovered directory cuts the
// torn bytes and takes epoch 5 again.
func TestTornLastRecord(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm")
	g := newGuest(2)
	d, err := Create(dir, testVM)
	if err != nil {
		t.Fatal(err)
	}
	appendEpochs(t, d, g, 1, 4)
	d.Close()
	before, mem4 := readFiles(t, dir), slices.Clone(g.mem)
	d, _, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	pages := g.epoch(5)
	if err := d.Append(5, pages, g.mem, stateOf(5)); err != nil {
		t.Fatal(err)
	}
	d.Close()
	record := readFiles(t, dir)[logFile][len(before[logFile]):]
	var cuts []int
	for c := 0; c < recordHeader+2; c++ {
		cuts = append(cuts, c)
	}
	for c := recordHeader + 2; c < len(record); c += 509 {
		cuts = append(cuts, c)
	}
	cuts = append(cuts, len(record)-1, len(record))
	for _, cut := range cuts {
		torn := files{vmFile: before[vmFile], memoryFile: before[memoryFile], logFile: append(slices.Clone(before[logFile]), record[:cut]...)}
		torn.write(t, dir)
		if cut == len(record) {
			d, _ := checkRecovered(t, dir, 5, g.mem)
			d.Close()
			continue
		}
		d, rec := checkRecovered(t, dir, 4, mem4)
		if rec.TornBytes != int64(cut) {
			t.Fatalf("cut at %d: %d torn bytes reported", cut, rec.TornBytes)
		}
		if err := d.Append(5, pages, g.mem, stateOf(5)); err != nil {
			t.Fatal(err)
		}
		d.Close()
		d, _ = checkRecovered(t, dir, 5, g.mem)
		d.Close()
	}
}

// TestDamage: a damaged byte in the last record is a tear (the epoch
// before it is recovered); anywhere before it, with whole records after,
// it is damage, refused rather than losing acknowledged epochs.
func TestDamage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm")
	g := newGuest(3)
	d, err := Create(dir, testVM)
	if err != nil {
		t.Fatal(err)
	}
	var ends []int // where each record ends in the log
	for e := uint64(1); e <= 4; e++ {
		appendEpochs(t, d, g, e, e)
		ends = append(ends, int(d.LogBytes()))
	}
	d.Close()
	good := readFiles(t, dir)
	flip := func(off int) files {
		f := files{vmFile: good[vmFile], memoryFile: good[memoryFile], logFile: slices.Clone(good[logFile])}
		f[logFile][off] ^= 0x40
		return f
	}
	for _, tt := range []struct {
		name string
		off  int
	}{
		{"second record's header", ends[0] + 9},
		{"second record's body", ends[0] + recordHeader + 100},
		{"third record's state", ends[2] - 2},
		{"log header", 3},
	} {
		flip(tt.off).write(t, dir)
		if _, _, err := Open(dir); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s damaged: %v, want ErrCorrupt", tt.name, err)
		}
	}
	// Damage in the last record cannot be told from a tear: the epoch
	// before it is recovered, exactly (the memory file never holds the
	// last record's pages).
	cut := files{vmFile: good[vmFile], memoryFile: good[memoryFile], logFile: good[logFile][:ends[2]]}
	cut.write(t, dir)
	d, _, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	mem3, err := os.ReadFile(filepath.Join(dir, memoryFile))
	if err != nil {
		t.Fatal(err)
	}
	flip(ends[3]-5).write(t, dir)
	d, rec := checkRecovered(t, dir, 3, mem3)
	d.Close()
	if rec.TornBytes != int64(ends[3]-ends[2]) {
		t.Fatalf("last record damaged: %d torn bytes, want its %d", rec.TornBytes, ends[3]-ends[2])
	}
}

// TestNotPersisted: what is not a persisted VM, or not one that can be
// trusted, is refused with what is wrong; Create refuses a directory
// with files in it.
func TestNotPersisted(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "vm")
	g := newGuest(4)
	d, err := Create(dir, testVM)
	if err != nil {
		t.Fatal(err)
	}
	appendEpochs(t, d, g, 1, 2)
	d.Close()
	good := readFiles(t, dir)
	if _, err := Create(dir, testVM); !errors.Is(err, ErrExists) {
		t.Errorf("Create over a persisted VM: %v, want ErrExists", err)
	}
	mutate := func(f func(files)) files {
		c := files{}
		for n, b := range good {
			c[n] = slices.Clone(b)
		}
		f(c)
		return c
	}
	for _, tt := range []struct {
		name  string
		files files
		want  error
	}{
		{"empty directory", files{}, ErrNotPersisted},
		{"someone else's files", files{"notes.txt": []byte("hello")}, ErrNotPersisted},
		{"another format", mutate(func(f files) { f[vmFile][7] = '9' }), ErrNotPersisted},
		{"description damaged", mutate(func(f files) { f[vmFile][20] ^= 1 }), ErrCorrupt},
		{"description cut", mutate(func(f files) { f[vmFile] = f[vmFile][:20] }), ErrCorrupt},
		{"memory file of another size", mutate(func(f files) { f[memoryFile] = f[memoryFile][:PageSize] }), ErrCorrupt},
		{"no memory file", mutate(func(f files) { delete(f, memoryFile) }), ErrCorrupt},
		{"another VM's log", mutate(func(f files) { copy(f[logFile], logHeaderBytes(7)) }), ErrCorrupt},
		{"no log", mutate(func(f files) { delete(f, logFile) }), ErrCorrupt},
		{"log without a whole epoch", mutate(func(f files) { f[logFile] = f[logFile][:logHeader+10] }), ErrNotPersisted},
	} {
		tt.files.write(t, dir)
		if _, _, err := Open(dir); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, _, err := Open(filepath.Join(root, "missing")); !errors.Is(err, ErrNotPersisted) {
		t.Errorf("missing directory: %v, want ErrNotPersisted", err)
	}
}

// TestCheckpointCutShort: a checkpoint cut before its rename leaves the
// old log in force and a temporary file, which Open removes.
func TestCheckpointCutShort(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vm")
	g := newGuest(5)
	d, err := Create(dir, testVM)
	if err != nil {
		t.Fatal(err)
	}
	appendEpochs(t, d, g, 1, 3)
	d.Close()
	if err := os.WriteFile(filepath.Join(dir, logFile+tmpSuffix), logHeaderBytes(testVM.ID)[:7], 0o600); err != nil {
		t.Fatal(err)
	}
	d, _ = checkRecovered(t, dir, 3, g.mem)
	d.Close()
	if _, err := os.Stat(filepath.Join(dir, logFile+tmpSuffix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cut checkpoint's file is still there: %v", err)
	}
}

// FuzzOpen: no log makes Open panic; what it recovers has an epoch.
func FuzzOpen(f *testing.F) {
	dir := filepath.Join(f.TempDir(), "seed")
	g := newGuest(6)
	d, err := Create(dir, testVM)
	if err != nil {
		f.Fatal(err)
	}
	for e := uint64(1); e <= 2; e++ {
		if err := d.Append(e, g.epoch(e), g.mem, stateOf(e)); err != nil {
			f.Fatal(err)
		}
	}
	d.Close()
	seed := readFiles(f, dir)
	f.Add(seed[logFile][logHeader:])
	f.Fuzz(func(t *testing.T, records []byte) {
		fz := filepath.Join(t.TempDir(), "vm")
		files{vmFile: seed[vmFile], memoryFile: make([]byte, testVM.MemBytes), logFile: append(logHeaderBytes(testVM.ID), records...)}.write(t, fz)
		d, rec, err := Open(fz)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNotPersisted) {
				t.Fatalf("error %v is neither ErrCorrupt nor ErrNotPersisted", err)
			}
			return
		}
		d.Close()
		if rec.Epoch == 0 {
			t.Fatal("recovered epoch 0")
		}
	})
}

// TestWriteDelay: every byte written to the log and the memory file
// passes through WriteDelay (the emulation of slow persistent memory).
func TestWriteDelay(t *testing.T) {
	d, err := Create(filepath.Join(t.TempDir(), "vm"), testVM)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var delayed int
	d.WriteDelay = func(n int) { delayed += n }
	mem := make([]byte, testVM.MemBytes)
	before := d.LogBytes()
	if err := d.Append(1, []uint64{1, 2, 7}, mem, []byte("s1")); err != nil {
		t.Fatal(err)
	}
	if err := d.Append(2, []uint64{3}, mem, []byte("s2")); err != nil {
		t.Fatal(err)
	}
	// Both records, and epoch 1's three pages (applied once epoch 2 was
	// durable).
	if want := int(d.LogBytes()-before) + 3*PageSize; delayed != want {
		t.Fatalf("%d bytes delayed, want %d", delayed, want)
	}
}
