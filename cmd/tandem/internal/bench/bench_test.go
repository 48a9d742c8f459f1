package bench

import (
	"errors"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem-plot/figure"
	"github.com/tandemvm/tandem/cmd/tandem-plot/render"
	"github.com/tandemvm/tandem/replicate"
)

// drawInProcess draws a bench directory's plots as tandem-plot does, in
// the test's process.
func drawInProcess(dir string) error {
	_, err := render.Dir(dir)
	return err
}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol*math.Max(1, math.Abs(b)) }

func TestSummarize(t *testing.T) {
	var xs []float64
	for i := 100; i >= 1; i-- {
		xs = append(xs, float64(i))
	}
	s := Summarize(xs)
	if s.N != 100 || s.Mean != 50.5 || s.P50 != 50 || s.P99 != 99 || s.Min != 1 || s.Max != 100 {
		t.Errorf("Summarize(1..100) = %+v", s)
	}
	if xs[0] != 100 {
		t.Error("Summarize reordered its input")
	}
	if s := Summarize(nil); s != (Stat{}) {
		t.Errorf("Summarize(nil) = %+v", s)
	}
	if s := Summarize([]float64{7}); s.P50 != 7 || s.P99 != 7 || s.Mean != 7 {
		t.Errorf("Summarize([7]) = %+v", s)
	}
	// Nearest rank: 10 values, p99 is the 10th, p50 the 5th.
	if p := Percentile([]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 50); p != 5 {
		t.Errorf("p50 = %v, want 5", p)
	}
	if p := Percentile(nil, 50); !math.IsNaN(p) {
		t.Errorf("p50 of nothing = %v, want NaN", p)
	}
}

func TestImbalance(t *testing.T) {
	for _, c := range []struct {
		counts []uint64
		want   float64
	}{
		{nil, 0},
		{[]uint64{0, 0}, 0},
		{[]uint64{100, 100, 100, 100}, 0},
		{[]uint64{150, 50}, 50},
		{[]uint64{200, 100, 100, 0}, 100},
	} {
		if got := Imbalance(c.counts); !near(got, c.want, 1e-9) {
			t.Errorf("Imbalance(%v) = %v, want %v", c.counts, got, c.want)
		}
	}
}

func TestWriteModel(t *testing.T) {
	m := WriteModel{DRAMWrite: 1e9} // 1 ns per byte
	for _, c := range []struct {
		f    float64
		n    int
		want time.Duration
	}{
		{1, 1 << 20, 0},
		{2, 1e6, time.Millisecond},
		{20, 1e6, 19 * time.Millisecond},
		{2, 0, 0},
	} {
		if got := m.Extra(c.f, c.n); got != c.want {
			t.Errorf("Extra(%g, %d) = %v, want %v", c.f, c.n, got, c.want)
		}
	}
	if m.Delay(1) != nil {
		t.Error("factor 1 (DRAM) has a delay hook")
	}
	if (WriteModel{}).Delay(2) != nil {
		t.Error("an uncalibrated model has a delay hook")
	}
	// The hook waits at least the extra time and not much more, for a
	// short delay (spun) and a longer one (slept, then spun).
	for _, n := range []int{100e3, 3e6} {
		want := m.Extra(2, n)
		start := time.Now()
		m.Delay(2)(n)
		got := time.Since(start)
		if got < want || got > want+20*time.Millisecond {
			t.Errorf("Delay(2)(%d) waited %v, want %v", n, got, want)
		}
	}
}

func TestTechName(t *testing.T) {
	if TechName(1) != "DRAM" || TechName(2) != "ST-MRAM" || TechName(20) != "3D XPoint" || TechName(5) != "factor 5" {
		t.Error("TechName does not follow seed 003 Table I")
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]uint64{
		"1gbit": 1e9, "500mbit": 500e6, "2.5gbit": 2.5e9, "100kbit": 1e5, "1000": 1000, "1G": 1e9,
	} {
		got, err := ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
		if back, err := ParseRate(FormatRate(got)); err != nil || back != got {
			t.Errorf("FormatRate(%d) = %q does not parse back", got, FormatRate(got))
		}
	}
	for _, bad := range []string{"", "fast", "-1gbit", "0", "1gbps"} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) succeeded", bad)
		}
	}
}

