package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem-plot/figure"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

// The traffic part (tandem bench --traffic, issue 18) measures every
// technique of traffic reduction side by side on the same workloads. It
// records one replicated run of each of the dirty guest's patterns
// (replicate.EpochRecorder: every epoch's dirty pages and their contents),
// adds the recordings given with --recording, and replays every recording
// through every technique (replicate.TrafficReplay), so that their bytes
// on the wire and their CPU compare on the very same epochs. Live runs of
// the random and scattered patterns with the main techniques measure what
// a replay cannot: the pause.

const (
	trafficLog  = "traffic.log"
	trafficPlot = "traffic.png"
	// trafficCacheMax is the page cache of delta and similar, unless the
	// guest is smaller.
	trafficCacheMax = 64 << 20
	// ruleSlack and ruleSaves are issue 18's rule for the live runs: no
	// technique may make the pause worse by more than 10% when it saves
	// nothing (here: less than 5% of the bytes of grouping by cost, raw).
	ruleSlack = 1.10
	ruleSaves = 0.95
	// cpuSkip is the epochs at the start of a replay that its CPU figures
	// leave out (the report says so): the first pays for the replay's
	// buffers, its encoders and the first touch of its memory, which a
	// primary pays once.
	cpuSkip = 1
)

var (
	// trafficPatterns are the dirty guest's patterns, each recorded once.
	trafficPatterns = []string{"sequential", "scattered", "random"}
	// livePatterns are the patterns also run live with every Live technique.
	livePatterns = []string{"random", "scattered"}
)

// Technique is one way of sending an epoch's pages that the traffic part
// compares.
type Technique struct {
	Name   string // as the report shows it
	ID     string // as raw data and file names show it
	SGMax  int    // replicate.PrimaryConfig.SGMax: 0 groups by cost
	Reduce string // replicate.ParseReduction's form
	Live   bool   // also run live
	// Speculate is replicate.PrimaryConfig.Speculate; a technique that
	// speculates is run live only (a recording holds whole epochs: the
	// pages sent ahead are in them).
	Speculate float64
	// Active runs the link's replica as the leader too, with a shadow of
	// the guest (active backup, replicate.ActiveBackupOn); live only: a
	// recording has no shadow to compare with.
	Active bool
}

// trafficPolicy is the policy of a technique's live run over its one link:
// fast, or ft for speculation and active backup, which need it (on one
// link the two carry the same pages).
func trafficPolicy(t Technique) replicate.Policy {
	if t.Speculate > 0 || t.Active {
		return replicate.PolicyFT
	}
	return replicate.PolicyFast
}

// replayed reports whether the technique is replayed from recordings.
func (t Technique) replayed() bool { return t.Speculate == 0 && !t.Active }

// activeBackup is t's replicate.PrimaryConfig.ActiveBackup.
func (t Technique) activeBackup() replicate.ActiveBackup {
	if t.Active {
		return replicate.ActiveBackupOn
	}
	return replicate.ActiveBackupOff
}

// Techniques are the techniques of the traffic part, in the order the
// report shows them.
var Techniques = []Technique{
	{Name: "seed-003 (sg-max 32, raw)", ID: "seed003", SGMax: 32, Reduce: "none", Live: true},
	{Name: "by cost, raw", ID: rawTechnique, Reduce: "none", Live: true},
	{Name: "zero", ID: "zero", Reduce: "zero", Live: true},
	{Name: "delta", ID: "delta", Reduce: "delta", Live: true},
	{Name: "similar", ID: "similar", Reduce: "delta,similar"},
	{Name: "zstd", ID: "zstd", Reduce: "zstd"},
	{Name: "all", ID: "all", Reduce: "all", Live: true},
	{Name: "speculate 0.5, raw", ID: "speculate", Reduce: "none", Live: true, Speculate: 0.5},
	{Name: "active backup, raw", ID: "active", Reduce: "none", Live: true, Active: true},
}

// rawTechnique is the reference the others are compared with: grouping by
// cost, the data raw.
const rawTechnique = "raw"

func lookupTechnique(id string) (Technique, bool) {
	for _, t := range Techniques {
		if t.ID == id {
			return t, true
		}
	}
	return Technique{}, false
}

// lookupSGMax is the grouping bound of the technique id.
func lookupSGMax(id string) int {
	t, _ := lookupTechnique(id)
	return t.SGMax
}

// trafficCache is the page cache for a guest of guestBytes.
func trafficCache(guestBytes uint64) int64 { return int64(min(guestBytes, trafficCacheMax)) }

// reduction is t's Reduction for a guest of guestBytes (never nil: a
// primary's nil is the default, zero pages, not raw).
func (t Technique) reduction(guestBytes uint64) (*replicate.Reduction, error) {
	r, err := replicate.ParseReduction(t.Reduce, trafficCache(guestBytes))
	if err != nil {
		return nil, fmt.Errorf("technique %s: %w", t.Name, err)
	}
	return &r, nil
}

// TrafficConfig configures the traffic part. Of Config it uses the
// preset, the output directory, the link rate, the first memory size, the
// middle epoch, the warm-up and duration of the live runs, and the guest's
// rate.
type TrafficConfig struct {
	Config
	// RecordEpochs is how many epochs after the initial copy each
	// recording of the dirty guest holds.
	RecordEpochs int
	// Recordings are further workloads, recorded elsewhere.
	Recordings []Recording
}

// Recording is a workload given as an epoch recording (--recording).
type Recording struct {
	Name string
	File string
}

// DefaultTrafficConfig returns a preset's traffic configuration.
func DefaultTrafficConfig(p Preset) TrafficConfig {
	c := TrafficConfig{Config: DefaultConfig(p), RecordEpochs: 50}
	// Ring 0: flat out in ring 3 the guest dirties all its memory every
	// epoch, which makes recordings of gigabytes and tells nothing about
	// reduction that the Linux workload does not tell better.
	c.Ring = 0
	switch p {
	case PresetQuick:
		c.RecordEpochs = 30
	case PresetSmoke:
		c.RecordEpochs = 10
		// A rate keeps the recordings small and the random pattern's
		// density the same on any machine fast enough: about 1000 pages
		// per 50 ms epoch, a fifteenth of a 64 MiB guest's.
		c.Rate = 20000
	}
	return c
}

// MemBytes is the dirty guest's memory.
func (c *TrafficConfig) MemBytes() uint64 { return c.Mems[0] }

// Epoch is the epoch interval of every run.
func (c *TrafficConfig) Epoch() time.Duration { return c.Epochs[len(c.Epochs)/2] }

