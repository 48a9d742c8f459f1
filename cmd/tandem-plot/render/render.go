// Package render draws the figures of a figures file (package figure) as
// PNGs with gonum.org/v1/plot and its fonts. It is tandem-plot's drawing,
// kept out of the tandem binary; tandem bench's tests use it directly.
package render

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"github.com/tandemvm/tandem/cmd/tandem-plot/figure"
)

// legendFontSize is the size of every legend's text.
const legendFontSize = 9

// Dir draws every figure of dir's figures file into its PNG in dir, and
// returns the files it drew, in the order of the figures file, up to the
// first that failed.
func Dir(dir string) ([]string, error) {
	figs, err := figure.Read(dir)
	if err != nil {
		return nil, fmt.Errorf("render: %w", err)
	}
	var drawn []string
	for _, fig := range figs {
		if !filepath.IsLocal(fig.File) || filepath.Base(fig.File) != fig.File {
			return drawn, fmt.Errorf("render: figure %q: not a file name in the output directory", fig.File)
		}
		if err := Figure(filepath.Join(dir, fig.File), fig); err != nil {
			return drawn, err
		}
		drawn = append(drawn, fig.File)
	}
	return drawn, nil
}

// Figure draws fig's panels side by side into one PNG at path.
func Figure(path string, fig figure.Figure) error {
	if len(fig.Panels) == 0 || fig.Width <= 0 || fig.Height <= 0 {
		return fmt.Errorf("render: figure %s: %d panels in %g x %g mm", fig.File, len(fig.Panels), fig.Width, fig.Height)
	}
	plots := make([]*plot.Plot, len(fig.Panels))
	for i, pn := range fig.Panels {
		p, err := panel(pn)
		if err != nil {
			return fmt.Errorf("render: figure %s, panel %q: %w", fig.File, pn.Title, err)
		}
		plots[i] = p
	}
	img := vgimg.New(vg.Length(fig.Width)*vg.Millimeter, vg.Length(fig.Height)*vg.Millimeter)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: 6 * vg.Millimeter, PadTop: 2 * vg.Millimeter,
		PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("render: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("render: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("render: %w", err)
	}
	return nil
}

// panel builds the plot of one panel: its series first, so that the axes
// span their data, then the axes' bounds, the legend's room, and ticks.
func panel(pn figure.Panel) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = pn.Title
	p.X.Label.Text, p.Y.Label.Text = pn.X.Label, pn.Y.Label
	p.Legend.Top, p.Legend.Left = true, pn.Legend.Left
	p.Legend.TextStyle.Font.Size = vg.Points(legendFontSize)
	p.Add(plotter.NewGrid())
	var lastBars *plotter.BarChart
	for i, s := range pn.Series {
		bars, err := addSeries(p, s, lastBars)
		if err != nil {
			return nil, fmt.Errorf("series %d (%q): %w", i, s.Name, err)
		}
		if bars != nil {
			lastBars = bars
		}
	}
	bound(&p.X.Min, &p.X.Max, pn.X)
	bound(&p.Y.Min, &p.Y.Max, pn.Y)
	if pn.Legend.Room {
		roomForLegend(p, pn.Y.Log)
	}
	if len(pn.X.Categories) > 0 {
		p.NominalX(pn.X.Categories...)
	}
	if len(pn.Y.Categories) > 0 {
		p.NominalY(pn.Y.Categories...)
	}
	scale(&p.X, pn.X)
	scale(&p.Y, pn.Y)
	return p, nil
}

// bound widens an axis's range to its Min and Max.
func bound(lo, hi *float64, a figure.Axis) {
	if a.Min != nil {
		*lo = min(*lo, *a.Min)
	}
	if a.Max != nil {
		*hi = max(*hi, *a.Max)
	}
}

// scale sets an axis's scale, its fixed ticks and their font.
func scale(ax *plot.Axis, a figure.Axis) {
	if a.Log {
		ax.Scale = plot.LogScale{}
		ax.Tick.Marker = plot.LogTicks{Prec: -1}
	}
	if len(a.Ticks) > 0 {
		ticks := make([]plot.Tick, len(a.Ticks))
		for i, t := range a.Ticks {
			ticks[i] = plot.Tick{Value: t.Value, Label: t.Label}
		}
		ax.Tick.Marker = plot.ConstantTicks(ticks)
	}
	if a.TickFontSize > 0 {
		ax.Tick.Label.Font.Size = vg.Points(a.TickFontSize)
	}
}

