package render

import (
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tandemvm/tandem/cmd/tandem-plot/figure"
)

// everyKind is a figure of two panels that uses every kind of series,
// glyph and axis option the figures file has.
func everyKind() figure.Figure {
	pts := []figure.XY{{X: 1, Y: 2}, {X: 10, Y: 20}, {X: 100, Y: 150}}
	lines := figure.Panel{
		Title: "lines and points", X: figure.Axis{Label: "x", Log: true}, Y: figure.Axis{Label: "y", Log: true},
		Legend: figure.Legend{Left: true, Room: true},
		Series: []figure.Series{
			{Kind: figure.Line, Name: "line", Color: "#1f77b4", LineWidth: 1.2, XY: pts},
			{Kind: figure.LinePoints, Name: "dashed", Color: "#d62728", Dashed: true, LineWidth: 1.5, XY: pts},
			{Kind: figure.Points, Name: "ring", Color: "#2ca02c", XY: pts},
			{Kind: figure.Points, Color: "#9467bd", Glyph: figure.Circle, Radius: 3, XY: pts},
			{Kind: figure.Points, Color: "#9467bd", Glyph: figure.Triangle, XY: pts},
			{Kind: figure.Points, Color: "#9467bd", Glyph: figure.Box, XY: pts},
			{Kind: figure.Points, Color: "#9467bd", Glyph: figure.Pyramid, XY: pts},
		},
	}
	bars := figure.Panel{
		Title:  "bars",
		X:      figure.Axis{Categories: []string{"a\n1", "b\n2"}, TickFontSize: 7},
		Y:      figure.Axis{Label: "ms", Min: figure.Value(0), Max: figure.Value(12), Ticks: []figure.Tick{{Value: 0, Label: "0"}, {Value: 10, Label: "ten"}}},
		Legend: figure.Legend{Room: true},
		Series: []figure.Series{
			{Kind: figure.Bars, Name: "low", Color: "#8c564b", Values: []float64{1, 2}, Width: 9, Offset: -4.5},
			{Kind: figure.Bars, Name: "high", Color: "#ff7f0e", Values: []float64{3, 4}, Width: 9, Offset: -4.5, Stack: true},
			{Kind: figure.Bars, Name: "beside", Color: "#17becf", Values: []float64{5, 6}, Width: 9, Offset: 4.5},
		},
	}
	return figure.Figure{File: "every.png", Caption: "every kind", Width: 200, Height: 90, Panels: []figure.Panel{lines, bars}}
}

// TestDir draws a figures file and checks that every figure is a PNG of
// the size it asks for.
func TestDir(t *testing.T) {
	dir := t.TempDir()
	single := everyKind()
	single.File, single.Width, single.Panels = "single.png", 100, single.Panels[1:]
	if err := figure.Write(dir, []figure.Figure{everyKind(), single}); err != nil {
		t.Fatal(err)
	}
	drawn, err := Dir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(drawn, []string{"every.png", "single.png"}) {
		t.Errorf("drew %v", drawn)
	}
	for _, name := range drawn {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// vgimg draws at 96 dpi: 200 mm is 756 pixels, 90 mm 340.
		want := map[string]int{"every.png": 756, "single.png": 378}[name]
		if b := img.Bounds(); b.Dx() != want || b.Dy() != 340 {
			t.Errorf("%s: %v, want %d x 340", name, b, want)
		}
	}
}

// TestDirErrors: a figure that cannot be drawn is an error that names it,
// after the figures before it were drawn; no file is written outside the
// directory.
func TestDirErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*figure.Figure)
		want string
	}{
		{"colour", func(f *figure.Figure) { f.Panels[0].Series[0].Color = "blue" }, `colour "blue"`},
		{"kind", func(f *figure.Figure) { f.Panels[0].Series[0].Kind = "pie" }, `unknown kind "pie"`},
		{"bar width", func(f *figure.Figure) { f.Panels[1].Series[0].Width = 0 }, "bars 0 points wide"},
		{"no panels", func(f *figure.Figure) { f.Panels = nil }, "0 panels"},
		{"escape", func(f *figure.Figure) { f.File = "../every.png" }, "not a file name in the output directory"},
		{"subdirectory", func(f *figure.Figure) { f.File = "sub/every.png" }, "not a file name in the output directory"},
	} {
		dir := t.TempDir()
		bad := everyKind()
		bad.File = "bad.png"
		c.edit(&bad)
		if err := figure.Write(dir, []figure.Figure{everyKind(), bad}); err != nil {
			t.Fatal(err)
		}
		drawn, err := Dir(dir)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one with %q", c.name, err, c.want)
		}
		if !slices.Equal(drawn, []string{"every.png"}) {
			t.Errorf("%s: drew %v", c.name, drawn)
		}
	}
	if _, err := Dir(t.TempDir()); err == nil || !strings.Contains(err.Error(), figure.File) {
		t.Errorf("a directory without %s: %v", figure.File, err)
	}
}
