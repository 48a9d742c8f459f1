package bench

import "testing"

// TestWorkProgress feeds the Linux workload's console to workProgress in
// pieces: only whole "tandem-init: work <s> <iterations>" lines count,
// the newest wins, and other lines (the boot, the old two-field form, a
// line too long to be one) leave the count alone.
func TestWorkProgress(t *testing.T) {
	for _, c := range []struct {
		name   string
		writes []string
		iters  uint64
		seen   bool
	}{
		{"nothing yet", []string{"[    0.000000] Linux version 6.12\n", "tandem-init: up\n"}, 0, false},
		{"one line", []string{"tandem-init: work 1 37\n"}, 37, true},
		{"split across writes", []string{"tandem-init: wo", "rk 2 7", "5\n"}, 75, true},
		{"the newest wins", []string{"tandem-init: work 1 37\ntandem-init: work 2 80\n"}, 80, true},
		{"unfinished line", []string{"tandem-init: work 1 37\ntandem-init: work 2 80"}, 37, true},
		{"old form", []string{"tandem-init: work 3\n"}, 0, false},
		{"not a number", []string{"tandem-init: work 3 many\n"}, 0, false},
		{"stopped", []string{"tandem-init: work 1 5\ntandem-init: work stopped\n"}, 5, true},
		{"overlong line", []string{"tandem-init: work 1 " + string(make([]byte, 300)) + "9\n"}, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var w workProgress
			for _, s := range c.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			if iters, seen := w.progress(); iters != c.iters || seen != c.seen {
				t.Errorf("progress = %d, %v; want %d, %v", iters, seen, c.iters, c.seen)
			}
		})
	}
}
