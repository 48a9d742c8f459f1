package main

import (
	"context"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
)

// BenchmarkLinuxPutLatency measures what a client of a replicated Linux
// guest sees: the round trip of one PUT to the test guest's key-value
// store (a disk write fsynced before the answer) over TCP on a TAP,
// without --ha and with it at 10, 25 and 50 ms epochs (fast, sync); and,
// from the primary's per-epoch trace, the pause of the epochs it ran
// meanwhile, the state each carried and the part of it that was the
// epoch's disk writes. It needs root (the story's network namespace) and boots one
// guest per configuration, so give it a fixed count:
//
//	TANDEM_REQUIRE_KVM=1 go test ./cmd/tandem -run X -bench LinuxPutLatency -benchtime 200x
func BenchmarkLinuxPutLatency(b *testing.B) {
	kvmtest.Open(b)
	for _, epoch := range []time.Duration{0, 10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond} {
		name := "no-ha"
		if epoch > 0 {
			name = "ha-" + epoch.String()
		}
		b.Run(name, func(b *testing.B) {
			if b.N == 1 {
				return // the probe run: each run boots a guest; see -benchtime above
			}
			benchPutLatency(b, epoch)
		})
	}
}

func benchPutLatency(b *testing.B, epoch time.Duration) {
	r, err := measurePutLatency(context.Background(), tandemBin, epoch, b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(r.p50.Microseconds())/1000, "ms-p50")
	b.ReportMetric(float64(r.p99.Microseconds())/1000, "ms-p99")
	if epoch == 0 {
		return
	}
	b.ReportMetric(float64(r.pause.Microseconds())/1000, "ms-pause/epoch")
	b.ReportMetric(r.stateKiB, "KiB-state/epoch")
	b.ReportMetric(r.diskKiB, "KiB-disk/epoch")
	b.ReportMetric(float64(r.epochs)/float64(b.N), "epochs/put")
}
