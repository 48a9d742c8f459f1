package replicate

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestPolicyString(t *testing.T) {
	tests := []struct {
		p    Policy
		want string
	}{
		{PolicyFast, "fast"},
		{PolicyFT, "ft"},
		{Policy(7), "Policy(7)"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("Policy(%d).String() = %q, want %q", int(tt.p), got, tt.want)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		in   string
		want Policy
		ok   bool
	}{
		{"fast", PolicyFast, true},
		{"ft", PolicyFT, true},
		{"fault-tolerant", PolicyFT, true},
		{"mirror", PolicyFT, true},
		{"FT", PolicyFT, true},
		{"", 0, false},
		{"slow", 0, false},
	}
	for _, tt := range tests {
		got, err := ParsePolicy(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParsePolicy(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "fast") || !strings.Contains(err.Error(), "ft")) {
			t.Errorf("ParsePolicy(%q) error %q does not list the choices", tt.in, err)
		}
	}
	for _, p := range []Policy{PolicyFast, PolicyFT} {
		if got, err := ParsePolicy(p.String()); err != nil || got != p {
			t.Errorf("ParsePolicy(%q) = %v, %v", p, got, err)
		}
	}
}

func TestNewAssignerPanics(t *testing.T) {
	for _, n := range []int{0, -1} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewAssigner(fast, %d) did not panic", n)
				}
			}()
			NewAssigner(PolicyFast, n)
		}()
	}
	a := NewAssigner(PolicyFT, 3)
	if a.Links() != 3 || a.Policy() != PolicyFT {
		t.Errorf("Links, Policy = %d, %v", a.Links(), a.Policy())
	}
}

// linkPages returns the pages each link got.
func linkPages(out [][]Region) []uint64 {
	n := make([]uint64, len(out))
	for l, rs := range out {
		n[l] = Transferred(rs)
	}
	return n
}

// seventeens returns n regions of 17 pages, 100 pages apart.
func seventeens(n int) []Region {
	rs := make([]Region, n)
	for i := range rs {
		rs[i] = Region{First: uint64(i) * 100, Pages: 17}
	}
	return rs
}

// TestAssignTableII checks seed 003, Table II: five 17-page regions over
// three links.
func TestAssignTableII(t *testing.T) {
	wantSplits := [][]uint64{{5, 6, 6}, {6, 5, 6}, {6, 6, 5}, {5, 6, 6}, {6, 5, 6}}
	wantTotals := []uint64{28, 28, 29}

	t.Run("one call", func(t *testing.T) {
		a := NewAssigner(PolicyFast, 3)
		regions := seventeens(5)
		out := a.Assign(nil, regions)
		for i, reg := range regions {
			split := make([]uint64, 3)
			for l, rs := range out {
				for _, r := range rs {
					if r.First >= reg.First && r.End() <= reg.End() {
						split[l] += r.Pages
					}
				}
			}
			if !slices.Equal(split, wantSplits[i]) {
				t.Errorf("region %d split %v, want %v", i, split, wantSplits[i])
			}
		}
		if got := linkPages(out); !slices.Equal(got, wantTotals) {
			t.Errorf("totals %v, want %v", got, wantTotals)
		}
	})

	t.Run("one call per region", func(t *testing.T) {
		a := NewAssigner(PolicyFast, 3)
		var out [][]Region
		totals := make([]uint64, 3)
		for i, reg := range seventeens(5) {
			out = a.Assign(out, []Region{reg})
			split := linkPages(out)
			if !slices.Equal(split, wantSplits[i]) {
				t.Errorf("region %d split %v, want %v", i, split, wantSplits[i])
			}
			for l := range totals {
				totals[l] += split[l]
			}
		}
		if !slices.Equal(totals, wantTotals) {
			t.Errorf("totals %v, want %v", totals, wantTotals)
		}
	})

	t.Run("offsets", func(t *testing.T) {
		// The worked example: region 0 gives link 0 [0,5), link 1 [5,11),
		// link 2 [11,17); region 1 starts at link 1.
		a := NewAssigner(PolicyFast, 3)
		out := a.Assign(nil, seventeens(2))
		want := [][]Region{
			{{0, 5}, {111, 6}},
			{{5, 6}, {100, 5}},
			{{11, 6}, {105, 6}},
		}
		for l := range want {
			if !slices.Equal(out[l], want[l]) {
				t.Errorf("link %d got %v, want %v", l, out[l], want[l])
			}
		}
	})
}

func randomRegions(r *rand.Rand, n int, maxPages uint64) []Region {
	rs := make([]Region, n)
	next := uint64(0)
	for i := range rs {
		next += r.Uint64N(10)
		rs[i] = Region{First: next, Pages: 1 + r.Uint64N(maxPages)}
		next = rs[i].End() + 1
	}
	return rs
}

func TestAssignBalance(t *testing.T) {
	r := rand.New(rand.NewPCG(2024, 3))
	regions := randomRegions(r, 1000, 64)
	a := NewAssigner(PolicyFast, 4)
	totals := make([]uint64, 4)
	var out [][]Region
	// Feed the regions in epochs of random size: the rotation must carry
	// over from one call to the next.
	for rest := regions; len(rest) > 0; {
		n := min(len(rest), 1+r.IntN(40))
		out = a.Assign(out, rest[:n])
		rest = rest[n:]
		for l, p := range linkPages(out) {
			totals[l] += p
		}
	}
	lo, hi, sum := totals[0], totals[0], uint64(0)
	for _, n := range totals {
		lo, hi, sum = min(lo, n), max(hi, n), sum+n
	}
	if sum != Transferred(regions) {
		t.Fatalf("links carry %d pages, regions have %d", sum, Transferred(regions))
	}
	imbalance := float64(hi-lo) / (float64(sum) / 4)
	t.Logf("link pages %v, imbalance %.3f%%", totals, 100*imbalance)
	if imbalance >= 0.02 {
		t.Errorf("imbalance %.2f%% (link pages %v), want < 2%%", 100*imbalance, totals)
	}
}

