// Package bench owns tandem bench: the reproduction of seed 003's
// evaluation (the guest matrix of setups, epochs, memory sizes and
// write-latency factors over shaped links, recovery, harvest and the data
// path alone; runner.go, vmrun.go, netlab.go), the traffic part that puts
// every reduction technique through the same recorded epochs and live
// runs (traffic.go), the Linux guest's request latency (the command's
// --linux), and the analysis that turns the raw data and traces a run
// leaves in its directory into report.md, results.json and the plots, so
// that --analyze reproduces them from those files alone (analyze.go,
// report.go). What each plot shows is decided here (figures.go) and
// written to figures.json; tandem-plot (cmd/tandem-plot) draws them, run
// by Report when it is found (plotter.go), so that the tandem binary links
// no plotting library and no fonts.
package bench
