package replicate

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestRegionEnd(t *testing.T) {
	if got := (Region{First: 10, Pages: 5}).End(); got != 15 {
		t.Errorf("End = %d, want 15", got)
	}
}

func TestGroup(t *testing.T) {
	tests := []struct {
		name  string
		pages []uint64
		max   int
		want  []Region
	}{
		{"empty", nil, 32, []Region{}},
		{"one page", []uint64{7}, 32, []Region{{7, 1}}},
		{"one run", []uint64{3, 4, 5}, 1, []Region{{3, 3}}},
		{"fits unchanged", []uint64{1, 2, 3, 7, 10, 11}, 3,
			[]Region{{1, 3}, {7, 1}, {10, 2}}},
		{"fits with room", []uint64{1, 2, 3, 7, 10, 11}, 32,
			[]Region{{1, 3}, {7, 1}, {10, 2}}},
		{"max 1 spans first to last", []uint64{2, 9, 10, 40}, 1, []Region{{2, 39}}},
		{"max 0 is 1", []uint64{2, 9, 10, 40}, 0, []Region{{2, 39}}},
		{"max negative is 1", []uint64{2, 9}, -5, []Region{{2, 8}}},
		// Gaps 4, 1, 12, 1: the two 1-page gaps go, not the first two gaps.
		{"smallest gaps", []uint64{0, 5, 7, 20, 22}, 3,
			[]Region{{0, 1}, {5, 3}, {20, 3}}},
		// Gaps 12, 1, 4, 1, 2: merging 3 takes both 1s and the 2 at the end.
		{"smallest gaps anywhere", []uint64{0, 13, 15, 20, 22, 25}, 3,
			[]Region{{0, 1}, {13, 3}, {20, 6}}},
		// Equal gaps: the lower address goes first.
		{"tie lower address", []uint64{0, 2, 4, 6}, 3,
			[]Region{{0, 3}, {4, 1}, {6, 1}}},
		{"tie lower address twice", []uint64{0, 2, 4, 6}, 2,
			[]Region{{0, 5}, {6, 1}}},
		// Gaps 2, 1, 2, 1: both 1s, then the lower of the 2s.
		{"tie after smaller", []uint64{0, 3, 5, 8, 10}, 2,
			[]Region{{0, 6}, {8, 3}}},
		// Large gaps (beyond the histogram): 99, 199, 698.
		{"large gaps", []uint64{0, 100, 300, 301, 1000}, 2,
			[]Region{{0, 302}, {1000, 1}}},
		// Mixed: 9, 189, 299, 9: both 9s and then the 189.
		{"small and large gaps", []uint64{0, 10, 200, 500, 510}, 2,
			[]Region{{0, 201}, {500, 11}}},
		// Equal large gaps: lower address first.
		{"large tie", []uint64{0, 101, 202, 303}, 2,
			[]Region{{0, 203}, {303, 1}}},
		{"large tie partial", []uint64{0, 101, 202, 303, 310}, 3,
			[]Region{{0, 102}, {202, 1}, {303, 8}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Group(nil, tt.pages, tt.max)
			if !slices.Equal(got, tt.want) {
				t.Errorf("Group(%v, %d) = %v, want %v", tt.pages, tt.max, got, tt.want)
			}
			checkGroup(t, got, tt.pages, tt.max)
		})
	}
}

func TestGroupReusesDst(t *testing.T) {
	dst := make([]Region, 3, 100)
	got := Group(dst, []uint64{1, 5, 9}, 32)
	if &got[0] != &dst[0] {
		t.Error("Group did not reuse dst")
	}
	if want := []Region{{1, 1}, {5, 1}, {9, 1}}; !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := Group(dst, nil, 32); got == nil || len(got) != 0 {
		t.Errorf("Group(dst, nil) = %v, want dst[:0]", got)
	}
}

