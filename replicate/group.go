package replicate

import (
	"cmp"
	"math/bits"
	"slices"
)

// Region is a run of guest pages [First, First+Pages), pages named by their
// index in guest memory. Regions carry no page data: they are the unit that
// grouping produces and that assignment splits across links.
type Region struct{ First, Pages uint64 }

// End returns the index of the first page after r.
func (r Region) End() uint64 { return r.First + r.Pages }

// smallGap bounds the gap sizes that Group counts in a histogram on the
// stack. Harvested dirty sets are dominated by gaps of one or two clean pages
// (seed 003, Fig. 11 and 12), so the threshold is usually found among them in
// one pass, with no scratch space and no sorting.
const smallGap = 64

// Group merges the dirty pages in pages (ascending, unique page indices) into
// at most max regions and appends them to dst[:0]. A transport can only send
// a bounded number of scattered regions per transaction (an RDMA card takes
// 32 scatter-gather entries), so Group merges neighbouring runs of dirty
// pages across the clean gaps between them, smallest gaps first and, among
// gaps of equal size, the one at the lower address first. Merging the
// smallest gaps is what minimises the clean pages sent along: see
// [Transferred]. No page data is touched.
//
// A max below 1 is treated as 1. When the dirty runs already number at most
// max they are returned as they are.
//
// Group runs while the VM is paused, so it is linear in the number of dirty
// pages in the common case and O(n log n) at worst, and it allocates only to
// grow dst, which it may also use as scratch space, one Region per gap of
// smallGap (64) or more clean pages. Pass the previous result back as dst to
// keep it from allocating.
//
// Group panics if pages is not strictly ascending: dirty sets come from a
// bitmap walk, so that is a programming error.
func Group(dst []Region, pages []uint64, max int) []Region {
	dst = dst[:0]
	if len(pages) == 0 {
		return dst
	}
	if max < 1 {
		max = 1
	}

	// Pass 1: histogram the gaps between consecutive pages: hist[0] counts
	// adjacent pages, hist[smallGap] every gap of smallGap or more. The
	// loop has no data-dependent branch, as scattered dirty sets would
	// mispredict it at every page.
	var hist [smallGap + 1]int
	for i := 1; i < len(pages); i++ {
		p, prev := pages[i], pages[i-1]
		if p <= prev {
			panic("replicate: Group: pages not strictly ascending")
		}
		hist[min(p-prev-1, smallGap)]++
	}
	runs := len(pages) - hist[0]
	if runs <= max {
		return appendRuns(dst, pages)
	}

	// Merge the k smallest gaps. They are every gap smaller than the k-th
	// smallest size (threshold) plus, in address order, the first ties
	// gaps of exactly that size.
	k := runs - max
	threshold, ties, found := uint64(0), 0, false
	below := 0
	for size := 1; size < smallGap; size++ {
		if below+hist[size] >= k {
			threshold, ties, found = uint64(size), k-below, true
			break
		}
		below += hist[size]
	}
	if !found {
		// The threshold is a large gap: select it among the large gaps,
		// using dst as scratch (Region.First holds a gap size).
		for i := 1; i < len(pages); i++ {
			if gap := pages[i] - pages[i-1] - 1; gap >= smallGap {
				dst = append(dst, Region{First: gap})
			}
		}
		threshold = selectKth(dst, k-below-1)
		less := 0
		for _, g := range dst {
			if g.First < threshold {
				less++
			}
		}
		ties = k - below - less
	}

	// Pass 2: emit exactly max regions, merging across the chosen gaps.
	// Until the ties-th gap of the threshold size, gaps up to the threshold
	// are merged; after it, only smaller ones. The region in progress is
	// stored at every page and kept by advancing w, again without a
	// data-dependent branch.
	dst = slices.Grow(dst[:0], max)[:max]
	w := 0
	first, prev := pages[0], pages[0]
	i := 1
	for ; ties > 0; i++ {
		p := pages[i]
		gap := p - prev - 1
		if gap == threshold {
			ties--
		}
		dst[w] = Region{First: first, Pages: prev + 1 - first}
		first, w = keepGap(gap > threshold, first, p, w)
		prev = p
	}
	for ; i < len(pages); i++ {
		p := pages[i]
		dst[w] = Region{First: first, Pages: prev + 1 - first}
		first, w = keepGap(p-prev-1 >= threshold, first, p, w)
		prev = p
	}
	dst[w] = Region{First: first, Pages: prev + 1 - first}
	return dst
}

// keepGap returns where the region in progress begins and the index of the
// region slot after a gap that ends at page p: a kept gap starts a new
// region at p in the next slot.
func keepGap(keep bool, first, p uint64, w int) (uint64, int) {
	if keep {
		return p, w + 1
	}
	return first, w
}

// appendRuns appends the maximal runs of consecutive pages to dst.
func appendRuns(dst []Region, pages []uint64) []Region {
	cur := Region{First: pages[0], Pages: 1}
	for _, p := range pages[1:] {
		if p == cur.End() {
			cur.Pages++
			continue
		}
		dst = append(dst, cur)
		cur = Region{First: p, Pages: 1}
	}
	return append(dst, cur)
}

