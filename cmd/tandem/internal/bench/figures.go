package bench

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"

	"github.com/tandemvm/tandem/cmd/tandem-plot/figure"
)

// The plots: what each shows (its data, axes, legend and caption) is
// decided here and written to figures.json; tandem-plot draws them, so
// that the tandem binary carries no plotting library or fonts.

// Plot is one PNG the report shows.
type Plot struct {
	File    string // relative to the output directory
	Caption string
}

// Plots are the plots a report shows: those drawn, or why none were.
type Plots struct {
	Drawn []Plot
	// NotDrawn says why the figures of figures.json were not drawn; ""
	// when they were, or when the results support none.
	NotDrawn string
}

// palette: one colour per setup, one per pause step, and one per series
// where series are not setups.
var (
	setupColor = map[string]string{
		"none":    "#555555",
		"async":   "#d62728",
		"fast2":   "#1f77b4",
		"fast4":   "#2ca02c",
		"ft4":     "#9467bd",
		"async4":  "#ff7f0e",
		"persist": "#8c564b",
		"asyncp":  "#e377c2",
		"fast2p":  "#17becf",
	}
	stepColor = []string{
		"#8c564b", // harvest
		"#ff7f0e", // group (+ staging copy)
		"#1f77b4", // transfer
		"#17becf", // ack
	}
	seriesColor = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"}
	// trafficColor is one colour per technique, in the order of Techniques.
	trafficColor = []string{
		"#555555", // seed-003
		"#1f77b4", // by cost, raw
		"#17becf", // zero
		"#2ca02c", // delta
		"#9467bd", // similar
		"#ff7f0e", // zstd
		"#d62728", // all
	}
)

const (
	black     = "#000000"
	diagonal  = "#808080" // the "measured = bound" kind of reference line
	reference = "#404040" // the traffic plot's "wire = dirty"
)

func colorOf(setup string) string {
	if c, ok := setupColor[setup]; ok {
		return c
	}
	return black
}

func newPanel(title, x, y string) figure.Panel {
	return figure.Panel{Title: title, X: figure.Axis{Label: x}, Y: figure.Axis{Label: y}}
}

// line is a line with its points marked.
func line(name string, xys []figure.XY, c string, dashed bool) figure.Series {
	return figure.Series{Kind: figure.LinePoints, Name: name, Color: c, Dashed: dashed, LineWidth: 1.5, XY: xys}
}

// Figures describes every plot the results of output directory dir
// support, in the order the report shows them.
func Figures(dir string, res *Results) ([]figure.Figure, error) {
	var figs []figure.Figure
	add := func(fig figure.Figure, ok bool) {
		if ok {
			figs = append(figs, fig)
		}
	}
	if res.Traffic != nil {
		add(trafficFigure(res.Traffic))
	}
	if !res.matrix {
		return figs, nil
	}
	for _, mem := range memsWithRuns(res) {
		add(slowdownFigure(res, mem))
		add(pauseFigure(res, mem))
	}
	add(efficiencyFigure(res))
	fig, ok, err := overheadFigure(dir, res)
	if err != nil {
		return figs, fmt.Errorf("bench: the overhead plot: %w", err)
	}
	add(fig, ok)
	add(linkBytesFigure(res))
	add(timelineFigure(res))
	add(recoveryFigure(res))
	add(harvestFigure(res))
	add(pipelineFigure(res))
	return figs, nil
}

func memsWithRuns(res *Results) []uint64 {
	var ms []uint64
	for _, r := range res.Runs {
		if r.Spec.Setup != "none" && !slices.Contains(ms, r.Spec.MemBytes) {
			ms = append(ms, r.Spec.MemBytes)
		}
	}
	return ms
}

func protectedSetups() []Setup {
	var s []Setup
	for _, x := range Setups {
		if x.Protected() {
			s = append(s, x)
		}
	}
	return s
}

// factorOne is the write-latency factor the single-factor plots show: 1
// (DRAM) if the matrix has it, else its first.
func factorOne(cfg Config) float64 {
	if slices.Contains(cfg.Factors, 1) {
		return 1
	}
	return cfg.Factors[0]
}

