package bench

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"syscall"
)

// synthSource is a replicate.Source without a guest: memory whose every
// page holds data, and a fixed synthetic dirty set reported at every
// harvest. It drives the data path (grouping, assignment, transfer, apply)
// at the speed of the host alone.
type synthSource struct {
	mem   []byte
	dirty []uint64
	state []byte
}

// newSynthSource maps memBytes of memory, writes every page, and will
// report dirty as the pages dirtied in every epoch.
func newSynthSource(memBytes uint64, dirty []uint64) (*synthSource, error) {
	mem, err := syscall.Mmap(-1, 0, int(memBytes), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		return nil, fmt.Errorf("bench: mapping %d MiB: %w", memBytes>>20, err)
	}
	for off := 0; off < len(mem); off += pageSize {
		mem[off] = byte(off/pageSize) | 1
		mem[off+pageSize-1] = 0x5A
	}
	return &synthSource{mem: mem, dirty: dirty, state: make([]byte, 4096)}, nil
}

func (s *synthSource) Close() { syscall.Munmap(s.mem) }

func (s *synthSource) Pause() error   { return nil }
func (s *synthSource) Resume()        {}
func (s *synthSource) Memory() []byte { return s.mem }

func (s *synthSource) HarvestDirty(dst []uint64) ([]uint64, error) {
	return append(dst, s.dirty...), nil
}

func (s *synthSource) CaptureState() ([]byte, error) { return s.state, nil }

// synthDirty returns a synthetic dirty set of n pages out of a memory of
// pages pages, in one of the dirty guest's patterns: sequential (one run),
// scattered (runs of 1-2 pages, gaps of 1-2), or random (uniform).
func synthDirty(pattern string, n, pages uint64, seed uint64) ([]uint64, error) {
	if n > pages {
		return nil, fmt.Errorf("bench: %d dirty pages out of %d", n, pages)
	}
	r := rand.New(rand.NewPCG(seed, 17))
	out := make([]uint64, 0, n)
	switch pattern {
	case "sequential":
		for p := range n {
			out = append(out, p)
		}
	case "scattered":
		for p := uint64(0); uint64(len(out)) < n && p < pages; {
			run, gap := 1+r.Uint64N(2), 1+r.Uint64N(2)
			for ; run > 0 && uint64(len(out)) < n && p < pages; run-- {
				out = append(out, p)
				p++
			}
			p += gap
		}
	case "random":
		seen := make(map[uint64]bool, n)
		for uint64(len(out)) < n {
			p := r.Uint64N(pages)
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
		slices.Sort(out)
	default:
		return nil, fmt.Errorf("bench: unknown pattern %q", pattern)
	}
	return out, nil
}
