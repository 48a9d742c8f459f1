// Command tandem-plot draws the plots of a tandem bench output directory:
// every figure its figures.json describes (package figure), as a PNG in
// that directory. It is a command of its own so that the tandem binary an
// edge host runs does not carry the plotting library and its fonts;
// tandem bench (and --analyze) run it when they find it next to their own
// executable or in PATH, and list in report.md only the plots it drew.
//
// Usage:
//
//	tandem-plot DIR
//
// It prints the path of every PNG it writes.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tandemvm/tandem/cmd/tandem-plot/render"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: tandem-plot DIR\n\nDraws the plots DIR/figures.json describes (written by tandem bench) as PNGs in DIR.\n")
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	dir := flag.Arg(0)
	drawn, err := render.Dir(dir)
	for _, f := range drawn {
		fmt.Println(filepath.Join(dir, f))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tandem-plot:", err)
		os.Exit(1)
	}
}