// Validate checks the configuration (not the recordings' files).
func (c *TrafficConfig) Validate() error {
	if err := c.Config.Validate(); err != nil {
		return err
	}
	if c.RecordEpochs < 2 {
		return fmt.Errorf("%d recorded epochs: want at least 2", c.RecordEpochs)
	}
	return checkRecordings(c.Recordings)
}

// ParseRecordings parses --recording: NAME=FILE, comma-separated.
func ParseRecordings(s string) ([]Recording, error) {
	var out []Recording
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		name, file, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("recording %q: want NAME=FILE", f)
		}
		out = append(out, Recording{Name: strings.TrimSpace(name), File: strings.TrimSpace(file)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty list of recordings %q: want NAME=FILE,...", s)
	}
	if err := checkRecordings(out); err != nil {
		return nil, err
	}
	return out, nil
}

func checkRecordings(rs []Recording) error {
	seen := map[string]bool{}
	for _, r := range rs {
		switch {
		case r.Name == "" || r.File == "":
			return fmt.Errorf("recording %q=%q: want NAME=FILE, both non-empty", r.Name, r.File)
		case strings.IndexFunc(r.Name, func(c rune) bool {
			return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.')
		}) >= 0:
			return fmt.Errorf("recording name %q: want letters, digits, '-', '_' or '.'", r.Name)
		case slices.Contains(trafficPatterns, r.Name):
			return fmt.Errorf("recording name %q is taken by the dirty guest's pattern of that name", r.Name)
		case seen[r.Name]:
			return fmt.Errorf("recording name %q given twice", r.Name)
		}
		seen[r.Name] = true
	}
	return nil
}

// RawTraffic is the traffic part's raw data (raw/traffic.json): its
// analysis needs nothing else but the live runs' traces.
type RawTraffic struct {
	Env          Env           `json:"env"`
	MemBytes     uint64        `json:"mem_bytes"` // the dirty guest's
	Epoch        time.Duration `json:"epoch_ns"`
	RecordEpochs int           `json:"record_epochs"`
	Workloads    []RawWorkload `json:"workloads"`
	Live         []RawLiveRun  `json:"live"`
}

// RawWorkload is one recording and its replays.
type RawWorkload struct {
	Name   string `json:"name"`
	Source string `json:"source"`
	// File is the recording, relative to the output directory (the
	// dirty guest's) or absolute (--recording).
	File     string `json:"file"`
	MemBytes uint64 `json:"mem_bytes"`
	Epochs   int    `json:"epochs"`
	// Torn: the recording's last record was cut short (its run was
	// killed); the epochs before it are replayed.
	Torn bool `json:"torn,omitempty"`
	// Run is the run of the dirty guest that recorded it.
	Run     *RawLiveRun `json:"run,omitempty"`
	Error   string      `json:"error,omitempty"`
	Replays []RawReplay `json:"replays,omitempty"`
}

// RawReplay is one technique's replay of a recording.
type RawReplay struct {
	Technique  string           `json:"technique"` // a Technique's ID
	CacheBytes int64            `json:"cache_bytes"`
	Took       time.Duration    `json:"took_ns"`
	Epochs     []RawReplayEpoch `json:"epochs"`
	Error      string           `json:"error,omitempty"`
}

// RawReplayEpoch is what replaying one epoch cost (replicate.ReplayEpoch).
type RawReplayEpoch struct {
	Epoch   uint64        `json:"epoch"`
	Dirty   int           `json:"dirty"`
	Regions int           `json:"regions"`
	Sent    uint64        `json:"sent"`
	Wire    uint64        `json:"wire"`
	Encode  time.Duration `json:"encode_ns"`
	Decode  time.Duration `json:"decode_ns"`
	Zero    uint64        `json:"zero,omitempty"`
	Delta   uint64        `json:"delta,omitempty"`
	Similar uint64        `json:"similar,omitempty"`
}

// RawLiveRun is one replicated run of the dirty guest in the traffic part.
type RawLiveRun struct {
	Pattern   string `json:"pattern"`
	Technique string `json:"technique"` // a Technique's ID
	Trace     string `json:"trace"`     // relative to the output directory
	// The measured window is [WindowStart, WindowEnd], after the initial
	// copy and the warm-up (a recording run has none).
	Start       time.Time `json:"start"`
	WindowStart time.Time `json:"window_start"`
	WindowEnd   time.Time `json:"window_end"`
	PagesStart  uint64    `json:"pages_start"`
	PagesEnd    uint64    `json:"pages_end"`
	Committed   uint64    `json:"committed"`
	// Shadow is the leader's shadow over the run (active backup).
	Shadow *replicate.ShadowStats `json:"shadow,omitempty"`
	Error  string                 `json:"error,omitempty"`
}

