package coord

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tandemvm/tandem/replicate/coord/etcdtest"
)

const testTTL = time.Second

// logBuffer collects a test's log lines and shows them if the test fails.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func testLog(t *testing.T) *slog.Logger {
	t.Helper()
	b := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			b.mu.Lock()
			t.Logf("log:\n%s", b.buf.String())
			b.mu.Unlock()
		}
	})
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newCoord connects a Coordinator with 1 s leases to s; it is closed when
// the test ends.
func newCoord(t *testing.T, s *etcdtest.Server) *etcdCoord {
	t.Helper()
	c, err := NewEtcd(context.Background(), EtcdConfig{
		Endpoints: s.Endpoints(), TTL: testTTL, DialTimeout: 5 * time.Second, Log: testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*etcdCoord)
}

// rawClient is a plain etcd client, for what no Coordinator would do.
func rawClient(t *testing.T, s *etcdtest.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond every 5 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// at converts one of c's clock readings to a time.Time.
func (c *etcdCoord) at(n int64) time.Time { return c.epoch.Add(time.Duration(n)) }

// campaignAsync campaigns in the background: the term won, or the error,
// comes on one of the channels.
func campaignAsync(ctx context.Context, c Coordinator, vm, node string) (<-chan Term, <-chan error) {
	won := make(chan Term, 1)
	errc := make(chan error, 1)
	go func() {
		tm, err := c.Campaign(ctx, vm, node)
		if err != nil {
			errc <- err
			return
		}
		won <- tm
	}()
	return won, errc
}

func mustAcquire(t *testing.T, c Coordinator, vm, node string) Term {
	t.Helper()
	tm, err := c.Acquire(ctxT(t, 5*time.Second), vm, node)
	if err != nil {
		t.Fatalf("Acquire(%s, %s): %v", vm, node, err)
	}
	return tm
}

func TestAcquireHeldCurrent(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := newCoord(t, s), newCoord(t, s)
	ctx := ctxT(t, 10*time.Second)

	if _, _, err := a.Current(ctx, "vm1"); !errors.Is(err, ErrNoPrimary) {
		t.Fatalf("Current of a free VM: %v, want ErrNoPrimary", err)
	}
	ta := mustAcquire(t, a, "vm1", "node-a")
	g := ta.Generation()
	if g == 0 || ta.Node() != "node-a" || !ta.Held() || isClosed(ta.Lost()) {
		t.Fatalf("term: generation %d node %q held %v lost %v", g, ta.Node(), ta.Held(), isClosed(ta.Lost()))
	}
	for _, node := range []string{"node-b", "node-a"} { // another node, and the holder's name again
		_, err := b.Acquire(ctx, "vm1", node)
		if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "node-a") || !strings.Contains(err.Error(), fmt.Sprint(g)) {
			t.Errorf("Acquire by %s of a held VM: %v; want ErrHeld naming node-a and generation %d", node, err, g)
		}
	}
	for _, c := range []*etcdCoord{a, b} {
		node, gen, err := c.Current(ctx, "vm1")
		if err != nil || node != "node-a" || gen != g {
			t.Errorf("Current = %q, %d, %v; want node-a, %d", node, gen, err, g)
		}
	}
	// Another VM is independent, and its generation is later still.
	tb := mustAcquire(t, b, "vm2", "node-b")
	if tb.Generation() <= g {
		t.Errorf("vm2's generation %d not above vm1's %d", tb.Generation(), g)
	}
	// A failed Acquire leaves no lease behind.
	leases, err := rawClient(t, s).Leases(ctx)
	if err != nil || len(leases.Leases) != 2 {
		t.Errorf("leases after two terms and failed attempts: %v, %v; want 2", leases, err)
	}
	if !ta.Held() {
		t.Error("vm1's term no longer held")
	}
}

func TestBadNames(t *testing.T) {
	s := etcdtest.Start(t)
	c := newCoord(t, s)
	ctx := ctxT(t, 5*time.Second)
	for _, tc := range []struct{ vm, node string }{{"", "n"}, {"v", ""}, {"a/b", "n"}, {"v", "x/y"}} {
		if _, err := c.Acquire(ctx, tc.vm, tc.node); !errors.Is(err, ErrBadName) {
			t.Errorf("Acquire(%q, %q): %v, want ErrBadName", tc.vm, tc.node, err)
		}
		if _, err := c.Join(ctx, tc.vm, tc.node, nil); !errors.Is(err, ErrBadName) {
			t.Errorf("Join(%q, %q): %v, want ErrBadName", tc.vm, tc.node, err)
		}
	}
}

func TestResignThenAcquire(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := newCoord(t, s), newCoord(t, s)
	ctx := ctxT(t, 10*time.Second)
	ta := mustAcquire(t, a, "vm", "node-a")
	if err := ta.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	if ta.Held() || !isClosed(ta.Lost()) {
		t.Fatalf("after Resign: held %v, lost %v", ta.Held(), isClosed(ta.Lost()))
	}
	if _, _, err := b.Current(ctx, "vm"); !errors.Is(err, ErrNoPrimary) {
		t.Fatalf("Current after Resign: %v, want ErrNoPrimary", err)
	}
	tb := mustAcquire(t, b, "vm", "node-b")
	if tb.Generation() <= ta.Generation() {
		t.Fatalf("generation after Resign %d, not above %d", tb.Generation(), ta.Generation())
	}
	// A second Resign of the old term changes nothing.
	if err := ta.Resign(ctx); err != nil {
		t.Fatalf("second Resign: %v", err)
	}
	if node, gen, err := a.Current(ctx, "vm"); err != nil || node != "node-b" || gen != tb.Generation() || !tb.Held() {
		t.Fatalf("after the old term's second Resign: %q %d %v, held %v", node, gen, err, tb.Held())
	}
}

func TestCampaignOneWinnerPerTerm(t *testing.T) {
	s := etcdtest.Start(t)
	holder := newCoord(t, s)
	ctx := ctxT(t, 20*time.Second)
	th := mustAcquire(t, holder, "vm", "holder")

	type result struct {
		term Term
		err  error
	}
	results := make(chan result, 2)
	campaigners := map[string]*etcdCoord{"c1": newCoord(t, s), "c2": newCoord(t, s)}
	for node, c := range campaigners {
		go func() {
			tm, err := c.Campaign(ctx, "vm", node)
			results <- result{tm, err}
		}()
	}
	gens := []uint64{th.Generation()}
	if err := th.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		var r result
		select {
		case r = <-results:
		case <-ctx.Done():
			t.Fatalf("campaign %d: no winner", i+1)
		}
		if r.err != nil {
			t.Fatalf("campaign %d: %v", i+1, r.err)
		}
		// The other campaigner has not won meanwhile: one winner per term.
		select {
		case r2 := <-results:
			t.Fatalf("two winners at once: %v (%v) and %v (%v)", r.term.Node(), r.err, r2.term, r2.err)
		default:
		}
		node, gen, err := holder.Current(ctx, "vm")
		if err != nil || node != r.term.Node() || gen != r.term.Generation() || !r.term.Held() {
			t.Fatalf("campaign %d won by %s (generation %d) but Current = %q %d %v", i+1, r.term.Node(), r.term.Generation(), node, gen, err)
		}
		if r.term.Generation() <= gens[len(gens)-1] {
			t.Fatalf("generations %v then %d: not increasing", gens, r.term.Generation())
		}
		gens = append(gens, r.term.Generation())
		delete(campaigners, r.term.Node())
		if err := r.term.Resign(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(campaigners) != 0 {
		t.Fatalf("campaigners that never won: %v", campaigners)
	}
}

func TestCampaignCancel(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := newCoord(t, s), newCoord(t, s)
	ta := mustAcquire(t, a, "vm", "a")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := b.Campaign(ctx, "vm", "b")
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Campaign: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled Campaign did not return")
	}
	// Closing the campaigner's Coordinator ends a Campaign too.
	go func() {
		_, err := b.Campaign(context.Background(), "vm", "b")
		done <- err
	}()
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Campaign of a closed Coordinator: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Campaign did not return after Close")
	}
	if !ta.Held() {
		t.Fatal("the holder's term was disturbed")
	}
}

