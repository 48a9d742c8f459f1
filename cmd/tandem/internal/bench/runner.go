package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/replicate/auth"
	"github.com/tandemvm/tandem/vmm"
)

// bencher runs one bench: its configuration, the shaped links, the
// write-latency model, and where progress and logs go.
type bencher struct {
	cfg   Config
	auth  *auth.Credentials // every replication connection of the bench
	lab   *Lab
	model WriteModel
	log   *slog.Logger
	out   io.Writer // progress lines
	plots DrawPlots
	start time.Time
	// linuxSnaps are the booted Linux workload's snapshots, by memory
	// size (linuxwork.go).
	linuxSnaps map[uint64]linuxSnap
}

func (b *bencher) progress(format string, args ...any) {
	el := time.Since(b.start).Round(time.Second)
	fmt.Fprintf(b.out, "[%s] %s\n", el, fmt.Sprintf(format, args...))
}

// Options are the parts of a bench run that are not its configuration.
type Options struct {
	Version string    // tandem's version, for the report
	Out     io.Writer // progress lines; nil discards them
	// Auth authenticates the bench's replication connections, which join
	// its own replicas and primaries; nil makes a key for the run and
	// encrypts (the default of tandem run --ha).
	Auth *auth.Credentials
	// Plots draws the report's plots from figures.json (PlotCommand runs
	// tandem-plot); nil draws none, and the report says so.
	Plots DrawPlots
}

// newBencher checks that the machine can run guests in a lab (its tools,
// KVM), makes cfg.Out and its subdirectories dirs, opens the log file
// logName there, and makes a key for the run if opt has none. closeLog
// closes the log.
func newBencher(cfg Config, opt Options, logName string, dirs ...string) (b *bencher, closeLog func(), err error) {
	if opt.Out == nil {
		opt.Out = io.Discard
	}
	if err := CheckLabTools(); err != nil {
		return nil, nil, fmt.Errorf("bench: %w", err)
	}
	sys, err := kvm.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("bench: the guest runs need KVM: %w", err)
	}
	sys.Close()
	for _, d := range append([]string{""}, dirs...) {
		if err := os.MkdirAll(filepath.Join(cfg.Out, d), 0o755); err != nil {
			return nil, nil, fmt.Errorf("bench: %w", err)
		}
	}
	logf, err := os.Create(filepath.Join(cfg.Out, logName))
	if err != nil {
		return nil, nil, fmt.Errorf("bench: %w", err)
	}
	if opt.Auth == nil {
		k, err := auth.GenerateKey()
		if err == nil {
			opt.Auth, err = auth.NewCredentials(k, auth.Encrypted)
		}
		if err != nil {
			logf.Close()
			return nil, nil, fmt.Errorf("bench: %w", err)
		}
	}
	b = &bencher{
		cfg: cfg, out: opt.Out, plots: opt.Plots, start: time.Now(), auth: opt.Auth,
		log: slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if stale := RemoveStaleNamespaces(); len(stale) > 0 {
		b.progress("removed namespaces left by an earlier bench: %s", strings.Join(stale, ", "))
	}
	return b, func() { logf.Close() }, nil
}

