package bench

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandemvm/tandem/vmm"
)

const pageSize = 4096

// Preset is the size of the matrix.
type Preset string

const (
	PresetFull  Preset = "full"
	PresetQuick Preset = "quick" // under 10 minutes on a 2-core machine
	PresetSmoke Preset = "smoke" // under a minute: for the test suite
)

// Config is everything a bench run depends on. DefaultConfig gives each
// preset's values; the command line overrides them.
type Config struct {
	Preset   Preset
	Out      string          // output directory
	LinkRate uint64          // bits per second, per link and direction
	Mems     []uint64        // guest memory sizes, bytes
	Epochs   []time.Duration // epoch intervals
	Duration time.Duration   // measured time of each replication run
	Warmup   time.Duration   // run time before measuring starts
	Factors  []float64       // write-latency factors (seed 003 Table I)
	Patterns []string        // dirty guest patterns, or "linux" (linuxwork.go); the first gets the whole matrix
	Setups   []string        // replication setups to run (names of Setups)
	SGMax    int             // scatter-gather regions per epoch
	Rate     uint64          // dirty guest rate, pages/s; 0 = as fast as it can
	// Ring is the privilege level of the dirty guest's loop
	// (images.DirtyParams.Ring): 3, the default, runs at hardware speed
	// where KVM emulates guest ring 0 (PVM hosts); 0 is the emulator's
	// pace there, as the bench ran before.
	Ring uint64
	// WriteBW, when positive, replaces the measured DRAM write bandwidth
	// (bytes/s) of the write-latency model, for reproducible delays.
	WriteBW float64
	// RecoveryReps is how often each recovery is repeated.
	RecoveryReps int
	// HarvestSizes are the dirty-set sizes (pages) of the harvest
	// experiment; HarvestEpochs the harvests measured per point.
	HarvestSizes  []uint64
	HarvestEpochs int
	// MatrixOnly runs the dirty guest's matrix alone: no data-path,
	// recovery or harvest experiments (tandem bench --persist).
	MatrixOnly bool
	// PipelineTime is how long each data-path microbenchmark runs;
	// PipelineDirty its dirty pages per epoch (scattered).
	PipelineTime  time.Duration
	PipelineDirty uint64
	PipelineMem   uint64
}

// DefaultConfig returns a preset's configuration.
func DefaultConfig(p Preset) Config {
	c := Config{
		Preset:        p,
		Out:           "bench-out",
		LinkRate:      1e9,
		Mems:          []uint64{256 << 20, 512 << 20},
		Epochs:        []time.Duration{25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond},
		Duration:      10 * time.Second,
		Warmup:        time.Second,
		Factors:       []float64{1, 2, 20},
		Patterns:      []string{"scattered", "sequential", "random", linuxPattern},
		Setups:        slices.Clone(DefaultSetups),
		SGMax:         32,
		RecoveryReps:  3,
		HarvestSizes:  []uint64{64, 1024, 16384},
		HarvestEpochs: 20,
		PipelineTime:  2 * time.Second,
		PipelineDirty: 16384,
		PipelineMem:   256 << 20,
		Ring:          3,
	}
	switch p {
	case PresetQuick:
		c.Duration = 3 * time.Second
		c.RecoveryReps = 2
		c.HarvestEpochs = 10
		c.PipelineTime = 1500 * time.Millisecond
	case PresetSmoke:
		c.Mems = []uint64{64 << 20}
		c.Epochs = []time.Duration{50 * time.Millisecond}
		c.Duration = time.Second
		c.Warmup = 500 * time.Millisecond
		c.Factors = []float64{2}
		c.Patterns = []string{"scattered"}
		c.RecoveryReps = 1
		c.HarvestSizes = []uint64{64, 1024}
		c.HarvestEpochs = 4
		c.PipelineTime = 400 * time.Millisecond
		c.PipelineDirty = 2048
		c.PipelineMem = 32 << 20
		// Flat out in ring 3 the guest dirties all of its 64 MiB every
		// epoch, more than the async setup's one link moves in the smoke
		// run's second: pace it near what ring 0 reaches on PVM hosts.
		c.Rate = 40000
	}
	return c
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch {
	case c.Out == "":
		return errors.New("no output directory")
	case c.LinkRate < 1e6:
		return fmt.Errorf("link rate %d bit/s: want at least 1mbit", c.LinkRate)
	case len(c.Mems) == 0, len(c.Epochs) == 0, len(c.Factors) == 0, len(c.Patterns) == 0, len(c.Setups) == 0:
		return errors.New("empty --mem, --epochs, --factors, --patterns or --setups")
	case c.Duration < 200*time.Millisecond:
		return fmt.Errorf("duration %v: want at least 200ms", c.Duration)
	case c.Warmup < 0:
		return fmt.Errorf("warm-up %v is negative", c.Warmup)
	case c.SGMax < 1:
		return fmt.Errorf("sg-max %d: want at least 1", c.SGMax)
	case c.Ring != 0 && c.Ring != 3:
		return fmt.Errorf("ring %d: want 0 or 3", c.Ring)
	}
	for _, m := range c.Mems {
		if m < 16<<20 || m%(2<<20) != 0 {
			return fmt.Errorf("memory size %d: want a multiple of 2 MiB, at least 16 MiB", m)
		}
	}
	for _, e := range c.Epochs {
		if e < time.Millisecond {
			return fmt.Errorf("epoch %v: want at least 1ms", e)
		}
	}
	for _, f := range c.Factors {
		if f < 1 || math.IsInf(f, 0) || math.IsNaN(f) {
			return fmt.Errorf("factor %g: want at least 1", f)
		}
	}
	for _, p := range c.Patterns {
		if p != "scattered" && p != "sequential" && p != "random" && p != linuxPattern {
			return fmt.Errorf("pattern %q: want scattered, sequential, random or linux", p)
		}
	}
	for _, s := range c.Setups {
		if _, ok := LookupSetup(s); !ok {
			return fmt.Errorf("setup %q: want one of %s", s, strings.Join(SetupNames(), ", "))
		}
	}
	return nil
}