// RunTraffic runs the traffic part cfg describes, writes its raw data,
// traces, recordings, results, report and plot into cfg.Out, and prints
// progress lines to opt.Out. A recording given that is missing or not a
// recording fails it before anything runs.
func RunTraffic(ctx context.Context, cfg TrafficConfig, opt Options) (*Results, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var given []RawWorkload
	for _, r := range cfg.Recordings {
		mem, n, torn, err := scanRecording(r.File)
		if err != nil {
			return nil, fmt.Errorf("bench: recording %s (%s): %w", r.Name, r.File, err)
		}
		abs, err := filepath.Abs(r.File)
		if err != nil {
			return nil, fmt.Errorf("bench: recording %s: %w", r.Name, err)
		}
		given = append(given, RawWorkload{Name: r.Name, Source: "recording " + r.File, File: abs, MemBytes: mem, Epochs: n, Torn: torn})
	}
	b, closeLog, err := newBencher(cfg.Config, opt, trafficLog, rawDir, tracesDir)
	if err != nil {
		return nil, err
	}
	defer closeLog()
	raw := &RawTraffic{Env: machineEnv(cfg.Config, opt.Version), MemBytes: cfg.MemBytes(), Epoch: cfg.Epoch(), RecordEpochs: cfg.RecordEpochs}
	save := func() error {
		if err := writeJSON(cfg.Out, trafficRaw, raw); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		return nil
	}
	nLive := 0
	for _, t := range Techniques {
		if t.Live {
			nLive += len(livePatterns)
		}
	}
	b.progress("tandem bench --traffic (%s): %d recordings of %d epochs (and %d given), %d live runs of %v + warm-up %v, %d MiB guest, %v epochs, 1 link of %s; writing %s",
		cfg.Preset, len(trafficPatterns), cfg.RecordEpochs, len(given), nLive, cfg.Duration, cfg.Warmup, cfg.MemBytes()>>20, cfg.Epoch(), FormatRate(cfg.LinkRate), cfg.Out)
	if b.lab, err = NewLab(1, cfg.LinkRate); err != nil {
		return nil, fmt.Errorf("bench: the link: %w", err)
	}
	defer b.lab.Close()

	// Record each pattern once.
	rawTech, _ := lookupTechnique(rawTechnique)
	for _, pat := range trafficPatterns {
		if ctx.Err() != nil {
			break
		}
		w := b.recordPattern(ctx, &cfg, pat, rawTech)
		if w.Error != "" {
			raw.Env.Errors = append(raw.Env.Errors, "recording "+pat+": "+w.Error)
		}
		raw.Workloads = append(raw.Workloads, w)
		if err := save(); err != nil {
			return nil, err
		}
		b.progress("recorded %s: %d epochs, %.0f MB in %s%s", pat, w.Epochs, float64(fileSize(filepath.Join(cfg.Out, w.File)))/1e6, w.File, errNote(w.Error))
		debug.FreeOSMemory()
	}

	// Live runs.
	i := 0
	for _, pat := range livePatterns {
		for _, t := range Techniques {
			if !t.Live || ctx.Err() != nil {
				continue
			}
			i++
			g := trafficGuest{pattern: pat, tech: t, trace: filepath.Join(tracesDir, "traffic-"+pat+"-"+t.ID+".jsonl")}
			run := b.runTrafficGuest(ctx, &cfg, g)
			if run.Error != "" {
				raw.Env.Errors = append(raw.Env.Errors, fmt.Sprintf("live %s %s: %s", pat, t.Name, run.Error))
			}
			raw.Live = append(raw.Live, run)
			if err := save(); err != nil {
				return nil, err
			}
			lr, _ := analyzeLive(cfg.Out, run)
			b.progress("live %d/%d %s, %s: %d epochs, pause mean %.2f ms p99 %.2f ms, wire ÷ dirty %s%s",
				i, nLive, pat, t.Name, lr.Epochs, lr.Pause.Mean, lr.Pause.P99, ratioStr(lr.Ratio), errNote(run.Error))
			debug.FreeOSMemory()
		}
	}
	if err := b.lab.Close(); err != nil {
		b.log.Warn("closing the lab", "err", err)
	}

	// Replay every recording through every technique.
	raw.Workloads = append(raw.Workloads, given...)
	for i := range raw.Workloads {
		w := &raw.Workloads[i]
		if w.Error != "" {
			continue
		}
		path := w.File
		if !filepath.IsAbs(path) {
			path = filepath.Join(cfg.Out, path)
		}
		for _, t := range Techniques {
			if ctx.Err() != nil {
				break
			}
			if !t.replayed() {
				continue
			}
			rp := replayRecording(path, w.Torn, t)
			if rp.Error != "" {
				raw.Env.Errors = append(raw.Env.Errors, fmt.Sprintf("replay of %s with %s: %s", w.Name, t.Name, rp.Error))
			}
			w.Replays = append(w.Replays, rp)
			rr := analyzeReplay(rp)
			b.progress("replayed %s with %s: %d epochs in %v, wire ÷ dirty %s, primary %.0f µs, replica %.0f µs per epoch%s",
				w.Name, t.Name, len(rp.Epochs), rp.Took.Round(time.Millisecond), ratioStr(rr.Ratio), rr.EncodeUs.Mean, rr.DecodeUs.Mean, errNote(rp.Error))
			debug.FreeOSMemory()
		}
		if err := save(); err != nil {
			return nil, err
		}
	}

	return b.finish(ctx, &raw.Env, save)
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// scanRecording reads a whole recording: its guest's size and its epochs.
// A torn last record (torn) is accepted when whole epochs precede it.
func scanRecording(path string) (memBytes uint64, epochs int, torn bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, false, err
	}
	defer f.Close()
	err = replicate.ReadRecording(f, func(m uint64, _ *replicate.RecordedEpoch) error {
		memBytes = m
		epochs++
		return nil
	})
	switch {
	case errors.Is(err, io.ErrUnexpectedEOF) && epochs > 0:
		return memBytes, epochs, true, nil
	case errors.Is(err, io.ErrUnexpectedEOF):
		return 0, 0, false, fmt.Errorf("its first epoch is cut short: %w", err)
	case err != nil:
		return 0, 0, false, err
	case epochs == 0:
		return 0, 0, false, errors.New("it holds no epoch")
	}
	return memBytes, epochs, false, nil
}

// replayRecording replays the recording at path through technique t on
// one link with the fast policy.
func replayRecording(path string, torn bool, t Technique) RawReplay {
	rp := RawReplay{Technique: t.ID}
	start := time.Now()
	err := func() error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		var tr *replicate.TrafficReplay
		defer func() {
			if tr != nil {
				tr.Close()
			}
		}()
		err = replicate.ReadRecording(f, func(mem uint64, e *replicate.RecordedEpoch) error {
			if tr == nil {
				red, err := t.reduction(mem)
				if err != nil {
					return err
				}
				if red.CacheBytes > 0 {
					rp.CacheBytes = red.CacheBytes
				}
				if tr, err = replicate.NewTrafficReplay(mem, replicate.PolicyFast, 1, t.SGMax, *red); err != nil {
					return err
				}
			}
			ep, err := tr.Epoch(e.Dirty, e.Contents)
			if err != nil {
				return fmt.Errorf("epoch %d: %w", e.Epoch, err)
			}
			rp.Epochs = append(rp.Epochs, RawReplayEpoch{
				Epoch: e.Epoch, Dirty: ep.DirtyPages, Regions: ep.Regions, Sent: ep.SentPages, Wire: ep.WireBytes,
				Encode: ep.Encode, Decode: ep.Decode, Zero: ep.Reduce.Zero, Delta: ep.Reduce.Delta, Similar: ep.Reduce.Similar,
			})
			return nil
		})
		if torn && errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		return err
	}()
	rp.Took = time.Since(start)
	if err != nil {
		rp.Error = err.Error()
	}
	return rp
}

// trafficGuest is one replicated run of the dirty guest: a recording run
// when record is set (it ends after the configuration's RecordEpochs),
// else a live one (a warm-up, then the measured window).
type trafficGuest struct {
	pattern string
	tech    Technique
	record  *replicate.EpochRecorder
	trace   string // relative to the output directory
}