func TestGroupNotAscending(t *testing.T) {
	for _, pages := range [][]uint64{{1, 1}, {5, 3}, {1, 2, 2}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Group(%v) did not panic", pages)
				}
			}()
			Group(nil, pages, 1)
		}()
	}
}

// checkGroup checks the invariants of any grouping: at most max regions,
// ascending and disjoint, each beginning and ending on a dirty page, and
// covering every dirty page.
func checkGroup(t *testing.T, regions []Region, pages []uint64, max int) {
	t.Helper()
	if max < 1 {
		max = 1
	}
	if len(regions) > max {
		t.Fatalf("%d regions, limit %d", len(regions), max)
	}
	if len(pages) == 0 {
		if len(regions) != 0 {
			t.Fatalf("regions %v for no pages", regions)
		}
		return
	}
	dirty := make(map[uint64]bool, len(pages))
	for _, p := range pages {
		dirty[p] = true
	}
	covered := 0
	for i, r := range regions {
		if r.Pages == 0 {
			t.Fatalf("empty region %v", r)
		}
		if i > 0 && r.First <= regions[i-1].End() {
			t.Fatalf("regions %v and %v touch or overlap", regions[i-1], r)
		}
		if !dirty[r.First] || !dirty[r.End()-1] {
			t.Fatalf("region %v does not begin and end on dirty pages", r)
		}
		for p := r.First; p < r.End(); p++ {
			if dirty[p] {
				covered++
			}
		}
	}
	if covered != len(pages) {
		t.Fatalf("regions cover %d of %d dirty pages", covered, len(pages))
	}
}

// groupNaive is the reference: start from the runs and repeatedly merge
// across the smallest gap left, the lowest one among equals, as seed 003
// describes it.
func groupNaive(pages []uint64, max int) []Region {
	if max < 1 {
		max = 1
	}
	if len(pages) == 0 {
		return []Region{}
	}
	regions := appendRuns(nil, pages)
	for len(regions) > max {
		best := 0
		for i := 1; i+1 < len(regions); i++ {
			if regions[i+1].First-regions[i].End() < regions[best+1].First-regions[best].End() {
				best = i
			}
		}
		regions[best].Pages = regions[best+1].End() - regions[best].First
		regions = slices.Delete(regions, best+1, best+2)
	}
	return regions
}

// minTransferred returns, by trying every set of gaps to merge, the fewest
// pages that at most max regions covering pages can transfer.
func minTransferred(pages []uint64, max int) uint64 {
	runs := appendRuns(nil, pages)
	gaps := len(runs) - 1
	best := ^uint64(0)
	for mask := 0; mask < 1<<gaps; mask++ {
		regions, total := 1, runs[0].Pages
		for i := 0; i < gaps; i++ {
			total += runs[i+1].Pages
			if mask&(1<<i) != 0 {
				total += runs[i+1].First - runs[i].End()
			} else {
				regions++
			}
		}
		if regions <= max && total < best {
			best = total
		}
	}
	return best
}

func randomPages(r *rand.Rand, span uint64, density float64) []uint64 {
	var pages []uint64
	for p := uint64(0); p < span; p++ {
		if r.Float64() < density {
			pages = append(pages, p)
		}
	}
	return pages
}

func TestGroupMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 1))
	var dst []Region
	for iter := 0; iter < 3000; iter++ {
		pages := randomPages(r, 1+r.Uint64N(40), 0.1+0.8*r.Float64())
		if len(pages) > 0 && len(appendRuns(nil, pages)) > 16 {
			continue // keep the brute force small
		}
		max := r.IntN(10)
		dst = Group(dst, pages, max)
		checkGroup(t, dst, pages, max)
		if want := groupNaive(pages, max); !slices.Equal(dst, want) {
			t.Fatalf("Group(%v, %d) = %v, want %v", pages, max, dst, want)
		}
		if len(pages) == 0 {
			continue
		}
		m := max
		if m < 1 {
			m = 1
		}
		if got, want := Transferred(dst), minTransferred(pages, m); got != want {
			t.Fatalf("Group(%v, %d) transfers %d pages, the minimum is %d", pages, max, got, want)
		}
	}
}