// TestLeaseExpiry kills the holder without resigning: a campaigner wins
// only once the holder's lease has expired at etcd (≥ TTL after its last
// renewal was sent), and the holder's Held was false before that.
func TestLeaseExpiry(t *testing.T) {
	for _, tc := range []struct {
		name string
		kill func(*etcdCoord)
	}{
		// The process hangs: no more renewals, Held is judged by the clock.
		{"renewals stop", func(c *etcdCoord) { c.frozen.Store(true) }},
		// The process dies: its client goes away, nothing is revoked.
		{"process gone", (*etcdCoord).abandon},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := etcdtest.Start(t)
			h, w := newCoord(t, s), newCoord(t, s)
			ctx := ctxT(t, 15*time.Second)
			old := mustAcquire(t, h, "vm", "old").(*etcdTerm)

			// A renewal first, so that the bound is a renewal's.
			granted := old.lastSend.Load()
			eventually(t, 3*time.Second, "a renewal", func() bool { return old.lastSend.Load() > granted })

			var heldAfterBound atomic.Bool
			stopPoll := make(chan struct{})
			polled := make(chan struct{})
			go func() { // Held, checked against its own bound all along
				defer close(polled)
				for {
					before := h.now()
					if old.Held() && before >= old.deadline.Load() {
						heldAfterBound.Store(true)
					}
					select {
					case <-stopPoll:
						return
					case <-time.After(time.Millisecond):
					}
				}
			}()

			won, errc := campaignAsync(ctx, w, "vm", "new")
			tc.kill(h)
			var nt *etcdTerm
			select {
			case tm := <-won:
				nt = tm.(*etcdTerm)
			case err := <-errc:
				t.Fatal(err)
			}
			close(stopPoll)
			<-polled

			lastRenewal := h.at(old.lastSend.Load())
			heldUntil := h.at(old.deadline.Load())
			started := w.at(nt.lastSend.Load()) // its lease's grant was sent at or after the old key went
			t.Logf("last renewal sent %v before the new term's grant; Held false %v before it",
				started.Sub(lastRenewal), started.Sub(heldUntil))
			if d := started.Sub(lastRenewal); d < testTTL {
				t.Errorf("new term began %v after the old term's last renewal, less than the TTL %v", d, testTTL)
			}
			if !heldUntil.Before(started) {
				t.Errorf("the old term's Held was true until %v after the new term began", heldUntil.Sub(started))
			}
			if heldAfterBound.Load() {
				t.Error("the old term's Held was true after its bound")
			}
			if old.Held() {
				t.Error("the old term is still held")
			}
			if !closedWithin(old.Lost(), testTTL) {
				t.Error("the old term's Lost did not close")
			}
			if nt.Generation() <= old.Generation() || !nt.Held() {
				t.Errorf("new term: generation %d (old %d), held %v", nt.Generation(), old.Generation(), nt.Held())
			}
		})
	}
}

