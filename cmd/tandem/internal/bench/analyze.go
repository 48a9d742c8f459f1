package bench

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tandemvm/tandem/replicate"
)

// Results is everything the report shows, computed from the raw data and
// traces of one output directory. It is written as results.json.
type Results struct {
	Env      Env              `json:"env"`
	Model    Model            `json:"model"`
	Runs     []RunResult      `json:"runs"`
	Recovery []RecoveryResult `json:"recovery"`
	Harvest  []HarvestResult  `json:"harvest"`
	Pipeline []PipelineResult `json:"pipeline"`
	Headline []Headline       `json:"headline"`
	TableIII []CompareRow     `json:"table_iii"`
	// Traffic is the traffic part (tandem bench --traffic), if the
	// directory holds it.
	Traffic *TrafficResults `json:"traffic,omitempty"`
	// matrix: the directory holds the matrix part (raw/env.json), not
	// only the traffic part.
	matrix bool
}

// Model is the analytical model of seed 003 Section III with this
// machine's coefficients: the time to move one megabyte (1e6 bytes).
type Model struct {
	LinkMsPerMB    float64 `json:"link_ms_per_MB"`   // one link at the tbf rate
	MemcpyMsPerMB  float64 `json:"memcpy_ms_per_MB"` // the async staging copy
	WriteMsPerMB   float64 `json:"write_ms_per_MB"`  // DRAM write: the base of the latency model
	PaperLinkMsMB  float64 `json:"paper_link_ms_per_MB"`
	PaperMemcpyMB  float64 `json:"paper_memcpy_ms_per_MB"`
	CrossoverF4    float64 `json:"crossover_factor_fast4"` // factor above which fast(4) out-pauses async (0: never)
	LinkForParity2 float64 `json:"link_gbit_for_parity_at_factor_2"`
}

// PauseStats are the steps of the pause, in milliseconds.
type PauseStats struct {
	Total    Stat `json:"total"`
	Harvest  Stat `json:"harvest"`
	Group    Stat `json:"group"` // grouping and assignment; with async also the staging copy
	Transfer Stat `json:"transfer"`
	Ack      Stat `json:"ack"`
}

// RunResult is one run of the dirty guest, computed from its trace and
// progress samples over the measured window.
type RunResult struct {
	Spec    RunSpec `json:"spec"`
	Name    string  `json:"setup_name"`
	Tech    string  `json:"tech,omitempty"`
	Error   string  `json:"error,omitempty"`
	Seconds float64 `json:"seconds"`
	// Progress is the guest's pages written per second; Baseline the
	// same without replication (mean of the baseline runs of the same
	// memory size and pattern). ProgressRatio = Progress / Baseline;
	// TimeRatio = Baseline / Progress, the analogue of seed 003's
	// compile-time ratio.
	Progress      float64 `json:"progress_pages_per_s"`
	Baseline      float64 `json:"baseline_pages_per_s,omitempty"`
	ProgressRatio float64 `json:"progress_ratio,omitempty"`
	TimeRatio     float64 `json:"time_ratio,omitempty"`
	Epochs        int     `json:"epochs,omitempty"`
	Failed        int     `json:"failed_epochs,omitempty"`
	Period        float64 `json:"epoch_period_ms,omitempty"` // mean time between epoch starts
	// PausedPct is the share of the window the VM spent paused: the sum
	// of the window's pauses over its length, in percent.
	PausedPct float64 `json:"paused_pct,omitempty"`
	// Pause: with async only Harvest and Group (which includes the
	// staging copy) pause the VM; Transfer and Ack then run in the
	// background and are reported apart.
	Pause       PauseStats `json:"pause_ms"`
	Dirty       Stat       `json:"dirty_pages"`
	Transferred Stat       `json:"transferred_pages"`
	// Overhead: transferred over dirty pages, all epochs together, and
	// per epoch (percent of extra pages: (transferred/dirty - 1) * 100).
	Overhead      float64  `json:"transferred_over_dirty"`
	ExtraPct      Stat     `json:"extra_pages_pct"`
	LinkBytes     []uint64 `json:"link_bytes"`
	ImbalancePct  float64  `json:"imbalance_pct"`       // of the totals
	EpochImbalPct float64  `json:"epoch_imbalance_pct"` // mean over epochs
	// Bound is the physical lower bound of each epoch's data movement in
	// ms (see the report), computed from dirty pages; BoundSent from the
	// pages grouping actually sends. Efficiency = sum(bound) / sum(pause);
	// OverBound is its inverse, measured / bound.
	Bound      Stat    `json:"bound_ms"`
	BoundSent  Stat    `json:"bound_sent_ms"`
	Efficiency float64 `json:"efficiency"`
	OverBound  float64 `json:"measured_over_bound"`
	// OverModel is measured / (bound + harvest): issue 15's model of a
	// pause, the data movement plus the measured harvest, which includes
	// stopping the vCPUs and capturing their state. The target is 1.1.
	OverModel  float64          `json:"measured_over_model"`
	StateBytes float64          `json:"state_bytes"`
	Timeline   []ProgressSample `json:"timeline,omitempty"` // pages/s per interval
	// Durable is, with local persistence, how long each epoch took to be
	// durable on the primary's host from its pause's start (for
	// persistence alone: until its output left).
	Durable Stat `json:"durable_ms"`
}

