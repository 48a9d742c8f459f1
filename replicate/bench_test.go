package replicate

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// benchDirty is the dirty page count of a 512 MiB guest entirely dirtied:
// the worst case seed 003 measured grouping for.
const benchDirty = 131072

// scatteredPages returns n dirty pages in the pattern seed 003 observed
// during a kernel build (Fig. 11, 12): runs of 1-2 dirty pages separated by
// 1-2 clean ones.
func scatteredPages(r *rand.Rand, n int) []uint64 {
	pages := make([]uint64, 0, n)
	p := uint64(0)
	for len(pages) < n {
		for run := 1 + r.IntN(2); run > 0 && len(pages) < n; run-- {
			pages = append(pages, p)
			p++
		}
		p += 1 + r.Uint64N(2)
	}
	return pages
}

// randomDirty returns n distinct random pages out of span, ascending.
func randomDirty(r *rand.Rand, n int, span uint64) []uint64 {
	seen := make(map[uint64]bool, n)
	pages := make([]uint64, 0, n)
	for len(pages) < n {
		p := r.Uint64N(span)
		if !seen[p] {
			seen[p] = true
			pages = append(pages, p)
		}
	}
	slices.Sort(pages)
	return pages
}

func BenchmarkGroup(b *testing.B) {
	r := rand.New(rand.NewPCG(42, 42))
	inputs := []struct {
		name  string
		pages []uint64
	}{
		{"random", randomDirty(r, benchDirty, 4*benchDirty)},
		{"scattered", scatteredPages(r, benchDirty)},
		// 128 GiB of address space: gaps past the histogram, so the
		// selection path at a size no 512 MiB guest can reach (it has at
		// most guest pages / 64 such gaps).
		{"sparse", randomDirty(r, benchDirty, 256*benchDirty)},
	}
	for _, in := range inputs {
		b.Run(in.name, func(b *testing.B) {
			b.ReportAllocs()
			dst := Group(nil, in.pages, 32)
			for b.Loop() {
				dst = Group(dst, in.pages, 32)
			}
			b.ReportMetric(float64(Transferred(dst))/float64(len(in.pages)), "overhead")
		})
	}
}

func BenchmarkAssign(b *testing.B) {
	regions := randomRegions(rand.New(rand.NewPCG(42, 43)), 32, 4096)
	for _, p := range []Policy{PolicyFast, PolicyFT} {
		b.Run(p.String(), func(b *testing.B) {
			b.ReportAllocs()
			a := NewAssigner(p, 4)
			out := a.Assign(nil, regions)
			for b.Loop() {
				out = a.Assign(out, regions)
			}
		})
	}
}