// recordPattern records one run of the dirty guest in pattern pat to
// raw/traffic-PATTERN.rec.
func (b *bencher) recordPattern(ctx context.Context, cfg *TrafficConfig, pat string, tech Technique) RawWorkload {
	w := RawWorkload{Name: pat, Source: "dirty guest, " + pat + " pattern", File: filepath.Join(rawDir, "traffic-"+pat+".rec"), MemBytes: cfg.MemBytes()}
	err := func() error {
		f, err := os.Create(filepath.Join(cfg.Out, w.File))
		if err != nil {
			return err
		}
		rec := replicate.NewEpochRecorder(f)
		g := trafficGuest{pattern: pat, tech: tech, record: rec, trace: filepath.Join(tracesDir, "traffic-record-"+pat+".jsonl")}
		run := b.runTrafficGuest(ctx, cfg, g)
		w.Run = &run
		err = rec.Flush()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if run.Error != "" {
			return errors.New(run.Error)
		}
		if err != nil {
			return fmt.Errorf("writing the recording: %w", err)
		}
		mem, n, torn, err := scanRecording(filepath.Join(cfg.Out, w.File))
		if err != nil {
			return fmt.Errorf("reading the recording back: %w", err)
		}
		w.MemBytes, w.Epochs, w.Torn = mem, n, torn
		return nil
	}()
	if err != nil {
		w.Error = err.Error()
	}
	return w
}

func (b *bencher) runTrafficGuest(ctx context.Context, cfg *TrafficConfig, g trafficGuest) RawLiveRun {
	raw := RawLiveRun{Pattern: g.pattern, Technique: g.tech.ID, Trace: g.trace}
	if err := b.runTrafficGuestErr(ctx, cfg, g, &raw); err != nil {
		raw.Error = err.Error()
	}
	return raw
}

// runTrafficGuestErr is runGuestErr with the traffic part's settings: one
// link, sync, fast, the technique's grouping and reduction, and
// optionally a recording.
func (b *bencher) runTrafficGuestErr(ctx context.Context, cfg *TrafficConfig, g trafficGuest, raw *RawLiveRun) error {
	mem := cfg.MemBytes()
	red, err := g.tech.reduction(mem)
	if err != nil {
		return err
	}
	vm, err := b.dirtyVM(mem, g.pattern, cfg.Rate, vmm.DirtyBitmap)
	if err != nil {
		return err
	}
	defer vm.Close()
	var rs *replicaSet
	if g.tech.Active {
		rs, err = b.startActiveReplica(ctx, b.lab)
	} else {
		rs, err = b.startReplicas(ctx, b.lab, 1, nil)
	}
	if err != nil {
		return fmt.Errorf("starting the replica: %w", err)
	}
	defer rs.stop()
	if g.tech.Active {
		defer func() {
			st := rs.leader.ShadowStats()
			raw.Shadow = &st
		}()
	}
	traceFile, err := os.Create(filepath.Join(cfg.Out, g.trace))
	if err != nil {
		return err
	}
	defer traceFile.Close()
	src, err := vmm.NewReplicationSource(vm)
	if err != nil {
		return fmt.Errorf("the replication source: %w", err)
	}
	gate := replicate.NewOutputGate(io.Discard, 16<<20)
	defer gate.Close()
	primary, err := replicate.NewPrimary(replicate.PrimaryConfig{
		Auth:  b.auth,
		Links: rs.addrs, Leader: rs.leadAddr, VMID: newVMID(), Guest: "dirty", VCPUs: guestVCPUs,
		Epoch: cfg.Epoch(), Policy: trafficPolicy(g.tech), Mode: replicate.ModeSync,
		SGMax: g.tech.SGMax, Reduce: red, Record: g.record, Speculate: g.tech.Speculate, ActiveBackup: g.tech.activeBackup(),
		Trace: replicate.NewTraceWriter(traceFile), Log: b.log, AckTimeout: 10 * time.Second,
	}, src, gate)
	if err != nil {
		return fmt.Errorf("the primary: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = primary.Connect(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("connecting to the replica: %w", err)
	}

	raw.Start = time.Now()
	run := startGuest(ctx, vm, primary)
	err = b.watchTrafficGuest(ctx, cfg, g, raw, primary, vm.Memory().Bytes(), run.vmDone, run.repDone)
	var stopErr error
	raw.Committed, stopErr = run.stop()
	return errors.Join(err, stopErr)
}

// watchTrafficGuest follows a run until it is done: a recording run once
// RecordEpochs epochs after the initial copy committed, a live one at the
// end of its measured window. A VM or replication that stops early fails
// it; what it returned is put back into its channel for the caller, which
// reports it.
func (b *bencher) watchTrafficGuest(ctx context.Context, cfg *TrafficConfig, g trafficGuest, raw *RawLiveRun, primary *replicate.Primary, mem []byte,
	vmDone, repDone chan error) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	phase := 0 // 0 starting, 1 warming up or recording, 2 measuring
	var windowStart, windowEnd time.Time
	var committed0 uint64
	pages := func() uint64 { n, _ := pagesWritten(mem); return n }
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-vmDone:
			vmDone <- err // the caller reports it
			return errors.New("the VM stopped early")
		case err := <-repDone:
			repDone <- err
			return errors.New("replication stopped early")
		case now := <-tick.C:
			switch phase {
			case 0:
				if _, started := pagesWritten(mem); started && primary.Committed() >= 1 {
					phase, windowStart = 1, now.Add(cfg.Warmup)
					committed0 = primary.Committed()
					if g.record != nil {
						raw.WindowStart, raw.PagesStart = now, pages()
						deadline = now.Add(time.Minute + 20*time.Duration(cfg.RecordEpochs)*cfg.Epoch())
					}
				} else if now.After(deadline) {
					return errors.New("the guest or the initial copy did not start within 30s")
				}
			case 1:
				if g.record != nil {
					if primary.Committed() >= committed0+uint64(cfg.RecordEpochs) {
						raw.WindowEnd, raw.PagesEnd = now, pages()
						return nil
					}
					if now.After(deadline) {
						return fmt.Errorf("only %d of %d epochs recorded by %v", primary.Committed()-committed0, cfg.RecordEpochs, now.Sub(raw.Start).Round(time.Second))
					}
					continue
				}
				if !now.Before(windowStart) {
					phase, windowEnd = 2, now.Add(cfg.Duration)
					raw.WindowStart, raw.PagesStart = now, pages()
					committed0 = primary.Committed()
				}
			case 2:
				// As runGuestErr: long epochs extend the window, up to 3
				// times, until a few epochs fall in it.
				short := primary.Committed() < committed0+minWindowEpochs && now.Before(raw.WindowStart.Add(3*cfg.Duration))
				if !now.Before(windowEnd) && !short {
					raw.WindowEnd, raw.PagesEnd = now, pages()
					return nil
				}
			}
		}
	}
}

