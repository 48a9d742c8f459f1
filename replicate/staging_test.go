package replicate

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestAsyncStagingPreallocated checks that an async primary holds a
// staging buffer as large as guest memory from the initial copy on, so
// that no epoch's staging copy allocates (and faults in) memory while the
// VM is paused, and that a sync primary holds none.
func TestAsyncStagingPreallocated(t *testing.T) {
	for _, mode := range []Mode{ModeAsync, ModeSync} {
		src := newStaticSource(t, 1024, []uint64{1, 2, 3, 500, 1023})
		p, err := NewPrimary(PrimaryConfig{Auth: testCreds,
			Links: []string{replicaAddr(t, ReplicaConfig{})}, Leader: replicaAddr(t, ReplicaConfig{Leader: true, HeartbeatTimeout: time.Hour}),
			VMID: 0x57A6, Guest: "static", VCPUs: 1, Epoch: time.Hour, Mode: mode, Log: quietLog(),
		}, src, NewOutputGate(io.Discard, 1<<20))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := p.Connect(ctx); err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.initialSync(ctx); err != nil {
			t.Fatal(err)
		}
		if mode == ModeSync {
			if p.staging != nil {
				t.Errorf("a sync primary has a %d-byte staging buffer", cap(p.staging))
			}
			continue
		}
		if cap(p.staging) != len(src.mem) {
			t.Fatalf("staging buffer of %d bytes after the initial copy, want guest memory's %d", cap(p.staging), len(src.mem))
		}
		first := &p.staging[:1][0]
		for range 3 {
			if err := p.runEpoch(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if &p.staging[:1][0] != first {
			t.Error("an epoch reallocated the staging buffer")
		}
		if p.Committed() != p.epoch {
			t.Errorf("committed %d of %d epochs", p.Committed(), p.epoch)
		}
	}
}