// roomForLegend raises the top of p's y axis so that the legend, drawn in
// the top corner, does not cover the data: by 40% of the range, or of the
// decades on a log axis.
func roomForLegend(p *plot.Plot, logY bool) {
	if logY {
		if p.Y.Min > 0 && p.Y.Max > p.Y.Min {
			p.Y.Max *= math.Pow(p.Y.Max/p.Y.Min, 0.45)
		}
		return
	}
	p.Y.Max += (p.Y.Max - p.Y.Min) * 0.4
}

// addSeries adds s to p and, if it is named, to p's legend; bars stack on
// lastBars when s says so. It returns the bars it added, if any.
func addSeries(p *plot.Plot, s figure.Series, lastBars *plotter.BarChart) (*plotter.BarChart, error) {
	c, err := parseColor(s.Color)
	if err != nil {
		return nil, err
	}
	var thumbs []plot.Thumbnailer
	var bars *plotter.BarChart
	switch s.Kind {
	case figure.Line:
		l, err := plotter.NewLine(xys(s.XY))
		if err != nil {
			return nil, err
		}
		styleLine(&l.LineStyle, s, c)
		p.Add(l)
		thumbs = append(thumbs, l)
	case figure.LinePoints:
		l, sc, err := plotter.NewLinePoints(xys(s.XY))
		if err != nil {
			return nil, err
		}
		styleLine(&l.LineStyle, s, c)
		styleGlyph(&sc.GlyphStyle, s, c)
		p.Add(l, sc)
		thumbs = append(thumbs, l, sc)
	case figure.Points:
		sc, err := plotter.NewScatter(xys(s.XY))
		if err != nil {
			return nil, err
		}
		styleGlyph(&sc.GlyphStyle, s, c)
		p.Add(sc)
		thumbs = append(thumbs, sc)
	case figure.Bars:
		if s.Width <= 0 {
			return nil, fmt.Errorf("bars %g points wide", s.Width)
		}
		bars, err = plotter.NewBarChart(plotter.Values(s.Values), vg.Points(s.Width))
		if err != nil {
			return nil, err
		}
		bars.Color = c
		bars.LineStyle.Width = 0
		bars.Offset = vg.Points(s.Offset)
		if s.Stack && lastBars != nil {
			bars.StackOn(lastBars)
		}
		p.Add(bars)
		thumbs = append(thumbs, bars)
	default:
		return nil, fmt.Errorf("unknown kind %q", s.Kind)
	}
	if s.Name != "" {
		p.Legend.Add(s.Name, thumbs...)
	}
	return bars, nil
}

func xys(pts []figure.XY) plotter.XYs {
	out := make(plotter.XYs, len(pts))
	for i, pt := range pts {
		out[i] = plotter.XY{X: pt.X, Y: pt.Y}
	}
	return out
}

func styleLine(ls *draw.LineStyle, s figure.Series, c color.Color) {
	ls.Color = c
	if s.LineWidth > 0 {
		ls.Width = vg.Points(s.LineWidth)
	}
	if s.Dashed {
		ls.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	}
}

func styleGlyph(gs *draw.GlyphStyle, s figure.Series, c color.Color) {
	gs.Color = c
	if s.Radius > 0 {
		gs.Radius = vg.Points(s.Radius)
	}
	switch s.Glyph {
	case figure.Circle:
		gs.Shape = draw.CircleGlyph{}
	case figure.Triangle:
		gs.Shape = draw.TriangleGlyph{}
	case figure.Box:
		gs.Shape = draw.BoxGlyph{}
	case figure.Pyramid:
		gs.Shape = draw.PyramidGlyph{}
	}
}

// parseColor parses "#rrggbb".
func parseColor(s string) (color.Color, error) {
	var r, g, b uint8
	if len(s) != 7 || s[0] != '#' {
		return nil, fmt.Errorf("colour %q: want #rrggbb", s)
	}
	if _, err := fmt.Sscanf(s[1:], "%02x%02x%02x", &r, &g, &b); err != nil {
		return nil, fmt.Errorf("colour %q: %w", s, err)
	}
	return color.RGBA{R: r, G: g, B: b, A: 0xff}, nil
}
