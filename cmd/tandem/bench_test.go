package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/bench"
	"github.com/tandemvm/tandem/kvm/kvmtest"
)

func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{
		{"bench", "--quick", "--smoke"},
		{"bench", "--factors", "0.5"},
		{"bench", "--link-rate", "fast"},
		{"bench", "--mem", "1K"},
		{"bench", "--setups", "fast3"},
		{"bench", "--analyze", "x", "--quick"},
		{"bench", "stray"},
		{"bench", "--persist", "--traffic"},
		{"bench", "--persist", "--linux"},
		{"bench", "--persist", "--factors", "0.5"},
		{"bench", "--peer", "firecracker"},
		{"bench", "--peer", "qemu", "--factors", "2"},
		{"bench", "--peer", "qemu", "--traffic"},
		{"bench", "--peer", "qemu", "--mem", "64M,128M"},
		{"bench", "--ring", "1"},
	} {
		_, stderr, status := runTandem(t, args...)
		if status != exitUsage {
			t.Errorf("tandem %v: status %d, want %d; stderr %s", args, status, exitUsage, stderr)
		}
	}
}

// TestBenchTrafficFlags checks the flags of tandem bench --traffic: a bad
// command line is a usage error that says what is wrong; a recording that
// is missing or not a recording fails before anything runs, naming it.
func TestBenchTrafficFlags(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.rec")
	if err := os.WriteFile(junk, []byte("#!/bin/sh\necho not a recording\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.rec")
	out := filepath.Join(dir, "out")
	for _, c := range []struct {
		args   []string
		status int
		want   []string
	}{
		{[]string{"--recording", "linux=x.rec"}, exitUsage, []string{"--recording needs --traffic"}},
		{[]string{"--traffic", "--recording", "linux"}, exitUsage, []string{"--recording", `"linux"`, "want NAME=FILE"}},
		{[]string{"--traffic", "--recording", "=x.rec"}, exitUsage, []string{"want NAME=FILE, both non-empty"}},
		{[]string{"--traffic", "--recording", "linux="}, exitUsage, []string{"want NAME=FILE, both non-empty"}},
		{[]string{"--traffic", "--recording", "a=x.rec,a=y.rec"}, exitUsage, []string{`"a" given twice`}},
		{[]string{"--traffic", "--recording", "random=x.rec"}, exitUsage, []string{`"random" is taken by the dirty guest's pattern`}},
		{[]string{"--traffic", "--recording", "a b=x.rec"}, exitUsage, []string{"want letters, digits"}},
		{[]string{"--traffic", "--recording", ""}, exitUsage, []string{"empty list of recordings"}},
		{[]string{"--traffic", "--factors", "2"}, exitUsage, []string{"--traffic takes", "(--factors)"}},
		{[]string{"--traffic", "--setups", "fast4"}, exitUsage, []string{"(--setups)"}},
		{[]string{"--traffic", "--mem", "64M,128M"}, exitUsage, []string{"one --mem size, not 2"}},
		{[]string{"--traffic", "--epochs", "25ms,50ms"}, exitUsage, []string{"one --epochs interval, not 2"}},
		{[]string{"--traffic", "--mem", "1K"}, exitUsage, []string{"memory size"}},
		{[]string{"--traffic", "--smoke", "--quick"}, exitUsage, []string{"exclude each other"}},
		{[]string{"--traffic", "--linux"}, exitUsage, []string{"--linux takes"}},
		{[]string{"--traffic", "--analyze", dir}, exitUsage, []string{"--analyze takes no other flag"}},
		{[]string{"--traffic", "--smoke", "--out", out, "--recording", "linux=" + missing}, 1, []string{"recording linux", missing, "no such file"}},
		{[]string{"--traffic", "--smoke", "--out", out, "--recording", "kv=" + junk}, 1, []string{"recording kv", junk, "not an epoch recording"}},
	} {
		_, stderr, status := runTandem(t, append([]string{"bench"}, c.args...)...)
		if status != c.status {
			t.Errorf("tandem bench %v: status %d, want %d; stderr %s", c.args, status, c.status, stderr)
		}
		for _, want := range c.want {
			if !strings.Contains(stderr, want) {
				t.Errorf("tandem bench %v: stderr %q lacks %q", c.args, stderr, want)
			}
		}
	}
	if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a bad recording started the bench anyway: %v", err)
	}
}