// TrafficResults is the traffic part's analysis (results.json "traffic").
type TrafficResults struct {
	Env          Env                   `json:"env"`
	MemBytes     uint64                `json:"mem_bytes"`
	Epoch        float64               `json:"epoch_ms"`
	RecordEpochs int                   `json:"record_epochs"`
	Workloads    []TrafficWorkload     `json:"workloads"`
	Replay       []TrafficReplayResult `json:"replay"`
	Live         []TrafficLiveResult   `json:"live"`
}

// TrafficWorkload is one recording.
type TrafficWorkload struct {
	Name       string `json:"name"`
	Source     string `json:"source"`
	MemBytes   uint64 `json:"mem_bytes"`
	Epochs     int    `json:"epochs"`
	Dirty      Stat   `json:"dirty_pages"` // per epoch
	CacheBytes int64  `json:"cache_bytes"`
	Torn       bool   `json:"torn,omitempty"`
	Error      string `json:"error,omitempty"`
}

// TrafficReplayResult is one technique on one recording, over every
// epoch of it.
type TrafficReplayResult struct {
	Workload   string `json:"workload"`
	Technique  string `json:"technique"`
	ID         string `json:"id"`
	Epochs     int    `json:"epochs"`
	DirtyBytes uint64 `json:"dirty_bytes"`
	SentBytes  uint64 `json:"sent_bytes"` // the pages grouping sends, raw
	WireBytes  uint64 `json:"wire_bytes"`
	// Ratio is WireBytes ÷ DirtyBytes; VsRaw WireBytes ÷ the wire bytes
	// of grouping by cost, raw, on the same recording.
	Ratio float64 `json:"wire_over_dirty"`
	VsRaw float64 `json:"wire_vs_raw"`
	// EncodeUs is the primary's CPU per epoch (encoding, and the page
	// cache learning the epoch), DecodeUs the replica's (decoding), over
	// the epochs after the first cpuSkip.
	EncodeUs Stat `json:"primary_cpu_us"`
	DecodeUs Stat `json:"replica_cpu_us"`
	// Pages sent as a zero record, a delta against their own copy, and a
	// reference to another page's copy, in percent of the pages sent.
	ZeroPct    float64 `json:"zero_pct"`
	DeltaPct   float64 `json:"delta_pct"`
	SimilarPct float64 `json:"similar_pct"`
	Error      string  `json:"error,omitempty"`
}

// TrafficLiveResult is one live run, over its measured window.
type TrafficLiveResult struct {
	Pattern   string `json:"pattern"`
	Technique string `json:"technique"`
	ID        string `json:"id"`
	Epochs    int    `json:"epochs"`
	Failed    int    `json:"failed_epochs,omitempty"`
	Dirty     Stat   `json:"dirty_pages"`
	// Ratio is the links' bytes (the trace's link_bytes) ÷ dirty bytes.
	Ratio float64 `json:"wire_over_dirty"`
	Pause Stat    `json:"pause_ms"`
	// PausePerPage is the pause per dirty page, µs: Σ pause ÷ Σ dirty
	// pages over the window.
	PausePerPage float64 `json:"pause_us_per_dirty_page"`
	// PauseVsRaw is the mean pause ÷ that of grouping by cost, raw, on
	// the same pattern, PerPageVsRaw the same of the pause per dirty
	// page; SavedPct the bytes saved against it, percent.
	PauseVsRaw   float64 `json:"pause_vs_raw"`
	PerPageVsRaw float64 `json:"pause_per_page_vs_raw"`
	SavedPct     float64 `json:"saved_pct"`
	// ReduceUs is the primary's reduction CPU per epoch from the trace
	// (encoding and the page cache).
	ReduceUs Stat `json:"reduce_cpu_us"`
	// Ahead is the pages sent ahead while the guest ran (speculate), and
	// AheadAgain those of them written again before the pause.
	Ahead      int `json:"ahead_pages,omitempty"`
	AheadAgain int `json:"ahead_again_pages,omitempty"`
	// With active backup: the pages hashed and compared with the
	// leader's shadow, those kept (not sent), the primary's hashing and
	// the round trip per epoch (µs), and the share of the run the shadow
	// ran (a vCPU's time on the leader, for a busy guest).
	ActivePages uint64  `json:"active_pages,omitempty"`
	ActiveKept  uint64  `json:"active_kept,omitempty"`
	HashUs      Stat    `json:"hash_us,omitempty"`
	WaitUs      Stat    `json:"want_wait_us,omitempty"`
	ShadowRan   float64 `json:"shadow_ran_share,omitempty"`
	Progress    float64 `json:"progress_pages_per_s"`
	// RuleBroken: the technique saved nothing (under 5%) and made the
	// pause per dirty page worse by more than 10% (issue 18's rule).
	RuleBroken bool   `json:"rule_broken,omitempty"`
	Error      string `json:"error,omitempty"`
}