func TestAssignCoverage(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		for links := 1; links <= 5; links++ {
			a := NewAssigner(policy, links)
			var out [][]Region
			for epoch := 0; epoch < 20; epoch++ {
				regions := randomRegions(r, r.IntN(40), 1+r.Uint64N(70))
				out = a.Assign(out, regions)
				if len(out) != links {
					t.Fatalf("%v/%d: len(out) = %d", policy, links, len(out))
				}
				count := map[uint64]int{}
				for l, rs := range out {
					seen := map[uint64]bool{}
					for _, s := range rs {
						if s.Pages == 0 {
							t.Fatalf("%v/%d: empty share on link %d", policy, links, l)
						}
						for p := s.First; p < s.End(); p++ {
							if seen[p] {
								t.Fatalf("%v/%d: page %d twice on link %d", policy, links, p, l)
							}
							seen[p] = true
							count[p]++
						}
					}
				}
				want := 1
				if policy == PolicyFT {
					want = links
				}
				for _, reg := range regions {
					for p := reg.First; p < reg.End(); p++ {
						if count[p] != want {
							t.Fatalf("%v/%d: page %d sent %d times, want %d", policy, links, p, count[p], want)
						}
						delete(count, p)
					}
				}
				if len(count) != 0 {
					t.Fatalf("%v/%d: pages outside the regions sent: %v", policy, links, count)
				}
			}
		}
	}
}

func TestAssignFT(t *testing.T) {
	a := NewAssigner(PolicyFT, 3)
	regions := []Region{{0, 17}, {40, 1}, {50, 0}, {60, 2}}
	out := a.Assign(nil, regions)
	want := []Region{{0, 17}, {40, 1}, {60, 2}}
	for l, rs := range out {
		if !slices.Equal(rs, want) {
			t.Errorf("link %d got %v, want %v", l, rs, want)
		}
	}
}

func TestAssignSmallRegions(t *testing.T) {
	const links = 4
	t.Run("one page", func(t *testing.T) {
		a := NewAssigner(PolicyFast, links)
		hits := make([]int, links)
		var out [][]Region
		// One 1-page region per call: each lands on one link, and four in
		// a row land on four different links.
		for i := 0; i < 4*links; i++ {
			out = a.Assign(out, []Region{{First: uint64(i) * 10, Pages: 1}})
			got := -1
			for l, rs := range out {
				switch len(rs) {
				case 0:
				case 1:
					if got >= 0 {
						t.Fatalf("region %d on links %d and %d", i, got, l)
					}
					got = l
					if rs[0] != (Region{uint64(i) * 10, 1}) {
						t.Fatalf("region %d: share %v", i, rs[0])
					}
				default:
					t.Fatalf("region %d: link %d got %v", i, l, rs)
				}
			}
			if got < 0 {
				t.Fatalf("region %d went nowhere", i)
			}
			hits[got]++
		}
		for l, n := range hits {
			if n != 4 {
				t.Errorf("link %d got %d of %d one-page regions, want 4 (%v)", l, n, 4*links, hits)
			}
		}
	})
	t.Run("fewer pages than links", func(t *testing.T) {
		a := NewAssigner(PolicyFast, links)
		out := a.Assign(nil, []Region{{0, 3}, {10, 3}, {20, 3}, {30, 3}})
		for l, rs := range out {
			if got := Transferred(rs); got != 3 {
				t.Errorf("link %d got %d pages (%v), want 3", l, got, rs)
			}
			for _, s := range rs {
				if s.Pages != 1 {
					t.Errorf("link %d got share %v, want 1-page shares", l, s)
				}
			}
		}
	})
	t.Run("zero pages skipped", func(t *testing.T) {
		a := NewAssigner(PolicyFast, links)
		b := NewAssigner(PolicyFast, links)
		got := a.Assign(nil, []Region{{0, 0}, {5, 1}, {9, 0}, {12, 1}})
		want := b.Assign(nil, []Region{{5, 1}, {12, 1}})
		for l := range want {
			if !slices.Equal(got[l], want[l]) {
				t.Errorf("link %d got %v, want %v", l, got[l], want[l])
			}
		}
	})
}

func TestAssignReusesOut(t *testing.T) {
	a := NewAssigner(PolicyFast, 4)
	regions := randomRegions(rand.New(rand.NewPCG(1, 1)), 32, 64)
	// A longer out is cut to Links(), and stale shares are dropped.
	stale := make([][]Region, 6)
	for i := range stale {
		stale[i] = []Region{{999999, 1}}
	}
	out := a.Assign(stale, regions)
	if len(out) != 4 {
		t.Fatalf("len(out) = %d, want 4", len(out))
	}
	if got := linkPages(out); got[0]+got[1]+got[2]+got[3] != Transferred(regions) {
		t.Fatalf("link pages %v do not add up to %d", got, Transferred(regions))
	}
	for _, p := range []Policy{PolicyFast, PolicyFT} {
		a := NewAssigner(p, 4)
		out := a.Assign(nil, regions)
		if n := testing.AllocsPerRun(10, func() { out = a.Assign(out, regions) }); n != 0 {
			t.Errorf("%v: Assign with reused out: %v allocs, want 0", p, n)
		}
	}
}