// TestPartition makes etcd unreachable (SIGSTOP): the holder's Held turns
// false within the TTL and Lost closes; after etcd is back a campaign wins
// and the members are registered again.
func TestPartition(t *testing.T) {
	s := etcdtest.Start(t)
	h, w := newCoord(t, s), newCoord(t, s)
	ctx := ctxT(t, 20*time.Second)
	old := mustAcquire(t, h, "vm", "old").(*etcdTerm)
	if _, err := h.Join(ctx, "vm", "old", []byte("10.0.0.1:7000")); err != nil {
		t.Fatal(err)
	}

	s.Pause()
	paused := time.Now()
	resumed := false
	defer func() {
		if !resumed {
			s.Resume()
		}
	}()
	if !closedWithin(old.Lost(), testTTL+time.Second) {
		t.Fatalf("Lost not closed %v after the partition", time.Since(paused))
	}
	lost := time.Now()
	if old.Held() {
		t.Fatal("Lost closed but Held is true")
	}
	if heldUntil := h.at(old.deadline.Load()); heldUntil.After(paused.Add(testTTL)) {
		t.Errorf("Held was true until %v after the partition began, beyond the TTL %v", heldUntil.Sub(paused), testTTL)
	}
	t.Logf("Lost closed %v after the partition began", lost.Sub(paused))

	won, errc := campaignAsync(ctx, w, "vm", "new")
	s.Resume()
	resumed = true
	var nt Term
	select {
	case nt = <-won:
	case err := <-errc:
		t.Fatal(err)
	}
	if nt.Generation() <= old.Generation() || !nt.Held() {
		t.Fatalf("new term: generation %d (old %d), held %v", nt.Generation(), old.Generation(), nt.Held())
	}
	// The old holder revoked its lease once its term was lost (its revoke
	// waited in etcd's socket during the partition), so the role may be
	// free before the TTL ran out; but only after Held turned false.
	if started, heldUntil := w.at(nt.(*etcdTerm).lastSend.Load()), h.at(old.deadline.Load()); !heldUntil.Before(started) {
		t.Errorf("the old term's Held was true until %v after the new term began", heldUntil.Sub(started))
	}
	if old.Held() {
		t.Fatal("the old term is held again")
	}
	// The old holder's Coordinator works again, and its member is back:
	// its lease expired during the partition, so it registered again.
	if _, err := h.Acquire(ctx, "vm", "old"); !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "new") {
		t.Fatalf("Acquire after the partition: %v, want ErrHeld naming new", err)
	}
	eventually(t, 5*time.Second, "the member registered again", func() bool {
		ms, err := w.Members(ctx, "vm")
		return err == nil && len(ms) == 1 && ms[0].Node == "old" && string(ms[0].Info) == "10.0.0.1:7000"
	})
}

