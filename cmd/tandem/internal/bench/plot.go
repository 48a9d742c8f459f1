package bench

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Plot is one PNG the report shows.
type Plot struct {
	File    string // relative to the output directory
	Caption string
}

// palette: one colour per setup, and one per pause step.
var (
	setupColor = map[string]color.Color{
		"none":    color.RGBA{0x55, 0x55, 0x55, 0xff},
		"async":   color.RGBA{0xd6, 0x27, 0x28, 0xff},
		"fast2":   color.RGBA{0x1f, 0x77, 0xb4, 0xff},
		"fast4":   color.RGBA{0x2c, 0xa0, 0x2c, 0xff},
		"ft4":     color.RGBA{0x94, 0x67, 0xbd, 0xff},
		"async4":  color.RGBA{0xff, 0x7f, 0x0e, 0xff},
		"persist": color.RGBA{0x8c, 0x56, 0x4b, 0xff},
		"asyncp":  color.RGBA{0xe3, 0x77, 0xc2, 0xff},
		"fast2p":  color.RGBA{0x17, 0xbe, 0xcf, 0xff},
	}
	stepColor = []color.Color{
		color.RGBA{0x8c, 0x56, 0x4b, 0xff}, // harvest
		color.RGBA{0xff, 0x7f, 0x0e, 0xff}, // group (+ staging copy)
		color.RGBA{0x1f, 0x77, 0xb4, 0xff}, // transfer
		color.RGBA{0x17, 0xbe, 0xcf, 0xff}, // ack
	}
	seriesColor = []color.Color{
		color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff},
		color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, color.RGBA{0x94, 0x67, 0xbd, 0xff},
		color.RGBA{0xff, 0x7f, 0x0e, 0xff}, color.RGBA{0x8c, 0x56, 0x4b, 0xff},
	}
)

func colorOf(setup string) color.Color {
	if c, ok := setupColor[setup]; ok {
		return c
	}
	return color.Black
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())
	return p
}

// roomForLegend raises the top of p's y axis so that the legend, drawn in
// the top corner, does not cover the data: by a third of the range, or of
// the decades on a log axis.
func roomForLegend(p *plot.Plot, logY bool) {
	if logY {
		if p.Y.Min > 0 && p.Y.Max > p.Y.Min {
			p.Y.Max *= math.Pow(p.Y.Max/p.Y.Min, 0.45)
		}
		return
	}
	p.Y.Max += (p.Y.Max - p.Y.Min) * 0.4
}

