package replicadir

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func mustOpen(t *testing.T, path string) (*Dir, *Contents) {
	t.Helper()
	d, c, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, c
}

func records(t *testing.T, c *Contents) []string {
	t.Helper()
	var out []string
	for _, r := range c.Records {
		out = append(out, fmt.Sprintf("%d:%s", r.Kind, r.Body))
	}
	return out
}

// TestAppendReopen: records come back in order, whole, after a close
// without a checkpoint; a new directory is empty.
func TestAppendReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	d, c := mustOpen(t, path)
	if !c.Empty() {
		t.Fatalf("a new directory holds %+v", c)
	}
	for i := range 5 {
		if err := d.Append(uint32(i), []byte("rec"), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	_, c = mustOpen(t, path)
	if got := fmt.Sprint(records(t, c)); got != "[0:rec0 1:rec1 2:rec2 3:rec3 4:rec4]" || c.TornBytes != 0 || c.Snapshot != nil {
		t.Fatalf("reopened: %s, torn %d", got, c.TornBytes)
	}
}

// TestLocked: a second process (or Open) cannot use an open directory.
func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	mustOpen(t, path)
	if _, _, err := Open(path); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: %v", err)
	}
}

// TestTornTail: a record cut anywhere, or with its last bytes garbled, is
// cut off with what follows; the records before it stay.
func TestTornTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	d, _ := mustOpen(t, path)
	d.Append(1, []byte("first"))
	d.Append(2, bytes.Repeat([]byte("x"), 100))
	d.Sync()
	d.Close()
	log := filepath.Join(path, "log-0")
	whole, _ := os.ReadFile(log)
	for cut := len(whole) - 1; cut > len(whole)-120; cut -= 7 {
		os.WriteFile(log, whole[:cut], 0o600)
		d, c, err := Open(path)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if got := fmt.Sprint(records(t, c)); got != "[1:first]" || c.TornBytes != int64(cut-(fileHeader+recordHeader+5)) {
			t.Fatalf("cut at %d: %s, torn %d", cut, got, c.TornBytes)
		}
		d.Close()
	}
	garbled := bytes.Clone(whole)
	garbled[len(garbled)-3] ^= 0xff
	os.WriteFile(log, garbled, 0o600)
	_, c := mustOpen(t, path)
	if got := fmt.Sprint(records(t, c)); got != "[1:first]" {
		t.Fatalf("garbled last record: %s", got)
	}
}

// TestDamage: a damaged record before a whole one is refused: the whole
// one was durable, so cutting there would lose it.
func TestDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	d, _ := mustOpen(t, path)
	d.Append(1, []byte("first"))
	d.Append(2, []byte("second"))
	d.Sync()
	d.Close()
	log := filepath.Join(path, "log-0")
	b, _ := os.ReadFile(log)
	b[fileHeader+recordHeader+1] ^= 0xff // the first record's body
	os.WriteFile(log, b, 0o600)
	if _, _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open: %v", err)
	}
}

// TestCheckpoint: the snapshot comes back whole with the records appended
// after it, and the older files go; a damaged snapshot is refused.
func TestCheckpoint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r")
	d, _ := mustOpen(t, path)
	d.Append(1, []byte("before"))
	snap := bytes.Repeat([]byte("snapshot"), 1<<16)
	if err := d.Checkpoint(int64(len(snap)), func(w io.Writer) error { _, err := w.Write(snap); return err }); err != nil {
		t.Fatal(err)
	}
	if d.LogBytes() != fileHeader {
		t.Fatalf("log of %d bytes after a checkpoint", d.LogBytes())
	}
	d.Append(2, []byte("after"))
	d.Sync()
	if err := d.Checkpoint(3, func(w io.Writer) error { _, err := w.Write([]byte("ab")); return err }); err == nil {
		t.Fatal("a snapshot shorter than announced was accepted")
	}
	d.Close()
	d, c := mustOpen(t, path)
	got, err := io.ReadAll(c.Snapshot)
	if err != nil || !bytes.Equal(got, snap) || c.SnapshotBytes != int64(len(snap)) {
		t.Fatalf("snapshot: %d bytes, %v", len(got), err)
	}
	if r := fmt.Sprint(records(t, c)); r != "[2:after]" {
		t.Fatalf("records after the checkpoint: %s", r)
	}
	if _, err := os.Stat(filepath.Join(path, "log-0")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the old log stays: %v", err)
	}
	d.Close()
	s := filepath.Join(path, "snap-1")
	b, _ := os.ReadFile(s)
	b[100] ^= 1
	os.WriteFile(s, b, 0o600)
	if _, _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a damaged snapshot: %v", err)
	}
}

// TestForeign: a directory holding something else is refused, untouched.
func TestForeign(t *testing.T) {
	path := t.TempDir()
	os.WriteFile(filepath.Join(path, "precious"), []byte("data"), 0o600)
	if _, _, err := Open(path); !errors.Is(err, ErrForeign) {
		t.Fatalf("Open: %v", err)
	}
	os.WriteFile(filepath.Join(path, "current"), []byte("something else entirely"), 0o600)
	if _, _, err := Open(path); !errors.Is(err, ErrForeign) {
		t.Fatalf("Open with a foreign current: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(path, "precious")); string(b) != "data" {
		t.Fatal("Open touched what was there")
	}
}
