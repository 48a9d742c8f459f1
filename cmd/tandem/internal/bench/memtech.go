package bench

import (
	"fmt"
	"runtime"
	"slices"
	"time"
)

// MemTech is a memory technology of seed 003 Table I, emulated by its
// write/read latency ratio.
type MemTech struct {
	Name   string
	Factor float64
}

// TableI lists the technologies of seed 003 Table I by their write/read
// ratio. RRAM (1000) is only in tandem bench --persist's default factors:
// at its speed a 512 MiB epoch would take minutes.
var TableI = []MemTech{
	{"DRAM", 1},
	{"ST-MRAM", 2},
	{"3D XPoint", 20},
	{"RRAM", 1000},
}

// TechName names a write-latency factor: its Table I technology, or
// "factor F".
func TechName(f float64) string {
	for _, t := range TableI {
		if t.Factor == f {
			return t.Name
		}
	}
	return fmt.Sprintf("factor %g", f)
}

// Bandwidth is what the bench measures of this machine's memory.
type Bandwidth struct {
	// Memcpy is bytes copied per second by copy() between two buffers
	// much larger than the caches: the async staging copy's speed.
	Memcpy float64 `json:"memcpy_Bps"`
	// Write is bytes written per second into a buffer much larger than
	// the caches, from a cache-resident source: DRAM write bandwidth, the
	// base cost of the write-latency model.
	Write float64 `json:"write_Bps"`
	// Trials is how many times each was measured; the best is kept,
	// since other load on the machine only ever slows a trial down.
	Trials int `json:"trials"`
}

// MeasureBandwidth measures memcpy and DRAM write bandwidth with buffers
// of size bytes, keeping the best of trials.
func MeasureBandwidth(size, trials int) Bandwidth {
	a := make([]byte, size)
	b := make([]byte, size)
	for i := range a {
		a[i] = byte(i*131 + 7)
	}
	copy(b, a) // fault every page in
	src := a[:64<<10]
	bw := Bandwidth{Trials: trials}
	for range trials {
		t := time.Now()
		copy(b, a)
		bw.Memcpy = max(bw.Memcpy, float64(size)/time.Since(t).Seconds())
		t = time.Now()
		for off := 0; off < size; off += len(src) {
			copy(b[off:], src)
		}
		bw.Write = max(bw.Write, float64(size)/time.Since(t).Seconds())
	}
	runtime.KeepAlive(b)
	return bw
}

// WriteModel emulates memory whose writes are Factor times slower than
// DRAM's, as seed 003 did: a delay proportional to the bytes written.
// Writing n bytes to DRAM costs n / DRAMWrite seconds; with factor f the
// extra delay is (f-1) times that, so factor 1 (DRAM) adds nothing.
type WriteModel struct {
	DRAMWrite float64 // bytes/s
}

// Extra returns the delay writing n bytes at factor f adds to DRAM's time.
func (m WriteModel) Extra(f float64, n int) time.Duration {
	if f <= 1 || m.DRAMWrite <= 0 || n <= 0 {
		return 0
	}
	return time.Duration((f - 1) * float64(n) / m.DRAMWrite * 1e9)
}

// Delay returns the hook that delays a writer of n bytes at factor f
// (replicate.ReplicaConfig.Delay, replicate.PrimaryConfig.StagingDelay),
// or nil when f adds nothing.
func (m WriteModel) Delay(f float64) func(n int) {
	if f <= 1 || m.DRAMWrite <= 0 {
		return nil
	}
	return func(n int) { waitFor(m.Extra(f, n)) }
}

// spinBelow is the tail of a wait that is spun rather than slept: a sleep
// overshoots by tens of microseconds, as much as a whole small delay.
const spinBelow = 200 * time.Microsecond

// waitFor waits d precisely: sleeping most of it, spinning (and yielding)
// the end.
func waitFor(d time.Duration) {
	if d <= 0 {
		return
	}
	deadline := time.Now().Add(d)
	if d > spinBelow {
		time.Sleep(d - spinBelow)
	}
	for time.Now().Before(deadline) {
		runtime.Gosched()
	}
}

// median returns the median of xs (0 for none), leaving xs unchanged.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