// saveTiles draws plots side by side into one PNG of width x height.
func saveTiles(path string, plots []*plot.Plot, width, height vg.Length) error {
	img := vgimg.New(width, height)
	dc := draw.New(img)
	t := draw.Tiles{Rows: 1, Cols: len(plots), PadX: 6 * vg.Millimeter, PadTop: 2 * vg.Millimeter,
		PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align([][]*plot.Plot{plots}, t, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func savePlot(path string, p *plot.Plot, width, height vg.Length) error {
	return saveTiles(path, []*plot.Plot{p}, width, height)
}

// addLine adds a line with points, coloured, to p and its legend.
func addLine(p *plot.Plot, name string, xys plotter.XYs, c color.Color, dashed bool) error {
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, s.Color = c, c
	l.Width = vg.Points(1.5)
	if dashed {
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	}
	p.Add(l, s)
	if name != "" {
		p.Legend.Add(name, l, s)
	}
	return nil
}

// WritePlots draws every plot the results support into dir.
func WritePlots(dir string, res *Results) ([]Plot, error) {
	var out []Plot
	add := func(file, caption string, err error) error {
		if err != nil {
			return fmt.Errorf("plot %s: %w", file, err)
		}
		out = append(out, Plot{File: file, Caption: caption})
		return nil
	}
	if res.Traffic != nil {
		ok, err := plotTraffic(filepath.Join(dir, trafficPlot), res.Traffic)
		if ok || err != nil {
			if err := add(trafficPlot, "Bytes on the wire ÷ dirty bytes of every technique replayed on every workload, log scale; dashed: the dirty bytes themselves (1).", err); err != nil {
				return out, err
			}
		}
	}
	if !res.matrix {
		return out, nil
	}
	cfg := res.Env.Config
	for _, mem := range memsWithRuns(res) {
		f := fmt.Sprintf("slowdown_%dM.png", mem>>20)
		if ok, err := plotSlowdown(filepath.Join(dir, f), res, mem); ok || err != nil {
			if err := add(f, fmt.Sprintf("Guest progress with replication over progress without (%s pattern, %d MiB), by epoch and memory technology. 1 is no slowdown.", cfg.Patterns[0], mem>>20), err); err != nil {
				return out, err
			}
		}
		f = fmt.Sprintf("pause_%dM.png", mem>>20)
		if ok, err := plotPause(filepath.Join(dir, f), res, mem); ok || err != nil {
			if err := add(f, fmt.Sprintf("Mean VM pause per epoch split into harvest / group / transfer / ack (%s, %d MiB); black marks: the physical bound of the epoch's data movement. Async pauses only for harvest and group (which includes its staging copy).", cfg.Patterns[0], mem>>20), err); err != nil {
				return out, err
			}
		}
	}
	if ok, err := plotEfficiency(filepath.Join(dir, "efficiency.png"), res); ok || err != nil {
		if err := add("efficiency.png", "Measured mean pause against the physical bound of its data movement, every replicated run; the diagonal is efficiency 1.", err); err != nil {
			return out, err
		}
	}
	if ok, err := plotOverhead(dir, "overhead.png", res); ok || err != nil {
		if err := add("overhead.png", "Pages dirtied against pages sent per epoch (every epoch of the fast(4) runs at factor 1); the diagonal is no grouping overhead.", err); err != nil {
			return out, err
		}
	}
	if ok, err := plotLinkBytes(filepath.Join(dir, "link_bytes.png"), res); ok || err != nil {
		if err := add("link_bytes.png", "Bytes sent on each link over the measured window (factor 1, headline epoch).", err); err != nil {
			return out, err
		}
	}
	if ok, err := plotTimeline(filepath.Join(dir, "progress.png"), res); ok || err != nil {
		if err := add("progress.png", "Guest progress (pages written per second) over time, factor 1, headline epoch.", err); err != nil {
			return out, err
		}
	}
	if ok, err := plotRecovery(filepath.Join(dir, "recovery.png"), res); ok || err != nil {
		if err := add("recovery.png", "Leader recovery time against the number of replicas, by guest memory; dashed: memory ÷ (replicas × link rate).", err); err != nil {
			return out, err
		}
	}
	if ok, err := plotHarvest(filepath.Join(dir, "harvest.png"), res); ok || err != nil {
		if err := add("harvest.png", "Harvest cost per epoch (VM paused) against the dirty-set size, dirty ring and bitmap, by guest memory.", err); err != nil {
			return out, err
		}
	}
	if ok, err := plotPipeline(filepath.Join(dir, "pipeline.png"), res); ok || err != nil {
		if err := add("pipeline.png", "Data path without a guest: bytes on the wire per second of pause, against loopback TCP with as many streams.", err); err != nil {
			return out, err
		}
	}
	return out, nil
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

func plotSlowdown(path string, res *Results, mem uint64) (bool, error) {
	cfg := res.Env.Config
	var plots []*plot.Plot
	for _, f := range cfg.Factors {
		p := newPlot(fmt.Sprintf("%s (write ×%g)", TechName(f), f), "epoch (ms)", "progress ratio")
		p.Y.Min, p.Y.Max = 0, 1.45
		var ticks []plot.Tick
		for _, e := range cfg.Epochs {
			ticks = append(ticks, plot.Tick{Value: ms(e), Label: fmt.Sprint(e.Milliseconds())})
		}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.Y.Tick.Marker = plot.ConstantTicks([]plot.Tick{{Value: 0, Label: "0"}, {Value: 0.25, Label: "0.25"}, {Value: 0.5, Label: "0.5"}, {Value: 0.75, Label: "0.75"}, {Value: 1, Label: "1"}})
		any := false
		for _, s := range protectedSetups() {
			var xys plotter.XYs
			for _, e := range cfg.Epochs {
				if r := findRun(res.Runs, s.ID, cfg.Patterns[0], mem, e, f); r != nil && r.ProgressRatio > 0 {
					xys = append(xys, plotter.XY{X: ms(e), Y: r.ProgressRatio})
				}
			}
			if len(xys) > 0 {
				any = true
				if err := addLine(p, s.Name, xys, colorOf(s.ID), false); err != nil {
					return true, err
				}
			}
		}
		if any {
			plots = append(plots, p)
		}
	}
	if len(plots) == 0 {
		return false, nil
	}
	return true, saveTiles(path, plots, vg.Length(len(plots))*90*vg.Millimeter, 90*vg.Millimeter)
}

func plotPause(path string, res *Results, mem uint64) (bool, error) {
	cfg := res.Env.Config
	var plots []*plot.Plot
	for _, f := range cfg.Factors {
		var names []string
		var steps [4]plotter.Values
		var bounds plotter.XYs
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
				bounds = append(bounds, plotter.XY{X: float64(len(names) - 1), Y: r.Bound.Mean})
			}
		}
		if len(names) == 0 {
			continue
		}
		p := newPlot(fmt.Sprintf("%s (write ×%g)", TechName(f), f), "", "mean pause (ms)")
		var prev *plotter.BarChart
		for i, label := range []string{"harvest", "group", "transfer", "ack"} {
			bc, err := plotter.NewBarChart(steps[i], vg.Points(9))
			if err != nil {
				return true, err
			}
			bc.Color = stepColor[i]
			bc.LineStyle.Width = 0
			if prev != nil {
				bc.StackOn(prev)
			}
			p.Add(bc)
			p.Legend.Add(label, bc)
			prev = bc
		}
		sc, err := plotter.NewScatter(bounds)
		if err != nil {
			return true, err
		}
		sc.GlyphStyle.Shape = draw.BoxGlyph{}
		sc.GlyphStyle.Color = color.Black
		sc.GlyphStyle.Radius = vg.Points(2.5)
		p.Add(sc)
		p.Legend.Add("bound", sc)
		p.Y.Min = 0
		roomForLegend(p, false)
		p.NominalX(names...)
		p.X.Tick.Label.Font.Size = vg.Points(7)
		plots = append(plots, p)
	}
	if len(plots) == 0 {
		return false, nil
	}
	return true, saveTiles(path, plots, vg.Length(len(plots))*120*vg.Millimeter, 100*vg.Millimeter)
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

func plotEfficiency(path string, res *Results) (bool, error) {
	p := newPlot("Pause against its physical bound", "bound (ms)", "measured mean pause (ms)")
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	lo, hi := math.Inf(1), 0.0
	any := false
	for i, s := range protectedSetups() {
		var xys plotter.XYs
		for _, r := range res.Runs {
			if r.Spec.Setup == s.ID && r.Bound.Mean > 0 && r.Pause.Total.Mean > 0 {
				xys = append(xys, plotter.XY{X: r.Bound.Mean, Y: r.Pause.Total.Mean})
				lo = min(lo, r.Bound.Mean, r.Pause.Total.Mean)
				hi = max(hi, r.Bound.Mean, r.Pause.Total.Mean)
			}
		}
		if len(xys) == 0 {
			continue
		}
		any = true
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return true, err
		}
		sc.GlyphStyle.Color = colorOf(s.ID)
		sc.GlyphStyle.Shape = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.TriangleGlyph{}, draw.BoxGlyph{}, draw.PyramidGlyph{}}[i%4]
		sc.GlyphStyle.Radius = vg.Points(3)
		p.Add(sc)
		p.Legend.Add(s.Name, sc)
	}
	if !any {
		return false, nil
	}
	if err := addLine(p, "measured = bound", plotter.XYs{{X: lo, Y: lo}, {X: hi, Y: hi}}, color.Gray{0x80}, true); err != nil {
		return true, err
	}
	p.Legend.Left, p.Legend.Top = true, true
	roomForLegend(p, true)
	return true, savePlot(path, p, 140*vg.Millimeter, 110*vg.Millimeter)
}

// plotOverhead reads the traces of the fast(4) runs at factor 1 (or the
// first factor) and plots each epoch's dirty against sent pages.
func plotOverhead(dir, file string, res *Results) (bool, error) {
	cfg := res.Env.Config
	f := cfg.Factors[0]
	if slices.Contains(cfg.Factors, 1) {
		f = 1
	}
	p := newPlot("Grouping overhead per epoch", "dirty pages", "pages sent")
	lo, hi := math.Inf(1), 0.0
	n := 0
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
			return true, err
		}
		var xys plotter.XYs
		for _, t := range recs {
			if t.Mode == "initial" || t.Failed != "" || t.DirtyPages == 0 || t.Time.Before(raw.WindowStart) || !t.Time.Before(raw.WindowEnd) {
				continue
			}
			xys = append(xys, plotter.XY{X: float64(t.DirtyPages), Y: float64(t.TransferredPages)})
			lo = min(lo, float64(t.DirtyPages))
			hi = max(hi, float64(t.TransferredPages))
		}
		if len(xys) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(xys)
		if err != nil {
			return true, err
		}
		sc.GlyphStyle.Color = seriesColor[n%len(seriesColor)]
		sc.GlyphStyle.Radius = vg.Points(1.8)
		p.Add(sc)
		p.Legend.Add(fmt.Sprintf("%s %dMiB %dms", s.Pattern, s.MemBytes>>20, s.Epoch.Milliseconds()), sc)
		n++
	}
	if n == 0 {
		return false, nil
	}
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	if err := addLine(p, "sent = dirty", plotter.XYs{{X: lo, Y: lo}, {X: hi, Y: hi}}, color.Gray{0x80}, true); err != nil {
		return true, err
	}
	p.Legend.Left = true
	roomForLegend(p, true)
	return true, savePlot(filepath.Join(dir, file), p, 140*vg.Millimeter, 110*vg.Millimeter)
}