func slowdownFigure(res *Results, mem uint64) (figure.Figure, bool) {
	cfg := res.Env.Config
	var panels []figure.Panel
	for _, f := range cfg.Factors {
		p := newPanel(fmt.Sprintf("%s (write ×%g)", TechName(f), f), "epoch (ms)", "progress ratio")
		p.Y.Min, p.Y.Max = figure.Value(0), figure.Value(1.45)
		for _, e := range cfg.Epochs {
			p.X.Ticks = append(p.X.Ticks, figure.Tick{Value: ms(e), Label: fmt.Sprint(e.Milliseconds())})
		}
		p.Y.Ticks = []figure.Tick{{Value: 0, Label: "0"}, {Value: 0.25, Label: "0.25"}, {Value: 0.5, Label: "0.5"}, {Value: 0.75, Label: "0.75"}, {Value: 1, Label: "1"}}
		for _, s := range protectedSetups() {
			var xys []figure.XY
			for _, e := range cfg.Epochs {
				if r := findRun(res.Runs, s.ID, cfg.Patterns[0], mem, e, f); r != nil && r.ProgressRatio > 0 {
					xys = append(xys, figure.XY{X: ms(e), Y: r.ProgressRatio})
				}
			}
			if len(xys) > 0 {
				p.Series = append(p.Series, line(s.Name, xys, colorOf(s.ID), false))
			}
		}
		if len(p.Series) > 0 {
			panels = append(panels, p)
		}
	}
	if len(panels) == 0 {
		return figure.Figure{}, false
	}
	return figure.Figure{
		File:    fmt.Sprintf("slowdown_%dM.png", mem>>20),
		Caption: fmt.Sprintf("Guest progress with replication over progress without (%s pattern, %d MiB), by epoch and memory technology. 1 is no slowdown.", cfg.Patterns[0], mem>>20),
		Width:   90 * float64(len(panels)), Height: 90, Panels: panels,
	}, true
}

func pauseFigure(res *Results, mem uint64) (figure.Figure, bool) {
	cfg := res.Env.Config
	var panels []figure.Panel
	for _, f := range cfg.Factors {
		var names []string
		var steps [4][]float64
		var bounds []figure.XY
		for _, e := range cfg.Epochs {
			for _, s := range protectedSetups() {
				r := findRun(res.Runs, s.ID, cfg.Patterns[0], mem, e, f)
				if r == nil || r.Epochs == 0 {
					continue
				}
				names = append(names, fmt.Sprintf("%s\n%dms", shortName(s.ID), e.Milliseconds()))
				tr, ack := r.Pause.Transfer.Mean, r.Pause.Ack.Mean
				if s.Mode == "async" {
					tr, ack = 0, 0 // in the background, not in the pause
				}
				vals := [4]float64{r.Pause.Harvest.Mean, r.Pause.Group.Mean, tr, ack}
				for i := range steps {
					steps[i] = append(steps[i], vals[i])
				}
				bounds = append(bounds, figure.XY{X: float64(len(names) - 1), Y: r.Bound.Mean})
			}
		}
		if len(names) == 0 {
			continue
		}
		p := newPanel(fmt.Sprintf("%s (write ×%g)", TechName(f), f), "", "mean pause (ms)")
		for i, label := range []string{"harvest", "group", "transfer", "ack"} {
			p.Series = append(p.Series, figure.Series{Kind: figure.Bars, Name: label, Color: stepColor[i], Values: steps[i], Width: 9, Stack: i > 0})
		}
		p.Series = append(p.Series, figure.Series{Kind: figure.Points, Name: "bound", Color: black, Glyph: figure.Box, Radius: 2.5, XY: bounds})
		p.Y.Min = figure.Value(0)
		p.Legend.Room = true
		p.X.Categories = names
		p.X.TickFontSize = 7
		panels = append(panels, p)
	}
	if len(panels) == 0 {
		return figure.Figure{}, false
	}
	return figure.Figure{
		File:    fmt.Sprintf("pause_%dM.png", mem>>20),
		Caption: fmt.Sprintf("Mean VM pause per epoch split into harvest / group / transfer / ack (%s, %d MiB); black marks: the physical bound of the epoch's data movement. Async pauses only for harvest and group (which includes its staging copy).", cfg.Patterns[0], mem>>20),
		Width:   120 * float64(len(panels)), Height: 100, Panels: panels,
	}, true
}