// Run runs the bench cfg describes, writes the raw data, traces, results,
// report and plots (with opt.Plots) into cfg.Out, and prints progress lines to opt.Out.
func Run(ctx context.Context, cfg Config, opt Options) (*Results, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b, closeLog, err := newBencher(cfg, opt, "bench.log", tracesDir, runsDir)
	if err != nil {
		return nil, err
	}
	defer closeLog()
	env := machineEnv(cfg, opt.Version)
	matrix := cfg.Matrix()
	perRun := cfg.Warmup + cfg.Duration + 700*time.Millisecond
	b.progress("tandem bench (%s): %d guest runs of %v + warm-up %v, links %d x %s, guest memory %s; writing %s",
		cfg.Preset, len(matrix), cfg.Duration, cfg.Warmup, cfg.MaxLinks(), FormatRate(cfg.LinkRate), memList(cfg.Mems), cfg.Out)
	b.progress("estimated time: about %v", estimate(cfg).Round(10*time.Second))
	b.progress("replication connections: %v, with a key of this run's own", b.auth.Mode())

	// The machine: memory bandwidth, then the links and loopback.
	env.Bandwidth = MeasureBandwidth(256<<20, 5)
	env.WriteBW = env.Bandwidth.Write
	if cfg.WriteBW > 0 {
		env.WriteBW = cfg.WriteBW
	}
	b.model = WriteModel{DRAMWrite: env.WriteBW}
	debug.FreeOSMemory()
	b.progress("memory: memcpy %.1f GB/s, DRAM write %.1f GB/s (model base %.1f GB/s: %.3f ms/MB)",
		env.Bandwidth.Memcpy/1e9, env.Bandwidth.Write/1e9, env.WriteBW/1e9, 1e3/env.WriteBW*1e6)
	b.lab, err = NewLab(max(cfg.MaxLinks(), 1), cfg.LinkRate)
	if err != nil {
		return nil, err
	}
	defer b.lab.Close()
	env.LinkTCP, err = b.probeLinks()
	if err != nil {
		return nil, fmt.Errorf("bench: probing the links: %w", err)
	}
	b.progress("links: %d veth pairs in namespaces %s-*, tbf %s each way; TCP goodput, all at once: %s",
		len(b.lab.Links), b.lab.Prefix, FormatRate(cfg.LinkRate), rates(env.LinkTCP))
	env.Loopback = map[int]float64{}
	env.Connections = b.auth.Mode().String()
	if b.auth.Mode() == auth.Encrypted {
		env.LoopbackTLS = map[int]float64{}
	}
	for _, n := range []int{1, 2, 4} {
		r, err := loopbackRate(n, 700*time.Millisecond, nil)
		if err != nil {
			return nil, fmt.Errorf("bench: loopback: %w", err)
		}
		env.Loopback[n] = r
		if env.LoopbackTLS != nil {
			if env.LoopbackTLS[n], err = loopbackRate(n, 700*time.Millisecond, b.auth); err != nil {
				return nil, fmt.Errorf("bench: loopback over TLS: %w", err)
			}
		}
	}
	b.progress("loopback TCP: 1 stream %.2f GB/s, 2 streams %.2f GB/s, 4 streams %.2f GB/s",
		env.Loopback[1]/1e9, env.Loopback[2]/1e9, env.Loopback[4]/1e9)
	if env.LoopbackTLS != nil {
		b.progress("loopback TLS (the bench's encrypted connections): 1 stream %.2f GB/s, 2 streams %.2f GB/s, 4 streams %.2f GB/s",
			env.LoopbackTLS[1]/1e9, env.LoopbackTLS[2]/1e9, env.LoopbackTLS[4]/1e9)
	}
	if err := writeJSON(cfg.Out, envFile, env); err != nil {
		return nil, err
	}

	// The data path alone.
	var pipes []RawPipeline
	for _, s := range pipelineSetups {
		if ctx.Err() != nil || cfg.MatrixOnly {
			break
		}
		p := b.runPipeline(ctx, s.name, s.policy, s.links)
		pipes = append(pipes, p)
		if p.Error != "" {
			env.Errors = append(env.Errors, "pipeline "+s.name+": "+p.Error)
		}
		pr, _ := analyzePipeline(cfg.Out, env, p)
		b.progress("data path %s: %d epochs of %.0f pages, %.2f GB/s on the wire (%.0f%% of loopback with %d streams) %s",
			s.name, pr.Epochs, pr.Sent, pr.WireGBs, 100*pr.Fraction, s.links, errNote(p.Error))
		debug.FreeOSMemory()
	}
	if err := writeJSON(cfg.Out, pipelineRaw, pipes); err != nil {
		return nil, err
	}

	// The dirty guest.
	for i, spec := range matrix {
		if ctx.Err() != nil {
			break
		}
		raw := b.runGuest(ctx, spec)
		if err := writeJSON(cfg.Out, filepath.Join(runsDir, spec.ID+".json"), raw); err != nil {
			return nil, err
		}
		if raw.Error != "" {
			env.Errors = append(env.Errors, spec.ID+": "+raw.Error)
		}
		rr, _ := analyzeRun(cfg.Out, &env, *raw)
		left := time.Duration(len(matrix)-i-1) * perRun
		line := fmt.Sprintf("run %d/%d %s: %.0f %s", i+1, len(matrix), spec.ID, rr.Progress, progressUnit(spec.Pattern))
		if rr.Epochs > 0 {
			line += fmt.Sprintf(", %d epochs, pause mean %.1f ms p99 %.1f ms, %.0f dirty / %.0f sent pages per epoch",
				rr.Epochs, rr.Pause.Total.Mean, rr.Pause.Total.P99, rr.Dirty.Mean, rr.Transferred.Mean)
		}
		b.progress("%s%s (guest runs left: ~%v)", line, errNote(raw.Error), left.Round(time.Second))
		debug.FreeOSMemory()
	}

	// Recovery.
	var recs []RawRecovery
	for _, mem := range cfg.Mems {
		for _, n := range cfg.RecoveryReplicas() {
			if ctx.Err() != nil || cfg.MatrixOnly {
				break
			}
			rs := b.runRecovery(ctx, mem, n, cfg.RecoveryReps)
			recs = append(recs, rs...)
			var parts []string
			for _, r := range rs {
				if r.Error != "" {
					env.Errors = append(env.Errors, fmt.Sprintf("recovery %d MiB from %d: %s", mem>>20, n, r.Error))
					parts = append(parts, "error: "+r.Error)
				} else {
					parts = append(parts, fmt.Sprintf("%.2f s", r.Took.Seconds()))
				}
			}
			b.progress("recovery of %d MiB from %d replica(s): %s", mem>>20, n, strings.Join(parts, ", "))
			debug.FreeOSMemory()
		}
	}
	if err := writeJSON(cfg.Out, recoveryRaw, recs); err != nil {
		return nil, err
	}

	// Harvest cost.
	var hs []RawHarvest
	for _, tr := range []vmm.DirtyTracking{vmm.DirtyBitmap, vmm.DirtyRing} {
		for _, mem := range cfg.Mems {
			for _, k := range cfg.HarvestSizes {
				if ctx.Err() != nil || cfg.MatrixOnly {
					break
				}
				h := b.runHarvest(ctx, tr, mem, k, cfg.HarvestEpochs)
				hs = append(hs, h...)
				res := analyzeHarvest(h)
				for _, r := range res {
					if r.Error != "" {
						env.Errors = append(env.Errors, fmt.Sprintf("harvest %s %d MiB %d pages: %s", tr, mem>>20, k, r.Error))
					}
					b.progress("harvest %s, %d MiB, working set %d pages: %.0f dirty pages in %.0f µs (p99 %.0f µs)%s",
						tr, mem>>20, k, r.Dirty.Mean, r.Micros.Mean, r.Micros.P99, errNote(r.Error))
				}
			}
		}
	}
	if err := writeJSON(cfg.Out, harvestRaw, hs); err != nil {
		return nil, err
	}

	return b.finish(ctx, &env, func() error { return writeJSON(cfg.Out, envFile, env) })
}