func plotLinkBytes(path string, res *Results) (bool, error) {
	cfg := res.Env.Config
	e := headlineEpoch(cfg)
	f := cfg.Factors[0]
	if slices.Contains(cfg.Factors, 1) {
		f = 1
	}
	p := newPlot(fmt.Sprintf("Bytes per link (%s, %dms, %s)", cfg.Patterns[0], e.Milliseconds(), TechName(f)), "link", "MB sent")
	var bars []*plotter.BarChart
	maxLinks := 0
	for _, s := range protectedSetups() {
		r := findRun(res.Runs, s.ID, cfg.Patterns[0], cfg.Mems[0], e, f)
		if r == nil || len(r.LinkBytes) == 0 {
			continue
		}
		var v plotter.Values
		for _, b := range r.LinkBytes {
			v = append(v, float64(b)/1e6)
		}
		bc, err := plotter.NewBarChart(v, vg.Points(10))
		if err != nil {
			return true, err
		}
		bc.Color = colorOf(s.ID)
		bc.LineStyle.Width = 0
		p.Legend.Add(fmt.Sprintf("%s (imbalance %.1f%%)", s.Name, r.ImbalancePct), bc)
		bars = append(bars, bc)
		maxLinks = max(maxLinks, len(v))
	}
	if len(bars) == 0 {
		return false, nil
	}
	for i, bc := range bars {
		bc.Offset = vg.Points(10) * vg.Length(float64(i)-float64(len(bars)-1)/2)
		p.Add(bc)
	}
	var names []string
	for i := range maxLinks {
		names = append(names, fmt.Sprint(i))
	}
	p.NominalX(names...)
	p.Y.Min = 0
	roomForLegend(p, false)
	return true, savePlot(path, p, 140*vg.Millimeter, 100*vg.Millimeter)
}