// selectKth returns the k-th smallest (0-based) First among a, reordering a.
// It is a quickselect with a three-way partition, since gap sizes repeat a
// lot, that falls back to sorting when the partitions keep coming out
// lopsided, which bounds it at O(n log n).
func selectKth(a []Region, k int) uint64 {
	lo, hi := 0, len(a)
	budget := 2 * bits.Len(uint(len(a)))
	for hi-lo > 16 {
		if budget == 0 {
			slices.SortFunc(a[lo:hi], func(x, y Region) int { return cmp.Compare(x.First, y.First) })
			return a[k].First
		}
		budget--
		pivot := medianOf3(a[lo].First, a[lo+(hi-lo)/2].First, a[hi-1].First)
		// Partition a[lo:hi] into < pivot, == pivot, > pivot.
		lt, i, gt := lo, lo, hi
		for i < gt {
			switch v := a[i].First; {
			case v < pivot:
				a[lt], a[i] = a[i], a[lt]
				lt++
				i++
			case v > pivot:
				gt--
				a[gt], a[i] = a[i], a[gt]
			default:
				i++
			}
		}
		switch {
		case k < lt:
			hi = lt
		case k >= gt:
			lo = gt
		default:
			return pivot
		}
	}
	// Insertion sort the short remainder.
	for i := lo + 1; i < hi; i++ {
		for j := i; j > lo && a[j].First < a[j-1].First; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
	return a[k].First
}

func medianOf3(a, b, c uint64) uint64 {
	if a > b {
		a, b = b, a
	}
	if b > c {
		b = c
	}
	if a > b {
		return a
	}
	return b
}

// Transferred returns the number of pages the regions cover: the dirty pages
// plus the clean pages that grouping merged in. Transferred divided by the
// number of dirty pages is the grouping overhead that seed 003 reports.
func Transferred(regions []Region) uint64 {
	var n uint64
	for _, r := range regions {
		n += r.Pages
	}
	return n
}

// MergeRegions merges ascending, non-overlapping regions across the
// smallest gaps between them until at most max remain (max below 1 is
// taken as 1), as Group does for pages; among gaps of equal size the one
// at the lower address merges first. The pages of merged gaps are sent
// along. It works in place and returns regions[:n].
func MergeRegions(regions []Region, max int) []Region {
	max = min(max, len(regions))
	if max < 1 {
		max = 1
	}
	if len(regions) <= max {
		return regions
	}
	// The gaps to merge are the len-max smallest: find the size of the
	// largest of them, and how many of that size to merge (lowest first).
	gaps := make([]uint64, len(regions)-1)
	for i := range gaps {
		gaps[i] = regions[i+1].First - regions[i].End()
	}
	sorted := slices.Clone(gaps)
	slices.Sort(sorted)
	merge := len(regions) - max
	threshold := sorted[merge-1]
	below, _ := slices.BinarySearch(sorted, threshold) // gaps smaller than threshold
	atThreshold := merge - below
	n := 0
	for i, r := range regions {
		if i > 0 {
			g := gaps[i-1]
			if g < threshold || (g == threshold && atThreshold > 0) {
				if g == threshold {
					atThreshold--
				}
				regions[n-1].Pages = r.End() - regions[n-1].First
				continue
			}
		}
		regions[n] = r
		n++
	}
	return regions[:n]
}

// unionRegions returns the pages of a and b, both ascending and
// non-overlapping, as one ascending list of non-overlapping regions
// (overlapping or touching regions joined). a and b are not changed.
func unionRegions(a, b []Region) []Region {
	out := make([]Region, 0, len(a)+len(b))
	add := func(r Region) {
		if n := len(out); n > 0 && r.First <= out[n-1].End() {
			out[n-1].Pages = max(out[n-1].End(), r.End()) - out[n-1].First
			return
		}
		out = append(out, r)
	}
	for len(a) > 0 || len(b) > 0 {
		if len(b) == 0 || (len(a) > 0 && a[0].First <= b[0].First) {
			add(a[0])
			a = a[1:]
		} else {
			add(b[0])
			b = b[1:]
		}
	}
	return out
}

// GroupByCost merges the dirty pages in pages (ascending, unique) into
// regions, merging a clean gap only where it is at most maxGap pages:
// where sending its pages along costs less than one more element on the
// transport. If that leaves more than max regions, the smallest gaps
// merge further, as in MergeRegions. It appends to dst[:0].
func GroupByCost(dst []Region, pages []uint64, maxGap uint64, max int) []Region {
	dst = dst[:0]
	if len(pages) == 0 {
		return dst
	}
	cur := Region{First: pages[0], Pages: 1}
	for _, p := range pages[1:] {
		if p <= cur.End()-1 {
			panic("replicate: GroupByCost: pages not strictly ascending")
		}
		if p-cur.End() <= maxGap {
			cur.Pages = p + 1 - cur.First
			continue
		}
		dst = append(dst, cur)
		cur = Region{First: p, Pages: 1}
	}
	dst = append(dst, cur)
	return MergeRegions(dst, max)
}
