package images

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/tandemvm/tandem/boot"
)

func TestNames(t *testing.T) {
	want := []string{"counter", "dirty", "hello", "hello16"}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v, want %v", got, want)
	}
}

func TestLookup(t *testing.T) {
	modes := map[string]boot.Mode{
		"counter": boot.ModeLong64,
		"dirty":   boot.ModeLong64,
		"hello":   boot.ModeLong64,
		"hello16": boot.ModeReal16,
	}
	for _, name := range Names() {
		g, ok := Lookup(name)
		if !ok {
			t.Fatalf("Lookup(%q) not found", name)
		}
		if g.Name != name || g.Mode != modes[name] {
			t.Errorf("Lookup(%q) = name %q mode %v, want mode %v", name, g.Name, g.Mode, modes[name])
		}
		if g.Summary == "" || strings.Contains(g.Summary, "\n") {
			t.Errorf("%s: summary %q is not one line", name, g.Summary)
		}
		if len(g.Image) == 0 {
			t.Errorf("%s: empty image", name)
		}
		switch g.Mode {
		case boot.ModeLong64:
			// The image sits at 1 MiB and the free RAM starts after it.
			if len(g.Image) >= 1<<20 {
				t.Errorf("%s: long64 image is %d bytes, want < 1 MiB", name, len(g.Image))
			}
			// Every long64 guest starts with lib/entry.S, whose first
			// instruction is cld (0xFC): the entry is the first byte.
			if g.Image[0] != 0xFC {
				t.Errorf("%s: first byte %#x, want 0xfc (cld, from lib/entry.S)", name, g.Image[0])
			}
		case boot.ModeReal16:
			// Loaded at 0x10000 in a 64 KiB segment whose stack starts at 0xFFF0.
			if len(g.Image) >= 0x8000 {
				t.Errorf("%s: real16 image is %d bytes, want < 32 KiB", name, len(g.Image))
			}
		}
	}
	if _, ok := Lookup("no-such-guest"); ok {
		t.Error(`Lookup("no-such-guest") found something`)
	}
}

func TestLookupReturnsACopy(t *testing.T) {
	g, _ := Lookup("hello")
	g.Image[0] ^= 0xFF
	again, _ := Lookup("hello")
	if bytes.Equal(g.Image, again.Image) {
		t.Fatal("modifying a looked-up image changed the embedded one")
	}
}

func TestArgsPresence(t *testing.T) {
	for name, hasArgs := range map[string]bool{"counter": true, "dirty": true, "hello": false, "hello16": false} {
		g, _ := Lookup(name)
		if (g.Args != nil) != hasArgs {
			t.Errorf("%s: Args != nil is %v, want %v", name, g.Args != nil, hasArgs)
		}
	}
}

func TestCounterArgs(t *testing.T) {
	g, _ := Lookup("counter")
	good := map[string][]uint64{
		"":                             {0},
		"initial=5":                    {5},
		" initial = 0x10 ":             {16},
		"initial=1_000":                {1000},
		"initial=18446744073709551615": {^uint64(0)},
	}
	for spec, want := range good {
		got, err := g.Args(spec, 64<<20, 1)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("Args(%q) = %v, %v; want %v", spec, got, err, want)
		}
	}
	bad := map[string]string{
		"start=1":                      `unknown key "start"`,
		"initial=x":                    "initial=x: not an unsigned integer",
		"initial=-1":                   "initial=-1: not an unsigned integer",
		"initial=18446744073709551616": "does not fit in 64 bits",
		"initial":                      `"initial" is not key=value`,
		"initial=1,initial=2":          "initial given twice",
		"initial=1,":                   `"" is not key=value`,
	}
	for spec, want := range bad {
		_, err := g.Args(spec, 64<<20, 1)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Args(%q) error = %v, want one containing %q", spec, err, want)
		}
	}
}

func TestDirtyGuestArgs(t *testing.T) {
	g, _ := Lookup("dirty")
	got, err := g.Args("pattern=scattered,pages=100,seed=9,ring=3,bytes=4096", 64<<20, 2)
	want := []uint64{2, 1024, 100, 0, 0, 9, 0, 3, 4096}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Args = %v, %v; want %v", got, err, want)
	}
	if _, err := g.Args("pages=0", 64<<20, 2); err == nil {
		t.Fatal("Args accepted an empty region")
	}
}

// TestBinariesMatchSources rebuilds the guests (make check) and fails if
// the committed bin/*.bin differ from what the sources give. The bytes
// depend on the toolchain, so it runs only with the one the binaries were
// built with: Debian 12's gcc 12.
func TestBinariesMatchSources(t *testing.T) {
	if testing.Short() {
		t.Skip("rebuilds the guests")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not found")
	}
	out, err := exec.Command("gcc", "-dumpversion").Output()
	if err != nil {
		t.Skip("gcc not found")
	}
	if v := strings.TrimSpace(string(out)); v != "12" {
		t.Skipf("gcc %s: the committed binaries were built with gcc 12", v)
	}
	cmd := exec.Command("make", "--no-print-directory", "-s", "check")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make check: %v\n%s", err, out)
	}
}