// TestBenchSmoke runs the smallest bench end to end (about 25 s): shaped
// links in namespaces, every setup, recovery, harvest and the data-path
// microbenchmark; checks the report, results and plots, and that the
// namespaces are gone afterwards.
func TestBenchSmoke(t *testing.T) {
	dir := t.TempDir()
	out, pid := runBench(t, "--smoke", "--out", dir)
	// Progress lines as it goes.
	for _, want := range []string{"links: 4 veth pairs", "data path fast(4)", "run 6/6", "recovery of 64 MiB from 4", "harvest ring", "done in"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	nsList, _ := exec.Command("ip", "netns", "list").Output()
	if prefix := fmt.Sprintf("tandem-bench-%d-", pid); strings.Contains(string(nsList), prefix) {
		t.Errorf("namespaces %s* left behind:\n%s", prefix, nsList)
	}
	res, b := readResults(t, dir)
	if len(res.Runs) != 6 {
		t.Errorf("%d runs, want 6", len(res.Runs))
	}
	for _, r := range res.Runs {
		if r.Progress <= 0 || r.ProgressRatio <= 0 {
			t.Errorf("%s: progress %v ratio %v", r.Spec.ID, r.Progress, r.ProgressRatio)
		}
		if r.Spec.Setup != "none" && (r.Epochs < 3 || r.Pause.Total.Mean <= 0 || r.Bound.Mean <= 0 || len(r.LinkBytes) == 0) {
			t.Errorf("%s: %d epochs, pause %v, bound %v, links %v", r.Spec.ID, r.Epochs, r.Pause.Total.Mean, r.Bound.Mean, r.LinkBytes)
		}
	}
	for _, r := range res.Recovery {
		if !r.Verified || r.Seconds.Mean <= 0 {
			t.Errorf("recovery %+v", r)
		}
	}
	if len(res.Recovery) != 3 || len(res.Harvest) != 4 || len(res.Pipeline) != 4 {
		t.Errorf("%d recovery, %d harvest, %d pipeline results", len(res.Recovery), len(res.Harvest), len(res.Pipeline))
	}
	for _, p := range res.Pipeline {
		if p.Epochs == 0 || p.WireGBs <= 0 || p.Fraction <= 0 {
			t.Errorf("pipeline %+v", p)
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Headline", "Seed 003 Table III", "## Recovery", "TCP goodput per link"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	plots, _ := filepath.Glob(filepath.Join(dir, "*.png"))
	if len(plots) < 8 {
		t.Errorf("%d plots", len(plots))
	}
	for _, p := range plots {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s: %v", p, err)
		}
		f.Close()
	}
	// The analysis reproduces from the directory alone.
	if _, stderr, status := runTandem(t, "bench", "--analyze", dir); status != 0 {
		t.Errorf("tandem bench --analyze: status %d: %s", status, stderr)
	}
	again, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(b) {
		t.Error("--analyze wrote different results from the same raw data")
	}
	checkAnalyzeWithoutPlotter(t, dir, b)
}

// TestBenchPeerSmoke runs tandem bench --peer qemu at its smallest (64
// MiB, one repetition): QEMU's migration with one channel and with
// multifd(4), Tandem's full copy and recovery over 1 and 4 links, in both
// connection modes; every move succeeds, QEMU sends at least the memory
// (no zero page skipped), every recovered image is checked, and the report
// has a row per stream count. It needs Debian's qemu-system-x86, which
// .ci/run installs (TANDEM_REQUIRE_QEMU=1 there).
func TestBenchPeerSmoke(t *testing.T) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		if os.Getenv("TANDEM_REQUIRE_QEMU") == "1" {
			t.Fatal(err)
		}
		t.Skip("no qemu-system-x86_64 (apt-get install --no-install-recommends qemu-system-x86)")
	}
	dir := t.TempDir()
	out, _ := runBench(t, "--peer", "qemu", "--smoke", "--out", dir)
	for _, want := range []string{"qemu precopy, 1 channel(s)", "qemu multifd(4), 4 channel(s)", "tandem plaintext, 4 link(s): full copy"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "peer.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res bench.PeerResults
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Runs) != 10 {
		t.Errorf("%d runs, want 10 (per stream count: QEMU, and full copy and recovery in two modes)", len(res.Runs))
	}
	for _, r := range res.Runs {
		switch {
		case r.Error != "" || r.Took <= 0:
			t.Errorf("%+v", r)
		case r.System == "qemu" && r.Bytes < res.Mem:
			t.Errorf("QEMU sent %d bytes of a %d-byte memory: pages were skipped", r.Bytes, res.Mem)
		case r.What == "recovery" && !r.Verified:
			t.Errorf("recovery not verified: %+v", r)
		}
	}
	md, err := os.ReadFile(filepath.Join(dir, "peer.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| 1 | ", "| 4 | ", "QEMU emulator version"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("peer.md lacks %q:\n%s", want, md)
		}
	}
}