// RecoveryResult is the leader's recovery time for one memory size and
// replica count.
type RecoveryResult struct {
	MemBytes   uint64  `json:"mem_bytes"`
	Replicas   int     `json:"replicas"`
	Seconds    Stat    `json:"seconds"`
	Bound      float64 `json:"bound_s"` // memory / (replicas x link rate)
	Efficiency float64 `json:"efficiency"`
	Verified   bool    `json:"verified"`
	Error      string  `json:"error,omitempty"`
}

// HarvestResult is the harvest cost of one tracker, memory size and
// working set.
type HarvestResult struct {
	Tracking string  `json:"tracking"`
	MemBytes uint64  `json:"mem_bytes"`
	Target   uint64  `json:"target_pages"`
	Dirty    Stat    `json:"dirty_pages"`
	Micros   Stat    `json:"micros"`
	NsPerPg  float64 `json:"ns_per_dirty_page"`
	Error    string  `json:"error,omitempty"`
}

// PipelineResult is one data-path microbenchmark.
type PipelineResult struct {
	Name     string     `json:"name"`
	Links    int        `json:"links"`
	Policy   string     `json:"policy"`
	Epochs   int        `json:"epochs"`
	Dirty    float64    `json:"dirty_pages_per_epoch"`
	Sent     float64    `json:"sent_pages_per_epoch"`
	Pause    PauseStats `json:"pause_ms"`
	DirtyGBs float64    `json:"dirty_GBps"` // dirty bytes per second of pause
	SentGBs  float64    `json:"sent_GBps"`  // grouped bytes (once) per second
	WireGBs  float64    `json:"wire_GBps"`  // bytes on all links per second
	Loopback float64    `json:"loopback_GBps"`
	// LoopbackTLS says Loopback is TLS loopback: the connections were
	// encrypted.
	LoopbackTLS bool    `json:"loopback_tls,omitempty"`
	Fraction    float64 `json:"fraction_of_loopback"` // wire / loopback with as many streams
	Error       string  `json:"error,omitempty"`
}

// Headline compares sync fast(4) with async at one factor.
type Headline struct {
	Factor     float64 `json:"factor"`
	Tech       string  `json:"tech"`
	Epoch      float64 `json:"epoch_ms"`
	Pattern    string  `json:"pattern"`
	MemBytes   uint64  `json:"mem_bytes"`
	PauseFast4 float64 `json:"pause_fast4_ms"`
	PauseAsync float64 `json:"pause_async_ms"`
	PauseRatio float64 `json:"pause_ratio"` // fast(4) / async
	TimeFast4  float64 `json:"time_ratio_fast4"`
	TimeAsync  float64 `json:"time_ratio_async"`
	SlowRatio  float64 `json:"slowdown_ratio"` // time ratio fast(4) / async
	// Period: the measured time between epochs, ms.
	PeriodFast4 float64 `json:"period_fast4_ms"`
	PeriodAsync float64 `json:"period_async_ms"`
	// Paused: the share of time the VM was paused, percent.
	PausedFast4 float64 `json:"paused_fast4_pct"`
	PausedAsync float64 `json:"paused_async_pct"`
	PaperPause  float64 `json:"paper_pause_ratio,omitempty"`
	PaperSlow   float64 `json:"paper_slowdown_ratio,omitempty"`
}