func shortName(id string) string {
	switch id {
	case "fast2":
		return "f2"
	case "fast4":
		return "f4"
	case "ft4":
		return "ft4"
	case "async":
		return "as"
	case "async4":
		return "as4"
	}
	return id
}

func efficiencyFigure(res *Results) (figure.Figure, bool) {
	p := newPanel("Pause against its physical bound", "bound (ms)", "measured mean pause (ms)")
	p.X.Log, p.Y.Log = true, true
	lo, hi := math.Inf(1), 0.0
	glyphs := []figure.Glyph{figure.Circle, figure.Triangle, figure.Box, figure.Pyramid}
	for i, s := range protectedSetups() {
		var xys []figure.XY
		for _, r := range res.Runs {
			if r.Spec.Setup == s.ID && r.Bound.Mean > 0 && r.Pause.Total.Mean > 0 {
				xys = append(xys, figure.XY{X: r.Bound.Mean, Y: r.Pause.Total.Mean})
				lo = min(lo, r.Bound.Mean, r.Pause.Total.Mean)
				hi = max(hi, r.Bound.Mean, r.Pause.Total.Mean)
			}
		}
		if len(xys) > 0 {
			p.Series = append(p.Series, figure.Series{Kind: figure.Points, Name: s.Name, Color: colorOf(s.ID), Glyph: glyphs[i%len(glyphs)], Radius: 3, XY: xys})
		}
	}
	if len(p.Series) == 0 {
		return figure.Figure{}, false
	}
	p.Series = append(p.Series, line("measured = bound", []figure.XY{{X: lo, Y: lo}, {X: hi, Y: hi}}, diagonal, true))
	p.Legend = figure.Legend{Left: true, Room: true}
	return figure.Figure{
		File:    "efficiency.png",
		Caption: "Measured mean pause against the physical bound of its data movement, every replicated run; the diagonal is efficiency 1.",
		Width:   140, Height: 110, Panels: []figure.Panel{p},
	}, true
}

// overheadFigure reads the traces of the fast(4) runs at factor 1 (or the
// first factor) and plots each epoch's dirty against sent pages.
func overheadFigure(dir string, res *Results) (figure.Figure, bool, error) {
	f := factorOne(res.Env.Config)
	p := newPanel("Grouping overhead per epoch", "dirty pages", "pages sent")
	p.X.Log, p.Y.Log = true, true
	lo, hi := math.Inf(1), 0.0
	for _, r := range res.Runs {
		s := r.Spec
		if s.Setup != "fast4" || s.Factor != f || r.Error != "" {
			continue
		}
		var raw RawRun
		if err := readJSON(dir, filepath.Join(runsDir, s.ID+".json"), &raw); err != nil || raw.Trace == "" {
			continue
		}
		recs, err := readTrace(dir, raw.Trace)
		if err != nil {
			return figure.Figure{}, false, err
		}
		var xys []figure.XY
		for _, t := range recs {
			if t.Mode == "initial" || t.Failed != "" || t.DirtyPages == 0 || t.Time.Before(raw.WindowStart) || !t.Time.Before(raw.WindowEnd) {
				continue
			}
			xys = append(xys, figure.XY{X: float64(t.DirtyPages), Y: float64(t.TransferredPages)})
			lo = min(lo, float64(t.DirtyPages))
			hi = max(hi, float64(t.TransferredPages))
		}
		if len(xys) == 0 {
			continue
		}
		p.Series = append(p.Series, figure.Series{Kind: figure.Points, Name: fmt.Sprintf("%s %dMiB %dms", s.Pattern, s.MemBytes>>20, s.Epoch.Milliseconds()),
			Color: seriesColor[len(p.Series)%len(seriesColor)], Radius: 1.8, XY: xys})
	}
	if len(p.Series) == 0 {
		return figure.Figure{}, false, nil
	}
	p.Series = append(p.Series, line("sent = dirty", []figure.XY{{X: lo, Y: lo}, {X: hi, Y: hi}}, diagonal, true))
	p.Legend = figure.Legend{Left: true, Room: true}
	return figure.Figure{
		File:    "overhead.png",
		Caption: "Pages dirtied against pages sent per epoch (every epoch of the fast(4) runs at factor 1); the diagonal is no grouping overhead.",
		Width:   140, Height: 110, Panels: []figure.Panel{p},
	}, true, nil
}