// finish stamps env as finished, writes the raw data with save, and, unless
// the run was cancelled, the report and its plots.
func (b *bencher) finish(ctx context.Context, env *Env, save func() error) (*Results, error) {
	env.Finished = time.Now()
	env.LoadAvg[1] = loadAvg()
	if err := save(); err != nil {
		return nil, err
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	res, err := Report(b.cfg.Out, b.plots)
	if err != nil {
		return nil, err
	}
	b.progress("done in %v: %s", time.Since(b.start).Round(time.Second), filepath.Join(b.cfg.Out, "report.md"))
	return res, nil
}

// probeLinks measures TCP goodput over every link at once for a second.
func (b *bencher) probeLinks() ([]float64, error) {
	lns := make([]net.Listener, 0, len(b.lab.Links))
	for i := range b.lab.Links {
		ln, err := b.lab.Listen(i)
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	return tcpRates(lns, time.Second, nil)
}

func estimate(cfg Config) time.Duration {
	d := time.Duration(len(cfg.Matrix())) * (cfg.Warmup + cfg.Duration + 700*time.Millisecond)
	if slices.Contains(cfg.Patterns, linuxPattern) {
		d += time.Duration(len(cfg.Mems)) * time.Minute // a boot per memory size, emulated on PVM hosts
	}
	if cfg.MatrixOnly {
		return d + 10*time.Second
	}
	d += time.Duration(len(pipelineSetups)) * (cfg.PipelineTime + time.Second)
	linkBps := float64(cfg.LinkRate) / 8
	for _, m := range cfg.Mems {
		for _, n := range cfg.RecoveryReplicas() {
			one := time.Duration(float64(m) / (float64(n) * linkBps) * float64(time.Second))
			d += one*time.Duration(1+cfg.RecoveryReps) + time.Second
		}
		for _, k := range cfg.HarvestSizes {
			d += 2 * (time.Duration(cfg.HarvestEpochs+1)*harvestInterval(k) + 300*time.Millisecond)
		}
	}
	return d + 10*time.Second
}

func errNote(e string) string {
	if e == "" {
		return ""
	}
	return " ERROR: " + e
}

func rates(bps []float64) string {
	var s []string
	for _, r := range bps {
		s = append(s, fmt.Sprintf("%.0f Mbit/s", r*8/1e6))
	}
	return strings.Join(s, ", ")
}

func memList(ms []uint64) string {
	var s []string
	for _, m := range ms {
		s = append(s, fmt.Sprintf("%d MiB", m>>20))
	}
	return strings.Join(s, ", ")
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// machineEnv describes the machine the bench runs on.
func machineEnv(cfg Config, version string) Env {
	env := Env{Started: time.Now(), Tandem: version, Go: runtime.Version(), CPUs: runtime.NumCPU(),
		Config: cfg, GuestVCPUs: guestVCPUs, Tracking: vmm.DirtyBitmap.String()}
	env.LoadAvg[0] = loadAvg()
	if out, err := exec.Command("uname", "-srm").Output(); err == nil {
		env.Kernel = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				env.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				env.MemTotal = strings.TrimSpace(v)
			}
		}
	}
	env.KVM = "unavailable"
	if sys, err := kvm.Open(); err == nil {
		api, _ := sys.APIVersion()
		env.KVM = fmt.Sprintf("API %d", api)
		if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
			s := string(b)
			switch {
			case strings.Contains(s, " vmx"), strings.Contains(s, " svm"):
				env.KVM += ", hardware virtualization"
			default:
				env.KVM += ", no vmx/svm: PVM, guest code in KVM's instruction emulator"
			}
		}
		sys.Close()
	}
	return env
}
