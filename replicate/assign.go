package replicate

import (
	"fmt"
	"strconv"
	"strings"
)

// Policy says how an epoch's regions are spread over the links to the
// replicas, which trades pause time against redundancy.
type Policy int

const (
	// PolicyFast splits every region across the links so that each page is
	// sent once, on one link: the shortest pause, but losing any replica
	// loses pages. Seed 003 calls it the "performance" mode.
	PolicyFast Policy = iota
	// PolicyFT sends every region whole on every link, so any one replica
	// holds the whole memory image: the longest pause, the most redundancy.
	// Seed 003 calls it the "mirroring" or "fault-tolerant" mode.
	PolicyFT
)

// String returns the name ParsePolicy accepts: "fast" or "ft".
func (p Policy) String() string {
	switch p {
	case PolicyFast:
		return "fast"
	case PolicyFT:
		return "ft"
	}
	return "Policy(" + strconv.Itoa(int(p)) + ")"
}

// ParsePolicy parses a policy name: "fast", or "ft" (also "fault-tolerant"
// and "mirror", the names seed 003 uses). Case is ignored.
func ParsePolicy(s string) (Policy, error) {
	switch strings.ToLower(s) {
	case "fast":
		return PolicyFast, nil
	case "ft", "fault-tolerant", "mirror":
		return PolicyFT, nil
	}
	return 0, fmt.Errorf("replicate: unknown policy %q (want fast or ft)", s)
}

// Assigner splits each epoch's regions across a fixed number of links.
//
// With PolicyFast it follows seed 003, Algorithm 1 (integer partition with
// rotation): each region of n pages is cut into shares that differ by at
// most one page, and the link that gets the first (smallest) share rotates
// by one with every region. The rotation persists across regions and across
// calls to Assign, so remainders do not pile up on the same link epoch after
// epoch: splitting a 17-page region over 3 links gives [5 6 6] every time,
// which after five regions is [25 30 30] without rotation but [28 28 29]
// with it. A region smaller than the number of links goes whole to one
// link, which the rotation moves along.
//
// With PolicyFT every region goes whole to every link.
//
// An Assigner is not safe for concurrent use; it belongs to the one
// goroutine that runs the epochs.
type Assigner struct {
	policy Policy
	links  int
	b      int // link offset of the next region's first share: Algorithm 1's b
}

// NewAssigner returns an Assigner for the given policy and number of links.
// It panics if links < 1: a replicated VM always has a link, so a count
// below one is a programming error, not a configuration error.
func NewAssigner(p Policy, links int) *Assigner {
	if links < 1 {
		panic("replicate: NewAssigner: links < 1")
	}
	return &Assigner{policy: p, links: links}
}

// Links returns the number of links a splits across.
func (a *Assigner) Links() int { return a.links }

// Policy returns a's policy.
func (a *Assigner) Policy() Policy { return a.policy }

// Assign appends each link's share of regions to out[link] and returns out,
// with len(out) == Links(). out and its slices are reused: each out[l] is
// truncated to out[l][:0] first, so passing the previous result back keeps
// Assign from allocating. Shares keep the order of regions. Regions of zero
// pages are skipped and do not advance the rotation.
func (a *Assigner) Assign(out [][]Region, regions []Region) [][]Region {
	if cap(out) < a.links {
		out = append(out[:cap(out)], make([][]Region, a.links-cap(out))...)
	}
	out = out[:a.links]
	for l := range out {
		out[l] = out[l][:0]
	}
	if a.policy == PolicyFT {
		for _, reg := range regions {
			if reg.Pages == 0 {
				continue
			}
			for l := range out {
				out[l] = append(out[l], reg)
			}
		}
		return out
	}
	L := uint64(a.links)
	for _, reg := range regions {
		if reg.Pages == 0 {
			continue
		}
		left, offs := reg.Pages, uint64(0)
		h := a.b
		for r := uint64(0); r < L; r++ {
			if step := left / (L - r); step > 0 {
				out[h] = append(out[h], Region{First: reg.First + offs, Pages: step})
				left -= step
				offs += step
			}
			if h++; h == a.links {
				h = 0
			}
		}
		if a.b++; a.b == a.links {
			a.b = 0
		}
	}
	return out
}