// barOffset is where the i-th of n bar series of width w stands against
// its category's tick, in points: the n side by side, centred.
func barOffset(i, n int, w float64) float64 {
	return w * (float64(i) - float64(n-1)/2)
}

func linkBytesFigure(res *Results) (figure.Figure, bool) {
	cfg := res.Env.Config
	e, f := headlineEpoch(cfg), factorOne(cfg)
	p := newPanel(fmt.Sprintf("Bytes per link (%s, %dms, %s)", cfg.Patterns[0], e.Milliseconds(), TechName(f)), "link", "MB sent")
	maxLinks := 0
	const width = 10
	for _, s := range protectedSetups() {
		r := findRun(res.Runs, s.ID, cfg.Patterns[0], cfg.Mems[0], e, f)
		if r == nil || len(r.LinkBytes) == 0 {
			continue
		}
		var v []float64
		for _, b := range r.LinkBytes {
			v = append(v, float64(b)/1e6)
		}
		p.Series = append(p.Series, figure.Series{Kind: figure.Bars, Name: fmt.Sprintf("%s (imbalance %.1f%%)", s.Name, r.ImbalancePct), Color: colorOf(s.ID), Values: v, Width: width})
		maxLinks = max(maxLinks, len(v))
	}
	if len(p.Series) == 0 {
		return figure.Figure{}, false
	}
	for i := range p.Series {
		p.Series[i].Offset = barOffset(i, len(p.Series), width)
	}
	for i := range maxLinks {
		p.X.Categories = append(p.X.Categories, fmt.Sprint(i))
	}
	p.Y.Min = figure.Value(0)
	p.Legend.Room = true
	return figure.Figure{
		File:    "link_bytes.png",
		Caption: "Bytes sent on each link over the measured window (factor 1, headline epoch).",
		Width:   140, Height: 100, Panels: []figure.Panel{p},
	}, true
}

func timelineFigure(res *Results) (figure.Figure, bool) {
	cfg := res.Env.Config
	e, f := headlineEpoch(cfg), factorOne(cfg)
	p := newPanel(fmt.Sprintf("Guest progress (%s, %d MiB, %dms, %s)", cfg.Patterns[0], cfg.Mems[0]>>20, e.Milliseconds(), TechName(f)), "time since the VM started (s)", "pages written per second")
	for _, s := range Setups {
		r := findRun(res.Runs, s.ID, cfg.Patterns[0], cfg.Mems[0], e, f)
		if r == nil || len(r.Timeline) == 0 {
			continue
		}
		var xys []figure.XY
		for _, t := range r.Timeline {
			xys = append(xys, figure.XY{X: t.T, Y: float64(t.Pages)})
		}
		p.Series = append(p.Series, figure.Series{Kind: figure.Line, Name: s.Name, Color: colorOf(s.ID), LineWidth: 1.2, XY: xys})
	}
	if len(p.Series) == 0 {
		return figure.Figure{}, false
	}
	p.Y.Min = figure.Value(0)
	p.Legend.Room = true
	return figure.Figure{
		File:    "progress.png",
		Caption: "Guest progress (pages written per second) over time, factor 1, headline epoch.",
		Width:   150, Height: 90, Panels: []figure.Panel{p},
	}, true
}

