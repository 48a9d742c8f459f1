package images

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/tandemvm/tandem/boot"
)

// Pattern is the order in which the dirty guest writes pages.
type Pattern int

const (
	// PatternSequential writes every page of each vCPU's part in
	// ascending order.
	PatternSequential Pattern = iota
	// PatternRandom writes pages drawn with xorshift64 from each vCPU's
	// part, Count per pass (repeats possible).
	PatternRandom
	// PatternScattered writes runs of 1-2 pages separated by gaps of 1-2
	// clean pages, the lengths drawn with xorshift64.
	PatternScattered
)

func (p Pattern) String() string {
	switch p {
	case PatternSequential:
		return "sequential"
	case PatternRandom:
		return "random"
	case PatternScattered:
		return "scattered"
	}
	return fmt.Sprintf("Pattern(%d)", int(p))
}

// ParsePattern parses "sequential" (or "seq"), "random" or "scattered".
func ParsePattern(s string) (Pattern, error) {
	switch s {
	case "sequential", "seq":
		return PatternSequential, nil
	case "random":
		return PatternRandom, nil
	case "scattered":
		return PatternScattered, nil
	}
	return 0, fmt.Errorf("unknown pattern %q (want sequential, random or scattered)", s)
}

// The dirty guest's status slot, at StatusGPA + vcpu*StatusSlotBytes: four
// little-endian u64s.
const (
	DirtyStatusPagesOffset  = 0  // pages written so far, repeats included
	DirtyStatusPassesOffset = 8  // passes completed
	DirtyStatusStateOffset  = 16 // DirtyStateRunning or DirtyStateDone
	DirtyStatusMagicOffset  = 24 // DirtyStatusMagic once the vCPU started

	DirtyStateRunning = 1
	DirtyStateDone    = 2
)

// DirtyStatus is one vCPU's status slot of the dirty guest.
type DirtyStatus struct {
	PagesWritten uint64
	Passes       uint64
	State        uint64
	Magic        uint64
}

// DecodeDirtyStatus decodes a status slot (at least 32 bytes).
func DecodeDirtyStatus(slot []byte) (DirtyStatus, error) {
	if len(slot) < 32 {
		return DirtyStatus{}, fmt.Errorf("dirty status slot: %d bytes, want at least 32", len(slot))
	}
	le := binary.LittleEndian
	return DirtyStatus{
		PagesWritten: le.Uint64(slot[DirtyStatusPagesOffset:]),
		Passes:       le.Uint64(slot[DirtyStatusPassesOffset:]),
		State:        le.Uint64(slot[DirtyStatusStateOffset:]),
		Magic:        le.Uint64(slot[DirtyStatusMagicOffset:]),
	}, nil
}

// DirtyParams are the dirty guest's arguments (args[0..6] of the parameter
// page). The region [FirstPage, FirstPage+Pages) is in page numbers
// (GPA / 4096); with N vCPUs, vCPU i works on
// [FirstPage + i*Pages/N, FirstPage + (i+1)*Pages/N) with seed Seed+i.
type DirtyParams struct {
	Pattern   Pattern
	FirstPage uint64
	Pages     uint64
	// Rate is pages per second for the whole guest (each vCPU writes
	// Rate/N); 0 means as fast as possible. The guest ignores it if the
	// VMM does not know the TSC frequency.
	Rate uint64
	// Passes over the pattern; 0 means forever.
	Passes uint64
	// Seed of the xorshift64 PRNG (random and scattered); 0 selects
	// the guest's fixed default state.
	Seed uint64
	// Count is, for the random pattern, the pages written per pass by the
	// whole guest, split among the vCPUs like the region; 0 means Pages.
	Count uint64
	// Ring is the privilege level the dirty loop runs in: 0, or 3, where
	// hosts without hardware virtualization run guest code at hardware
	// speed rather than in KVM's instruction emulator. In ring 3 the
	// guest builds page tables in the pages from the end of its image
	// (UserTablePages of them), so the region starts above them.
	Ring uint64
	// Bytes is how much of each dirtied page the guest writes, from the
	// page's start: a multiple of 8 up to 4096; 0 means 8 (one u64).
	Bytes uint64
}

