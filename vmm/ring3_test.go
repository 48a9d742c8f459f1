package vmm

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/images"
)

// ring3Setup returns the pages above 1 MiB that the dirty guest may write
// once, before its loop, when it runs the loop in ring 3: the image (its
// GDT, TSSs and IDT are in .bss) and the page tables after it.
func ring3Setup(mem []byte) (first, end uint64) {
	imageEnd := binary.LittleEndian.Uint64(mem[boot.ParamPageGPA+boot.ParamOffImageEnd:])
	return boot.FlatLoadAddr / PageSize, imageEnd/PageSize + images.UserTablePages(uint64(len(mem)))
}

// TestDirtyGuestRing3 runs the dirty guest's loop in ring 3 with whole
// pages written, and checks what it wrote against the reference model:
// every pattern page, each u64 of it holding the last pass number, the
// page tables it built after its image, and nothing else above 1 MiB.
func TestDirtyGuestRing3(t *testing.T) {
	const mem = 64 << 20
	for _, tracker := range []DirtyTracking{DirtyBitmap, DirtyRing} {
		for _, vcpus := range []int{1, 2} {
			t.Run(fmt.Sprintf("%v/vcpus=%d", tracker, vcpus), func(t *testing.T) {
				p, err := images.ParseDirtyParams("pattern=scattered,pages=3000,passes=2,seed=11,ring=3,bytes=4096", mem, vcpus)
				if err != nil {
					t.Fatal(err)
				}
				tv := newTestVM(t, Config{VCPUs: vcpus, Dirty: tracker, DirtyRingBytes: 1 << 20, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
				tv.start(t)
				res, err := tv.wait(t, 60*time.Second)
				if err != nil || res != (Result{Kind: ExitGuest}) {
					t.Fatalf("result %+v, %v; output %q", res, err, tv.out.String())
				}
				want := p.PassPages(vcpus)
				if line := fmt.Sprintf("dirty: done %d pages\n", 2*len(want)); !strings.Contains(tv.out.String(), line) {
					t.Errorf("output %q, want %q", tv.out.String(), line)
				}
				ram := tv.Memory().Bytes()
				for _, pg := range want {
					page := ram[pg*PageSize : (pg+1)*PageSize]
					for off := 0; off < PageSize; off += 8 {
						if v := binary.LittleEndian.Uint64(page[off:]); v != 2 {
							t.Fatalf("page %#x offset %d holds %d, want the last pass number 2", pg, off, v)
						}
					}
				}
				got := NewDirtySet(tv.Memory().Pages())
				if err := tv.HarvestDirty(got); err != nil {
					t.Fatal(err)
				}
				setupFirst, setupEnd := ring3Setup(ram)
				high := pagesAbove1MiB(t, got, vcpus, setupFirst, setupEnd)
				if !equalPages(high, want) {
					t.Errorf("dirty pages above the page tables differ from the pattern: got %d pages, want %d; first difference %s",
						len(high), len(want), firstDifference(high, want))
				}
				for pg := setupEnd - images.UserTablePages(mem); pg < setupEnd; pg++ {
					if !got.Has(pg) {
						t.Errorf("page-table page %#x not in the dirty set", pg)
					}
				}
			})
		}
	}
}

// TestDirtyGuestRing3Epochs pauses and harvests a ring-3 dirty guest that
// runs forever, the way replication does: once its set-up is harvested,
// every later harvest holds only what the loop writes (its page tables'
// accessed and dirty bits are preset, so the CPU's page walk writes none).
func TestDirtyGuestRing3Epochs(t *testing.T) {
	const mem = 32 << 20
	const vcpus = 2
	p, err := images.ParseDirtyParams("pattern=sequential,pages=1024,passes=0,ring=3", mem, vcpus)
	if err != nil {
		t.Fatal(err)
	}
	tv := newTestVM(t, Config{VCPUs: vcpus, Dirty: DirtyBitmap, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
	tv.start(t)
	ram := tv.Memory().Bytes()
	// passes returns the passes each vCPU has completed.
	passes := func() (done [vcpus]uint64) {
		for i := range done {
			_, done[i] = dirtyStatus(ram, i)
		}
		return done
	}
	// twoMore is true once every vCPU has completed two passes since from:
	// so at least one whole pass each.
	twoMore := func(from [vcpus]uint64) bool {
		now := passes()
		for i := range now {
			if now[i] < from[i]+2 {
				return false
			}
		}
		return true
	}
	poll(t, "both vCPUs to finish a pass", 30*time.Second, func() bool { return twoMore([vcpus]uint64{}) })
	set := NewDirtySet(tv.Memory().Pages())
	want := p.PassPages(vcpus)
	for epoch := range 20 {
		if err := tv.Pause(); err != nil {
			t.Fatal(err)
		}
		set.Reset()
		if err := tv.HarvestDirty(set); err != nil {
			t.Fatal(err)
		}
		from := passes()
		tv.Resume()
		// Epoch 0 holds the set-up and the first passes; from then on, a
		// harvest follows two whole passes.
		if epoch > 0 {
			checkOnePass(t, epoch, set, want, vcpus)
		}
		poll(t, "two more passes on each vCPU", 30*time.Second, func() bool { return twoMore(from) })
	}
}

func checkOnePass(t *testing.T, epoch int, set *DirtySet, want []uint64, vcpus int) {
	t.Helper()
	high := pagesAbove1MiB(t, set, vcpus, 0, 0)
	if !equalPages(high, want) {
		t.Fatalf("epoch %d: dirty pages above 1 MiB differ from one pass: got %d pages, want %d; first difference %s",
			epoch, len(high), len(want), firstDifference(high, want))
	}
}

// BenchmarkDirtyGuestRate measures how fast the dirty guest writes memory
// in ring 0 and in ring 3: untracked, and under the dirty log (bitmap, or
// the ring at its default size) with a pause and harvest every 50 ms as
// replication does, so that each first write to a page after a harvest
// costs a write-protection fault. One iteration is one 50 ms epoch of a
// 2-vCPU, 256 MiB guest writing every page of its region in turn; it
// reports pages written per second, the bytes of them per second (one u64
// or the whole page per write, as bytes says) and the dirty pages
// harvested per epoch.
func BenchmarkDirtyGuestRate(b *testing.B) {
	const (
		mem   = 256 << 20
		vcpus = 2
		epoch = 50 * time.Millisecond
	)
	for _, ring := range []int{0, 3} {
		for _, tracking := range []DirtyTracking{DirtyOff, DirtyBitmap, DirtyRing} {
			for _, bytes := range []int{8, 4096} {
				name := fmt.Sprintf("ring=%d/dirty=%v/bytes=%d", ring, tracking, bytes)
				b.Run(name, func(b *testing.B) {
					p, err := images.ParseDirtyParams(fmt.Sprintf("pattern=sequential,passes=0,ring=%d,bytes=%d", ring, bytes), mem, vcpus)
					if err != nil {
						b.Fatal(err)
					}
					tv := newTestVM(b, Config{VCPUs: vcpus, Dirty: tracking, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
					tv.start(b)
					ram := tv.Memory().Bytes()
					written := func() (n uint64) {
						for i := range vcpus {
							w, _ := dirtyStatus(ram, i)
							n += w
						}
						return n
					}
					poll(b, "the guest to start", 30*time.Second, func() bool { return written() > 0 })
					set := NewDirtySet(tv.Memory().Pages())
					harvest := func() {
						if tracking == DirtyOff {
							return
						}
						if err := tv.Pause(); err != nil {
							b.Fatal(err)
						}
						set.Reset()
						if err := tv.HarvestDirty(set); err != nil {
							b.Fatal(err)
						}
						tv.Resume()
					}
					harvest()
					var harvested int
					from, start := written(), time.Now()
					b.ResetTimer()
					for range b.N {
						time.Sleep(epoch) // the epoch: the guest runs
						harvest()
						harvested += set.Len()
					}
					b.StopTimer()
					rate := float64(written()-from) / time.Since(start).Seconds()
					b.ReportMetric(rate, "pages/s")
					b.ReportMetric(rate*float64(bytes)/1e9, "GB/s")
					b.ReportMetric(float64(harvested)/float64(b.N), "dirty/epoch")
				})
			}
		}
	}
}