func recoveryFigure(res *Results) (figure.Figure, bool) {
	p := newPanel("Recovery by the leader", "replicas", "seconds")
	var mems []uint64
	for _, r := range res.Recovery {
		if !slices.Contains(mems, r.MemBytes) {
			mems = append(mems, r.MemBytes)
		}
	}
	for i, m := range mems {
		var meas, bound []figure.XY
		for _, r := range res.Recovery {
			if r.MemBytes == m && r.Seconds.N > 0 {
				meas = append(meas, figure.XY{X: float64(r.Replicas), Y: r.Seconds.Mean})
				bound = append(bound, figure.XY{X: float64(r.Replicas), Y: r.Bound})
			}
		}
		if len(meas) == 0 {
			continue
		}
		c := seriesColor[i%len(seriesColor)]
		p.Series = append(p.Series, line(fmt.Sprintf("%d MiB", m>>20), meas, c, false), line(fmt.Sprintf("%d MiB bound", m>>20), bound, c, true))
	}
	if len(p.Series) == 0 {
		return figure.Figure{}, false
	}
	p.Y.Min = figure.Value(0)
	p.Legend.Room = true
	return figure.Figure{
		File:    "recovery.png",
		Caption: "Leader recovery time against the number of replicas, by guest memory; dashed: memory ÷ (replicas × link rate).",
		Width:   130, Height: 100, Panels: []figure.Panel{p},
	}, true
}

func harvestFigure(res *Results) (figure.Figure, bool) {
	type key struct {
		tr  string
		mem uint64
	}
	var keys []key
	for _, h := range res.Harvest {
		k := key{h.Tracking, h.MemBytes}
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	p := newPanel("Harvest cost per epoch", "dirty pages harvested", "harvest (µs)")
	p.X.Log, p.Y.Log = true, true
	for i, k := range keys {
		var xys []figure.XY
		for _, h := range res.Harvest {
			if h.Tracking == k.tr && h.MemBytes == k.mem && h.Dirty.N > 0 && h.Dirty.Mean > 0 && h.Micros.Mean > 0 {
				xys = append(xys, figure.XY{X: h.Dirty.Mean, Y: h.Micros.Mean})
			}
		}
		if len(xys) == 0 {
			continue
		}
		slices.SortFunc(xys, func(a, b figure.XY) int {
			switch {
			case a.X < b.X:
				return -1
			case a.X > b.X:
				return 1
			}
			return 0
		})
		p.Series = append(p.Series, line(fmt.Sprintf("%s, %d MiB", k.tr, k.mem>>20), xys, seriesColor[i%len(seriesColor)], k.tr == "ring"))
	}
	if len(p.Series) == 0 {
		return figure.Figure{}, false
	}
	p.Legend = figure.Legend{Left: true, Room: true}
	return figure.Figure{
		File:    "harvest.png",
		Caption: "Harvest cost per epoch (VM paused) against the dirty-set size, dirty ring and bitmap, by guest memory.",
		Width:   130, Height: 100, Panels: []figure.Panel{p},
	}, true
}

func pipelineFigure(res *Results) (figure.Figure, bool) {
	if len(res.Pipeline) == 0 {
		return figure.Figure{}, false
	}
	p := newPanel("Data path over loopback, no guest", "", "GB/s")
	var wire, loop []float64
	baseline := "loopback TCP, as many streams"
	for _, r := range res.Pipeline {
		p.X.Categories = append(p.X.Categories, r.Name)
		wire = append(wire, r.WireGBs)
		loop = append(loop, r.Loopback)
		if r.LoopbackTLS {
			baseline = "loopback TLS, as many streams"
		}
	}
	const width = 14
	for i, v := range [][]float64{wire, loop} {
		p.Series = append(p.Series, figure.Series{Kind: figure.Bars, Name: []string{"pipeline (bytes on the wire)", baseline}[i],
			Color: seriesColor[i], Values: v, Width: width, Offset: barOffset(i, 2, width)})
	}
	p.Y.Min = figure.Value(0)
	p.Legend.Room = true
	return figure.Figure{
		File:    "pipeline.png",
		Caption: "Data path without a guest: bytes on the wire per second of pause, against loopback TCP with as many streams.",
		Width:   130, Height: 100, Panels: []figure.Panel{p},
	}, true
}