// analyzeTraffic analyses the traffic part of dir, or returns nil if dir
// has none.
func analyzeTraffic(dir string) (*TrafficResults, error) {
	var raw RawTraffic
	if err := readJSON(dir, trafficRaw, &raw); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	tr := &TrafficResults{Env: raw.Env, MemBytes: raw.MemBytes, Epoch: ms(raw.Epoch), RecordEpochs: raw.RecordEpochs}
	for _, w := range raw.Workloads {
		tw := TrafficWorkload{Name: w.Name, Source: w.Source, MemBytes: w.MemBytes, Epochs: w.Epochs, Torn: w.Torn, Error: w.Error}
		if w.MemBytes > 0 {
			tw.CacheBytes = trafficCache(w.MemBytes)
		}
		var rawWire float64
		first := len(tr.Replay)
		for _, rp := range w.Replays {
			rr := analyzeReplay(rp)
			rr.Workload = w.Name
			if rp.Technique == rawTechnique && rr.Error == "" {
				rawWire = float64(rr.WireBytes)
			}
			if tw.Dirty.N == 0 && rr.Error == "" {
				var dirty []float64
				for _, e := range rp.Epochs {
					dirty = append(dirty, float64(e.Dirty))
				}
				tw.Dirty = Summarize(dirty)
			}
			tr.Replay = append(tr.Replay, rr)
		}
		for i := first; i < len(tr.Replay); i++ {
			tr.Replay[i].VsRaw = ratio(float64(tr.Replay[i].WireBytes), rawWire)
		}
		tr.Workloads = append(tr.Workloads, tw)
	}
	for _, run := range raw.Live {
		lr, err := analyzeLive(dir, run)
		if err != nil {
			return nil, err
		}
		tr.Live = append(tr.Live, lr)
	}
	for i := range tr.Live {
		lr := &tr.Live[i]
		var ref *TrafficLiveResult
		for j := range tr.Live {
			if r := &tr.Live[j]; r.Pattern == lr.Pattern && r.ID == rawTechnique && r.Error == "" && r.Epochs > 0 {
				ref = r
			}
		}
		if ref == nil || lr.Error != "" || lr.Epochs == 0 {
			continue
		}
		lr.PauseVsRaw = ratio(lr.Pause.Mean, ref.Pause.Mean)
		lr.PerPageVsRaw = ratio(lr.PausePerPage, ref.PausePerPage)
		if ref.Ratio > 0 {
			lr.SavedPct = 100 * (1 - lr.Ratio/ref.Ratio)
		}
		lr.RuleBroken = lookupSGMax(lr.ID) == 0 && lr.ID != rawTechnique && lr.Ratio >= ruleSaves*ref.Ratio && lr.PerPageVsRaw > ruleSlack
	}
	return tr, nil
}

func analyzeReplay(rp RawReplay) TrafficReplayResult {
	t, ok := lookupTechnique(rp.Technique)
	if !ok {
		t = Technique{Name: rp.Technique, ID: rp.Technique}
	}
	rr := TrafficReplayResult{Technique: t.Name, ID: t.ID, Epochs: len(rp.Epochs), Error: rp.Error}
	var enc, dec []float64
	var sent, zero, delta, similar uint64
	for i, e := range rp.Epochs {
		rr.DirtyBytes += uint64(e.Dirty) * pageSize
		rr.SentBytes += e.Sent * pageSize
		rr.WireBytes += e.Wire
		if i >= cpuSkip || len(rp.Epochs) <= cpuSkip {
			enc = append(enc, float64(e.Encode)/1e3)
			dec = append(dec, float64(e.Decode)/1e3)
		}
		sent += e.Sent
		zero += e.Zero
		delta += e.Delta
		similar += e.Similar
	}
	rr.Ratio = ratio(float64(rr.WireBytes), float64(rr.DirtyBytes))
	rr.EncodeUs, rr.DecodeUs = Summarize(enc), Summarize(dec)
	if sent > 0 {
		rr.ZeroPct = 100 * float64(zero) / float64(sent)
		rr.DeltaPct = 100 * float64(delta) / float64(sent)
		rr.SimilarPct = 100 * float64(similar) / float64(sent)
	}
	return rr
}

// analyzeLive computes a live run's figures from its trace, over its
// window.
func analyzeLive(dir string, run RawLiveRun) (TrafficLiveResult, error) {
	t, ok := lookupTechnique(run.Technique)
	if !ok {
		t = Technique{Name: run.Technique, ID: run.Technique}
	}
	lr := TrafficLiveResult{Pattern: run.Pattern, Technique: t.Name, ID: t.ID, Error: run.Error}
	if secs := run.WindowEnd.Sub(run.WindowStart).Seconds(); secs > 0 && run.PagesEnd >= run.PagesStart {
		lr.Progress = float64(run.PagesEnd-run.PagesStart) / secs
	}
	if run.Trace == "" {
		return lr, nil
	}
	recs, err := readTrace(dir, run.Trace)
	if err != nil {
		if run.Error != "" {
			return lr, nil
		}
		return lr, err
	}
	var pause, dirty, reduce, hash, wait []float64
	var wire, dirtyBytes, sumPause float64
	for _, e := range recs {
		if e.Mode == "initial" || e.Time.Before(run.WindowStart) || !e.Time.Before(run.WindowEnd) {
			continue
		}
		lr.Epochs++
		if e.Failed != "" {
			lr.Failed++
			continue
		}
		pause = append(pause, ms(e.Pause.Total))
		sumPause += ms(e.Pause.Total)
		// Pages sent ahead (speculate) were dirty too, and their bytes
		// went on the wire before the pause.
		dirty = append(dirty, float64(e.DirtyPages+e.Speculated))
		dirtyBytes += float64(e.DirtyPages+e.Speculated) * pageSize
		wire += float64(e.SpeculatedBytes)
		for _, n := range e.LinkBytes {
			wire += float64(n)
		}
		lr.Ahead += e.Speculated
		lr.AheadAgain += e.SpeculatedAgain
		if a := e.Active; a != nil {
			lr.ActivePages += a.Pages
			lr.ActiveKept += a.Kept
			hash, wait = append(hash, a.HashMicros), append(wait, a.WaitMicros)
		}
		if e.Reduce != nil {
			reduce = append(reduce, e.Reduce.EncodeMicros+e.Reduce.CacheMicros)
		} else {
			reduce = append(reduce, 0)
		}
	}
	lr.Pause, lr.Dirty, lr.ReduceUs = Summarize(pause), Summarize(dirty), Summarize(reduce)
	if len(hash) > 0 {
		lr.HashUs, lr.WaitUs = Summarize(hash), Summarize(wait)
	}
	if sh := run.Shadow; sh != nil && !run.Start.IsZero() && run.WindowEnd.After(run.Start) {
		lr.ShadowRan = sh.Ran.Seconds() / run.WindowEnd.Sub(run.Start).Seconds()
	}
	lr.Ratio = ratio(wire, dirtyBytes)
	lr.PausePerPage = ratio(sumPause*1e3, dirtyBytes/pageSize)
	return lr, nil
}

