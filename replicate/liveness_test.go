package replicate

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// wedgedVM is a fakeVM whose Pause, once wedged, blocks until release is
// closed: an epoch loop stuck while the heartbeat goroutine runs on.
type wedgedVM struct {
	*fakeVM
	wedged  atomic.Bool
	release chan struct{}
}

func (w *wedgedVM) Pause() error {
	if w.wedged.Load() {
		<-w.release
	}
	return w.fakeVM.Pause()
}

// livenessPrimary runs a primary of src against c with a 5 ms epoch and a
// 20 ms heartbeat, and returns it with a function that stops it.
func livenessPrimary(t *testing.T, c *cluster, src Source) (*Primary, func()) {
	t.Helper()
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0x11FE, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Heartbeat: 20 * time.Millisecond, Policy: PolicyFT, SGMax: 8, Log: quietLog(),
	}, src, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Run(ctx) }()
	return p, func() { cancel(); p.Close(); <-done }
}

// TestLeaderFailsAPrimaryWhoseEpochsStop: the primary's epoch loop wedges
// in Pause while its heartbeat goroutine goes on sending. The leader must
// declare it failed within the progress bound (the epoch interval plus
// the heartbeat timeout after the last commit, plus scheduling slack), not
// keep trusting the heartbeats.
func TestLeaderFailsAPrimaryWhoseEpochsStop(t *testing.T) {
	const hbTimeout = 300 * time.Millisecond
	c := newClusterWith(t, 1, ReplicaConfig{Leader: true, HeartbeatTimeout: hbTimeout})
	vm := &wedgedVM{fakeVM: newFakeVM(t, 64), release: make(chan struct{})}
	p, stop := livenessPrimary(t, c, vm)
	defer stop()
	defer close(vm.release)
	waitCommitted(t, p, 5, 10*time.Second, nil)
	vm.wedged.Store(true)
	wedgedAt := time.Now()
	// The bound: the last commit came at most one epoch before the wedge;
	// after it the next state is due an interval plus the heartbeat
	// timeout later. A second of slack for a loaded machine.
	bound := hbTimeout + 5*time.Millisecond + time.Second
	select {
	case <-c.leader.Failed():
		took := time.Since(wedgedAt)
		t.Logf("declared failed %v after the wedge: %s", took.Round(time.Millisecond), c.leader.FailReason())
		if !strings.Contains(c.leader.FailReason(), "stopped progressing") {
			t.Errorf("failed for %q, want the progress rule", c.leader.FailReason())
		}
	case <-time.After(bound):
		t.Fatalf("the leader still trusts a primary whose epochs stopped %v ago (heartbeats keep coming)", bound)
	}
}

// TestLeaderKeepsAnIdleHealthyPrimary: a primary whose guest writes
// nothing still pauses every epoch and commits: the leader must not fail
// it, however long it idles.
func TestLeaderKeepsAnIdleHealthyPrimary(t *testing.T) {
	const hbTimeout = 200 * time.Millisecond
	c := newClusterWith(t, 1, ReplicaConfig{Leader: true, HeartbeatTimeout: hbTimeout})
	p, stop := livenessPrimary(t, c, newFakeVM(t, 64))
	defer stop()
	waitCommitted(t, p, 3, 10*time.Second, nil)
	// Idle for many heartbeat timeouts: the epochs progress, nothing fails.
	idleUntil := time.Now().Add(10 * hbTimeout)
	for time.Now().Before(idleUntil) {
		select {
		case <-c.leader.Failed():
			t.Fatalf("the leader failed an idle, healthy primary: %s", c.leader.FailReason())
		case <-time.After(10 * time.Millisecond):
		}
	}
	waitCommitted(t, p, p.Committed()+3, 10*time.Second, nil)
}
