package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// storeState is what a replica holds, for before/after comparisons.
func storeState(r *Replica) string {
	rep := r.report()
	r.store.mu.RLock()
	defer r.store.mu.RUnlock()
	return fmt.Sprintf("%+v %v", rep, r.store.epochs)
}

// TestFencingMessageByMessage drives the generation rule message by
// message on one replica: a hello of an older generation is refused with
// MsgFenced (ErrFenced at the dialler), a newer one fences the live
// connections of the older (told and closed) and takes over their link
// index, a fenced connection's messages change nothing, the binding rules
// start again with the new term, and a message whose header carries
// another generation than its connection's is a protocol error.
func TestFencingMessageByMessage(t *testing.T) {
	const vm, pages = 0xFE7C, 16
	hello := Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize}
	r, addr, _ := startReplica(t, ReplicaConfig{})

	// Generation 2 binds the VM; epochs 1 (committed) and 2 (staged).
	g2 := dialAsGen(t, addr, vm, 2, hello)
	g2.epoch(1, 0, []Region{{First: 0, Pages: 2}}, 0x11, true)
	g2.epoch(2, 1, []Region{{First: 2, Pages: 2}}, 0x22, true)

	// An older generation is refused at its hello, on any link index.
	for _, link := range []uint32{0, 1} {
		h := hello
		h.Link, h.Links = link, 2
		_, err := dialHello(context.Background(), testCreds, addr, vm, 1, h)
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("hello of generation 1 after 2: %v, want ErrFenced", err)
		}
	}

	// A message of another generation on generation 2's connection is a
	// protocol error: the connection is dropped and nothing changes.
	before := storeState(r)
	bad := appendHeader(nil, Header{Generation: 3, Type: MsgCommit, VMID: vm, Epoch: 2})
	if _, err := g2.c.c.Write(bad); err != nil {
		t.Fatal(err)
	}
	expectHangUp(t, g2.c.c, "a commit carrying generation 3 on a generation-2 connection")
	if after := storeState(r); after != before {
		t.Fatalf("a message of the wrong generation changed the replica:\nbefore %s\nafter  %s", before, after)
	}

	// Generation 2 again (its connection came back), then generation 3
	// arrives while it is live: 3 is admitted on the same link index, and
	// 2's connection is told it is fenced and closed.
	waitFor(t, "link 0 to be released", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.liveLinks[0] == 0
	})
	g2 = dialAsGen(t, addr, vm, 2, hello)
	g3 := dialAsGen(t, addr, vm, 3, hello)
	g2.c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := g2.c.readHeader()
	if err == nil && h.Type == MsgFenced {
		err = g2.c.readFenced(h)
	}
	if !errors.Is(err, ErrFenced) || !bytes.Contains([]byte(err.Error()), []byte("generation 3")) {
		t.Fatalf("generation 2's connection after 3's hello: %+v, %v; want MsgFenced naming generation 3", h, err)
	}
	expectHangUp(t, g2.c.c, "the fenced connection")

	// Epoch 2 of generation 2 stays staged (a recovery would settle it)
	// until generation 3's first map, which starts a fresh stage: the
	// binding rules begin again (epoch 2 is not "a repeat"), and
	// generation 2's staged epoch is never applied.
	g3.epoch(2, 0, []Region{{First: 8, Pages: 1}}, 0x33, true)
	if err := g3.c.send(MsgCommit, 2, nil); err != nil {
		t.Fatal(err)
	}
	g3.epoch(3, 2, []Region{{First: 9, Pages: 1}}, 0x44, true)
	r.waitApplies()
	r.store.mu.RLock()
	got := append([]uint64(nil), r.store.epochs[:10]...)
	page2 := r.store.pages[2*PageSize]
	page8 := r.store.pages[8*PageSize]
	r.store.mu.RUnlock()
	want := []uint64{1, 1, 0, 0, 0, 0, 0, 0, 2, 0}
	if fmt.Sprint(got) != fmt.Sprint(want) || page2 != 0 || page8 != 0x33 {
		t.Fatalf("page epochs %v (page 2 = %#x, page 8 = %#x), want %v: generation 2's staged epoch must not apply, generation 3's committed one must", got, page2, page8, want)
	}

	// A fenced generation stays fenced on every role.
	for _, role := range []Role{RoleLink, RoleRecovery, RoleRDMA} {
		h := hello
		h.Role = role
		if _, err := dialHello(context.Background(), testCreds, addr, vm, 2, h); !errors.Is(err, ErrFenced) {
			t.Fatalf("%v hello of generation 2 after 3: %v, want ErrFenced", role, err)
		}
	}
	// A hello without a generation is malformed.
	if _, err := dialHello(context.Background(), testCreds, addr, vm, 0, hello); err == nil || errors.Is(err, ErrFenced) {
		t.Fatalf("hello of generation 0: %v, want a refusal", err)
	}
}