// trafficMarkdown writes the "Traffic reduction" section.
func trafficMarkdown(b *strings.Builder, t *TrafficResults, plots Plots) {
	w := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	env, cfg := t.Env, t.Env.Config
	w("## Traffic reduction\n\n")
	w("Every technique of traffic reduction (issue 18) side by side, on %s, %d cores (%s, %s; load average %s at the start, %s at the end). ",
		env.CPU, env.CPUs, env.Kernel, env.Go, env.LoadAvg[0], env.LoadAvg[1])
	rate := "flat out"
	if cfg.Rate > 0 {
		rate = fmt.Sprintf("at %d pages/s", cfg.Rate)
	}
	w("Each of the dirty guest's patterns was run once, replicated (%d MiB, 1 vCPU %s, %.0f ms epochs, sync, 1 link of %s, grouping by cost, raw), with every epoch's dirty pages and their contents at the pause recorded: %d epochs after the initial copy (`raw/traffic-PATTERN.rec`). ",
		t.MemBytes>>20, rate, t.Epoch, FormatRate(cfg.LinkRate), t.RecordEpochs)
	w("Every recording is then replayed through every technique with `replicate.TrafficReplay` (policy fast, 1 link): grouping, assignment and encoding as a primary does them, decoding as a replica does, every decoded page checked against the recording, so the techniques compare on the very same epochs. " +
		"All recorded epochs are replayed, the first ones included (no epoch is skipped); the page cache starts empty, and a replica's store starts as zeros plus what the replay sent.\n\n")
	w("The dirty guest writes the pass number into the first 8 bytes of each page it dirties and leaves the rest zero, so its pages are never all zero, differ from their previous copy in a byte or two, and within a pass are all alike: that is what *zero*, *delta*, *similar* and *zstd* meet here, not a real workload's memory (a recording of one can be added with `--recording NAME=FILE`).\n\n")
	w("Workloads:\n\n")
	for _, wl := range t.Workloads {
		if wl.Error != "" {
			w("- **%s** (%s): error: %s\n", wl.Name, wl.Source, wl.Error)
			continue
		}
		torn := ""
		if wl.Torn {
			torn = "; its torn last record was left out"
		}
		w("- **%s**: %s, %d MiB guest, %d epochs, %s dirty pages per epoch (min %s, max %s), page cache %d MiB%s\n",
			wl.Name, wl.Source, wl.MemBytes>>20, wl.Epochs, f(wl.Dirty.Mean, 0), f(wl.Dirty.Min, 0), f(wl.Dirty.Max, 0), wl.CacheBytes>>20, torn)
	}
	w("\n### Replayed: bytes and CPU on the same epochs\n\n")
	w("*Wire ÷ dirty*: every byte the link carries (maps, message headers, the data raw or encoded) over the dirty pages' bytes, all epochs together (`results.json` also has it over the bytes of grouping by cost, raw: `wire_vs_raw`). " +
		"*Primary CPU*: encoding, and the page cache learning the epoch after its commit; *replica CPU*: decoding into staging. Raw data is neither encoded nor decoded (the primary writes guest memory as it is and the replica reads it into staging: that copy is the kernel's and the replay does not time it), so raw rows show none. " +
		"CPU is per epoch, one goroutine, on this machine, shared with whatever else ran, over every epoch of each replay but the first (which pays for the replay's buffers and the first touch of its memory, as a primary does once); bytes count every epoch. " +
		"*Sent as*: the share of the pages sent as a zero record, a delta against their own copy, or a reference to another page's identical copy.\n\n")
	tb := newTable(b, "workload", "technique", "epochs", "wire ÷ dirty", "primary CPU µs/epoch: mean", "p99", "replica CPU µs/epoch: mean", "p99", "sent as zero / delta / similar")
	for _, r := range t.Replay {
		if r.Error != "" {
			tb.row(r.Workload, r.Technique, fmt.Sprint(r.Epochs), "error: "+strings.ReplaceAll(r.Error, "|", "/"), "", "", "", "", "")
			continue
		}
		cpu := func(s Stat) string { return fz(s.Mean, 0) }
		p99 := func(s Stat) string { return fz(s.P99, 0) }
		sentAs := "–"
		if t, _ := lookupTechnique(r.ID); t.Reduce != "none" {
			sentAs = fmt.Sprintf("%s / %s / %s%%", f(r.ZeroPct, 0), f(r.DeltaPct, 0), f(r.SimilarPct, 0))
		}
		tb.row(r.Workload, r.Technique, fmt.Sprint(r.Epochs), ratioStr(r.Ratio),
			cpu(r.EncodeUs), p99(r.EncodeUs), cpu(r.DecodeUs), p99(r.DecodeUs), sentAs)
	}
	w("\n")
	for _, p := range plots.Drawn {
		if p.File == trafficPlot {
			w("![%s](%s)\n\n%s\n\n", p.File, p.File, p.Caption)
		}
	}
	w("### Live: the pause\n\n")
	w("The random and scattered patterns run replicated with the main techniques (`replicate.PrimaryConfig.Reduce`, grouping by cost) and, for comparison, seed 003's grouping (sg-max 32, raw): %v warm-up after the initial copy, then %v measured (longer when fewer than %d epochs fall in it), not recorded. "+
		"Pause per epoch and *wire ÷ dirty* (the trace's `link_bytes`: the data raw or as encoded messages, without maps and frame headers) over the measured epochs; *reduce CPU* is the primary's encoding and page-cache time from the trace. "+
		"Issue 18's rule: **no technique making pause worse by more than 10%% when it saves nothing**. The guest's speed, and with it the pages it dirties per epoch, varies from run to run on a shared machine by more than that, and the pause follows the dirty pages, so the rule is read on the pause per dirty page (Σ pause ÷ Σ dirty pages): "+
		"a technique that saves under 5%% of the raw bytes and whose pause per dirty page is more than 10%% above that of grouping by cost, raw, on the same pattern is marked *broken*. "+
		"One run each, one after another, on a shared machine: differences of a few percent are within the noise.\n\n", cfg.Warmup, cfg.Duration, minWindowEpochs)
	tb = newTable(b, "pattern", "technique", "epochs", "dirty pages/epoch", "wire ÷ dirty", "saved vs raw", "pause ms: mean", "p99", "vs raw", "pause µs per dirty page", "vs raw", "reduce CPU µs/epoch", "guest pages/s", "10% rule")
	for _, r := range t.Live {
		if r.Error != "" {
			tb.row(r.Pattern, r.Technique, "error: "+strings.ReplaceAll(r.Error, "|", "/"), "", "", "", "", "", "", "", "", "", "", "")
			continue
		}
		rule := "ok"
		switch {
		case r.ID == rawTechnique:
			rule = "reference"
		case lookupSGMax(r.ID) > 0:
			rule = "comparison"
		case r.PauseVsRaw == 0:
			rule = "–"
		case r.RuleBroken:
			rule = fmt.Sprintf("**broken**: saves %s%%, pause per dirty page +%s%%", f(max(0, r.SavedPct), 0), f(100*(r.PerPageVsRaw-1), 0))
		}
		saved, vs, vsPage := "–", "–", "–"
		if r.ID != rawTechnique && r.PauseVsRaw > 0 {
			vs, vsPage = f(r.PauseVsRaw, 2), f(r.PerPageVsRaw, 2)
			if lookupSGMax(r.ID) == 0 {
				saved = f(r.SavedPct, 1) + "%"
				if math.Abs(r.SavedPct) < 0.05 {
					saved = "0.0%" // not "-0.0%"
				}
			}
		}
		tb.row(r.Pattern, r.Technique, fmt.Sprint(r.Epochs), f(r.Dirty.Mean, 0), ratioStr(r.Ratio), saved,
			f(r.Pause.Mean, 2), f(r.Pause.P99, 2), vs, f(r.PausePerPage, 1), vsPage, fz(r.ReduceUs.Mean, 0), f(r.Progress, 0), rule)
	}
	w("\n")
	for _, r := range t.Live {
		if r.ActivePages > 0 {
			w("- %s, %s: the leader's shadow had written %d of the %d pages compared (%s%%) as the guest did: those went as 5-byte kept records. The primary hashed each epoch's pages in %s µs (mean), the answer took %s µs; the shadow ran %s%% of the run (on the leader: a second copy of guest memory, and the guest's CPU while it ran).\n",
				r.Pattern, r.Technique, r.ActiveKept, r.ActivePages, f(100*float64(r.ActiveKept)/float64(r.ActivePages), 1), f(r.HashUs.Mean, 0), f(r.WaitUs.Mean, 0), f(100*r.ShadowRan, 0))
		}
		if r.Ahead > 0 {
			w("- %s, %s: %d pages sent ahead while the guest ran (counted as dirty above, their bytes as on the wire), %d of them (%s%%) written again and sent once more at the pause.\n",
				r.Pattern, r.Technique, r.Ahead, r.AheadAgain, f(100*float64(r.AheadAgain)/float64(r.Ahead), 1))
		}
	}
	w("\n")
}