func TestKeyTamperedLosesTerm(t *testing.T) {
	del := func(key string) clientv3.Op { return clientv3.OpDelete(key) }
	put := func(key string) clientv3.Op { return clientv3.OpPut(key, "intruder") }
	for _, tc := range []struct {
		name string
		ops  []func(key string) clientv3.Op // one transaction each
	}{
		{"deleted", []func(string) clientv3.Op{del}},
		{"replaced", []func(string) clientv3.Op{del, put}},
		{"overwritten", []func(string) clientv3.Op{put}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := etcdtest.Start(t)
			c := newCoord(t, s)
			tm := mustAcquire(t, c, "vm", "a").(*etcdTerm)
			cli := rawClient(t, s)
			for _, op := range tc.ops {
				if _, err := cli.Txn(ctxT(t, 5*time.Second)).Then(op(tm.key)).Commit(); err != nil {
					t.Fatal(err)
				}
			}
			if !closedWithin(tm.Lost(), testTTL/2) {
				t.Fatal("Lost not closed")
			}
			if tm.Held() {
				t.Fatal("Held after Lost")
			}
			t.Logf("lost: %s", tm.lostReason())
		})
	}
}

func recvMembers(t *testing.T, ch <-chan []Member, want ...string) []Member {
	t.Helper()
	select {
	case ms, ok := <-ch:
		if !ok {
			t.Fatalf("watch closed, want %v", want)
		}
		var got []string
		for _, m := range ms {
			got = append(got, m.Node)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("watch sent %v, want %v", got, want)
		}
		return ms
	case <-time.After(5 * time.Second):
		t.Fatalf("watch sent nothing, want %v", want)
		return nil
	}
}

