package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
)

// TestTrafficSmoke runs the traffic part in the smoke preset end to end
// (about 25 s): three recordings of the dirty guest, ten live runs over a
// shaped link, every recording replayed through every technique.
func TestTrafficSmoke(t *testing.T) {
	kvmtest.Open(t)
	if err := CheckLabTools(); err != nil {
		if kvmtest.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	cfg := DefaultTrafficConfig(PresetSmoke)
	cfg.Out = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	start := time.Now()
	res, err := RunTraffic(ctx, cfg, Options{Version: "test", Out: &progress, Plots: drawInProcess})
	if err != nil {
		t.Fatalf("RunTraffic: %v\n%s", err, progress.String())
	}
	t.Logf("the traffic part took %v", time.Since(start).Round(time.Second))
	tr := res.Traffic
	if tr == nil {
		t.Fatal("no traffic results")
	}
	if len(tr.Env.Errors) > 0 {
		t.Errorf("errors: %v", tr.Env.Errors)
	}

	// Every pattern recorded, every recording replayed by every
	// technique, every epoch of it decoded (a replay that does not
	// decode, or decodes to other contents, is an error).
	if len(tr.Workloads) != len(trafficPatterns) {
		t.Fatalf("%d workloads, want %d", len(tr.Workloads), len(trafficPatterns))
	}
	epochs := map[string]int{}
	for _, w := range tr.Workloads {
		if w.Error != "" || w.Epochs < cfg.RecordEpochs || w.Torn {
			t.Errorf("workload %s: %d epochs, torn %v, error %q", w.Name, w.Epochs, w.Torn, w.Error)
		}
		epochs[w.Name] = w.Epochs
		if _, err := os.Stat(filepath.Join(cfg.Out, rawDir, "traffic-"+w.Name+".rec")); err != nil {
			t.Error(err)
		}
	}
	replay := map[string]TrafficReplayResult{} // by workload/technique ID
	for _, r := range tr.Replay {
		replay[r.Workload+"/"+r.ID] = r
		if r.Error != "" || r.Epochs != epochs[r.Workload] || r.DirtyBytes == 0 || r.WireBytes == 0 {
			t.Errorf("replay of %s with %s: %d of %d epochs, %d dirty and %d wire bytes, error %q",
				r.Workload, r.Technique, r.Epochs, epochs[r.Workload], r.DirtyBytes, r.WireBytes, r.Error)
		}
	}
	replayed := 0
	for _, tech := range Techniques {
		if tech.replayed() {
			replayed++
		}
	}
	if len(replay) != len(trafficPatterns)*replayed {
		t.Errorf("%d replays, want %d", len(replay), len(trafficPatterns)*replayed)
	}
	// Seed 003's fixed 32 regions send the gaps of a random dirty set
	// along; grouping by cost sends the dirty pages and a map.
	if r := replay["random/seed003"]; r.Ratio <= 5 {
		t.Errorf("random, seed-003 grouping: wire ÷ dirty %.3f, want more than 5", r.Ratio)
	}
	if r := replay["random/raw"]; r.Ratio > 1.2 || r.Ratio < 1 {
		t.Errorf("random, grouping by cost: wire ÷ dirty %.3f, want 1 to 1.2", r.Ratio)
	}
	for _, w := range trafficPatterns {
		all, raw := replay[w+"/all"], replay[w+"/raw"]
		if all.WireBytes >= raw.WireBytes {
			t.Errorf("%s: all sends %d bytes, by cost raw %d", w, all.WireBytes, raw.WireBytes)
		}
		if all.EncodeUs.N == 0 || all.EncodeUs.Mean <= 0 || all.DecodeUs.Mean <= 0 {
			t.Errorf("%s: all: primary CPU %+v, replica CPU %+v", w, all.EncodeUs, all.DecodeUs)
		}
	}

	// Live runs: every pattern and live technique, with a pause.
	nLive := 0
	for _, tech := range Techniques {
		if tech.Live {
			nLive += len(livePatterns)
		}
	}
	if len(tr.Live) != nLive {
		t.Errorf("%d live runs, want %d", len(tr.Live), nLive)
	}
	for _, r := range tr.Live {
		if r.Error != "" || r.Epochs < 2 || r.Pause.Mean <= 0 || r.Ratio <= 0 || r.Progress <= 0 {
			t.Errorf("live %s %s: %d epochs, pause %+v, wire ÷ dirty %v, progress %v, error %q", r.Pattern, r.Technique, r.Epochs, r.Pause, r.Ratio, r.Progress, r.Error)
		}
		if r.ID != rawTechnique && r.PauseVsRaw <= 0 {
			t.Errorf("live %s %s: no pause against raw", r.Pattern, r.Technique)
		}
		if (r.ID == "speculate") != (r.Ahead > 0) {
			t.Errorf("live %s %s: %d pages sent ahead", r.Pattern, r.Technique, r.Ahead)
		}
		// The dirty guest is deterministic enough for a shadow to write
		// some pages as it does.
		if (r.ID == "active") != (r.ActiveKept > 0 && r.ActiveKept < r.ActivePages && r.ShadowRan > 0) {
			t.Errorf("live %s %s: %d of %d pages kept by active backup, the shadow ran %.2f of the run", r.Pattern, r.Technique, r.ActiveKept, r.ActivePages, r.ShadowRan)
		}
	}

	// The report: its section, both tables, the machine, the plot.
	md, err := os.ReadFile(filepath.Join(cfg.Out, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"## Traffic reduction", "| workload | technique | epochs | wire ÷ dirty |", "| random | seed-003 (sg-max 32, raw) |",
		"### Live: the pause", "| pattern | technique | epochs |", "| scattered | all |", "no technique making pause worse by more than 10%",
		tr.Env.CPU, fmt.Sprintf("%d cores", tr.Env.CPUs), "![traffic.png](traffic.png)",
	} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	checkPNG(t, filepath.Join(cfg.Out, trafficPlot))
	b, err := os.ReadFile(filepath.Join(cfg.Out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(`"traffic"`)) {
		t.Error("results.json lacks the traffic results")
	}
	// The analysis reproduces from the directory alone.
	if _, err := Report(cfg.Out, drawInProcess); err != nil {
		t.Fatal(err)
	}
	if again, err := os.ReadFile(filepath.Join(cfg.Out, "results.json")); err != nil || !bytes.Equal(again, b) {
		t.Errorf("a second analysis wrote other results (%v)", err)
	}
	prefix := fmt.Sprintf("%s%d-", nsPrefix, os.Getpid())
	for _, ns := range listNamespaces() {
		if strings.HasPrefix(ns, prefix) {
			t.Errorf("namespace %s left behind", ns)
		}
	}
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() < 300 || b.Dy() < 200 {
		t.Errorf("%s: %v", path, b)
	}
}

func TestParseRecordings(t *testing.T) {
	got, err := ParseRecordings(" linux=/tmp/a.rec, kv-2=b.rec ")
	if err != nil || len(got) != 2 || got[0] != (Recording{"linux", "/tmp/a.rec"}) || got[1] != (Recording{"kv-2", "b.rec"}) {
		t.Errorf("ParseRecordings = %v, %v", got, err)
	}
	for in, want := range map[string]string{
		"":                  "empty",
		"linux":             "want NAME=FILE",
		"=a.rec":            "both non-empty",
		"linux=":            "both non-empty",
		"a=x.rec,a=y":       "given twice",
		"random=x.rec":      "taken by the dirty guest's pattern",
		"lin ux=x.rec":      "want letters, digits",
		"a/b=x.rec":         "want letters, digits",
		"linux=a,,=b":       "both non-empty",
		"ok=a,sequential=b": "taken",
	} {
		_, err := ParseRecordings(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRecordings(%q) = %v, want an error with %q", in, err, want)
		}
	}
}

// dirtyPage is a page as the dirty guest leaves it: the pass number in
// its first 8 bytes.
func dirtyPage(pass uint64) []byte {
	p := make([]byte, pageSize)
	binary.LittleEndian.PutUint64(p, pass)
	return p
}

// writeRecording records epochs of a made-up guest of memPages pages to
// path, somewhat as the dirty guest writes them: epoch e dirties the pages
// p ≡ e (mod 3) with pass number e/3+1 as content (so a page's content
// was often sent before as another page's), and one page of noise; every
// fifth page stays zero. It returns the file's size.
func writeRecording(t *testing.T, path string, memPages uint64, epochs int) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := replicate.NewEpochRecorder(f)
	mem := make([]byte, memPages*pageSize)
	for e := range epochs {
		var dirty []uint64
		for p := uint64(e % 3); p < memPages; p += 3 {
			dirty = append(dirty, p)
			if p%5 != 0 {
				copy(mem[p*pageSize:], dirtyPage(uint64(e/3+1)))
			}
		}
		noise := mem[dirty[0]*pageSize : (dirty[0]+1)*pageSize]
		for i := range noise {
			noise[i] = byte(i*7 + e)
		}
		if err := rec.Record(uint64(e+2), dirty, mem); err != nil {
			t.Fatal(err)
		}
	}
	if err := rec.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return fileSize(path)
}

// TestReplayRecording replays a made-up recording through every
// technique: every epoch decodes, and the techniques' bytes are in the
// order their rules imply.
func TestReplayRecording(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.rec")
	writeRecording(t, path, 600, 8)
	mem, n, torn, err := scanRecording(path)
	if err != nil || mem != 600*pageSize || n != 8 || torn {
		t.Fatalf("scanRecording = %d, %d, %v, %v", mem, n, torn, err)
	}
	got := map[string]TrafficReplayResult{}
	for _, tech := range Techniques {
		if !tech.replayed() {
			continue
		}
		rp := replayRecording(path, false, tech)
		if rp.Error != "" || len(rp.Epochs) != 8 {
			t.Fatalf("%s: %d epochs, error %q", tech.Name, len(rp.Epochs), rp.Error)
		}
		if rp.CacheBytes != 0 && rp.CacheBytes != 600*pageSize {
			t.Errorf("%s: cache %d bytes, want the guest's %d", tech.Name, rp.CacheBytes, 600*pageSize)
		}
		got[tech.ID] = analyzeReplay(rp)
		t.Logf("%s: wire ÷ dirty %.4f, sent as zero %.0f%% delta %.0f%% similar %.0f%%", tech.Name, got[tech.ID].Ratio, got[tech.ID].ZeroPct, got[tech.ID].DeltaPct, got[tech.ID].SimilarPct)
	}
	// Every third page dirty: seed 003's 32 regions send the gaps.
	if r := got["seed003"]; r.Ratio < 2.5 {
		t.Errorf("seed-003 wire ÷ dirty %v, want about 3", r.Ratio)
	}
	if r := got["raw"]; r.Ratio < 1 || r.Ratio > 1.01 {
		t.Errorf("by cost, raw: wire ÷ dirty %v", r.Ratio)
	}
	if r := got["zero"]; r.ZeroPct < 15 || r.WireBytes >= got["raw"].WireBytes {
		t.Errorf("zero: %v%% zero pages, %d bytes against raw's %d", r.ZeroPct, r.WireBytes, got["raw"].WireBytes)
	}
	if r := got["similar"]; r.SimilarPct <= 0 || r.WireBytes >= got["delta"].WireBytes {
		t.Errorf("similar: %v%% similar, %d bytes against delta's %d", r.SimilarPct, r.WireBytes, got["delta"].WireBytes)
	}
	for _, id := range []string{"zero", "delta", "similar", "zstd"} {
		if got["all"].WireBytes > got[id].WireBytes {
			t.Errorf("all sends %d bytes, %s alone %d", got["all"].WireBytes, id, got[id].WireBytes)
		}
	}
	if r := got["all"]; r.EncodeUs.N != 7 || r.DecodeUs.N != 7 {
		t.Errorf("all: CPU over %d and %d epochs, want all but the first (7)", r.EncodeUs.N, r.DecodeUs.N)
	}
}

func TestScanRecording(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.rec")
	size := writeRecording(t, good, 64, 3)
	b, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	torn := filepath.Join(dir, "torn.rec")
	if err := os.WriteFile(torn, b[:size-100], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, n, isTorn, err := scanRecording(torn); err != nil || n != 2 || !isTorn {
		t.Errorf("torn recording: %d epochs, torn %v, %v", n, isTorn, err)
	}
	// Replaying it replays the whole epochs.
	if rp := replayRecording(torn, true, Techniques[len(Techniques)-1]); rp.Error != "" || len(rp.Epochs) != 2 {
		t.Errorf("replay of a torn recording: %d epochs, %q", len(rp.Epochs), rp.Error)
	}
	bad := map[string][]byte{
		"junk.rec":    []byte("#!/bin/sh\necho this is not a recording\n"),
		"empty.rec":   nil,
		"header.rec":  b[:16],       // no epoch
		"cut.rec":     b[:16+12+20], // the first epoch cut short
		"flipped.rec": append(append([]byte{}, b[:40]...), append([]byte{b[40] ^ 1}, b[41:]...)...),
	}
	for name, content := range bad {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, _, err := scanRecording(path); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, _, _, err := scanRecording(filepath.Join(dir, "missing.rec")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing recording: %v", err)
	}
}

// TestRunTrafficBadRecording: a recording given that is missing or not a
// recording fails the part before anything runs, with an error that names
// it.
func TestRunTrafficBadRecording(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.rec")
	if err := os.WriteFile(junk, []byte("not a recording, not at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		rec  Recording
		want []string
	}{
		{Recording{"linux", filepath.Join(dir, "missing.rec")}, []string{"recording linux", "missing.rec", "no such file"}},
		{Recording{"kv", junk}, []string{"recording kv", junk, "not an epoch recording"}},
	} {
		cfg := DefaultTrafficConfig(PresetSmoke)
		cfg.Out = filepath.Join(dir, "out")
		cfg.Recordings = []Recording{c.rec}
		_, err := RunTraffic(context.Background(), cfg, Options{})
		for _, want := range c.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("recording %v: error %v, want one with %q", c.rec, err, want)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the part started anyway: %v", err)
	}
}

// TestTrafficAnalysis analyses a made-up traffic part: ratios, the rule
// and the report follow from the raw data and traces.
func TestTrafficAnalysis(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, tracesDir), 0o755); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cfg := DefaultTrafficConfig(PresetSmoke)
	env := Env{Started: t0, Finished: t0.Add(time.Minute), Config: cfg.Config, CPU: "Test CPU 9000", CPUs: 2, Tandem: "test"}
	epochs := func(wire uint64, encode time.Duration) []RawReplayEpoch {
		var es []RawReplayEpoch
		for i := range 4 {
			es = append(es, RawReplayEpoch{Epoch: uint64(i + 2), Dirty: 100, Sent: 100, Wire: wire, Encode: encode * time.Duration(1+9*max(0, 1-i)), Decode: encode / 2, Delta: 10})
		}
		return es
	}
	raw := RawTraffic{Env: env, MemBytes: 64 << 20, Epoch: 50 * time.Millisecond, RecordEpochs: 4,
		Workloads: []RawWorkload{{Name: "random", Source: "dirty guest, random pattern", MemBytes: 64 << 20, Epochs: 4, Replays: []RawReplay{
			{Technique: "seed003", Epochs: epochs(800*pageSize, 0)},
			{Technique: "raw", Epochs: epochs(100*pageSize, 0)},
			{Technique: "all", Epochs: epochs(10*pageSize, 100*time.Microsecond)},
		}}, {Name: "broken", Source: "recording x", Error: "it holds no epoch"}}}
	live := func(tech string, pause time.Duration, dirty int, linkBytes uint64) {
		rel := filepath.Join(tracesDir, "traffic-random-"+tech+".jsonl")
		recs := []replicate.EpochTrace{{Epoch: 1, Time: t0, Mode: "initial", LinkBytes: []uint64{1 << 30}}}
		for i := range 5 {
			recs = append(recs, replicate.EpochTrace{Epoch: uint64(i + 2), Time: t0.Add(time.Second + time.Duration(i)*100*time.Millisecond), Mode: "sync",
				DirtyPages: dirty, LinkBytes: []uint64{linkBytes}, Pause: replicate.Durations{Total: pause}})
		}
		writeTrace(t, dir, rel, recs)
		raw.Live = append(raw.Live, RawLiveRun{Pattern: "random", Technique: tech, Trace: rel, Start: t0, WindowStart: t0.Add(time.Second), WindowEnd: t0.Add(2 * time.Second), PagesStart: 0, PagesEnd: 5000})
	}
	live("raw", 10*time.Millisecond, 100, 100*pageSize)
	live("zero", 12*time.Millisecond, 100, 99*pageSize) // saves 1%, pauses 20% longer: broken
	live("delta", 12*time.Millisecond, 100, 20*pageSize)
	live("seed003", 50*time.Millisecond, 100, 800*pageSize)
	live("zstd", 13*time.Millisecond, 125, 125*pageSize) // pauses 30% longer, for 25% more dirty pages: not broken
	if err := writeJSON(dir, trafficRaw, raw); err != nil {
		t.Fatal(err)
	}
	res, err := Report(dir, drawInProcess)
	if err != nil {
		t.Fatal(err)
	}
	tr := res.Traffic
	if tr == nil || res.Env.CPU != "Test CPU 9000" || len(res.Runs) != 0 || len(res.TableIII) != 0 {
		t.Fatalf("results %+v", res)
	}
	byID := map[string]TrafficReplayResult{}
	for _, r := range tr.Replay {
		byID[r.ID] = r
	}
	if r := byID["seed003"]; !near(r.Ratio, 8, 1e-9) || !near(r.VsRaw, 8, 1e-9) {
		t.Errorf("seed003 %+v", r)
	}
	// The first epoch's 10-fold CPU is left out.
	if r := byID["all"]; !near(r.Ratio, 0.1, 1e-9) || r.EncodeUs.N != 3 || !near(r.EncodeUs.Mean, 100, 1e-9) || !near(r.DecodeUs.Mean, 50, 1e-9) || !near(r.DeltaPct, 10, 1e-9) {
		t.Errorf("all %+v", r)
	}
	if w := tr.Workloads[0]; w.Dirty.Mean != 100 || w.CacheBytes != 64<<20 {
		t.Errorf("workload %+v", w)
	}
	liveBy := map[string]TrafficLiveResult{}
	for _, r := range tr.Live {
		liveBy[r.ID] = r
		if r.Epochs != 5 || !near(r.Progress, 5000, 1e-9) {
			t.Errorf("live %s: %d epochs, progress %v", r.ID, r.Epochs, r.Progress)
		}
	}
	if r := liveBy["zero"]; !r.RuleBroken || !near(r.PauseVsRaw, 1.2, 1e-9) || !near(r.PerPageVsRaw, 1.2, 1e-9) || !near(r.SavedPct, 1, 1e-9) {
		t.Errorf("zero %+v: saves nothing and pauses 20%% longer", r)
	}
	if r := liveBy["zstd"]; r.RuleBroken || !near(r.PauseVsRaw, 1.3, 1e-9) || !near(r.PausePerPage, 104, 1e-9) || !near(r.PerPageVsRaw, 1.04, 1e-9) {
		t.Errorf("zstd %+v: pauses longer, but no longer per dirty page", r)
	}
	if r := liveBy["delta"]; r.RuleBroken || !near(r.Ratio, 0.2, 1e-9) || !near(r.SavedPct, 80, 1e-9) {
		t.Errorf("delta %+v: saves 80%%", r)
	}
	if r := liveBy["seed003"]; r.RuleBroken || !near(r.Pause.Mean, 50, 1e-9) {
		t.Errorf("seed003 %+v: a comparison, not a technique the rule applies to", r)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# Tandem bench: traffic reduction", "Test CPU 9000, 2 cores", "| random | all | 4 | 0.100 | 100 |",
		"**broken**: saves 1%, pause per dirty page +20%", "**broken** (recording x): error: it holds no epoch", "![traffic.png](traffic.png)"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if strings.Contains(string(md), "## Headline") {
		t.Error("a report of the traffic part alone shows the matrix's sections")
	}
	checkPNG(t, filepath.Join(dir, trafficPlot))

	// In a directory that holds the matrix too, the section joins its report.
	mdir := fakeOutput(t)
	if err := writeJSON(mdir, trafficRaw, raw); err != nil {
		t.Fatal(err)
	}
	for _, rr := range raw.Live {
		b, _ := os.ReadFile(filepath.Join(dir, rr.Trace))
		if err := os.WriteFile(filepath.Join(mdir, rr.Trace), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mres, err := Report(mdir, drawInProcess)
	if err != nil {
		t.Fatal(err)
	}
	md, _ = os.ReadFile(filepath.Join(mdir, "report.md"))
	if mres.Traffic == nil || len(mres.Runs) == 0 || !strings.Contains(string(md), "## Headline") || strings.Count(string(md), "## Traffic reduction") != 1 || strings.Count(string(md), "(traffic.png)") != 1 {
		t.Error("the matrix's report lacks the traffic section, or shows it or its plot twice")
	}
}
