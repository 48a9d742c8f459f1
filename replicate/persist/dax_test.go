package persist

import (
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestMappedLog runs the log's mapped path (dax.go) without MAP_SYNC, as
// this machine has no DAX file system: records written through the
// mapping and flushed come back, with and without a checkpoint; a record
// torn in the mapping is cut off; the log's zero tail, allocated ahead, is
// no tear; and the directory continues with the log written as a file
// (another host, no persistent memory).
func TestMappedLog(t *testing.T) {
	if flushKind == "" {
		t.Skipf("no cache-line flush on %s", runtime.GOARCH)
	}
	mapWithoutSync = true
	defer func() { mapWithoutSync = false }()
	dir := filepath.Join(t.TempDir(), "vm")
	d, err := Create(dir, testVM)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(d.DAX(), "mapped without MAP_SYNC") {
		t.Fatalf("DAX() = %q", d.DAX())
	}
	g := newGuest(7)
	appendEpochs(t, d, g, 1, 10)
	if err := d.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	appendEpochs(t, d, g, 11, 20)
	saved := slices.Clone(g.mem)
	// A power cut halfway through epoch 21's record.
	d.Tear = &Tear{Epoch: 21, Bytes: 3000, Then: func() {}}
	if err := d.Append(21, g.epoch(21), g.mem, stateOf(21)); err == nil {
		t.Fatal("the torn append succeeded")
	}
	d.Close()
	if fi, err := os.Stat(filepath.Join(dir, logFile)); err != nil || fi.Size() < logChunk {
		t.Fatalf("the mapped log was not allocated ahead: %v, %v", fi.Size(), err)
	}
	d, rec := checkRecovered(t, dir, 20, saved)
	if rec.TornBytes <= 0 || rec.TornBytes > 3000 { // up to its last non-zero byte
		t.Fatalf("torn bytes %d, want up to 3000", rec.TornBytes)
	}
	g.mem = slices.Clone(saved)
	appendEpochs(t, d, g, 21, 30)
	d.Close()
	d, rec = checkRecovered(t, dir, 30, g.mem)
	if rec.TornBytes != 0 {
		t.Fatalf("the allocated tail counted as %d torn bytes", rec.TornBytes)
	}
	d.Close()

	// Another host: the log is a file again, appended after the records.
	mapWithoutSync = false
	d, _ = checkRecovered(t, dir, 30, g.mem)
	defer d.Close()
	appendEpochs(t, d, g, 31, 35)
	d.Close()
	d, _ = checkRecovered(t, dir, 35, g.mem)
	d.Close()
}

// TestFlushCache: the flush runs over any range, unaligned too.
func TestFlushCache(t *testing.T) {
	if runtime.GOARCH == "amd64" && !slices.Contains([]string{"clwb", "clflushopt", "clflush"}, flushKind) {
		t.Fatalf("flush kind %q on amd64", flushKind)
	}
	b := make([]byte, 10000)
	for _, r := range [][2]int{{0, 1}, {3, 70}, {63, 65}, {100, 10000}} {
		flushCache(b[r[0]:r[1]])
	}
	flushCache(nil)
}

// TestDAXOnPersistentMemory is the test that needs persistent memory: a
// DAX file system (an fsdax namespace of an NVDIMM, or memmap=4G!12G on
// the kernel command line, mkfs.ext4 /dev/pmem0, mount -o dax) at
// TANDEM_PMEM_DIR. There the log must be mapped with MAP_SYNC and round
// trip. Without one it skips, unless TANDEM_REQUIRE_PMEM=1.
//
//	TANDEM_PMEM_DIR=/mnt/pmem TANDEM_REQUIRE_PMEM=1 go test ./replicate/persist -run DAX -v
func TestDAXOnPersistentMemory(t *testing.T) {
	root := os.Getenv("TANDEM_PMEM_DIR")
	if root == "" {
		if os.Getenv("TANDEM_REQUIRE_PMEM") == "1" {
			t.Fatal("TANDEM_REQUIRE_PMEM=1 and no TANDEM_PMEM_DIR")
		}
		t.Skip("needs a DAX file system at TANDEM_PMEM_DIR (see the comment)")
	}
	dir, err := os.MkdirTemp(root, "tandem-persist-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	dir = filepath.Join(dir, "vm")
	d, err := Create(dir, testVM)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(d.DAX(), "MAP_SYNC") {
		t.Fatalf("%s is not mapped with MAP_SYNC (DAX() = %q): is it mounted -o dax?", root, d.DAX())
	}
	t.Logf("log on persistent memory: %s", d.DAX())
	g := newGuest(8)
	appendEpochs(t, d, g, 1, 100)
	d.Close()
	d, _ = checkRecovered(t, dir, 100, g.mem)
	d.Close()
}
