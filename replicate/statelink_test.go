package replicate

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// stateHello opens a state connection to the leader as the primary of vmID
// would.
func stateHello(addr string, vmID uint64) (*conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return dialHello(ctx, testCreds, addr, vmID, 1, Hello{Role: RoleState, Links: 1, MemBytes: 64 * PageSize, VCPUs: 1, Policy: PolicyFT, Guest: "fake"})
}

// expectRefused checks that a state hello was refused with want in the
// reason.
func expectRefused(t *testing.T, c *conn, err error, want string) {
	t.Helper()
	if err == nil {
		c.c.Close()
		t.Fatalf("state hello accepted, want a refusal (%s)", want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("state hello refused with %v, want %q", err, want)
	}
}

// TestLeaderStateSlot drives the leader's state connection message by
// message: the slot is bound to the VM of the first state hello, a second
// live connection or another VM is refused, the slot is freed when its
// connection ends and the primary may come back within the heartbeat
// timeout; if it does not, the leader declares it failed and takes no
// state connection any more.
func TestLeaderStateSlot(t *testing.T) {
	const hb = 500 * time.Millisecond
	leader, addr, _ := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: hb})

	a, err := stateHello(addr, 1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := stateHello(addr, 1)
	expectRefused(t, b, err, "already has a state connection")
	other, err := stateHello(addr, 2)
	expectRefused(t, other, err, "another VM")

	// A state, acknowledged. It allows its epoch 10 s.
	st := &StateRecord{Epoch: 2, Within: 10 * time.Second, Interval: 5 * time.Millisecond, Links: []uint32{0}, Blob: []byte("s")}
	if err := a.send(MsgState, 2, st.marshal()); err != nil {
		t.Fatal(err)
	}
	a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if h, err := readHeader(a.r, 1); err != nil || h.Type != MsgAck || h.Epoch != 2 {
		t.Fatalf("answer to the state: %+v, %v", h, err)
	}

	// The connection breaks: the slot is free again, and the primary's
	// redial is admitted within the heartbeat timeout.
	a.c.Close()
	var d *conn
	for deadline := time.Now().Add(hb); ; {
		if d, err = stateHello(addr, 1); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no state connection admitted within %v of the break: %v", hb, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// It goes on: heartbeats for several heartbeat timeouts, no takeover.
	for until := time.Now().Add(3 * hb); time.Now().Before(until); {
		if err := d.send(MsgHeartbeat, 0, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case <-leader.Failed():
			t.Fatalf("the leader took over after a redial: %s", leader.FailReason())
		case <-time.After(hb / 5):
		}
	}
	// Another VM still gets nothing, even while the slot is taken.
	other, err = stateHello(addr, 2)
	expectRefused(t, other, err, "another VM")

	// The connection breaks and nobody comes back: the leader takes over
	// after the heartbeat timeout, and refuses a late primary.
	d.c.Close()
	broke := time.Now()
	select {
	case <-leader.Failed():
		t.Logf("failed %v after the break: %s", time.Since(broke).Round(time.Millisecond), leader.FailReason())
		if !strings.Contains(leader.FailReason(), "did not reconnect") {
			t.Errorf("failed for %q", leader.FailReason())
		}
	case <-time.After(hb + 2*time.Second):
		t.Fatal("the leader waits forever for a primary that does not come back")
	}
	late, err := stateHello(addr, 1)
	expectRefused(t, late, err, "declared the primary failed")
}

// TestPrimaryRedialsItsStateConnection: the state connection is cut once
// (a proxy hangs up at a heartbeat); the primary redials, the leader does
// not take over, and the epochs go on committing.
func TestPrimaryRedialsItsStateConnection(t *testing.T) {
	c := newClusterWith(t, 1, ReplicaConfig{Leader: true, HeartbeatTimeout: time.Second})
	var beats, conns atomic.Int64
	proxy := startMessageProxy(t, c.leadAddr, 0, func(typ MsgType, length uint32) proxyAction {
		switch typ {
		case MsgHello:
			conns.Add(1)
		case MsgHeartbeat:
			if beats.Add(1) == 5 {
				return hangUp
			}
		}
		return forward
	})
	vm := newFakeVM(t, 64)
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: proxy, VMID: 0x4ED1, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Heartbeat: 20 * time.Millisecond, Policy: PolicyFT, SGMax: 8, Log: quietLog(),
	}, vm, nil)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("the primary stopped: %v", err)
		}
	}()
	ran := func() string {
		select {
		case err := <-runErr:
			runErr <- err
			return "the primary stopped: " + err.Error()
		default:
			return "the primary runs"
		}
	}
	for deadline := time.Now().Add(10 * time.Second); conns.Load() < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("no redial after the hang-up (%d heartbeats, %s)", beats.Load(), ran())
		}
		time.Sleep(time.Millisecond)
	}
	waitCommitted(t, p, p.Committed()+20, 10*time.Second, ran)
	select {
	case <-c.leader.Failed():
		t.Fatalf("the leader took over: %s", c.leader.FailReason())
	default:
	}
}
