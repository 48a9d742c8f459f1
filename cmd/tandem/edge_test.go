package main

import (
	"debug/buildinfo"
	"debug/elf"
	"strings"
	"testing"
)

// plottingModules are the modules that only drawing the bench's plots
// needs (gonum/plot, its fonts and its backends): tandem-plot links them,
// the tandem binary an edge host runs must not.
var plottingModules = []string{
	"gonum.org/v1/plot",
	"codeberg.org/go-fonts/",
	"github.com/go-fonts/",
	"github.com/golang/freetype",
	"git.sr.ht/~sbinet/gg",
	"codeberg.org/go-pdf/fpdf",
	"github.com/ajstarks/svgo",
	"codeberg.org/go-latex/",
}

// TestEdgeBinary checks the tandem binary built as the README builds it
// for the edge (CGO_ENABLED=0; tandemBin is built so): it links no
// plotting library and no fonts, and it is statically linked, with no
// program interpreter and no shared library to load.
func TestEdgeBinary(t *testing.T) {
	bi, err := buildinfo.ReadFile(tandemBin)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range bi.Settings {
		if s.Key == "CGO_ENABLED" && s.Value != "0" {
			t.Errorf("tandemBin was built with CGO_ENABLED=%s, not as the edge build", s.Value)
		}
	}
	for _, d := range bi.Deps {
		for _, m := range plottingModules {
			if strings.HasPrefix(d.Path, m) {
				t.Errorf("tandem links %s %s, which only the bench's plots need (tandem-plot)", d.Path, d.Version)
			}
		}
	}

	f, err := elf.Open(tandemBin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("tandem has a %v program header: not statically linked", p.Type)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) > 0 {
		t.Errorf("tandem needs shared libraries %v", libs)
	}
}