// groupSorted is a second reference for large inputs: sort the gaps by size
// and address and merge the first k.
func groupSorted(pages []uint64, max int) []Region {
	runs := appendRuns(nil, pages)
	if len(runs) <= max {
		return runs
	}
	idx := make([]int, len(runs)-1)
	for i := range idx {
		idx[i] = i
	}
	gap := func(i int) uint64 { return runs[i+1].First - runs[i].End() }
	slices.SortFunc(idx, func(a, b int) int {
		if ga, gb := gap(a), gap(b); ga != gb {
			if ga < gb {
				return -1
			}
			return 1
		}
		return a - b
	})
	merge := make([]bool, len(idx))
	for _, i := range idx[:len(runs)-max] {
		merge[i] = true
	}
	out := []Region{runs[0]}
	for i := 1; i < len(runs); i++ {
		if merge[i-1] {
			out[len(out)-1].Pages = runs[i].End() - out[len(out)-1].First
		} else {
			out = append(out, runs[i])
		}
	}
	return out
}

func TestGroupLarge(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 9))
	tests := []struct {
		name  string
		pages func() []uint64
	}{
		{"random quarter", func() []uint64 { return randomPages(r, 1<<16, 0.25) }},
		{"sparse", func() []uint64 { return randomPages(r, 1<<20, 0.01) }},
		{"scattered", func() []uint64 { return scatteredPages(r, 1<<14) }},
		{"equal large gaps", func() []uint64 {
			var p []uint64
			for i := uint64(0); i < 5000; i++ {
				p = append(p, i*100)
			}
			return p
		}},
		{"two large sizes", func() []uint64 {
			var p []uint64
			for i := uint64(0); i < 5000; i++ {
				p = append(p, i*100+uint64(i%2)*50)
			}
			return p
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pages := tt.pages()
			for _, max := range []int{1, 2, 32, 1000, len(pages) / 3, len(pages)} {
				got := Group(nil, pages, max)
				checkGroup(t, got, pages, max)
				if want := groupSorted(pages, max); !slices.Equal(got, want) {
					t.Fatalf("max %d: Group differs from the sorted reference", max)
				}
			}
		})
	}
}

func TestSelectKth(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 200; iter++ {
		n := 1 + r.IntN(500)
		a := make([]Region, n)
		vals := make([]uint64, n)
		spread := 1 + r.Uint64N(1000)
		for i := range a {
			a[i].First = r.Uint64N(spread)
			vals[i] = a[i].First
		}
		slices.Sort(vals)
		k := r.IntN(n)
		if got := selectKth(a, k); got != vals[k] {
			t.Fatalf("selectKth(k=%d) = %d, want %d", k, got, vals[k])
		}
	}
	// Sorted and reversed inputs exhaust no budget worth mentioning, but
	// an organ-pipe input may; every path must still be right.
	for _, mk := range []func(i, n int) uint64{
		func(i, n int) uint64 { return uint64(i) },
		func(i, n int) uint64 { return uint64(n - i) },
		func(i, n int) uint64 { return uint64(min(i, n-i)) },
	} {
		const n = 4096
		for _, k := range []int{0, 1, n / 2, n - 1} {
			a := make([]Region, n)
			for i := range a {
				a[i].First = mk(i, n)
			}
			vals := make([]uint64, n)
			for i := range a {
				vals[i] = a[i].First
			}
			slices.Sort(vals)
			if got := selectKth(a, k); got != vals[k] {
				t.Fatalf("selectKth(k=%d) = %d, want %d", k, got, vals[k])
			}
		}
	}
}