func plotTimeline(path string, res *Results) (bool, error) {
	cfg := res.Env.Config
	e := headlineEpoch(cfg)
	f := cfg.Factors[0]
	if slices.Contains(cfg.Factors, 1) {
		f = 1
	}
	p := newPlot(fmt.Sprintf("Guest progress (%s, %d MiB, %dms, %s)", cfg.Patterns[0], cfg.Mems[0]>>20, e.Milliseconds(), TechName(f)), "time since the VM started (s)", "pages written per second")
	any := false
	for _, s := range Setups {
		r := findRun(res.Runs, s.ID, cfg.Patterns[0], cfg.Mems[0], e, f)
		if r == nil || len(r.Timeline) == 0 {
			continue
		}
		var xys plotter.XYs
		for _, t := range r.Timeline {
			xys = append(xys, plotter.XY{X: t.T, Y: float64(t.Pages)})
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return true, err
		}
		l.Color = colorOf(s.ID)
		l.Width = vg.Points(1.2)
		p.Add(l)
		p.Legend.Add(s.Name, l)
		any = true
	}
	if !any {
		return false, nil
	}
	p.Y.Min = 0
	roomForLegend(p, false)
	return true, savePlot(path, p, 150*vg.Millimeter, 90*vg.Millimeter)
}