func TestMatrix(t *testing.T) {
	for _, c := range []struct {
		p    Preset
		runs int
	}{
		// per memory size: 4 baselines + 4 setups x 3 epochs x 3 factors
		// for the first pattern, 1 baseline + 4 setups for each other
		// (two more of the dirty guest, and linux).
		{PresetFull, 2 * (4 + 36 + 3*5)},
		{PresetQuick, 4 + 36 + 3*5},
		{PresetSmoke, 2 + 4},
	} {
		cfg := DefaultConfig(c.p)
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s: %v", c.p, err)
		}
		m := cfg.Matrix()
		if len(m) != c.runs {
			t.Errorf("%s: %d runs, want %d", c.p, len(m), c.runs)
		}
		seen := map[string]bool{}
		for _, r := range m {
			if seen[r.ID] {
				t.Errorf("%s: run %s twice", c.p, r.ID)
			}
			seen[r.ID] = true
			if (r.Setup == "none") != (r.Epoch == 0 && r.Factor == 0) {
				t.Errorf("%s: run %+v: only baselines lack an epoch and a factor", c.p, r)
			}
		}
		if m[0].Setup != "none" || m[0].Pattern != cfg.Patterns[0] {
			t.Errorf("%s: the matrix does not start with a baseline: %+v", c.p, m[0])
		}
	}
	cfg := DefaultConfig(PresetQuick)
	cfg.Setups = []string{"fast4"}
	if m := cfg.Matrix(); len(m) != 9+3 || slices.ContainsFunc(m, func(r RunSpec) bool { return r.Setup != "fast4" }) {
		t.Errorf("--setups fast4: %d runs", len(m))
	}
	// tandem bench --persist: persistence alone is a protected setup with
	// an epoch and a factor, not a baseline.
	cfg.Setups, cfg.Factors, cfg.Epochs, cfg.Patterns = PersistSetups, PersistFactors, []time.Duration{50 * time.Millisecond}, cfg.Patterns[:1]
	m := cfg.Matrix()
	if len(m) != 1+4*(5+1) {
		t.Errorf("--persist: %d runs, want 25", len(m))
	}
	persisted := 0
	for _, r := range m {
		if r.SetupOf().Persist {
			persisted++
			if r.Epoch != 50*time.Millisecond || r.Factor == 0 {
				t.Errorf("--persist: run %+v lacks its epoch or factor", r)
			}
		}
	}
	if persisted != 3*4 {
		t.Errorf("--persist: %d persisted runs, want 12", persisted)
	}
}

func TestValidate(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"no out":      func(c *Config) { c.Out = "" },
		"slow link":   func(c *Config) { c.LinkRate = 10 },
		"small mem":   func(c *Config) { c.Mems = []uint64{1 << 20} },
		"factor 0.5":  func(c *Config) { c.Factors = []float64{0.5} },
		"bad pattern": func(c *Config) { c.Patterns = []string{"zigzag"} },
		"bad setup":   func(c *Config) { c.Setups = []string{"fast3"} },
		"short":       func(c *Config) { c.Duration = time.Millisecond },
		"epoch":       func(c *Config) { c.Epochs = []time.Duration{time.Microsecond} },
	} {
		c := DefaultConfig(PresetQuick)
		mod(&c)
		if c.Validate() == nil {
			t.Errorf("%s: Validate accepted it", name)
		}
	}
}

func TestStaleNamespaces(t *testing.T) {
	names := []string{"tandem-bench-100-0", "tandem-bench-100-1", "tandem-bench-200-0", "other", "tandem-bench-x-0", "tdm1234-sw"}
	alive := func(pid int) bool { return pid == 200 }
	got := staleNamespaces(names, alive)
	want := []string{"tandem-bench-100-0", "tandem-bench-100-1", "tandem-bench-x-0"}
	if !slices.Equal(got, want) {
		t.Errorf("stale = %v, want %v", got, want)
	}
}