// ratioStr formats a ratio with three significant digits.
func ratioStr(x float64) string {
	if x <= 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return "–"
	}
	prec := max(0, 2-int(math.Floor(math.Log10(x))))
	return fmt.Sprintf("%.*f", prec, x)
}

// trafficReport is the report of an output directory that holds only the
// traffic part.
func trafficReport(res *Results, plots Plots) string {
	var b strings.Builder
	t := res.Traffic
	fmt.Fprintf(&b, "# Tandem bench: traffic reduction on this machine\n\n")
	fmt.Fprintf(&b, "Generated by `tandem bench --traffic` (%s preset) from the raw data, recordings and traces in this directory (`raw/traffic.json`, `raw/*.rec`, `traces/`); "+
		"`tandem bench --analyze DIR` recomputes this report, `results.json` and the plot from them (the recordings are not needed for that). Started %s, finished %s (%v), tandem %s.\n\n",
		t.Env.Config.Preset, t.Env.Started.Format(time.RFC3339), t.Env.Finished.Format(time.RFC3339), t.Env.Finished.Sub(t.Env.Started).Round(time.Second), t.Env.Tandem)
	trafficMarkdown(&b, t, plots)
	b.WriteString(notDrawnNote(plots))
	if len(t.Env.Errors) > 0 {
		b.WriteString("## Errors\n\n")
		for _, e := range t.Env.Errors {
			fmt.Fprintf(&b, "- %s\n", e)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// trafficFigure shows the replays' bytes on the wire ÷ dirty bytes, per
// technique, grouped by workload, on a log scale (bars rise from the
// axis's lowest decade; a dashed line marks 1, the dirty bytes).
func trafficFigure(t *TrafficResults) (figure.Figure, bool) {
	var names []string
	for _, w := range t.Workloads {
		if w.Error == "" {
			names = append(names, w.Name)
		}
	}
	if len(names) == 0 || len(t.Replay) == 0 {
		return figure.Figure{}, false
	}
	// Bars hold log10(ratio) - lo, lo the lowest decade, so that they
	// rise from the bottom of the axis.
	logs := make([][]float64, len(Techniques))
	lo, hi := 0.0, 0.0
	for ti, tech := range Techniques {
		for _, name := range names {
			v := math.NaN()
			for _, r := range t.Replay {
				if r.Workload == name && r.ID == tech.ID && r.Error == "" && r.Ratio > 0 {
					v = math.Log10(r.Ratio)
					lo, hi = min(lo, v), max(hi, v)
				}
			}
			logs[ti] = append(logs[ti], v)
		}
	}
	lo, hi = math.Floor(lo-0.25), math.Ceil(hi) // the lowest bar stays visible
	if hi == lo {
		hi++
	}
	p := figure.Panel{
		Title: fmt.Sprintf("Bytes on the wire ÷ dirty bytes, replayed (%.0f ms epochs, 1 link)", t.Epoch),
		X:     figure.Axis{Label: "workload", Categories: names},
		Y:     figure.Axis{Label: "wire ÷ dirty (log scale)", Min: figure.Value(0), Max: figure.Value(hi - lo)},
	}
	const width = 7
	for ti, tech := range Techniques {
		v := make([]float64, len(names))
		any := false
		for i, x := range logs[ti] {
			if !math.IsNaN(x) {
				v[i], any = x-lo, true
			}
		}
		if any {
			p.Series = append(p.Series, figure.Series{Kind: figure.Bars, Name: tech.Name, Color: trafficColor[ti%len(trafficColor)], Values: v, Width: width})
		}
	}
	if len(p.Series) == 0 {
		return figure.Figure{}, false
	}
	for i := range p.Series {
		p.Series[i].Offset = barOffset(i, len(p.Series), width)
	}
	p.Series = append(p.Series, figure.Series{Kind: figure.Line, Name: "wire = dirty", Color: reference, Dashed: true,
		XY: []figure.XY{{X: -0.5, Y: -lo}, {X: float64(len(names)) - 0.5, Y: -lo}}})
	for k := lo; k <= hi; k++ {
		p.Y.Ticks = append(p.Y.Ticks, figure.Tick{Value: k - lo, Label: strconv.FormatFloat(math.Pow(10, k), 'f', -1, 64)})
	}
	p.Legend.Room = true
	return figure.Figure{
		File:    trafficPlot,
		Caption: "Bytes on the wire ÷ dirty bytes of every technique replayed on every workload, log scale; dashed: the dirty bytes themselves (1).",
		Width:   float64(max(140, 30+25*len(names))), Height: 110, Panels: []figure.Panel{p},
	}, true
}