// UserTablePages is how many pages from the end of the image the dirty
// guest's ring-3 page tables take in a VM with memBytes of RAM: a PML4, a
// PDPT and one page directory per GiB.
func UserTablePages(memBytes uint64) uint64 {
	return 2 + (memBytes+1<<30-1)>>30
}

const (
	pageSize = 4096
	// maxVCPUs is the most vCPUs the boot ABI gives stacks to.
	maxVCPUs = boot.MaxFlatVCPUs
	// defaultSeed is the xorshift64 state the guest uses for seed 0.
	defaultSeed = 0x9E3779B97F4A7C15
)

// DefaultDirtyParams are the defaults for a VM with memBytes of RAM: the
// sequential pattern over the region from the first 2 MiB boundary at or
// after 4 MiB (and after the ring-3 page tables) to the end of RAM, at
// full speed, forever, with seed 1, in ring 0, one u64 per page.
func DefaultDirtyParams(memBytes uint64) DirtyParams {
	first := defaultFirstPage(memBytes)
	var pages uint64
	if memPages := memBytes / pageSize; memPages > first {
		pages = memPages - first
	}
	return DirtyParams{Pattern: PatternSequential, FirstPage: first, Pages: pages, Seed: 1}
}

func defaultFirstPage(memBytes uint64) uint64 {
	const twoMiB = 2 << 20
	start := max(uint64(4<<20), dirtyImageEnd()+UserTablePages(memBytes)*pageSize)
	return (start + twoMiB - 1) / twoMiB * twoMiB / pageSize
}

// dirtyImageEnd is the image_end the VMM reports for the dirty guest: the
// first page boundary after the image.
func dirtyImageEnd() uint64 {
	return (boot.FlatLoadAddr + uint64(len(dirtyImage)) + pageSize - 1) / pageSize * pageSize
}

// ParseDirtyParams parses a "key=value,..." spec with the keys pattern,
// first, pages, rate, passes, seed, count, ring and bytes, starting from
// DefaultDirtyParams(memBytes). If first is given but pages is not, the
// region runs to the end of RAM. The result is checked with Validate.
func ParseDirtyParams(spec string, memBytes uint64, vcpus int) (DirtyParams, error) {
	p := DefaultDirtyParams(memBytes)
	pagesGiven := false
	err := parseSpec("dirty", spec, func(key, value string) error {
		switch key {
		case "pattern":
			pat, err := ParsePattern(value)
			if err != nil {
				return errors.New("want sequential, random or scattered")
			}
			p.Pattern = pat
			return nil
		case "first":
			return parseUint(&p.FirstPage, value)
		case "pages":
			pagesGiven = true
			return parseUint(&p.Pages, value)
		case "rate":
			return parseUint(&p.Rate, value)
		case "passes":
			return parseUint(&p.Passes, value)
		case "seed":
			return parseUint(&p.Seed, value)
		case "count":
			return parseUint(&p.Count, value)
		case "ring":
			return parseUint(&p.Ring, value)
		case "bytes":
			return parseUint(&p.Bytes, value)
		}
		return errUnknownKey
	})
	if err != nil {
		return DirtyParams{}, err
	}
	if !pagesGiven {
		p.Pages = 0
		if memPages := memBytes / pageSize; memPages > p.FirstPage {
			p.Pages = memPages - p.FirstPage
		}
	}
	if err := p.Validate(memBytes, vcpus); err != nil {
		return DirtyParams{}, err
	}
	return p, nil
}

