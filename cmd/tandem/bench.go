package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem-plot/figure"
	"github.com/tandemvm/tandem/cmd/tandem/internal/bench"
	"github.com/tandemvm/tandem/replicate/auth"
)

// cmdBench runs seed 003's evaluation on this machine: see
// cmd/tandem/internal/bench and the README's "tandem bench" section.
func cmdBench(ctx context.Context, args []string) error {
	fs := newFlagSet("bench", "[--quick] [--out DIR] [flags]   |   tandem bench --persist [--quick] [--out DIR] [flags]   |   tandem bench --traffic [--smoke] [--out DIR] [--recording NAME=FILE,...]   |   tandem bench --analyze DIR")
	full := bench.DefaultConfig(bench.PresetFull)
	quick := fs.Bool("quick", false, "run the reduced matrix (under 10 minutes on 2 cores): first --mem size only, "+bench.DefaultConfig(bench.PresetQuick).Duration.String()+" runs")
	smoke := fs.Bool("smoke", false, "run a minimal matrix (under a minute), for tests")
	analyze := fs.String("analyze", "", "recompute report.md, results.json and the plots of an earlier run's DIR from its raw data and traces")
	out := fs.String("out", full.Out, "output directory (report.md, results.json, plots, raw data, traces)")
	linkRate := fs.String("link-rate", bench.FormatRate(full.LinkRate), "rate of each link, each way (tbf): e.g. 1gbit, 500mbit")
	mems := fs.String("mem", "256M,512M", "guest memory sizes")
	epochs := fs.String("epochs", "25ms,50ms,100ms", "epoch intervals")
	duration := fs.Duration("duration", full.Duration, "measured time of each guest run (default with --quick: "+bench.DefaultConfig(bench.PresetQuick).Duration.String()+")")
	warmup := fs.Duration("warmup", full.Warmup, "time each guest runs, after the initial copy, before measuring")
	factors := fs.String("factors", "1,2,20", "write-latency factors to emulate (seed 003 Table I: 1 DRAM, 2 ST-MRAM, 20 3D XPoint)")
	patterns := fs.String("patterns", strings.Join(full.Patterns, ","), "dirty guest patterns (scattered, sequential, random), or linux: the Linux test guest's memory-writing workload, booted once and restored for every run; the first gets the whole matrix")
	setups := fs.String("setups", strings.Join(full.Setups, ","), "setups to run: "+strings.Join(bench.SetupNames(), ", "))
	sgMax := fs.Int("sg-max", full.SGMax, "scatter-gather regions per epoch")
	rate := fs.Uint64("rate", 0, "dirty guest rate in pages/s (0: as fast as it runs; default with --smoke: "+strconv.FormatUint(bench.DefaultConfig(bench.PresetSmoke).Rate, 10)+")")
	ring := fs.Uint64("ring", full.Ring, "privilege level of the dirty guest's loop: 3 (hardware speed even where KVM emulates ring 0) or 0 (default with --traffic: 0)")
	writeBW := fs.Float64("write-bw", 0, "DRAM write bandwidth in bytes/s for the write-latency model (0: measure it)")
	linux := fs.Bool("linux", false, "instead of the matrix, time the PUTs of a replicated Linux guest's client without --ha and at each --epochs (default 10ms,25ms,50ms); needs root, builds or reuses the guest")
	puts := fs.Int("puts", 100, "with --linux: PUTs timed per configuration")
	persistFlag := fs.Bool("persist", false, "instead of the whole bench, compare local persistence with replication: the dirty guest with no protection, --persist alone, async and fast(2) replication, and both, at each write-latency factor (default "+factorList(bench.PersistFactors)+": DRAM, ST-MRAM, 3D XPoint, RRAM), one pattern and epoch (default 50ms); takes the matrix's flags")
	traffic := fs.Bool("traffic", false, "instead of the matrix, compare the techniques of traffic reduction: record each dirty guest pattern's epochs, replay them through every technique, run the random and scattered patterns live with the main ones; takes --quick, --smoke, --out, --mem and --epochs (one each), --duration, --warmup, --link-rate, --rate, --recording")
	linuxWork := fs.Int("linux-workload", 0, "with --traffic: first record this many seconds of the Linux test guest's memory-writing workload (text, records, zeroed buffers, code copies) replicated on loopback, and add it as the workload \"linux\"; builds or reuses the guest")
	recordings := fs.String("recording", "", "with --traffic: further workloads to replay, NAME=FILE,... (epoch recordings, as replicate.EpochRecorder writes them, e.g. of a Linux guest)")
	peer := fs.String("peer", "", "instead of the matrix, compare with another VMM moving the same guest memory over loopback: qemu (QEMU's precopy migration, 1 channel and multifd, against Tandem's initial full copy and recovery over as many links; --mem one size, default 512M); takes --quick, --smoke, --out, --mem and --insecure-plaintext")
	plaintext := fs.Bool("insecure-plaintext", false, "carry the bench's replication connections unencrypted (still authenticated, with a key made for the run); default: encrypted, as tandem run --ha")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *analyze != "" {
		for name := range set {
			if name != "analyze" {
				return usagef("--analyze takes no other flag (--%s)", name)
			}
		}
		res, err := bench.Report(*analyze, benchPlotter(*analyze))
		if err != nil {
			return err
		}
		fmt.Printf("wrote %s/report.md (%d runs)\n", *analyze, len(res.Runs))
		return nil
	}
	if *linux {
		for name := range set {
			if name != "linux" && name != "epochs" && name != "puts" {
				return usagef("--linux takes --epochs and --puts only (--%s)", name)
			}
		}
		eps := []time.Duration{10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond}
		if set["epochs"] {
			var err error
			if eps, err = bench.ParseList(*epochs, time.ParseDuration); err != nil {
				return usagef("--epochs: %v", err)
			}
		}
		if *puts < 10 {
			return usagef("--puts %d: want at least 10", *puts)
		}
		return benchLinux(ctx, eps, *puts)
	}
	if set["recording"] && !*traffic {
		return usagef("--recording needs --traffic")
	}
	if set["linux-workload"] && !*traffic {
		return usagef("--linux-workload needs --traffic")
	}
	if *linuxWork < 0 || *linuxWork > 600 {
		return usagef("--linux-workload %d: want 1 to 600 seconds", *linuxWork)
	}
	if *persistFlag && (*traffic || *linux) {
		return usagef("--persist excludes --traffic and --linux")
	}
	if *traffic {
		for name := range set {
			if !trafficFlags[name] {
				return usagef("--traffic takes --quick, --smoke, --out, --mem, --epochs, --duration, --warmup, --link-rate, --rate, --recording, --linux-workload and --insecure-plaintext only (--%s)", name)
			}
		}
	}
	if set["peer"] {
		if *peer != "qemu" {
			return usagef("--peer %q: the peer Tandem compares with is qemu", *peer)
		}
		for name := range set {
			if !peerFlags[name] {
				return usagef("--peer takes --quick, --smoke, --out, --mem and --insecure-plaintext only (--%s)", name)
			}
		}
		if *persistFlag || *traffic || *linux {
			return usagef("--peer excludes --persist, --traffic and --linux")
		}
	}
	preset := bench.PresetFull
	switch {
	case *quick && *smoke:
		return usagef("--quick and --smoke exclude each other")
	case *quick:
		preset = bench.PresetQuick
	case *smoke:
		preset = bench.PresetSmoke
	}
	cfg := bench.DefaultConfig(preset)
	tcfg := bench.DefaultTrafficConfig(preset)
	if *traffic {
		cfg = tcfg.Config
	}
	if *persistFlag {
		cfg.MatrixOnly = true
		cfg.Setups = slices.Clone(bench.PersistSetups)
		cfg.Factors = slices.Clone(bench.PersistFactors)
		cfg.Epochs = []time.Duration{50 * time.Millisecond}
		cfg.Patterns = cfg.Patterns[:1]
	}
	var err error
	cfg.Out = *out
	if set["link-rate"] {
		if cfg.LinkRate, err = bench.ParseRate(*linkRate); err != nil {
			return usagef("--link-rate: %v", err)
		}
	}
	if set["mem"] {
		if cfg.Mems, err = bench.ParseList(*mems, bench.ParseMem); err != nil {
			return usagef("--mem: %v", err)
		}
	}
	if set["epochs"] {
		if cfg.Epochs, err = bench.ParseList(*epochs, time.ParseDuration); err != nil {
			return usagef("--epochs: %v", err)
		}
	}
	if set["duration"] {
		cfg.Duration = *duration
	}
	if set["warmup"] {
		cfg.Warmup = *warmup
	}
	if set["factors"] {
		if cfg.Factors, err = bench.ParseList(*factors, bench.ParseFactor); err != nil {
			return usagef("--factors: %v", err)
		}
	}
	if set["patterns"] {
		if cfg.Patterns, err = bench.ParseList(*patterns, bench.ParseString); err != nil {
			return usagef("--patterns: %v", err)
		}
	}
	if set["setups"] {
		if cfg.Setups, err = bench.ParseList(*setups, bench.ParseString); err != nil {
			return usagef("--setups: %v", err)
		}
	}
	cfg.SGMax, cfg.WriteBW = *sgMax, *writeBW
	if set["rate"] {
		cfg.Rate = *rate // a preset may have one (--smoke)
	}
	if set["ring"] {
		cfg.Ring = *ring // the traffic part defaults to 0
	}
	if err := cfg.Validate(); err != nil {
		return usagef("%v", err)
	}
	if *traffic {
		if len(cfg.Mems) != 1 && set["mem"] {
			return usagef("--traffic runs one --mem size, not %d", len(cfg.Mems))
		}
		if len(cfg.Epochs) != 1 && set["epochs"] {
			return usagef("--traffic runs one --epochs interval, not %d", len(cfg.Epochs))
		}
		tcfg.Config = cfg
		if set["recording"] {
			if tcfg.Recordings, err = bench.ParseRecordings(*recordings); err != nil {
				return usagef("--recording: %v", err)
			}
		}
		if err := tcfg.Validate(); err != nil {
			return usagef("%v", err)
		}
	}
	opt := bench.Options{Version: version(), Out: os.Stdout}
	if !set["peer"] {
		opt.Plots = benchPlotter(cfg.Out) // the peer comparison draws none
	}
	if *plaintext {
		// The bench's connections join its own in-process replicas and
		// primaries: a key made for the run serves them; no key file.
		k, err := auth.GenerateKey()
		if err != nil {
			return err
		}
		if opt.Auth, err = auth.NewCredentials(k, auth.Plaintext); err != nil {
			return err
		}
	}
	if set["peer"] {
		pcfg := bench.DefaultPeerConfig(preset)
		if set["out"] {
			pcfg.Out = *out
		}
		if set["mem"] {
			if len(cfg.Mems) != 1 {
				return usagef("--peer moves one --mem size, not %d", len(cfg.Mems))
			}
			pcfg.MemBytes = cfg.Mems[0]
		}
		_, err := bench.RunPeer(ctx, pcfg, opt)
		return err
	}
	if *traffic {
		if *linuxWork > 0 {
			rec, err := benchLinuxWorkload(ctx, cfg.Out, tcfg.Epoch(), *linuxWork)
			if err != nil {
				return err
			}
			tcfg.Recordings = append(tcfg.Recordings, bench.Recording{Name: "linux", File: rec})
		}
		// RunTraffic checks the recordings given before anything else,
		// and the lab tools after them.
		_, err = bench.RunTraffic(ctx, tcfg, opt)
		return err
	}
	if err := bench.CheckLabTools(); err != nil {
		return fmt.Errorf("%v: tandem bench builds network namespaces and shapes veth links with tc", err)
	}
	_, err = bench.Run(ctx, cfg, opt)
	return err
}