// Setup is a replication configuration of the matrix.
type Setup struct {
	Name   string // as in seed 003 Table III: async is qemu-mc's role
	ID     string // file-name form
	Mode   string // "" (no replication), "sync" or "async"
	Policy string // "fast" or "ft"
	Links  int
	// Persist makes every epoch durable on the primary's host too, in a
	// directory on a RAM file system whose writes are slowed to the
	// run's write-latency factor (tandem run --persist); alone, it is
	// the only protection (replicate.Local).
	Persist bool
}

// Setups are the configurations the issue asks for. async sends over one
// link, as qemu-mc's single TCP stream did.
var Setups = []Setup{
	{Name: "none", ID: "none"},
	{Name: "async", ID: "async", Mode: "async", Policy: "fast", Links: 1},
	{Name: "fast(2)", ID: "fast2", Mode: "sync", Policy: "fast", Links: 2},
	{Name: "fast(4)", ID: "fast4", Mode: "sync", Policy: "fast", Links: 4},
	{Name: "ft(4)", ID: "ft4", Mode: "sync", Policy: "ft", Links: 4},
	// Not in seed 003 and not run by default: async over every link.
	{Name: "async(4)", ID: "async4", Mode: "async", Policy: "fast", Links: 4},
	// Persistence (tandem bench --persist): alone and with replication.
	{Name: "persist", ID: "persist", Persist: true},
	{Name: "async+persist", ID: "asyncp", Mode: "async", Policy: "fast", Links: 1, Persist: true},
	{Name: "fast(2)+persist", ID: "fast2p", Mode: "sync", Policy: "fast", Links: 2, Persist: true},
}

// Protected says whether the setup protects the VM at all: the
// baseline ("none") does not.
func (s Setup) Protected() bool { return s.Links > 0 || s.Persist }

// DefaultSetups are the setups the bench runs unless told otherwise.
var DefaultSetups = []string{"none", "async", "fast2", "fast4", "ft4"}

// PersistSetups and PersistFactors are what tandem bench --persist runs:
// no protection, local persistence, replication (async and sync), both,
// at every technology of seed 003 Table I and RRAM's ×1000.
var (
	PersistSetups  = []string{"none", "persist", "async", "fast2", "asyncp", "fast2p"}
	PersistFactors = []float64{1, 2, 20, 1000}
)

// SetupNames lists the setups' IDs.
func SetupNames() []string {
	var s []string
	for _, x := range Setups {
		s = append(s, x.ID)
	}
	return s
}

// LookupSetup finds a setup by ID or name.
func LookupSetup(s string) (Setup, bool) {
	for _, x := range Setups {
		if x.ID == s || x.Name == s {
			return x, true
		}
	}
	return Setup{}, false
}

// RunSpec is one run of the dirty guest.
type RunSpec struct {
	ID       string        `json:"id"`
	Setup    string        `json:"setup"` // a Setup's ID
	Pattern  string        `json:"pattern"`
	MemBytes uint64        `json:"mem_bytes"`
	Epoch    time.Duration `json:"epoch_ns"` // 0 for none
	Factor   float64       `json:"factor"`   // 0 for none
	Rep      int           `json:"rep"`      // repetition of a baseline
}

// SetupOf returns the spec's Setup.
func (r RunSpec) SetupOf() Setup {
	s, _ := LookupSetup(r.Setup)
	return s
}