// Validate checks that p fits a VM with memBytes of RAM and vcpus vCPUs:
// the region lies between the end of the guest image and the end of RAM
// (and, in ring 3, its page tables) and the end of RAM and gives every
// vCPU at least one page. The guest itself checks its arguments too and
// exits with ExitBadArgs.
func (p DirtyParams) Validate(memBytes uint64, vcpus int) error {
	memPages := memBytes / pageSize
	lowest := dirtyImageEnd() / pageSize
	below := "the end of the guest image"
	if p.Ring == 3 {
		lowest += UserTablePages(memBytes)
		below = "the end of the guest image and its ring-3 page tables"
	}
	switch {
	case p.Ring != 0 && p.Ring != 3:
		return fmt.Errorf("dirty args: ring=%d: want 0 or 3", p.Ring)
	case p.Bytes%8 != 0 || p.Bytes > pageSize:
		return fmt.Errorf("dirty args: bytes=%d: want a multiple of 8 up to %d", p.Bytes, pageSize)
	case vcpus < 1 || vcpus > maxVCPUs:
		return fmt.Errorf("dirty args: %d vCPUs, the guest supports 1 to %d", vcpus, maxVCPUs)
	case p.Pattern < PatternSequential || p.Pattern > PatternScattered:
		return fmt.Errorf("dirty args: pattern: unknown pattern %d", int(p.Pattern))
	case p.FirstPage < lowest:
		return fmt.Errorf("dirty args: first=%d: the region must start at or above page %d (%s)", p.FirstPage, lowest, below)
	case p.FirstPage >= memPages:
		return fmt.Errorf("dirty args: first=%d: beyond the end of RAM (%d pages)", p.FirstPage, memPages)
	case p.Pages == 0:
		return errors.New("dirty args: pages: the region is empty")
	case p.Pages > memPages-p.FirstPage:
		return fmt.Errorf("dirty args: pages=%d: the region [%d, %d) ends beyond RAM (%d pages)",
			p.Pages, p.FirstPage, p.FirstPage+p.Pages, memPages)
	case p.Pages < uint64(vcpus):
		return fmt.Errorf("dirty args: pages=%d: fewer pages than the %d vCPUs that share them", p.Pages, vcpus)
	case p.Count != 0 && p.Pattern != PatternRandom:
		return fmt.Errorf("dirty args: count=%d: only the random pattern takes a count", p.Count)
	}
	return nil
}

// Args returns the parameter page's args for p.
func (p DirtyParams) Args() []uint64 {
	return []uint64{uint64(p.Pattern), p.FirstPage, p.Pages, p.Rate, p.Passes, p.Seed, p.Count, p.Ring, p.Bytes}
}

// xorshift64 is the guest's PRNG step.
func xorshift64(x uint64) uint64 {
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	return x
}

// PassPages is the reference model of the guest: the sorted, de-duplicated
// page numbers that one pass dirties with vcpus vCPUs. Every pass dirties
// the same pages (each pass restarts the PRNG). It returns nil if vcpus < 1.
func (p DirtyParams) PassPages(vcpus int) []uint64 {
	if vcpus < 1 {
		return nil
	}
	n := uint64(vcpus)
	count := p.Count
	if count == 0 {
		count = p.Pages
	}
	var pages []uint64
	for i := range n {
		first := p.FirstPage + i*p.Pages/n
		end := p.FirstPage + (i+1)*p.Pages/n
		state := p.Seed + i
		if state == 0 {
			state = defaultSeed
		}
		switch p.Pattern {
		case PatternSequential:
			for page := first; page < end; page++ {
				pages = append(pages, page)
			}
		case PatternRandom:
			if end == first {
				break
			}
			draws := (i+1)*count/n - i*count/n
			for range draws {
				state = xorshift64(state)
				pages = append(pages, first+state%(end-first))
			}
		case PatternScattered:
			for page := first; page < end; {
				state = xorshift64(state)
				run, gap := 1+state&1, 1+(state>>1)&1
				for j := uint64(0); j < run && page < end; j++ {
					pages = append(pages, page)
					page++
				}
				page += gap
			}
		}
	}
	slices.Sort(pages)
	return slices.Compact(pages)
}