func TestTransferred(t *testing.T) {
	tests := []struct {
		regions []Region
		want    uint64
	}{
		{nil, 0},
		{[]Region{{5, 3}}, 3},
		{[]Region{{0, 1}, {5, 3}, {20, 3}}, 7},
	}
	for _, tt := range tests {
		if got := Transferred(tt.regions); got != tt.want {
			t.Errorf("Transferred(%v) = %d, want %d", tt.regions, got, tt.want)
		}
	}
}

func TestGroupingOverhead(t *testing.T) {
	// 5 dirty pages grouped into 2 regions covering 1 + 7 pages.
	pages := []uint64{0, 10, 12, 14, 16}
	regions := Group(nil, pages, 2)
	if want := []Region{{0, 1}, {10, 7}}; !slices.Equal(regions, want) {
		t.Fatalf("Group = %v, want %v", regions, want)
	}
	rec := EpochTrace{DirtyPages: len(pages), TransferredPages: Transferred(regions)}
	if got := rec.GroupingOverhead(); got != 8.0/5 {
		t.Errorf("overhead = %v, want 1.6", got)
	}
}

func TestGroupNoAllocs(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for _, pages := range [][]uint64{randomPages(r, 1<<14, 0.25), randomPages(r, 1<<18, 0.01)} {
		dst := Group(nil, pages, 32)
		if n := testing.AllocsPerRun(10, func() { dst = Group(dst, pages, 32) }); n != 0 {
			t.Errorf("Group with reused dst: %v allocs, want 0", n)
		}
	}
}

// TestMergeRegionsMatchesGroup: merging the runs of a dirty set to max
// regions is what Group does with the pages themselves.
func TestMergeRegionsMatchesGroup(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for trial := 0; trial < 300; trial++ {
		var pages []uint64
		for p := uint64(0); p < 2000; p++ {
			if r.IntN(4) == 0 {
				pages = append(pages, p)
			}
		}
		runs := Group(nil, pages, len(pages)+1) // every run separate
		for _, max := range []int{0, 1, 2, 5, 32, len(runs) - 1, len(runs), len(runs) + 3} {
			want := Group(nil, pages, max)
			got := MergeRegions(slices.Clone(runs), max)
			if !slices.Equal(got, want) {
				t.Fatalf("trial %d, max %d: MergeRegions gives %d regions %v..., Group %d %v...", trial, max, len(got), got[:min(3, len(got))], len(want), want[:min(3, len(want))])
			}
		}
	}
}

// TestInitialCopyOfAFragmentedGuestFitsAMap: a guest with more non-zero
// runs than a map record may carry (a guest over 8 GiB with every other
// page in use) still gets a map the replica accepts.
func TestInitialCopyOfAFragmentedGuestFitsAMap(t *testing.T) {
	const n = maxMapRegions + maxMapRegions/2
	runs := make([]Region, 0, n)
	for i := uint64(0); i < n; i++ {
		runs = append(runs, Region{First: 2 * i, Pages: 1})
	}
	accepted := func(regions []Region) error {
		b := appendMap(nil, 1, 1, &MapRecord{Epoch: 1, Regions: regions})
		h, err := parseHeader(b, 1)
		if err != nil {
			return err
		}
		_, err = parseMap(h, b[headerSize:], 2*n)
		return err
	}
	if err := accepted(runs); err == nil {
		t.Fatalf("a map of %d regions was accepted: the test no longer exceeds the limit", n)
	}
	got := MergeRegions(runs, maxInitialRegions)
	if len(got) > maxInitialRegions {
		t.Fatalf("%d regions, want at most %d", len(got), maxInitialRegions)
	}
	if got[0].First != 0 || got[len(got)-1].End() != 2*(n-1)+1 {
		t.Errorf("merged regions span [%d, %d), want [0, %d)", got[0].First, got[len(got)-1].End(), 2*(n-1)+1)
	}
	if err := accepted(got); err != nil {
		t.Errorf("the merged map is refused: %v", err)
	}
}