// Analyze reads an output directory's raw data and traces and computes
// the results.
func Analyze(dir string) (*Results, error) {
	res := &Results{}
	traffic, err := analyzeTraffic(dir)
	if err != nil {
		return nil, err
	}
	res.Traffic = traffic
	if err := readJSON(dir, envFile, &res.Env); err != nil {
		if errors.Is(err, fs.ErrNotExist) && traffic != nil {
			res.Env = traffic.Env // the traffic part alone
			return res, nil
		}
		return nil, err
	}
	res.matrix = true
	cfg := res.Env.Config
	res.Model = machineModel(res.Env)

	// Runs of the dirty guest.
	var raws []RawRun
	err = filepath.WalkDir(filepath.Join(dir, runsDir), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		var r RawRun
		rel, _ := filepath.Rel(dir, path)
		if err := readJSON(dir, rel, &r); err != nil {
			return err
		}
		raws = append(raws, r)
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	order := map[string]int{}
	for i, s := range cfg.Matrix() {
		order[s.ID] = i
	}
	slices.SortStableFunc(raws, func(a, b RawRun) int { return cmp.Compare(order[a.Spec.ID], order[b.Spec.ID]) })
	for _, r := range raws {
		rr, err := analyzeRun(dir, &res.Env, r)
		if err != nil {
			return nil, err
		}
		res.Runs = append(res.Runs, rr)
	}
	applyBaselines(res.Runs)

	var recs []RawRecovery
	if err := readJSON(dir, recoveryRaw, &recs); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	res.Recovery = analyzeRecovery(recs, cfg.LinkRate)
	var hs []RawHarvest
	if err := readJSON(dir, harvestRaw, &hs); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	res.Harvest = analyzeHarvest(hs)
	var ps []RawPipeline
	if err := readJSON(dir, pipelineRaw, &ps); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, p := range ps {
		pr, err := analyzePipeline(dir, res.Env, p)
		if err != nil {
			return nil, err
		}
		res.Pipeline = append(res.Pipeline, pr)
	}
	res.Headline = headlines(res.Runs, cfg)
	res.TableIII = compareTableIII(res.Runs, cfg)
	return res, nil
}

func readTrace(dir, rel string) ([]replicate.EpochTrace, error) {
	f, err := os.Open(filepath.Join(dir, rel))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	recs, err := replicate.ReadTrace(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	return recs, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// epochBound is the least time epoch data of n bytes can take on the
// emulated hardware, in ms: the bytes over the aggregate link rate (fast:
// every link carries its share; ft: every link carries everything) plus the
// emulated write delay of the bytes each replica writes, or for async the
// staging copy at memcpy speed plus its emulated write delay. Local
// persistence stages the bytes in its record at memcpy speed while the VM
// is paused, and a sync epoch waits too for the record and the memory
// file (each n bytes at the emulated technology's write speed) if that
// takes longer than the links.
func epochBound(env *Env, setup Setup, factor float64, n float64) float64 {
	if n <= 0 {
		return 0
	}
	w := WriteModel{DRAMWrite: env.WriteBW}
	linkBps := float64(env.Config.LinkRate) / 8
	var stage, durable float64
	if setup.Persist {
		stage = n / env.Bandwidth.Memcpy * 1e3
		durable = 2 * (n/env.WriteBW*1e3 + ms(w.Extra(factor, int(n))))
	}
	switch {
	case setup.Links == 0:
		return stage
	case setup.Mode == "async":
		return stage + n/env.Bandwidth.Memcpy*1e3 + ms(w.Extra(factor, int(n)))
	case setup.Policy == "ft":
		return stage + max(durable, n/linkBps*1e3+ms(w.Extra(factor, int(n))))
	default:
		k := float64(setup.Links)
		return stage + max(durable, n/(k*linkBps)*1e3+ms(w.Extra(factor, int(n/k))))
	}
}

// analyzeRun computes one run's figures from its trace, over its window.
func analyzeRun(dir string, env *Env, raw RawRun) (RunResult, error) {
	s := raw.Spec
	setup := s.SetupOf()
	rr := RunResult{Spec: s, Name: setup.Name, Error: raw.Error}
	if setup.Protected() {
		rr.Tech = TechName(s.Factor)
	}
	secs := raw.WindowEnd.Sub(raw.WindowStart).Seconds()
	if secs > 0 && raw.PagesEnd >= raw.PagesStart {
		rr.Seconds = secs
		rr.Progress = float64(raw.PagesEnd-raw.PagesStart) / secs
	}
	// Progress per second: pages/s between samples about a second apart.
	for i, j := 0, 1; j < len(raw.Samples); j++ {
		a, b := raw.Samples[i], raw.Samples[j]
		if dt := b.T - a.T; dt >= 0.95 && b.Pages >= a.Pages {
			rr.Timeline = append(rr.Timeline, ProgressSample{T: b.T, Pages: uint64(float64(b.Pages-a.Pages) / dt)})
			i = j
		}
	}
	if raw.Trace == "" {
		return rr, nil
	}
	recs, err := readTrace(dir, raw.Trace)
	if err != nil {
		if raw.Error != "" {
			return rr, nil
		}
		return rr, err
	}
	var total, harvest, group, transfer, ack, dirty, sent, extra, bound, boundSent, starts, imbal, durable []float64
	var sumDirty, sumSent, sumBound, sumPause, sumState, sumHarvest float64
	rr.LinkBytes = make([]uint64, setup.Links)
	for _, t := range recs {
		if t.Mode == "initial" || t.Time.Before(raw.WindowStart) || !t.Time.Before(raw.WindowEnd) {
			continue
		}
		rr.Epochs++
		if t.Failed != "" {
			rr.Failed++
			continue
		}
		p := t.Pause
		total = append(total, ms(p.Total))
		harvest = append(harvest, ms(p.Harvest))
		group = append(group, ms(p.Group))
		transfer = append(transfer, ms(p.Transfer))
		ack = append(ack, ms(p.Ack))
		if t.Durable > 0 {
			durable = append(durable, ms(t.Durable))
		}
		dirty = append(dirty, float64(t.DirtyPages))
		sent = append(sent, float64(t.TransferredPages))
		if t.DirtyPages > 0 {
			extra = append(extra, (t.GroupingOverhead()-1)*100)
		}
		b := epochBound(env, setup, s.Factor, float64(t.DirtyPages)*pageSize)
		bound = append(bound, b)
		boundSent = append(boundSent, epochBound(env, setup, s.Factor, float64(t.TransferredPages)*pageSize))
		sumDirty += float64(t.DirtyPages)
		sumSent += float64(t.TransferredPages)
		sumBound += b
		sumPause += ms(p.Total)
		sumHarvest += ms(p.Harvest)
		sumState += float64(t.StateBytes)
		starts = append(starts, float64(t.Time.UnixNano())/1e6)
		for i, n := range t.LinkBytes {
			if i < len(rr.LinkBytes) {
				rr.LinkBytes[i] += n
			}
		}
		if len(t.LinkBytes) > 1 {
			imbal = append(imbal, Imbalance(t.LinkBytes))
		}
	}
	rr.Pause = PauseStats{Total: Summarize(total), Harvest: Summarize(harvest), Group: Summarize(group), Transfer: Summarize(transfer), Ack: Summarize(ack)}
	rr.Dirty, rr.Transferred = Summarize(dirty), Summarize(sent)
	rr.Durable = Summarize(durable)
	rr.Overhead = ratio(sumSent, sumDirty)
	rr.ExtraPct = Summarize(extra)
	rr.ImbalancePct = Imbalance(rr.LinkBytes)
	rr.EpochImbalPct = Summarize(imbal).Mean
	rr.Bound, rr.BoundSent = Summarize(bound), Summarize(boundSent)
	rr.Efficiency = ratio(sumBound, sumPause)
	if secs > 0 {
		rr.PausedPct = 100 * sumPause / 1e3 / secs
	}
	rr.OverBound = ratio(sumPause, sumBound)
	rr.OverModel = ratio(sumPause, sumBound+sumHarvest)
	if n := len(total); n > 0 {
		rr.StateBytes = sumState / float64(n)
	}
	if len(starts) > 1 {
		rr.Period = (starts[len(starts)-1] - starts[0]) / float64(len(starts)-1)
	}
	return rr, nil
}

// applyBaselines sets every run's baseline, given runs in the order they
// ran: the mean progress of the nearest no-replication runs of the same
// memory size and pattern before and after it (one if only one exists). A
// baseline run's own baseline is the mean of all of them, so that the
// baselines' spread shows as their progress ratios.
func applyBaselines(runs []RunResult) {
	type key struct {
		mem uint64
		pat string
	}
	ok := func(r *RunResult) bool { return r.Spec.Setup == "none" && r.Error == "" && r.Progress > 0 }
	sum, n := map[key]float64{}, map[key]int{}
	for i := range runs {
		if r := &runs[i]; ok(r) {
			k := key{r.Spec.MemBytes, r.Spec.Pattern}
			sum[k] += r.Progress
			n[k]++
		}
	}
	for i := range runs {
		r := &runs[i]
		k := key{r.Spec.MemBytes, r.Spec.Pattern}
		if n[k] == 0 || r.Progress <= 0 {
			continue
		}
		if r.Spec.Setup == "none" {
			r.Baseline = sum[k] / float64(n[k])
		} else {
			var near []float64
			for j := i - 1; j >= 0; j-- {
				if b := &runs[j]; ok(b) && (key{b.Spec.MemBytes, b.Spec.Pattern}) == k {
					near = append(near, b.Progress)
					break
				}
			}
			for j := i + 1; j < len(runs); j++ {
				if b := &runs[j]; ok(b) && (key{b.Spec.MemBytes, b.Spec.Pattern}) == k {
					near = append(near, b.Progress)
					break
				}
			}
			for _, x := range near {
				r.Baseline += x / float64(len(near))
			}
		}
		r.ProgressRatio = r.Progress / r.Baseline
		r.TimeRatio = r.Baseline / r.Progress
	}
}

func analyzeRecovery(recs []RawRecovery, linkRate uint64) []RecoveryResult {
	type key struct {
		mem uint64
		n   int
	}
	var keys []key
	groups := map[key][]RawRecovery{}
	for _, r := range recs {
		k := key{r.MemBytes, r.Replicas}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	var out []RecoveryResult
	for _, k := range keys {
		rr := RecoveryResult{MemBytes: k.mem, Replicas: k.n, Verified: true}
		var secs []float64
		for _, r := range groups[k] {
			if r.Error != "" {
				rr.Error = r.Error
				rr.Verified = false
				continue
			}
			secs = append(secs, r.Took.Seconds())
			rr.Verified = rr.Verified && r.Verified
		}
		if len(secs) == 0 {
			rr.Verified = false
		}
		rr.Seconds = Summarize(secs)
		rr.Bound = float64(k.mem) / (float64(k.n) * float64(linkRate) / 8)
		rr.Efficiency = ratio(rr.Bound, rr.Seconds.Mean)
		out = append(out, rr)
	}
	return out
}

func analyzeHarvest(hs []RawHarvest) []HarvestResult {
	type key struct {
		tr  string
		mem uint64
		k   uint64
	}
	var keys []key
	groups := map[key][]RawHarvest{}
	for _, h := range hs {
		k := key{h.Tracking, h.MemBytes, h.Target}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], h)
	}
	var out []HarvestResult
	for _, k := range keys {
		hr := HarvestResult{Tracking: k.tr, MemBytes: k.mem, Target: k.k}
		var dirty, us []float64
		var sumNs, sumPg float64
		for _, h := range groups[k] {
			if h.Error != "" {
				hr.Error = h.Error
				continue
			}
			dirty = append(dirty, float64(h.Dirty))
			us = append(us, float64(h.Took)/1e3)
			sumNs += float64(h.Took)
			sumPg += float64(h.Dirty)
		}
		hr.Dirty, hr.Micros = Summarize(dirty), Summarize(us)
		hr.NsPerPg = ratio(sumNs, sumPg)
		out = append(out, hr)
	}
	return out
}

func analyzePipeline(dir string, env Env, p RawPipeline) (PipelineResult, error) {
	pr := PipelineResult{Name: p.Name, Links: p.Links, Policy: p.Policy, Error: p.Error}
	// The baseline carries bytes as the data path's connections do: over
	// TLS when they are encrypted (runs that measured it).
	pr.Loopback = env.Loopback[p.Links] / 1e9
	if tls := env.LoopbackTLS[p.Links]; tls > 0 {
		pr.Loopback, pr.LoopbackTLS = tls/1e9, true
	}
	if p.Trace == "" {
		return pr, nil
	}
	recs, err := readTrace(dir, p.Trace)
	if err != nil {
		if p.Error != "" {
			return pr, nil
		}
		return pr, err
	}
	var total, harvest, group, transfer, ack []float64
	var dirty, sent, wire, pause float64
	for _, t := range recs {
		if t.Mode == "initial" || t.Failed != "" {
			continue
		}
		pr.Epochs++
		total = append(total, ms(t.Pause.Total))
		harvest = append(harvest, ms(t.Pause.Harvest))
		group = append(group, ms(t.Pause.Group))
		transfer = append(transfer, ms(t.Pause.Transfer))
		ack = append(ack, ms(t.Pause.Ack))
		dirty += float64(t.DirtyPages) * pageSize
		sent += float64(t.TransferredPages) * pageSize
		for _, n := range t.LinkBytes {
			wire += float64(n)
		}
		pause += t.Pause.Total.Seconds()
	}
	pr.Pause = PauseStats{Total: Summarize(total), Harvest: Summarize(harvest), Group: Summarize(group), Transfer: Summarize(transfer), Ack: Summarize(ack)}
	if pr.Epochs > 0 {
		pr.Dirty = dirty / pageSize / float64(pr.Epochs)
		pr.Sent = sent / pageSize / float64(pr.Epochs)
	}
	pr.DirtyGBs = ratio(dirty, pause) / 1e9
	pr.SentGBs = ratio(sent, pause) / 1e9
	pr.WireGBs = ratio(wire, pause) / 1e9
	pr.Fraction = ratio(pr.WireGBs, pr.Loopback)
	return pr, nil
}

// machineModel is seed 003's Section III model with this machine's
// coefficients.
func machineModel(env Env) Model {
	m := Model{PaperLinkMsMB: 0.65, PaperMemcpyMB: 0.27}
	if env.Config.LinkRate > 0 {
		m.LinkMsPerMB = 1e6 / (float64(env.Config.LinkRate) / 8) * 1e3
	}
	if env.Bandwidth.Memcpy > 0 {
		m.MemcpyMsPerMB = 1e6 / env.Bandwidth.Memcpy * 1e3
	}
	if env.WriteBW > 0 {
		m.WriteMsPerMB = 1e6 / env.WriteBW * 1e3
	}
	// Per byte: async = 1/M + (f-1)/W; fast(4) = 1/(4L) + (f-1)/(4W).
	// Equal when (f-1) * (3/4)/W = 1/(4L) - 1/M.
	if m.WriteMsPerMB > 0 {
		if d := m.LinkMsPerMB/4 - m.MemcpyMsPerMB; d > 0 {
			m.CrossoverF4 = 1 + d/(0.75*m.WriteMsPerMB)
		} else {
			m.CrossoverF4 = 1
		}
		// At factor 2: 1/(4L) = 1/M + 1/W - 1/(4W).
		if perByte := m.MemcpyMsPerMB + 0.75*m.WriteMsPerMB; perByte > 0 {
			l := 1 / (4 * perByte) // MB per ms per link
			m.LinkForParity2 = l * 1e6 * 1e3 * 8 / 1e9
		}
	}
	return m
}

// findRun returns the first error-free run matching the key, or nil.
func findRun(runs []RunResult, setup, pattern string, mem uint64, epoch time.Duration, factor float64) *RunResult {
	for i := range runs {
		r := &runs[i]
		s := r.Spec
		if s.Setup == setup && s.Pattern == pattern && s.MemBytes == mem && r.Error == "" &&
			(setup == "none" || (s.Epoch == epoch && s.Factor == factor)) {
			return r
		}
	}
	return nil
}

// headlineEpoch is the epoch the paper used (100 ms) if the matrix has it,
// else the longest.
func headlineEpoch(cfg Config) time.Duration {
	best := cfg.Epochs[0]
	for _, e := range cfg.Epochs {
		if e == 100*time.Millisecond {
			return e
		}
		best = max(best, e)
	}
	return best
}

func headlines(runs []RunResult, cfg Config) []Headline {
	if len(cfg.Mems) == 0 || len(cfg.Patterns) == 0 || len(cfg.Epochs) == 0 {
		return nil
	}
	e := headlineEpoch(cfg)
	mem, pat := cfg.Mems[0], cfg.Patterns[0]
	var out []Headline
	for _, f := range cfg.Factors {
		a := findRun(runs, "async", pat, mem, e, f)
		b := findRun(runs, "fast4", pat, mem, e, f)
		if a == nil || b == nil {
			continue
		}
		h := Headline{
			Factor: f, Tech: TechName(f), Epoch: ms(e), Pattern: pat, MemBytes: mem,
			PauseFast4: b.Pause.Total.Mean, PauseAsync: a.Pause.Total.Mean,
			TimeFast4: b.TimeRatio, TimeAsync: a.TimeRatio,
			PeriodFast4: b.Period, PeriodAsync: a.Period,
			PausedFast4: b.PausedPct, PausedAsync: a.PausedPct,
		}
		h.PauseRatio = ratio(h.PauseFast4, h.PauseAsync)
		h.SlowRatio = ratio(h.TimeFast4, h.TimeAsync)
		if p, ok := paperRows(f); ok {
			h.PaperPause = p["fast4"].Downtime / p["async"].Downtime
			h.PaperSlow = p["fast4"].Time / p["async"].Time
		}
		out = append(out, h)
	}
	return out
}
