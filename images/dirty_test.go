package images

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"
)

const testMem = 64 << 20 // 16384 pages

func TestPattern(t *testing.T) {
	for s, want := range map[string]Pattern{
		"sequential": PatternSequential, "seq": PatternSequential,
		"random": PatternRandom, "scattered": PatternScattered,
	} {
		got, err := ParsePattern(s)
		if err != nil || got != want {
			t.Errorf("ParsePattern(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
	if _, err := ParsePattern("zigzag"); err == nil || !strings.Contains(err.Error(), "zigzag") {
		t.Errorf("ParsePattern(zigzag) error = %v", err)
	}
	for p, want := range map[Pattern]string{
		PatternSequential: "sequential", PatternRandom: "random",
		PatternScattered: "scattered", Pattern(7): "Pattern(7)",
	} {
		if got := p.String(); got != want {
			t.Errorf("Pattern(%d).String() = %q, want %q", int(p), got, want)
		}
	}
}

func TestParseDirtyParamsDefaults(t *testing.T) {
	p, err := ParseDirtyParams("", testMem, 2)
	if err != nil {
		t.Fatal(err)
	}
	want := DirtyParams{Pattern: PatternSequential, FirstPage: 1024, Pages: 16384 - 1024, Seed: 1}
	if p != want {
		t.Fatalf("defaults = %+v, want %+v", p, want)
	}
	if p != DefaultDirtyParams(testMem) {
		t.Fatalf("ParseDirtyParams(\"\") = %+v, DefaultDirtyParams = %+v", p, DefaultDirtyParams(testMem))
	}
	if got, want := p.Args(), []uint64{0, 1024, 15360, 0, 0, 1, 0, 0, 0}; !slices.Equal(got, want) {
		t.Fatalf("Args() = %v, want %v", got, want)
	}
}

func TestParseDirtyParams(t *testing.T) {
	for spec, want := range map[string]DirtyParams{
		"pattern=random,pages=100,count=30,seed=0,rate=5000,passes=3": {
			Pattern: PatternRandom, FirstPage: 1024, Pages: 100, Count: 30, Rate: 5000, Passes: 3},
		"pattern=seq,first=2048": {FirstPage: 2048, Pages: 16384 - 2048, Seed: 1},
		"pattern=scattered,first=0x400,pages=0x10,seed=42": {
			Pattern: PatternScattered, FirstPage: 1024, Pages: 16, Seed: 42},
		"ring=3,bytes=4096": {FirstPage: 1024, Pages: 16384 - 1024, Seed: 1, Ring: 3, Bytes: 4096},
		"ring=0,bytes=64":   {FirstPage: 1024, Pages: 16384 - 1024, Seed: 1, Bytes: 64},
	} {
		got, err := ParseDirtyParams(spec, testMem, 2)
		if err != nil || got != want {
			t.Errorf("ParseDirtyParams(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
}

func TestParseDirtyParamsImageEnd(t *testing.T) {
	// The lowest page the region may start at is the one after the image.
	lowest := dirtyImageEnd() / pageSize
	if lowest <= 256 || lowest > 1024 {
		t.Fatalf("dirty image ends at page %d, want 257..1024", lowest)
	}
	spec := fmt.Sprintf("first=%d", lowest)
	if _, err := ParseDirtyParams(spec, testMem, 1); err != nil {
		t.Errorf("ParseDirtyParams(%q): %v", spec, err)
	}
	spec = fmt.Sprintf("first=%d", lowest-1)
	if _, err := ParseDirtyParams(spec, testMem, 1); err == nil {
		t.Errorf("ParseDirtyParams(%q) accepted a region overlapping the image", spec)
	}
	// In ring 3 the page tables follow the image: a PML4, a PDPT and one
	// page directory per GiB (64 MiB: one).
	if got := UserTablePages(testMem); got != 3 {
		t.Errorf("UserTablePages(64 MiB) = %d, want 3", got)
	}
	if got := UserTablePages(3<<30 + 1); got != 6 {
		t.Errorf("UserTablePages(3 GiB + 1) = %d, want 6", got)
	}
	spec = fmt.Sprintf("ring=3,first=%d", lowest+3)
	if _, err := ParseDirtyParams(spec, testMem, 1); err != nil {
		t.Errorf("ParseDirtyParams(%q): %v", spec, err)
	}
	spec = fmt.Sprintf("ring=3,first=%d", lowest+2)
	if _, err := ParseDirtyParams(spec, testMem, 1); err == nil || !strings.Contains(err.Error(), "ring-3 page tables") {
		t.Errorf("ParseDirtyParams(%q) = %v, want the region refused for overlapping the page tables", spec, err)
	}
}

func TestParseDirtyParamsErrors(t *testing.T) {
	for _, c := range []struct {
		spec  string
		mem   uint64
		vcpus int
		want  string
	}{
		{"pattern=zigzag", testMem, 1, "pattern=zigzag: want sequential, random or scattered"},
		{"speed=3", testMem, 1, `unknown key "speed"`},
		{"pages=ten", testMem, 1, "pages=ten: not an unsigned integer"},
		{"rate=-1", testMem, 1, "rate=-1: not an unsigned integer"},
		{"passes=1,passes=2", testMem, 1, "passes given twice"},
		{"first=100", testMem, 1, "first=100: the region must start at or above page"},
		{"first=16384", testMem, 1, "first=16384: beyond the end of RAM"},
		{"pages=0", testMem, 1, "pages: the region is empty"},
		{"pages=15361", testMem, 1, "pages=15361: the region [1024, 16385) ends beyond RAM"},
		{"first=16383,pages=1", testMem, 2, "pages=1: fewer pages than the 2 vCPUs"},
		{"count=5", testMem, 1, "count=5: only the random pattern takes a count"},
		{"ring=1", testMem, 1, "ring=1: want 0 or 3"},
		{"bytes=12", testMem, 1, "bytes=12: want a multiple of 8 up to 4096"},
		{"bytes=4104", testMem, 1, "bytes=4104: want a multiple of 8 up to 4096"},
		{"", 4 << 20, 1, "first=1024: beyond the end of RAM"},
		{"", testMem, 0, "0 vCPUs"},
		{"", testMem, 33, "33 vCPUs"},
	} {
		_, err := ParseDirtyParams(c.spec, c.mem, c.vcpus)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseDirtyParams(%q, %d, %d) error = %v, want one containing %q",
				c.spec, c.mem, c.vcpus, err, c.want)
		}
	}
}

// part returns vCPU i's share of the region, as the guest computes it.
func part(p DirtyParams, i, n uint64) (first, end uint64) {
	return p.FirstPage + i*p.Pages/n, p.FirstPage + (i+1)*p.Pages/n
}

func TestPassPagesSequential(t *testing.T) {
	p := DirtyParams{Pattern: PatternSequential, FirstPage: 1000, Pages: 37, Seed: 1}
	var want []uint64
	for page := uint64(1000); page < 1037; page++ {
		want = append(want, page)
	}
	for vcpus := 1; vcpus <= 5; vcpus++ {
		if got := p.PassPages(vcpus); !slices.Equal(got, want) {
			t.Errorf("vcpus=%d: PassPages = %v, want the whole region %v", vcpus, got, want)
		}
	}
	if got := p.PassPages(0); got != nil {
		t.Errorf("PassPages(0) = %v, want nil", got)
	}
}

func TestXorshift64(t *testing.T) {
	// Marsaglia's xorshift64 (13, 7, 17) from state 1.
	x := xorshift64(1)
	if x != 0x40822041 {
		t.Fatalf("xorshift64(1) = %#x, want 0x40822041", x)
	}
	if x = xorshift64(x); x != 0x100041060c011441 {
		t.Fatalf("second step = %#x, want 0x100041060c011441", x)
	}
}

func TestPassPagesRandom(t *testing.T) {
	// Hand-checked: seed 1 draws 0x40822041 first; 0x40822041 % 1000 = 761.
	p := DirtyParams{Pattern: PatternRandom, FirstPage: 5000, Pages: 1000, Seed: 1, Count: 1}
	if got := p.PassPages(1); !slices.Equal(got, []uint64{5761}) {
		t.Fatalf("one draw = %v, want [5761]", got)
	}
	// With two vCPUs a count of 1 goes to vCPU 1 (count split like the region).
	p.Count = 1
	if got := p.PassPages(2); len(got) != 1 || got[0] < 5500 || got[0] >= 6000 {
		t.Fatalf("count 1 on 2 vCPUs = %v, want one page in vCPU 1's half", got)
	}

	for _, c := range []struct {
		pages, count uint64
		vcpus        int
	}{{10, 3, 1}, {100, 0, 1}, {100, 50, 2}, {1000, 5000, 3}, {7, 0, 4}} {
		p := DirtyParams{Pattern: PatternRandom, FirstPage: 2000, Pages: c.pages, Seed: 3, Count: c.count}
		got := p.PassPages(c.vcpus)
		count := c.count
		if count == 0 {
			count = c.pages
		}
		if len(got) == 0 || uint64(len(got)) > min(count, c.pages) {
			t.Errorf("%+v vcpus=%d: %d pages, want 1..%d", p, c.vcpus, len(got), min(count, c.pages))
		}
		if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Errorf("%+v: not sorted and de-duplicated: %v", p, got)
		}
		for _, page := range got {
			if page < 2000 || page >= 2000+c.pages {
				t.Errorf("%+v: page %d outside the region", p, page)
			}
		}
		// Same params, same pages; another seed, other pages.
		if again := p.PassPages(c.vcpus); !slices.Equal(again, got) {
			t.Errorf("%+v: PassPages is not deterministic", p)
		}
	}
	// A count much larger than the region covers all of it.
	p = DirtyParams{Pattern: PatternRandom, FirstPage: 2000, Pages: 64, Seed: 9, Count: 64 * 40}
	if got := p.PassPages(2); len(got) != 64 {
		t.Errorf("count 40x the region covered %d of 64 pages", len(got))
	}
	// Seed 0 means the guest's default state, which differs from seed 1's.
	a := DirtyParams{Pattern: PatternRandom, FirstPage: 2000, Pages: 1 << 20, Seed: 0, Count: 8}
	b := a
	b.Seed = 1
	if slices.Equal(a.PassPages(1), b.PassPages(1)) {
		t.Error("seed 0 and seed 1 give the same pages")
	}
}

func TestPassPagesScattered(t *testing.T) {
	for _, c := range []struct {
		first, pages, seed uint64
		vcpus              int
	}{{1024, 1, 1, 1}, {1024, 2, 1, 1}, {1024, 100, 1, 1}, {1024, 101, 7, 2}, {3000, 997, 0, 3}, {4096, 5000, 12345, 4}} {
		p := DirtyParams{Pattern: PatternScattered, FirstPage: c.first, Pages: c.pages, Seed: c.seed}
		got := p.PassPages(c.vcpus)
		dirty := map[uint64]bool{}
		for _, page := range got {
			dirty[page] = true
		}
		n := uint64(c.vcpus)
		total := 0
		for i := range n {
			first, end := part(p, i, n)
			if end == first {
				continue
			}
			if !dirty[first] {
				t.Errorf("%+v vcpu %d: part [%d, %d) does not start with a dirty page", p, i, first, end)
			}
			// Walk the part: alternate runs of dirty and clean pages.
			page := first
			for page < end {
				run := uint64(0)
				for page < end && dirty[page] {
					run++
					page++
				}
				gap := uint64(0)
				for page < end && !dirty[page] {
					gap++
					page++
				}
				if run < 1 || run > 2 {
					t.Errorf("%+v vcpu %d: run of %d dirty pages before %d", p, i, run, page)
				}
				// The last gap may be cut short by the part's end.
				if gap > 2 || (gap == 0 && page < end) {
					t.Errorf("%+v vcpu %d: gap of %d clean pages before %d", p, i, gap, page)
				}
				total += int(run)
			}
		}
		if total != len(got) {
			t.Errorf("%+v: %d pages lie outside the parts", p, len(got)-total)
		}
	}
}

// The first xorshift64 draws from seed 1 are 0x40822041 (run 2, gap 1) and
// 0x100041060c011441 (run 2, gap 1): the pattern starts 1,1,0,1,1,0.
func TestPassPagesScatteredGolden(t *testing.T) {
	p := DirtyParams{Pattern: PatternScattered, FirstPage: 100, Pages: 5, Seed: 1}
	if got, want := p.PassPages(1), []uint64{100, 101, 103, 104}; !slices.Equal(got, want) {
		t.Fatalf("PassPages = %v, want %v", got, want)
	}
	// Truncated at the end of the part: a 4-page region ends inside the second run.
	p.Pages = 4
	if got, want := p.PassPages(1), []uint64{100, 101, 103}; !slices.Equal(got, want) {
		t.Fatalf("PassPages = %v, want %v", got, want)
	}
}

func TestDecodeDirtyStatus(t *testing.T) {
	slot := make([]byte, StatusSlotBytes)
	le := binary.LittleEndian
	le.PutUint64(slot[0:], 1234)
	le.PutUint64(slot[8:], 5)
	le.PutUint64(slot[16:], DirtyStateDone)
	copy(slot[24:], "DIRTYST1")
	got, err := DecodeDirtyStatus(slot)
	want := DirtyStatus{PagesWritten: 1234, Passes: 5, State: DirtyStateDone, Magic: DirtyStatusMagic}
	if err != nil || got != want {
		t.Fatalf("DecodeDirtyStatus = %+v, %v; want %+v", got, err, want)
	}
	if _, err := DecodeDirtyStatus(slot[:31]); err == nil {
		t.Fatal("DecodeDirtyStatus accepted a short slot")
	}
}

func TestMagics(t *testing.T) {
	if got := binary.LittleEndian.Uint64([]byte("TANDEMP1")); got != ParamMagic {
		t.Errorf("ParamMagic = %#x, want %#x", ParamMagic, got)
	}
	if got := binary.LittleEndian.Uint64([]byte("DIRTYST1")); got != DirtyStatusMagic {
		t.Errorf("DirtyStatusMagic = %#x, want %#x", DirtyStatusMagic, got)
	}
}
