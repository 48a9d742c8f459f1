package main

import (
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
	} {
		_, stderr, status := runTandem(t, args...)
		if status != exitUsage {
			t.Errorf("tandem %v: status %d, want %d; stderr %s", args, status, exitUsage, stderr)
		}
	}
}

// TestBenchSmoke runs the smallest bench end to end (about 25 s): shaped
// links in namespaces, every setup, recovery, harvest and the data-path
// microbenchmark; checks the report, results and plots, and that the
// namespaces are gone afterwards.
func TestBenchSmoke(t *testing.T) {
	kvmtest.Open(t)
	if err := bench.CheckLabTools(); err != nil {
		if kvmtest.Required() {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tandemBin, "bench", "--smoke", "--out", dir)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	pid := 0
	if cmd.Process != nil {
		pid = cmd.Process.Pid
	}
	if err != nil {
		t.Fatalf("tandem bench --smoke: %v\n%s", err, out.String())
	}
	// Progress lines as it goes.
	for _, want := range []string{"links: 4 veth pairs", "data path fast(4)", "run 6/6", "recovery of 64 MiB from 4", "harvest ring", "done in"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	nsList, _ := exec.Command("ip", "netns", "list").Output()
	if prefix := fmt.Sprintf("tandem-bench-%d-", pid); strings.Contains(string(nsList), prefix) {
		t.Errorf("namespaces %s* left behind:\n%s", prefix, nsList)
	}
	var res bench.Results
	b, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Env.Errors) > 0 {
		t.Errorf("errors: %v", res.Env.Errors)
	}
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
}