func TestTBF(t *testing.T) {
	args := strings.Join(tbfArgs("eth0", 1e9), " ")
	if args != "qdisc replace dev eth0 root tbf rate 1000000000bit burst 125000 latency 100ms" {
		t.Errorf("tbf args: %s", args)
	}
	if tbfBurst(1e6) != 64<<10 {
		t.Errorf("burst at 1 Mbit/s: %d", tbfBurst(1e6))
	}
}

func TestSynthDirty(t *testing.T) {
	for _, pat := range []string{"sequential", "scattered", "random"} {
		d, err := synthDirty(pat, 1000, 8192, 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(d) != 1000 {
			t.Errorf("%s: %d pages", pat, len(d))
		}
		for i := 1; i < len(d); i++ {
			if d[i] <= d[i-1] || d[i] >= 8192 {
				t.Fatalf("%s: pages not ascending within memory at %d: %d, %d", pat, i, d[i-1], d[i])
			}
		}
		if pat == "scattered" {
			// Runs of 1-2 pages, gaps of 1-2.
			for i := 1; i < len(d); i++ {
				if gap := d[i] - d[i-1] - 1; gap > 2 {
					t.Fatalf("scattered: gap of %d pages", gap)
				}
			}
		}
	}
	if _, err := synthDirty("sequential", 10, 5, 1); err == nil {
		t.Error("more dirty pages than memory accepted")
	}
}

func TestMachineModel(t *testing.T) {
	env := Env{Config: Config{LinkRate: 1e9}, Bandwidth: Bandwidth{Memcpy: 10e9}, WriteBW: 10e9}
	m := machineModel(env)
	// 1e6 bytes at 125e6 B/s = 8 ms; at 10e9 B/s = 0.1 ms.
	if !near(m.LinkMsPerMB, 8, 1e-9) || !near(m.MemcpyMsPerMB, 0.1, 1e-9) || !near(m.WriteMsPerMB, 0.1, 1e-9) {
		t.Errorf("coefficients %+v", m)
	}
	// Crossover: (f-1) * 0.75 * 0.1 = 8/4 - 0.1  =>  f = 1 + 1.9/0.075.
	if !near(m.CrossoverF4, 1+1.9/0.075, 1e-9) {
		t.Errorf("crossover factor %v", m.CrossoverF4)
	}
	// Parity at factor 2: per byte 0.1 + 0.075 ms/MB = 1/(4L)  =>  L = 1/0.7 MB/ms.
	if !near(m.LinkForParity2, 1/0.7*8, 1e-9) {
		t.Errorf("link for parity %v Gbit/s", m.LinkForParity2)
	}
}

func TestEpochBound(t *testing.T) {
	env := &Env{Config: Config{LinkRate: 1e9}, Bandwidth: Bandwidth{Memcpy: 10e9}, WriteBW: 1e9}
	f4, _ := LookupSetup("fast4")
	ft4, _ := LookupSetup("ft4")
	as, _ := LookupSetup("async")
	p, _ := LookupSetup("persist")
	asp, _ := LookupSetup("asyncp")
	f2p, _ := LookupSetup("fast2p")
	for _, c := range []struct {
		setup  Setup
		factor float64
		want   float64
	}{
		{f4, 1, 8},         // 4 MB over 4 x 125 MB/s
		{f4, 2, 8 + 1},     // + 1 MB per replica at 1 ns/byte
		{ft4, 1, 32},       // every link carries all 4 MB
		{ft4, 20, 32 + 76}, // + 19 x 4 MB at 1 ns/byte
		{as, 1, 0.4},       // memcpy at 10 GB/s
		{as, 2, 0.4 + 4},   // + the staging copy's delay
		{p, 1000, 0.4},     // the record's copy; its writes follow the pause
		{asp, 2, 0.4 + 0.4 + 4},
		{f2p, 1, 0.4 + 16},                   // 4 MB over 2 links outlasts writing 2 x 4 MB at 1 ns/byte
		{f2p, 20, 0.4 + 2*(4+76)},            // the record and the memory file at ×20 outlast the links
		{f2p, 2, 0.4 + max(16+2, 2*(4+4.0))}, // links + 2 MB per replica at ×2 vs 2 x 8 ms
	} {
		if got := epochBound(env, c.setup, c.factor, 4e6); !near(got, c.want, 1e-9) {
			t.Errorf("bound %s x%g = %v ms, want %v", c.setup.Name, c.factor, got, c.want)
		}
	}
}

// writeTrace writes trace records to dir/rel.
func writeTrace(t *testing.T, dir, rel string, recs []replicate.EpochTrace) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := replicate.NewTraceWriter(f)
	for i := range recs {
		if err := w.Write(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
}

// writeRun writes the raw data of a made-up run of setup into dir: pages
// written in its 2 s window from t0+1s, 100 ms epochs traced by recs.
func writeRun(t *testing.T, dir string, t0 time.Time, id, setup string, mem uint64, factor float64, pages uint64, recs []replicate.EpochTrace) {
	t.Helper()
	spec := RunSpec{ID: id, Setup: setup, Pattern: "scattered", MemBytes: mem, Factor: factor}
	if setup != "none" {
		spec.Epoch = 100 * time.Millisecond
	}
	raw := RawRun{Spec: spec, Start: t0, WindowStart: t0.Add(time.Second), WindowEnd: t0.Add(3 * time.Second),
		PagesStart: 1000, PagesEnd: 1000 + pages,
		Samples: []ProgressSample{{T: 1, Pages: 1000}, {T: 2, Pages: 1000 + pages/2}, {T: 3, Pages: 1000 + pages}}}
	if recs != nil {
		raw.Trace = filepath.Join(tracesDir, id+".jsonl")
		writeTrace(t, dir, raw.Trace, recs)
	}
	if err := writeJSON(dir, filepath.Join(runsDir, id+".json"), raw); err != nil {
		t.Fatal(err)
	}
}

// fakeOutput builds an output directory as a bench run leaves it, for a
// smoke-sized configuration: baselines, async and fast(4) runs with
// traces, recovery, harvest and pipeline data.
func fakeOutput(t *testing.T) string {
	dir := t.TempDir()
	for _, d := range []string{tracesDir, runsDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := DefaultConfig(PresetSmoke)
	cfg.Out = dir
	cfg.Factors = []float64{1, 2}
	cfg.Epochs = []time.Duration{100 * time.Millisecond}
	cfg.Setups = []string{"none", "async", "fast4"}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	env := Env{Started: t0, Finished: t0.Add(time.Minute), Config: cfg, CPUs: 2, Tandem: "test",
		Bandwidth: Bandwidth{Memcpy: 10e9, Write: 20e9, Trials: 5}, WriteBW: 20e9,
		LinkTCP: []float64{119e6, 119e6, 119e6, 119e6}, Loopback: map[int]float64{1: 3e9, 2: 3.5e9, 4: 4e9},
		GuestVCPUs: 1, Tracking: "bitmap"}
	if err := writeJSON(dir, envFile, env); err != nil {
		t.Fatal(err)
	}
	mem := cfg.Mems[0]
	run := func(id, setup string, factor float64, pages uint64, recs []replicate.EpochTrace) {
		writeRun(t, dir, t0, id, setup, mem, factor, pages, recs)
	}
	// Baselines: 60000 and 40000 pages in 2 s: 25000 pages/s on average.
	run("scattered-64M-none-0", "none", 0, 60000, nil)
	run("scattered-64M-none-1", "none", 0, 40000, nil)
	epochs := func(mode string, links int, pauses ...time.Duration) []replicate.EpochTrace {
		recs := []replicate.EpochTrace{{Epoch: 1, Time: t0, Mode: "initial", TransferredPages: 9999}}
		for i, p := range pauses {
			lb := make([]uint64, links)
			for j := range lb {
				lb[j] = uint64(200*pageSize) / uint64(links)
			}
			lb[0] += 1000 // a little imbalance
			recs = append(recs, replicate.EpochTrace{
				Epoch: uint64(i + 2), Time: t0.Add(time.Second + time.Duration(i)*100*time.Millisecond), Mode: mode, Policy: "fast",
				DirtyPages: 100, Regions: 32, TransferredPages: 200, LinkBytes: lb, StateBytes: 4000,
				Pause: replicate.Durations{Harvest: time.Millisecond, Group: p / 4, Transfer: p / 4, Ack: p/2 - time.Millisecond, Total: p},
			})
		}
		// An epoch after the window, which must not count.
		recs = append(recs, replicate.EpochTrace{Epoch: 99, Time: t0.Add(4 * time.Second), Mode: mode, DirtyPages: 1, TransferredPages: 1, Pause: replicate.Durations{Total: time.Hour}})
		return recs
	}
	for _, f := range []float64{1, 2} {
		run(runID("async", "scattered", mem, 100*time.Millisecond, f, 0), "async", f, 40000, epochs("async", 1, 4*time.Millisecond, 8*time.Millisecond))
		run(runID("fast4", "scattered", mem, 100*time.Millisecond, f, 0), "fast4", f, 30000, epochs("sync", 4, 10*time.Millisecond, 20*time.Millisecond, 30*time.Millisecond))
	}
	if err := writeJSON(dir, recoveryRaw, []RawRecovery{
		{MemBytes: mem, Replicas: 1, Took: 600 * time.Millisecond, Verified: true},
		{MemBytes: mem, Replicas: 1, Rep: 1, Took: 400 * time.Millisecond, Verified: true},
		{MemBytes: mem, Replicas: 4, Took: 150 * time.Millisecond, Verified: true},
	}); err != nil {
		t.Fatal(err)
	}
	if err := writeJSON(dir, harvestRaw, []RawHarvest{
		{Tracking: "bitmap", MemBytes: mem, Target: 64, Dirty: 66, Took: 20 * time.Microsecond},
		{Tracking: "bitmap", MemBytes: mem, Target: 1024, Dirty: 1026, Took: 40 * time.Microsecond},
		{Tracking: "ring", MemBytes: mem, Target: 64, Dirty: 66, Took: 1400 * time.Microsecond},
		{Tracking: "ring", MemBytes: mem, Target: 1024, Dirty: 1026, Took: 1600 * time.Microsecond},
	}); err != nil {
		t.Fatal(err)
	}
	pipe := []replicate.EpochTrace{{Epoch: 1, Mode: "initial"}}
	for i := range 10 {
		pipe = append(pipe, replicate.EpochTrace{Epoch: uint64(i + 2), Time: t0, Mode: "sync", DirtyPages: 1000, TransferredPages: 2000,
			LinkBytes: []uint64{1000 * pageSize, 1000 * pageSize}, Pause: replicate.Durations{Total: 4096 * time.Microsecond}})
	}
	writeTrace(t, dir, filepath.Join(tracesDir, "pipeline-fast2.jsonl"), pipe)
	if err := writeJSON(dir, pipelineRaw, []RawPipeline{{Name: "fast(2)", Policy: "fast", Links: 2, Trace: filepath.Join(tracesDir, "pipeline-fast2.jsonl")}}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestReport analyses a made-up output directory and checks that every
// figure follows from the traces and samples, that the report keeps the
// paper's figures out of the measured columns, and that the plots are PNGs.
func TestReport(t *testing.T) {
	dir := fakeOutput(t)
	res, err := Report(dir, drawInProcess)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]RunResult{}
	for _, r := range res.Runs {
		byID[r.Spec.ID] = r
		if r.Error != "" {
			t.Errorf("%s: %s", r.Spec.ID, r.Error)
		}
	}
	f4 := byID["scattered-64M-fast4-e100-f1"]
	if !near(f4.Progress, 15000, 1e-9) || !near(f4.Baseline, 25000, 1e-9) || !near(f4.ProgressRatio, 0.6, 1e-9) || !near(f4.TimeRatio, 25000.0/15000, 1e-9) {
		t.Errorf("fast(4) progress %v baseline %v ratio %v time %v", f4.Progress, f4.Baseline, f4.ProgressRatio, f4.TimeRatio)
	}
	if f4.Epochs != 3 || !near(f4.Pause.Total.Mean, 20, 1e-9) || f4.Pause.Total.P50 != 20 || f4.Pause.Total.Max != 30 || !near(f4.Pause.Harvest.Mean, 1, 1e-9) {
		t.Errorf("fast(4) pause %+v over %d epochs", f4.Pause.Total, f4.Epochs)
	}
	if !near(f4.Overhead, 2, 1e-9) || !near(f4.ExtraPct.Mean, 100, 1e-9) || !near(f4.Period, 100, 1e-9) {
		t.Errorf("fast(4) overhead %v extra %v period %v", f4.Overhead, f4.ExtraPct.Mean, f4.Period)
	}
	// 100 dirty pages over 4 links at 1 Gbit/s: 409600 / 500e6 s.
	if want := 409600 / 500e6 * 1e3; !near(f4.Bound.Mean, want, 1e-9) || !near(f4.Efficiency, want/20, 1e-9) || !near(f4.OverBound, 20/want, 1e-9) {
		t.Errorf("fast(4) bound %v efficiency %v", f4.Bound.Mean, f4.Efficiency)
	}
	if got := f4.LinkBytes[0]; got != 3*(200*pageSize/4+1000) {
		t.Errorf("fast(4) link 0 bytes %d", got)
	}
	if f4.ImbalancePct <= 0 || f4.ImbalancePct > 1 {
		t.Errorf("fast(4) imbalance %v%%", f4.ImbalancePct)
	}
	if len(res.Headline) != 2 {
		t.Fatalf("%d headline rows, want 2", len(res.Headline))
	}
	h := res.Headline[0]
	if h.Factor != 1 || !near(h.PauseRatio, 20.0/6, 1e-9) || !near(h.SlowRatio, (25000.0/15000)/(25000.0/20000), 1e-9) || !near(h.PaperPause, 23.0/38, 1e-9) {
		t.Errorf("headline %+v", h)
	}
	// The side-by-side table: paper columns always, measured ones only
	// for what ran.
	var rows int
	for _, r := range res.TableIII {
		if r.Setup == "fast(2)" && (r.Measured || r.MeasTimePct != 0 || r.MeasPause != 0 || r.PaperTimePct == 0) {
			t.Errorf("fast(2) was not run: %+v", r)
		}
		if r.Setup == "fast(4)" && r.Tech == "DRAM" {
			rows++
			if !near(r.MeasTimePct, 100*25000.0/15000, 1e-9) || r.PaperTimePct != 100*483.0/338 || r.MeasPause != 20 || r.PaperDowntime != 23 {
				t.Errorf("fast(4) DRAM row %+v", r)
			}
		}
	}
	if rows != 1 {
		t.Errorf("%d fast(4) DRAM rows", rows)
	}
	if len(res.Recovery) != 2 || res.Recovery[0].Seconds.Mean != 0.5 || !res.Recovery[0].Verified {
		t.Errorf("recovery %+v", res.Recovery)
	}
	if len(res.Harvest) != 4 || res.Harvest[2].Micros.Mean != 1400 {
		t.Errorf("harvest %+v", res.Harvest)
	}
	p := res.Pipeline[0]
	// 2000 pages x 4096 bytes on the wire per 4.096 ms: 2 GB/s, half of
	// the 2-stream loopback's 3.5 GB/s... (4 GB/s would be for 4 streams).
	if p.Epochs != 10 || !near(p.WireGBs, 2, 1e-9) || !near(p.DirtyGBs, 1, 1e-9) || !near(p.Fraction, 2/3.5, 1e-9) {
		t.Errorf("pipeline %+v", p)
	}

	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Headline", "Seed 003 Table III, side by side", "| DRAM ×1 | fast(2) | 216 | not run |", "## Recovery", "## Dirty ring against dirty bitmap", "## Data path without a guest", "load average", "pause_64M.png"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "results.json")); err != nil {
		t.Error(err)
	}
	// Every plot the report names exists and decodes as a PNG.
	plots, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	if len(plots) < 8 {
		t.Errorf("%d plots: %v", len(plots), plots)
	}
	for _, path := range plots {
		if !strings.Contains(string(md), filepath.Base(path)) {
			t.Errorf("report.md does not show %s", filepath.Base(path))
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", path, err)
		} else if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
			t.Errorf("%s: %v", path, b)
		}
	}
	// Analysis is a function of the files: a second pass agrees.
	again, err := Analyze(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again.Runs[2].Pause.Total != res.Runs[2].Pause.Total {
		t.Error("a second analysis disagrees with the first")
	}
}

// TestReportPlots: the report shows exactly the plots that were drawn.
// figures.json describes every plot either way; without a plotter, or
// with one that fails, the report names no PNG and says why and how to
// get them, and a failing plotter is Report's error once the rest is
// written.
func TestReportPlots(t *testing.T) {
	dir := fakeOutput(t)
	if _, err := Report(dir, nil); err != nil {
		t.Fatal(err)
	}
	figs, err := figure.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(figs) < 8 {
		t.Errorf("%d figures described", len(figs))
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Headline", "The plots were not drawn (" + ErrNoPlotter.Error() + ")", "go build -o", "./cmd/tandem-plot"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md without a plotter lacks %q", want)
		}
	}
	if strings.Contains(string(md), ".png") {
		t.Error("report.md without a plotter names a PNG")
	}

	broken := errors.New("the plotter broke")
	_, err = Report(dir, func(string) error { return broken })
	if !errors.Is(err, broken) {
		t.Errorf("Report with a failing plotter: %v", err)
	}
	md, _ = os.ReadFile(filepath.Join(dir, "report.md"))
	if !strings.Contains(string(md), "The plots were not drawn (the plotter broke)") || strings.Contains(string(md), ".png") {
		t.Errorf("report.md with a failing plotter:\n%s", md)
	}

	// Drawn, every figure is a PNG the report shows with its caption.
	if _, err := Report(dir, drawInProcess); err != nil {
		t.Fatal(err)
	}
	md, _ = os.ReadFile(filepath.Join(dir, "report.md"))
	if strings.Contains(string(md), "not drawn") {
		t.Error("report.md says the plots it shows were not drawn")
	}
	for _, fig := range figs {
		if !strings.Contains(string(md), "!["+fig.File+"]("+fig.File+")") || !strings.Contains(string(md), fig.Caption) {
			t.Errorf("report.md does not show %s with its caption", fig.File)
		}
		checkPNG(t, filepath.Join(dir, fig.File))
	}
}

// TestPersistReport: runs with local persistence report how long their
// epochs took to be durable, and the report compares them with
// replication and no protection, technology by technology.
func TestPersistReport(t *testing.T) {
	dir := fakeOutput(t)
	var env Env
	if err := readJSON(dir, envFile, &env); err != nil {
		t.Fatal(err)
	}
	env.Config.Setups = append(env.Config.Setups, "persist", "fast2p")
	if err := writeJSON(dir, envFile, env); err != nil {
		t.Fatal(err)
	}
	t0 := env.Started
	epochs := func(mode string, links int, durable ...time.Duration) []replicate.EpochTrace {
		var recs []replicate.EpochTrace
		for i, d := range durable {
			recs = append(recs, replicate.EpochTrace{Epoch: uint64(i + 1), Time: t0.Add(time.Second + time.Duration(i)*100*time.Millisecond), Mode: mode,
				DirtyPages: 100, TransferredPages: 100, LinkBytes: make([]uint64, links), Pause: replicate.Durations{Harvest: d / 4, Total: d / 2}, Durable: d})
		}
		return recs
	}
	mem := env.Config.Mems[0]
	for _, f := range []float64{1, 2} {
		writeRun(t, dir, t0, runID("persist", "scattered", mem, 100*time.Millisecond, f, 0), "persist", mem, f, 45000,
			epochs("local", 0, time.Duration(f)*2*time.Millisecond, time.Duration(f)*4*time.Millisecond, time.Duration(f)*6*time.Millisecond))
		writeRun(t, dir, t0, runID("fast2p", "scattered", mem, 100*time.Millisecond, f, 0), "fast2p", mem, f, 30000,
			epochs("sync", 2, 10*time.Millisecond, 20*time.Millisecond))
	}
	res, err := Report(dir, drawInProcess)
	if err != nil {
		t.Fatal(err)
	}
	// The ×2 block has only the baseline before it: 20000 pages/s.
	p := findRun(res.Runs, "persist", "scattered", mem, 100*time.Millisecond, 2)
	if p == nil || p.Tech != "ST-MRAM" || p.Durable.N != 3 || p.Durable.P50 != 8 || !near(p.Pause.Total.Mean, 4, 1e-9) || !near(p.ProgressRatio, 22500.0/20000, 1e-9) {
		t.Fatalf("persist ×2: %+v", p)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Persistence and replication",
		"| DRAM ×1 | persist | 2.00 | 2.00 | 3.00 | 4.00 | 6.00 | 0.3% | 0.900 |",
		"| ST-MRAM ×2 | fast(2)+persist | 7.50 | 5.00 | 10.00 | 10.00 | 20.00 | 0.8% | 0.750 |",
		"| ST-MRAM ×2 | async | "} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	// Without persisted runs, no such section.
	if strings.Contains(Markdown(&Results{Env: env, Runs: res.Runs[:2]}, Plots{}), "## Persistence") {
		t.Error("a persistence section without persisted runs")
	}
}

func TestShapeNotes(t *testing.T) {
	rows := []CompareRow{
		{Tech: "DRAM", Setup: "async", PaperTimePct: 157, MeasTimePct: 120, Measured: true},
		{Tech: "DRAM", Setup: "fast(4)", PaperTimePct: 143, MeasTimePct: 150, Measured: true},
		{Tech: "DRAM", Setup: "ft(4)", PaperTimePct: 358, MeasTimePct: 300, Measured: true},
	}
	notes := strings.Join(shapeNotes(rows), "\n")
	for _, want := range []string{"2 of 3 pairs as in seed 003", "unlike seed 003: async beats fast(4)", "as in seed 003: fast(4) beats ft(4)"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
}

func TestApplyBaselines(t *testing.T) {
	run := func(setup, pat string, progress float64) RunResult {
		return RunResult{Spec: RunSpec{Setup: setup, Pattern: pat, MemBytes: 64 << 20}, Progress: progress}
	}
	runs := []RunResult{
		run("none", "scattered", 100),
		run("fast4", "scattered", 50),
		run("none", "scattered", 80),
		run("async", "scattered", 60),
		run("none", "random", 1000),
		run("fast4", "random", 100),
	}
	applyBaselines(runs)
	for i, want := range []float64{90, 90, 90, 80, 1000, 1000} {
		if runs[i].Baseline != want {
			t.Errorf("run %d (%s %s): baseline %v, want %v", i, runs[i].Spec.Setup, runs[i].Spec.Pattern, runs[i].Baseline, want)
		}
	}
	if runs[1].ProgressRatio != 50.0/90 || runs[1].TimeRatio != 90.0/50 || runs[3].ProgressRatio != 0.75 {
		t.Errorf("ratios %v %v %v", runs[1].ProgressRatio, runs[1].TimeRatio, runs[3].ProgressRatio)
	}
}

// TestPipelineBaseline: a data-path result is compared with loopback over
// TLS when the run measured it (its connections were encrypted), and with
// plain loopback TCP otherwise, as runs from before TLS loopback was
// measured were.
func TestPipelineBaseline(t *testing.T) {
	plain := map[int]float64{4: 6e9}
	for _, c := range []struct {
		name string
		env  Env
		want float64
		tls  bool
	}{
		{"encrypted", Env{Loopback: plain, LoopbackTLS: map[int]float64{4: 2e9}, Connections: "encrypted"}, 2, true},
		{"plaintext", Env{Loopback: plain, Connections: "plaintext"}, 6, false},
		{"before TLS loopback", Env{Loopback: plain}, 6, false},
	} {
		pr, err := analyzePipeline(t.TempDir(), c.env, RawPipeline{Name: "fast(4)", Links: 4})
		if err != nil || pr.Loopback != c.want || pr.LoopbackTLS != c.tls || loopbackKind(pr) != map[bool]string{true: "TLS", false: "TCP"}[c.tls] {
			t.Errorf("%s: loopback %v GB/s, TLS %v, %v; want %v GB/s, TLS %v", c.name, pr.Loopback, pr.LoopbackTLS, err, c.want, c.tls)
		}
	}
}
