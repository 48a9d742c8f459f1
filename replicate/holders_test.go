package replicate

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// holderRecords is a coordinator's record of the state holders, as a
// test sees it: every set recorded, with the epoch committed when it was,
// and a switch that makes recording fail.
type holderRecords struct {
	mu   sync.Mutex
	sets [][]string
	at   []uint64 // p.Committed() when each set was recorded
	fail bool
	p    *Primary
}

func (h *holderRecords) record(set []string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.fail {
		return errors.New("the coordinator is unreachable")
	}
	h.sets = append(h.sets, slices.Clone(set))
	h.at = append(h.at, h.p.Committed())
	return nil
}

func (h *holderRecords) last() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sets) == 0 {
		return nil
	}
	return h.sets[len(h.sets)-1]
}

func (h *holderRecords) setFail(fail bool) {
	h.mu.Lock()
	h.fail = fail
	h.mu.Unlock()
}

// TestStateHoldersSurviveTheLeader: with a coordinator term the primary
// sends every state to a second holder too. The leader dies: the epochs go
// on committing, and the output flowing, once the coordinator has the
// smaller set (recorded before the next commit); it comes back empty and
// is counted again. A set that cannot be recorded commits nothing. Then
// the primary dies together with the leader: the other holder recovers an
// epoch no older than the last committed, with memory exactly the guest's.
func TestStateHoldersSurviveTheLeader(t *testing.T) {
	coordinated := ReplicaConfig{Leader: true, Coordinated: true, HeartbeatTimeout: 100 * time.Millisecond, ReconnectWait: 10 * time.Millisecond}
	c := newClusterWith(t, 2, coordinated)
	h2, h2Addr, _ := startReplica(t, coordinated)
	vm := newFakeVM(t, 128)
	out := &lockedWriter{}
	gate := NewOutputGate(out, 1<<20)
	rec := &holderRecords{}
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0x401D, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Heartbeat: 20 * time.Millisecond, AckTimeout: 300 * time.Millisecond,
		Policy: PolicyFT, SGMax: 8, Term: &fakeTerm{gen: 7}, Holders: []string{h2Addr}, RecordHolders: rec.record,
	}, vm, gate)
	rec.p = p
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 5)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	both := []string{c.leadAddr, h2Addr}
	waitCommitted(t, p, 5, 10*time.Second, nil)
	if got := rec.last(); !slices.Equal(got, both) {
		t.Fatalf("recorded holders %v, want %v", got, both)
	}
	if st := p.Status(); !st.Protected || st.Degraded || len(st.Holders) != 2 {
		t.Fatalf("status with both holders: %v (%+v)", st, st.Holders)
	}

	// The leader dies: the epochs commit with the other holder alone, and
	// never before the coordinator knows.
	c.stopLeader()
	waitFor(t, "the smaller set of holders to be recorded", func() bool { return slices.Equal(rec.last(), []string{h2Addr}) })
	rec.mu.Lock()
	recordedAt := rec.at[len(rec.at)-1]
	rec.mu.Unlock()
	gate.Write([]byte("without the leader;"))
	waitFor(t, "output while the leader is gone", func() bool { return strings.Contains(out.String(), "without the leader;") })
	if p.Committed() <= recordedAt {
		t.Fatalf("output released without a commit after the record at epoch %d", recordedAt)
	}
	if st := p.Status(); !st.Protected || !st.Degraded || st.Leader != h2Addr {
		t.Fatalf("status without the leader: %v", st)
	}

	// It comes back empty on its address, and counts again.
	leader2, _, stop2 := startReplicaAt(t, coordinated, c.leadAddr)
	c.leader, c.stopLeader = leader2, stop2
	waitFor(t, "the leader to be recorded again", func() bool { return slices.Equal(rec.last(), both) })
	waitFor(t, "the status to show both holders", func() bool { st := p.Status(); return st.Protected && !st.Degraded })

	// The coordinator cannot be reached while the set changes: nothing
	// commits until it can.
	rec.setFail(true)
	c.stopLeader()
	waitFor(t, "the primary to notice the leader's loss", func() bool { return p.Status().Holders[0].Connected == false })
	held := p.Committed()
	gate.Write([]byte("unrecorded;"))
	vm.waitWrites(t, 2000, "the guest to run on")
	if p.Committed() != held || strings.Contains(out.String(), "unrecorded;") {
		t.Fatalf("committed %d (was %d) with a set of holders the coordinator does not have", p.Committed(), held)
	}
	rec.setFail(false)
	waitCommitted(t, p, held+5, 10*time.Second, nil)
	if got := rec.last(); !slices.Equal(got, []string{h2Addr}) {
		t.Fatalf("recorded holders %v, want %v", got, []string{h2Addr})
	}

	// The primary dies too (the leader is still down): the other holder
	// has every committed state.
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("the primary: %v", err)
	}
	vm.Resume()
	committed := p.Committed()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	got, err := h2.Recover(rctx, c.addrs)
	if err != nil {
		t.Fatal(err)
	}
	checkRecovered(t, vm, got, committed)
	select {
	case <-h2.Failed():
		t.Fatal("a coordinated holder declared the primary failed by itself")
	default:
	}
}

// TestGoodbyeRecordsTheEnd: a primary with holders that ends its VM on
// purpose records an empty set first (no node may take over, whichever
// goodbyes arrive), then says goodbye to every holder.
func TestGoodbyeRecordsTheEnd(t *testing.T) {
	coordinated := ReplicaConfig{Leader: true, Coordinated: true, HeartbeatTimeout: time.Second}
	c := newClusterWith(t, 1, coordinated)
	h2, h2Addr, _ := startReplica(t, coordinated)
	vm := newFakeVM(t, 64)
	rec := &holderRecords{}
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0x6B1E, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFast, SGMax: 8, Term: &fakeTerm{gen: 3}, Holders: []string{h2Addr}, RecordHolders: rec.record,
	}, vm, nil)
	rec.p = p
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 3)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 3, 10*time.Second, nil)
	p.Finish()
	if err := <-runErr; err != nil {
		t.Fatalf("Run after Finish: %v", err)
	}
	if got := rec.last(); len(got) != 0 {
		t.Fatalf("the last record before the goodbye is %v, want the empty set", got)
	}
	for _, r := range []*Replica{c.leader, h2} {
		select {
		case <-r.Failed():
			if !r.Ended() {
				t.Fatalf("a holder took the goodbye for a failure: %s", r.FailReason())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a holder got no goodbye")
		}
	}
}

// TestHoldersNeedATerm: without a coordinator, a second holder could take
// over beside the leader; NewPrimary refuses it.
func TestHoldersNeedATerm(t *testing.T) {
	_, err := NewPrimary(PrimaryConfig{Links: []string{"127.0.0.1:1"}, Leader: "127.0.0.1:2", Holders: []string{"127.0.0.1:3"},
		VMID: 1, Epoch: time.Millisecond, Auth: testCreds}, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "coordinator") {
		t.Fatalf("NewPrimary with holders and no term: %v", err)
	}
}