func runID(setup, pattern string, mem uint64, epoch time.Duration, factor float64, rep int) string {
	if setup == "none" {
		return fmt.Sprintf("%s-%dM-none-%d", pattern, mem>>20, rep)
	}
	return fmt.Sprintf("%s-%dM-%s-e%d-f%g", pattern, mem>>20, setup, epoch.Milliseconds(), factor)
}

// Matrix lists the runs of the dirty guest. For every memory size: the
// first pattern gets every replicated setup at every epoch and factor,
// with a no-replication baseline before the first factor and after each
// (so that every run has a baseline shortly before and after it: the
// emulated guest's speed drifts with the load on the machine); every other
// pattern gets a baseline and each replicated setup at the middle epoch
// and the first factor. Quick and smoke presets run only the first memory
// size (recovery and harvest still use all).
func (c *Config) Matrix() []RunSpec {
	mems := c.Mems
	if c.Preset != PresetFull {
		mems = mems[:1]
	}
	var setups []string
	hasNone := false
	for _, s := range c.Setups {
		if x, _ := LookupSetup(s); !x.Protected() {
			hasNone = true
		} else {
			setups = append(setups, x.ID)
		}
	}
	var out []RunSpec
	add := func(setup, pattern string, mem uint64, e time.Duration, f float64, rep int) {
		if setup == "none" {
			e, f = 0, 0
		}
		out = append(out, RunSpec{ID: runID(setup, pattern, mem, e, f, rep), Setup: setup, Pattern: pattern, MemBytes: mem, Epoch: e, Factor: f, Rep: rep})
	}
	for _, mem := range mems {
		for pi, pat := range c.Patterns {
			if hasNone {
				add("none", pat, mem, 0, 0, 0)
			}
			if pi == 0 {
				for fi, f := range c.Factors {
					for _, e := range c.Epochs {
						for _, s := range setups {
							add(s, pat, mem, e, f, 0)
						}
					}
					if hasNone {
						add("none", pat, mem, 0, 0, fi+1)
					}
				}
				continue
			}
			for _, s := range setups {
				add(s, pat, mem, c.Epochs[len(c.Epochs)/2], c.Factors[0], 0)
			}
		}
	}
	return out
}

// MaxLinks is the most links any setup of the configuration uses.
func (c *Config) MaxLinks() int {
	n := 0
	for _, s := range c.Setups {
		x, _ := LookupSetup(s)
		n = max(n, x.Links)
	}
	return n
}

// RecoveryReplicas are the replica counts of the recovery experiment.
func (c *Config) RecoveryReplicas() []int {
	var out []int
	for _, n := range []int{1, 2, 4} {
		if n <= max(c.MaxLinks(), 1) {
			out = append(out, n)
		}
	}
	return out
}

// ParseRate parses a link rate in bits per second as tc writes it: 1gbit,
// 500mbit, 10kbit, or a plain number; 1g is 1gbit. (tc's "bps" units are
// bytes per second, a classic mix-up, so they are refused.)
func ParseRate(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "bit")
	mult := 1.0
	switch {
	case strings.HasSuffix(t, "g"):
		mult, t = 1e9, strings.TrimSuffix(t, "g")
	case strings.HasSuffix(t, "m"):
		mult, t = 1e6, strings.TrimSuffix(t, "m")
	case strings.HasSuffix(t, "k"):
		mult, t = 1e3, strings.TrimSuffix(t, "k")
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) {
		return 0, fmt.Errorf("link rate %q: want e.g. 1gbit, 500mbit", s)
	}
	return uint64(v * mult), nil
}

// FormatRate formats bits per second the way ParseRate reads them.
func FormatRate(bits uint64) string {
	switch {
	case bits%1e9 == 0:
		return fmt.Sprintf("%dgbit", bits/1e9)
	case bits%1e6 == 0:
		return fmt.Sprintf("%dmbit", bits/1e6)
	case bits%1e3 == 0:
		return fmt.Sprintf("%dkbit", bits/1e3)
	}
	return fmt.Sprintf("%dbit", bits)
}

// ParseList splits a comma-separated list and parses each element.
func ParseList[T any](s string, parse func(string) (T, error)) ([]T, error) {
	var out []T
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := parse(f)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list %q", s)
	}
	return out, nil
}

// ParseMem parses a memory size (256M, 1G).
func ParseMem(s string) (uint64, error) { return vmm.ParseMemSize(s) }

// ParseFactor parses a write-latency factor.
func ParseFactor(s string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 1 {
		return 0, fmt.Errorf("factor %q: want a number, at least 1", s)
	}
	return f, nil
}

// ParseString accepts any element.
func ParseString(s string) (string, error) { return s, nil }