// TestFencingTheLeader: the leader's state connection follows the same
// rule. A newer generation's state hello is admitted while the older one
// is live (which is fenced), the older term's states are dropped, and a
// state or commit from the fenced connection changes nothing.
func TestFencingTheLeader(t *testing.T) {
	leader, addr, _ := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: 5 * time.Second})
	stateAs := func(gen uint64) (*conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return dialHello(ctx, testCreds, addr, 0x1EAD, gen, Hello{Role: RoleState, Links: 1, MemBytes: 64 * PageSize, VCPUs: 1, Policy: PolicyFT, Guest: "fake"})
	}
	sendState := func(c *conn, e uint64) error {
		st := &StateRecord{Epoch: e, Within: 10 * time.Second, Interval: 5 * time.Millisecond, Links: []uint32{0}, Blob: []byte("s")}
		if err := c.send(MsgState, e, st.marshal()); err != nil {
			return err
		}
		c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		h, err := c.readHeader()
		if err == nil && h.Type != MsgAck {
			err = fmt.Errorf("answer %v", h.Type)
		}
		return err
	}
	states := func() int {
		leader.mu.Lock()
		defer leader.mu.Unlock()
		return len(leader.states)
	}
	a, err := stateAs(4)
	if err != nil {
		t.Fatal(err)
	}
	if err := sendState(a, 2); err != nil || states() != 1 {
		t.Fatalf("generation 4's state: %v (%d states held)", err, states())
	}
	if _, err := stateAs(3); !errors.Is(err, ErrFenced) {
		t.Fatalf("state hello of generation 3 after 4: %v, want ErrFenced", err)
	}
	b, err := stateAs(5)
	if err != nil {
		t.Fatalf("state hello of generation 5 while 4's is live: %v", err)
	}
	if states() != 0 {
		t.Fatalf("the leader kept %d states of the fenced term", states())
	}
	// The fenced connection may still have a state in flight: refused.
	a.send(MsgState, 3, (&StateRecord{Epoch: 3, Within: time.Second, Interval: time.Millisecond, Links: []uint32{0}, Blob: []byte("x")}).marshal())
	expectHangUp(t, a.c, "generation 4's state connection")
	if err := sendState(b, 3); err != nil || states() != 1 {
		t.Fatalf("generation 5's state: %v (%d states held)", err, states())
	}
	// A takeover's recovery as generation 6 fences generation 5 here
	// (StartRecoveryAs): the new primary's state connection, of that same
	// generation, then takes the slot the fenced one held.
	leader.mu.Lock()
	leader.fence(6)
	leader.mu.Unlock()
	expectHangUp(t, b.c, "generation 5's state connection, fenced by a recovery")
	c6, err := stateAs(6)
	if err != nil {
		t.Fatalf("state hello of generation 6 after its recovery fenced 5: %v", err)
	}
	if err := sendState(c6, 4); err != nil {
		t.Fatalf("generation 6's state: %v", err)
	}
	select {
	case <-leader.Failed():
		t.Fatalf("fencing declared the primary failed: %s", leader.FailReason())
	default:
	}
}

// TestFencedPrimaryStops: a running primary whose replica learns of a
// newer generation (a takeover's recovery hello) stops with ErrFenced
// instead of carrying on degraded, and commits nothing more.
func TestFencedPrimaryStops(t *testing.T) {
	c := newCluster(t, 2)
	vm := newFakeVM(t, 64)
	gate := NewOutputGate(&bytes.Buffer{}, 1<<20)
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0xFE1, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFT, SGMax: 8, Log: quietLog(),
	}, vm, gate)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 1)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 5, 10*time.Second, nil)

	// A newer term reaches one replica (as a takeover's recovery does).
	rc, err := dialHello(context.Background(), testCreds, c.addrs[1], 0xFE1, 2, Hello{Role: RoleRecovery, MemBytes: 64 * PageSize, Policy: PolicyFT})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.c.Close()
	select {
	case err := <-runErr:
		if !errors.Is(err, ErrFenced) {
			t.Fatalf("Run = %v, want ErrFenced", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the fenced primary goes on")
	}
	vm.Resume() // Run left it paused, its output held
	// Its generation stays fenced there: it cannot come back.
	if _, err := dialHello(context.Background(), testCreds, c.addrs[1], 0xFE1, 1, Hello{Role: RoleLink, Link: 1, Links: 2, MemBytes: 64 * PageSize, Policy: PolicyFT}); !errors.Is(err, ErrFenced) {
		t.Fatalf("the fenced primary's link hello: %v, want ErrFenced", err)
	}
}

// fakeTerm is a coordinator term whose lease the test ends.
type fakeTerm struct {
	gen  uint64
	lost atomic.Bool
}

func (f *fakeTerm) Generation() uint64 { return f.gen }
func (f *fakeTerm) Held() bool         { return !f.lost.Load() }

// TestTermLostStopsThePrimary: a primary whose coordinator term may have
// ended commits nothing more and releases no output: it stops with
// ErrTermLost (a kind of ErrFenced), under the term's generation.
func TestTermLostStopsThePrimary(t *testing.T) {
	c := newCluster(t, 1)
	vm := newFakeVM(t, 64)
	out := &lockedWriter{}
	gate := NewOutputGate(out, 1<<20)
	term := &fakeTerm{gen: 41}
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0x7E2A, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFT, SGMax: 8, Term: term,
	}, vm, gate)
	if g := p.Status().Generation; g != 41 {
		t.Fatalf("generation %d, want the term's 41", g)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 4)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 5, 10*time.Second, nil)
	term.lost.Store(true)
	gate.Write([]byte("after the term;"))
	select {
	case err := <-runErr:
		if !errors.Is(err, ErrTermLost) || !errors.Is(err, ErrFenced) {
			t.Fatalf("Run = %v, want ErrTermLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the primary goes on without its term")
	}
	vm.Resume()
	if strings.Contains(out.String(), "after the term;") {
		t.Fatal("output released after the term was lost")
	}
}