// checkAnalyzeWithoutPlotter runs tandem bench --analyze on dir with no
// tandem-plot next to tandem or in PATH: it says once how to get the
// plots, writes the same results, and a report that names no plot and
// says why.
func checkAnalyzeWithoutPlotter(t *testing.T, dir string, results []byte) {
	t.Helper()
	exe, err := os.ReadFile(tandemBin)
	if err != nil {
		t.Fatal(err)
	}
	alone := filepath.Join(t.TempDir(), "tandem")
	if err := os.WriteFile(alone, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(alone, "bench", "--analyze", dir)
	cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tandem bench --analyze without tandem-plot: %v\n%s", err, stderr.String())
	}
	if n := strings.Count(stderr.String(), bench.ErrNoPlotter.Error()); n != 1 || !strings.Contains(stderr.String(), "go build -o "+filepath.Dir(alone)+" ./cmd/tandem-plot") {
		t.Errorf("tandem bench --analyze without tandem-plot said so %d times, or not how to build it:\n%s", n, stderr.String())
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(md), ".png") || !strings.Contains(string(md), "The plots were not drawn") {
		t.Error("the report without tandem-plot names plots, or does not say why there are none")
	}
	if again, err := os.ReadFile(filepath.Join(dir, "results.json")); err != nil || string(again) != string(results) {
		t.Errorf("--analyze without tandem-plot wrote other results (%v)", err)
	}
}

// TestBenchPersistSmoke runs tandem bench --persist at its smallest: no
// protection, local persistence, replication and both at one factor.
// Every protected run persists or replicates epochs in its window, the
// persisted ones report when their epochs were durable, and the report
// compares them; the directories on the RAM file system are gone.
func TestBenchPersistSmoke(t *testing.T) {
	dir := t.TempDir()
	out, _ := runBench(t, "--persist", "--smoke", "--factors", "2", "--setups", "none,persist,async,asyncp,fast2p", "--out", dir)
	if strings.Contains(out, "recovery of") || strings.Contains(out, "data path") {
		t.Errorf("--persist ran more than the matrix:\n%s", out)
	}
	res, _ := readResults(t, dir)
	setups := map[string]bool{}
	for _, r := range res.Runs {
		setups[r.Spec.Setup] = true
		if r.Progress <= 0 || r.ProgressRatio <= 0 {
			t.Errorf("%s: progress %v ratio %v", r.Spec.ID, r.Progress, r.ProgressRatio)
		}
		if r.Spec.Setup == "none" {
			continue
		}
		if r.Epochs < 2 || r.Pause.Total.Mean <= 0 || r.Spec.Factor != 2 {
			t.Errorf("%s: %d epochs, pause %v", r.Spec.ID, r.Epochs, r.Pause.Total.Mean)
		}
		// Persisted runs, and only they, trace when each epoch was durable.
		if persisted := r.Spec.SetupOf().Persist; persisted != (r.Durable.N > 0) || persisted && r.Durable.P50 <= 0 {
			t.Errorf("%s: durable %+v", r.Spec.ID, r.Durable)
		}
	}
	if len(setups) != 5 {
		t.Errorf("setups run: %v", setups)
	}
	md, err := os.ReadFile(filepath.Join(dir, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Persistence and replication", "| ST-MRAM ×2 | persist |", "| ST-MRAM ×2 | async+persist |", "| ST-MRAM ×2 | fast(2)+persist |"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if left, _ := filepath.Glob("/dev/shm/tandem-bench-persist-*"); len(left) > 0 {
		t.Errorf("persisted runs left %v", left)
	}
}

// buildPlotter builds tandem-plot next to tandemBin, where tandem bench
// looks for it first, once for all tests.
var buildPlotter = sync.OnceValue(func() error {
	out, err := exec.Command("go", "build", "-o", filepath.Join(filepath.Dir(tandemBin), bench.PlotterName), "github.com/tandemvm/tandem/cmd/tandem-plot").CombinedOutput()
	if err != nil {
		return fmt.Errorf("building tandem-plot: %w\n%s", err, out)
	}
	return nil
})

// runBench runs tandem bench with args, which must succeed within three
// minutes, and returns its output and process id; it needs KVM and the
// lab's tools.
func runBench(t *testing.T, args ...string) (string, int) {
	t.Helper()
	kvmtest.Open(t)
	if err := bench.CheckLabTools(); err != nil {
		if kvmtest.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if err := buildPlotter(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tandemBin, append([]string{"bench"}, args...)...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("tandem bench %v: %v\n%s", args, err, out.String())
	}
	return out.String(), cmd.Process.Pid
}

// readResults reads a bench's results.json (and returns its bytes),
// failing the test on errors the bench recorded.
func readResults(t *testing.T, dir string) (*bench.Results, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res bench.Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Env.Errors) > 0 {
		t.Errorf("errors: %v", res.Env.Errors)
	}
	return &res, b
}
