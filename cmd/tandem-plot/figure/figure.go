// Package figure owns the figures file, figures.json: what tandem bench
// writes into its output directory for every plot its report can show
// (the data, axes, legend and caption of each), and what tandem-plot reads
// to draw them as PNGs. It describes plots and draws nothing, so that the
// tandem binary an edge host runs carries no plotting library and no
// fonts: drawing belongs to tandem-plot (package render).
package figure

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// File is the figures file's name in a bench output directory.
const File = "figures.json"

// A Figure is one PNG: its panels drawn side by side.
type Figure struct {
	File    string  `json:"file"` // the PNG, relative to the output directory
	Caption string  `json:"caption"`
	Width   float64 `json:"width_mm"`
	Height  float64 `json:"height_mm"`
	Panels  []Panel `json:"panels"`
}

// A Panel is one plot: a title, two axes, a legend and its series, drawn
// in that order (later series over earlier ones; the legend lists the
// named series in order).
type Panel struct {
	Title  string   `json:"title"`
	X      Axis     `json:"x"`
	Y      Axis     `json:"y"`
	Legend Legend   `json:"legend"`
	Series []Series `json:"series"`
}

// An Axis spans its series' data, and at least Min and Max when set.
type Axis struct {
	Label string   `json:"label,omitempty"`
	Log   bool     `json:"log,omitempty"` // a log scale, ticked at the decades unless Ticks are given
	Min   *float64 `json:"min,omitempty"`
	Max   *float64 `json:"max,omitempty"`
	// Ticks are fixed tick marks; none: the drawing chooses them.
	Ticks []Tick `json:"ticks,omitempty"`
	// Categories make the axis nominal: one labelled tick per category at
	// 0, 1, 2, ... (where bars stand).
	Categories []string `json:"categories,omitempty"`
	// TickFontSize is the tick labels' size in points; 0: the default.
	TickFontSize float64 `json:"tick_font_size,omitempty"`
}

// A Tick is a labelled mark on an axis, in data coordinates.
type Tick struct {
	Value float64 `json:"value"`
	Label string  `json:"label"`
}

// Legend places a panel's legend: in its top right corner, or top left.
type Legend struct {
	Left bool `json:"left,omitempty"`
	// Room raises the top of the y axis so that the legend does not cover
	// the data: by 40% of the range, or of the decades on a log axis.
	Room bool `json:"room,omitempty"`
}

// Kind is how a series is drawn.
type Kind string

const (
	Line       Kind = "line"        // XY joined by a line
	LinePoints Kind = "line_points" // XY joined by a line, each point marked
	Points     Kind = "points"      // XY marked, not joined
	Bars       Kind = "bars"        // Values, one bar per category
)

// Glyph is the shape that marks a point.
type Glyph string

const (
	Ring     Glyph = "" // the default
	Circle   Glyph = "circle"
	Triangle Glyph = "triangle"
	Box      Glyph = "box"
	Pyramid  Glyph = "pyramid"
)

// A Series is one line, set of points or row of bars of a panel. Lengths
// are in points (1/72 inch); zero takes the drawing's default.
type Series struct {
	Kind  Kind   `json:"kind"`
	Name  string `json:"name,omitempty"` // its legend entry; "": none
	Color string `json:"color"`          // "#rrggbb"
	// Lines.
	Dashed    bool    `json:"dashed,omitempty"`
	LineWidth float64 `json:"line_width,omitempty"`
	// Points.
	Glyph  Glyph   `json:"glyph,omitempty"`
	Radius float64 `json:"radius,omitempty"`
	XY     []XY    `json:"xy,omitempty"`
	// Bars: one per category, Width wide, shifted by Offset along x, and
	// on top of the panel's previous bars when Stack is set.
	Values []float64 `json:"values,omitempty"`
	Width  float64   `json:"width,omitempty"`
	Offset float64   `json:"offset,omitempty"`
	Stack  bool      `json:"stack,omitempty"`
}

// An XY is a point in data coordinates.
type XY struct {
	X float64 `json:"x"`
	Y float64 `json:"y"`
}

// Value returns a pointer to v, for Axis.Min and Axis.Max.
func Value(v float64) *float64 { return &v }

// Write writes figs as dir's figures file.
func Write(dir string, figs []Figure) error {
	b, err := json.MarshalIndent(figs, "", " ")
	if err != nil {
		return fmt.Errorf("figure: encoding %s: %w", File, err)
	}
	if err := os.WriteFile(filepath.Join(dir, File), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("figure: %w", err)
	}
	return nil
}

// Read reads dir's figures file.
func Read(dir string) ([]Figure, error) {
	b, err := os.ReadFile(filepath.Join(dir, File))
	if err != nil {
		return nil, fmt.Errorf("figure: %w", err)
	}
	var figs []Figure
	if err := json.Unmarshal(b, &figs); err != nil {
		return nil, fmt.Errorf("figure: %s: %w", filepath.Join(dir, File), err)
	}
	return figs, nil
}
