package vmm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseMemSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  string
	}{
		{"64M", 64 << 20, ""},
		{"1G", 1 << 30, ""},
		{"512MiB", 512 << 20, ""},
		{"2048k", 2 << 20, ""},
		{"1048576", 1 << 20, ""},
		{"3K", 0, "below the minimum"},
		{"0", 0, "below the minimum"},
		{"1048577", 0, "multiple of the 4 KiB page size"},
		{"2T", 0, "above the maximum"},
		{"99999999999999999999G", 0, "not a size"},
		{"lots", 0, "not a size"},
		{"", 0, "not a size"},
		{"-1M", 0, "not a size"},
	} {
		got, err := ParseMemSize(tc.in)
		if tc.err != "" {
			if err == nil || !errors.Is(err, ErrMemSize) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseMemSize(%q) = %d, %v; want an ErrMemSize saying %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseMemSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestLayoutSlots(t *testing.T) {
	small := layoutSlots(64 << 20)
	if len(small) != 1 || small[0].GPA != 0 || small[0].Size != 64<<20 {
		t.Errorf("64 MiB: %+v", small)
	}
	big := layoutSlots(5 << 30)
	if len(big) != 2 || big[0].Size != 3<<30 || big[1].GPA != 4<<30 || big[1].Size != 2<<30 || big[1].Offset != 3<<30 {
		t.Errorf("5 GiB: %+v", big)
	}
	if big[1].FirstPage() != (3<<30)/PageSize || big[1].Pages() != (2<<30)/PageSize {
		t.Errorf("5 GiB slot 1 pages: first %d, count %d", big[1].FirstPage(), big[1].Pages())
	}
}

func TestMemoryAccess(t *testing.T) {
	m, err := NewMemory(MemoryConfig{Bytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.WriteAt([]byte{1, 2, 3}, 4<<20-2); err == nil {
		t.Error("write across the end of RAM succeeded")
	}
	if _, err := m.ReadAt(make([]byte, 1), 5<<20); err == nil {
		t.Error("read beyond RAM succeeded")
	}
	if _, err := m.WriteAt([]byte("abc"), 0x1000); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 3)
	if _, err := m.ReadAt(buf, 0x1000); err != nil || string(buf) != "abc" {
		t.Errorf("read back %q, %v", buf, err)
	}
	d := NewDirtySet(m.Pages())
	m.takeVMMDirty(d)
	if pages := d.AppendPages(nil); len(pages) != 1 || pages[0] != 1 {
		t.Errorf("VMM-dirtied pages %v, want [1]", pages)
	}
}

func TestMemoryFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ram")
	m, err := NewMemory(MemoryConfig{Bytes: 2 << 20, File: path})
	if err != nil {
		t.Fatal(err)
	}
	copy(m.Bytes()[0x1234:], "persisted")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != 2<<20 || string(data[0x1234:0x1234+9]) != "persisted" {
		t.Errorf("file holds %d bytes, %q at 0x1234", len(data), data[0x1234:0x1234+9])
	}
	// A file larger than the RAM asked for is refused, not truncated.
	if _, err := NewMemory(MemoryConfig{Bytes: 1 << 20, File: path}); err == nil {
		t.Error("mapping a 2 MiB file as 1 MiB of RAM succeeded")
	}
	if _, err := NewMemory(MemoryConfig{Bytes: 1 << 20, File: t.TempDir()}); err == nil {
		t.Error("mapping a directory succeeded")
	}
}

func TestDirtySet(t *testing.T) {
	d := NewDirtySet(200)
	for _, p := range []uint64{0, 63, 64, 199} {
		d.Add(p)
	}
	d.orWords(130, []uint64{0b101}) // slot starting at page 130: pages 130, 132
	want := []uint64{0, 63, 64, 130, 132, 199}
	if got := d.AppendPages(nil); !equalPages(got, want) || d.Len() != len(want) {
		t.Errorf("pages %v (len %d), want %v", got, d.Len(), want)
	}
	d.Reset()
	if d.Len() != 0 {
		t.Error("Reset left pages")
	}
}