func plotRecovery(path string, res *Results) (bool, error) {
	if len(res.Recovery) == 0 {
		return false, nil
	}
	p := newPlot("Recovery by the leader", "replicas", "seconds")
	var mems []uint64
	for _, r := range res.Recovery {
		if !slices.Contains(mems, r.MemBytes) {
			mems = append(mems, r.MemBytes)
		}
	}
	any := false
	for i, m := range mems {
		var meas, bound plotter.XYs
		for _, r := range res.Recovery {
			if r.MemBytes == m && r.Seconds.N > 0 {
				meas = append(meas, plotter.XY{X: float64(r.Replicas), Y: r.Seconds.Mean})
				bound = append(bound, plotter.XY{X: float64(r.Replicas), Y: r.Bound})
			}
		}
		if len(meas) == 0 {
			continue
		}
		any = true
		c := seriesColor[i%len(seriesColor)]
		if err := addLine(p, fmt.Sprintf("%d MiB", m>>20), meas, c, false); err != nil {
			return true, err
		}
		if err := addLine(p, fmt.Sprintf("%d MiB bound", m>>20), bound, c, true); err != nil {
			return true, err
		}
	}
	if !any {
		return false, nil
	}
	p.Y.Min = 0
	roomForLegend(p, false)
	return true, savePlot(path, p, 130*vg.Millimeter, 100*vg.Millimeter)
}

func plotHarvest(path string, res *Results) (bool, error) {
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
	p := newPlot("Harvest cost per epoch", "dirty pages harvested", "harvest (µs)")
	p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
	p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
	any := false
	for i, k := range keys {
		var xys plotter.XYs
		for _, h := range res.Harvest {
			if h.Tracking == k.tr && h.MemBytes == k.mem && h.Dirty.N > 0 && h.Dirty.Mean > 0 && h.Micros.Mean > 0 {
				xys = append(xys, plotter.XY{X: h.Dirty.Mean, Y: h.Micros.Mean})
			}
		}
		if len(xys) == 0 {
			continue
		}
		slices.SortFunc(xys, func(a, b plotter.XY) int {
			switch {
			case a.X < b.X:
				return -1
			case a.X > b.X:
				return 1
			}
			return 0
		})
		any = true
		if err := addLine(p, fmt.Sprintf("%s, %d MiB", k.tr, k.mem>>20), xys, seriesColor[i%len(seriesColor)], k.tr == "ring"); err != nil {
			return true, err
		}
	}
	if !any {
		return false, nil
	}
	p.Legend.Left = true
	roomForLegend(p, true)
	return true, savePlot(path, p, 130*vg.Millimeter, 100*vg.Millimeter)
}

func plotPipeline(path string, res *Results) (bool, error) {
	if len(res.Pipeline) == 0 {
		return false, nil
	}
	p := newPlot("Data path over loopback, no guest", "", "GB/s")
	var wire, loop plotter.Values
	var names []string
	for _, r := range res.Pipeline {
		names = append(names, r.Name)
		wire = append(wire, r.WireGBs)
		loop = append(loop, r.Loopback)
	}
	w := vg.Points(14)
	for i, v := range []plotter.Values{wire, loop} {
		bc, err := plotter.NewBarChart(v, w)
		if err != nil {
			return true, err
		}
		bc.Color = seriesColor[i]
		bc.LineStyle.Width = 0
		bc.Offset = w * vg.Length(float64(i)-0.5)
		p.Add(bc)
		p.Legend.Add([]string{"pipeline (bytes on the wire)", "loopback TCP, as many streams"}[i], bc)
	}
	p.NominalX(names...)
	p.Y.Min = 0
	roomForLegend(p, false)
	return true, savePlot(path, p, 130*vg.Millimeter, 100*vg.Millimeter)
}
