package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/tandemvm/tandem/cmd/tandem-plot/figure"
)

// PlotterName is the command that draws a bench's plots from its
// figures.json (cmd/tandem-plot).
const PlotterName = "tandem-plot"

// ErrNoPlotter is FindPlotter's error when there is no tandem-plot.
var ErrNoPlotter = errors.New("no " + PlotterName + " next to tandem or in PATH")

// DrawPlots draws every figure of output directory dir's figures.json into
// its PNG in dir.
type DrawPlots func(dir string) error

// FindPlotter returns the path of tandem-plot: next to the running
// executable, else in PATH; ErrNoPlotter if there is none.
func FindPlotter() (string, error) {
	if exe, err := os.Executable(); err == nil {
		path := filepath.Join(filepath.Dir(exe), PlotterName)
		if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return path, nil
		}
	}
	path, err := exec.LookPath(PlotterName)
	if err != nil {
		return "", ErrNoPlotter
	}
	return path, nil
}

// PlotCommand returns the DrawPlots that runs the tandem-plot at path.
func PlotCommand(path string) DrawPlots {
	return func(dir string) error {
		cmd := exec.Command(path, dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			if msg := strings.TrimSpace(stderr.String()); msg != "" {
				return fmt.Errorf("%s %s: %w: %s", path, dir, err, msg)
			}
			return fmt.Errorf("%s %s: %w", path, dir, err)
		}
		return nil
	}
}

// Report analyses an output directory and writes results.json,
// figures.json (what every plot shows), the plots (with draw) and
// report.md into it. The report shows the plots draw drew: none when draw
// is nil or fails, and it says why; a failing draw is Report's error once
// everything else is written.
func Report(dir string, draw DrawPlots) (*Results, error) {
	res, err := Analyze(dir)
	if err != nil {
		return nil, err
	}
	if err := writeJSON(dir, "results.json", res); err != nil {
		return nil, err
	}
	figs, err := Figures(dir, res)
	if err != nil {
		return nil, err
	}
	if err := figure.Write(dir, figs); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	var plots Plots
	var drawErr error
	switch {
	case len(figs) == 0:
	case draw == nil:
		plots.NotDrawn = ErrNoPlotter.Error()
	default:
		if err := draw(dir); err != nil {
			plots.NotDrawn = err.Error()
			drawErr = fmt.Errorf("bench: drawing the plots: %w", err)
			break
		}
		for _, fig := range figs {
			plots.Drawn = append(plots.Drawn, Plot{File: fig.File, Caption: fig.Caption})
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(Markdown(res, plots)), 0o644); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return res, drawErr
}

// notDrawnNote is the report's paragraph on plots that were not drawn, ""
// if none were left out.
func notDrawnNote(plots Plots) string {
	if plots.NotDrawn == "" {
		return ""
	}
	return fmt.Sprintf("The plots were not drawn (%s). `%s` holds what each shows; `%s DIR` draws them, "+
		"and `tandem bench --analyze DIR` with `%s` next to `tandem` or in PATH draws them and lists them in this report "+
		"(`go build -o \"$(dirname \"$(command -v tandem)\")\" ./cmd/%s` in Tandem's source tree builds it there).\n\n",
		strings.ReplaceAll(plots.NotDrawn, "\n", " "), figure.File, PlotterName, PlotterName, PlotterName)
}