func TestMembers(t *testing.T) {
	s := etcdtest.Start(t)
	a, b, w := newCoord(t, s), newCoord(t, s), newCoord(t, s)
	ctx := ctxT(t, 20*time.Second)
	wctx, wcancel := context.WithCancel(ctx)
	ch, err := w.WatchMembers(wctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	recvMembers(t, ch) // the current list: empty

	leaveA, err := a.Join(ctx, "vm", "n1", []byte("10.0.0.1:7000"))
	if err != nil {
		t.Fatal(err)
	}
	recvMembers(t, ch, "n1")
	if _, err := b.Join(ctx, "vm", "n2", []byte("10.0.0.2:7000")); err != nil {
		t.Fatal(err)
	}
	ms := recvMembers(t, ch, "n1", "n2")
	if string(ms[0].Info) != "10.0.0.1:7000" || string(ms[1].Info) != "10.0.0.2:7000" {
		t.Fatalf("infos %q %q", ms[0].Info, ms[1].Info)
	}
	if got, err := w.Members(ctx, "vm"); err != nil || !slices.EqualFunc(got, ms, func(x, y Member) bool {
		return x.Node == y.Node && bytes.Equal(x.Info, y.Info)
	}) {
		t.Fatalf("Members = %v, %v; want %v", got, err, ms)
	}
	// A second watch starts with the current list.
	ch2, err := w.WatchMembers(wctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	recvMembers(t, ch2, "n1", "n2")

	leaveA()
	leaveA() // idempotent
	recvMembers(t, ch, "n2")
	recvMembers(t, ch2, "n2")

	// Close revokes the member's lease: the key is gone when Close returns.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := w.Members(ctx, "vm"); err != nil || len(got) != 0 {
		t.Fatalf("Members after the member's Coordinator closed = %v, %v; want none", got, err)
	}
	recvMembers(t, ch)
	recvMembers(t, ch2)
	if _, err := b.Join(ctx, "vm", "n2", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Join on a closed Coordinator: %v, want ErrClosed", err)
	}

	// A Coordinator that dies without Close: the key stays until its lease
	// expires.
	d := newCoord(t, s)
	if _, err := d.Join(ctx, "vm", "n3", nil); err != nil {
		t.Fatal(err)
	}
	recvMembers(t, ch, "n3")
	d.abandon()
	abandoned := time.Now()
	recvMembers(t, ch)
	if e := time.Since(abandoned); e < testTTL/2 {
		t.Errorf("the dead member's key went %v after its process, before its lease could expire", e)
	}

	wcancel()
	for _, c := range []<-chan []Member{ch, ch2} {
		select {
		case _, ok := <-c:
			if ok {
				t.Fatal("watch sent after its context ended")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("watch not closed after its context ended")
		}
	}
}

func TestClose(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := newCoord(t, s), newCoord(t, s)
	ctx := ctxT(t, 10*time.Second)
	ta := mustAcquire(t, a, "vm", "a")
	wch, err := a.WatchMembers(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	recvMembers(t, wch)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if ta.Held() || !isClosed(ta.Lost()) {
		t.Fatal("a term of a closed Coordinator holds")
	}
	// The lease is revoked: the role is free at once.
	if _, _, err := b.Current(ctx, "vm"); !errors.Is(err, ErrNoPrimary) {
		t.Fatalf("Current after the holder's Close: %v, want ErrNoPrimary", err)
	}
	if _, ok := <-wch; ok {
		t.Fatal("a closed Coordinator's watch sent")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	checks := map[string]error{}
	_, checks["Acquire"] = a.Acquire(ctx, "vm", "a")
	_, checks["Campaign"] = a.Campaign(ctx, "vm", "a")
	_, _, checks["Current"] = a.Current(ctx, "vm")
	_, checks["Join"] = a.Join(ctx, "vm", "a", nil)
	_, checks["Members"] = a.Members(ctx, "vm")
	_, checks["WatchMembers"] = a.WatchMembers(ctx, "vm")
	checks["Resign"] = ta.Resign(ctx)
	for op, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", op, err)
		}
	}
}

func TestNewEtcdUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ep := l.Addr().String()
	l.Close() // nothing listens there now
	const dial = 300 * time.Millisecond
	start := time.Now()
	c, err := NewEtcd(context.Background(), EtcdConfig{Endpoints: []string{ep}, DialTimeout: dial, Log: testLog(t)})
	took := time.Since(start)
	if err == nil {
		c.Close()
		t.Fatal("NewEtcd to a closed port succeeded")
	}
	if !strings.Contains(err.Error(), ep) {
		t.Errorf("error %q does not name the endpoint %s", err, ep)
	}
	if took < dial || took > dial+time.Second {
		t.Errorf("NewEtcd failed after %v, want about the DialTimeout %v", took, dial)
	}
	t.Logf("after %v: %v", took, err)
}

func TestEtcdtestURL(t *testing.T) {
	s := etcdtest.Start(t)
	eps, err := ParseURL(s.URL())
	if err != nil || !slices.Equal(eps, s.Endpoints()) {
		t.Fatalf("ParseURL(%q) = %v, %v; want %v", s.URL(), eps, err, s.Endpoints())
	}
	c, err := NewEtcd(context.Background(), EtcdConfig{Endpoints: eps, TTL: 1500 * time.Millisecond, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ec := c.(*etcdCoord); ec.ttl != 2*time.Second || ec.ttlSec != 2 || ec.prefix != "/tandem/" {
		t.Fatalf("TTL 1.5 s gave %v (%d s), prefix %q; want 2 s and /tandem/", ec.ttl, ec.ttlSec, ec.prefix)
	}
}

// TestRecord: a term records while it holds; a deposed term cannot, and
// the record stays what the newest term wrote, with its generation.
func TestRecord(t *testing.T) {
	s := etcdtest.Start(t)
	a, b := newCoord(t, s), newCoord(t, s)
	ctx := ctxT(t, 10*time.Second)
	if _, _, err := b.Recorded(ctx, "vm", "leader"); !errors.Is(err, ErrNoRecord) {
		t.Fatalf("Recorded before any: %v, want ErrNoRecord", err)
	}
	ta := mustAcquire(t, a, "vm", "node-a")
	if err := ta.Record(ctx, "leader", "10.0.0.2:7000"); err != nil {
		t.Fatal(err)
	}
	if v, g, err := b.Recorded(ctx, "vm", "leader"); err != nil || v != "10.0.0.2:7000" || g != ta.Generation() {
		t.Fatalf("Recorded = %q %d %v, want 10.0.0.2:7000 of generation %d", v, g, err, ta.Generation())
	}
	if err := ta.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	tb := mustAcquire(t, b, "vm", "node-b")
	if err := ta.Record(ctx, "leader", "stale"); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Record by a resigned term: %v, want ErrNotHeld", err)
	}
	if err := tb.Record(ctx, "leader", "10.0.0.3:7000"); err != nil {
		t.Fatal(err)
	}
	if v, g, err := a.Recorded(ctx, "vm", "leader"); err != nil || v != "10.0.0.3:7000" || g != tb.Generation() {
		t.Fatalf("Recorded = %q %d %v, want 10.0.0.3:7000 of generation %d", v, g, err, tb.Generation())
	}
}