// benchPlotter is what draws the plots of the bench writing dir: the
// tandem-plot next to tandem or in PATH. Without one it says, once, how to
// get the plots, and the bench writes everything else (figures.json keeps
// what each plot shows).
func benchPlotter(dir string) bench.DrawPlots {
	plotter, err := bench.FindPlotter()
	if err == nil {
		return bench.PlotCommand(plotter)
	}
	where := `"$(dirname "$(command -v tandem)")"`
	if exe, err := os.Executable(); err == nil {
		where = filepath.Dir(exe)
	}
	fmt.Fprintf(os.Stderr, "tandem bench: %v: the report will have no plots (%s keeps what each shows); "+
		"to draw them, build it with `go build -o %s ./cmd/%s` in Tandem's source tree, then run `tandem bench --analyze %s`\n",
		err, figure.File, where, bench.PlotterName, dir)
	return nil
}

// factorList is factors as the --factors flag takes them.
func factorList(fs []float64) string {
	var s []string
	for _, f := range fs {
		s = append(s, strconv.FormatFloat(f, 'g', -1, 64))
	}
	return strings.Join(s, ",")
}

// peerFlags are the flags --peer takes.
var peerFlags = map[string]bool{"peer": true, "quick": true, "smoke": true, "out": true, "mem": true, "insecure-plaintext": true}

// trafficFlags are the flags --traffic takes.
var trafficFlags = map[string]bool{
	"traffic": true, "quick": true, "smoke": true, "out": true, "mem": true, "epochs": true, "duration": true,
	"warmup": true, "link-rate": true, "rate": true, "ring": true, "recording": true, "insecure-plaintext": true, "linux-workload": true,
}
