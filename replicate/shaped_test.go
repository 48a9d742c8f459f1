package replicate

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shapedLink is a veth pair from this network namespace to a new one,
// whose egress from here is shaped by tc's token bucket filter. Listen
// opens a socket inside the new namespace.
type shapedLink struct {
	ns         string
	host, peer string // addresses: this side, the namespace's side
}

// newShapedLink shapes traffic towards the namespace to rate (a tc rate
// such as "20mbit"). It needs root and iproute2 with tbf: without them the
// test skips, or fails when TANDEM_REQUIRE_KVM is set (the CI machine has
// both, so a skip there would hide a regression).
func newShapedLink(t *testing.T, rate string) *shapedLink {
	t.Helper()
	need := func(why string) {
		t.Helper()
		if os.Getenv("TANDEM_REQUIRE_KVM") != "" {
			t.Fatalf("the shaped-link test needs %s", why)
		}
		t.Skipf("the shaped-link test needs %s", why)
	}
	if os.Geteuid() != 0 {
		need("root for a network namespace")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			need("iproute2 (" + tool + ")")
		}
	}
	run := func(args ...string) error {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	id := rand.IntN(0x10000)
	l := &shapedLink{ns: fmt.Sprintf("tdr%04x", id)}
	subnet := fmt.Sprintf("10.%d.%d", 180+id%40, id/40%250)
	l.host, l.peer = subnet+".1", subnet+".2"
	a, b := l.ns+"a", l.ns+"b"
	if err := run("ip", "netns", "add", l.ns); err != nil {
		need(err.Error())
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", a).Run()
		exec.Command("ip", "netns", "del", l.ns).Run()
	})
	for _, cmd := range [][]string{
		{"ip", "link", "add", a, "type", "veth", "peer", "name", b},
		{"ip", "link", "set", b, "netns", l.ns},
		{"ip", "addr", "add", l.host + "/30", "dev", a},
		{"ip", "link", "set", a, "up"},
		{"ip", "-n", l.ns, "addr", "add", l.peer + "/30", "dev", b},
		{"ip", "-n", l.ns, "link", "set", b, "up"},
		{"ip", "-n", l.ns, "link", "set", "lo", "up"},
	} {
		if err := run(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	// Both directions: links towards the namespace, recovery back.
	if err := run("tc", "qdisc", "add", "dev", a, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"); err != nil {
		need("tc with the tbf qdisc: " + err.Error())
	}
	if err := run("ip", "netns", "exec", l.ns, "tc", "qdisc", "add", "dev", b, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"); err != nil {
		need("tc with the tbf qdisc: " + err.Error())
	}
	return l
}

// listen opens a TCP listener inside the namespace: a thread enters it,
// creates the socket and exits (the socket stays in the namespace).
func (l *shapedLink) listen(t *testing.T) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		f, err := os.Open("/var/run/netns/" + l.ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		ln, err := net.Listen("tcp", net.JoinHostPort(l.peer, "0"))
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.ln
}

// TestSlowShapedLinkIsNotFailed runs a primary whose only link crosses a
// 20 Mbit/s token bucket (2.5 MB/s each way) and carries epochs of 8 MiB:
// the initial copy, then an epoch in which the guest rewrote every page.
// Each takes over three seconds, longer than AckTimeout plus the old fixed
// 10 MB/s allowed: the link must not be declared failed, and the epochs
// must commit. Then the primary dies and the leader recovers the 8 MiB
// back across the shaped link, with a recovery step of 1 s: the fetch
// must not be failed either.
func TestSlowShapedLinkIsNotFailed(t *testing.T) {
	shaped := newShapedLink(t, "20mbit")
	ln := shaped.listen(t)
	replica := NewReplica(ReplicaConfig{Log: quietLog(), Auth: testCreds})
	sctx, scancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); replica.Serve(sctx, ln) }()
	defer func() { scancel(); <-served }()
	leader, leadAddr, _ := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: time.Second, RecoveryStepTimeout: time.Second})

	const pages = 2048 // 8 MiB, every page non-zero
	vm := newFakeVM(t, pages)
	for p := 0; p < pages; p++ {
		vm.mem[p*PageSize+1] = 1
	}
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: []string{ln.Addr().String()}, Leader: leadAddr, VMID: 0x510E, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFT, SGMax: 8, Log: quietLog(),
		AckTimeout: time.Second,
	}, vm, nil)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	running := make(chan struct{})
	start := time.Now()
	go func() { defer close(running); runErr <- p.Run(ctx) }()
	defer func() { cancel(); <-running }() // before the guest's memory goes
	stuck := func() string {
		select {
		case err := <-runErr:
			runErr <- err
			return fmt.Sprintf("the primary stopped: %v", err)
		default:
			return "the primary runs"
		}
	}
	waitCommitted(t, p, 1, 60*time.Second, stuck)
	t.Logf("initial copy of 8 MiB over 20 Mbit/s committed in %v", time.Since(start).Round(time.Millisecond))

	// The guest rewrites every page: one epoch of 8 MiB.
	before := p.Committed()
	big := time.Now()
	for pg := uint64(0); pg < pages; pg++ {
		vm.write(pg, pg+1)
	}
	waitCommitted(t, p, before+2, 60*time.Second, stuck)
	t.Logf("the 8 MiB epoch and the next committed %v after the guest began rewriting", time.Since(big).Round(time.Millisecond))
	if !p.links[0].alive {
		t.Fatal("the shaped link was declared failed")
	}
	// Nor may the leader take the long epochs for a wedged primary.
	select {
	case <-leader.Failed():
		t.Fatalf("the leader declared the primary failed: %s", leader.FailReason())
	default:
	}
	select {
	case err := <-runErr:
		t.Fatalf("the primary stopped: %v", err)
	default:
	}

	// The primary dies; the leader takes over across the shaped link.
	cancel()
	<-running
	select {
	case <-leader.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("the leader did not notice the primary's end")
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer rcancel()
	fetchStart := time.Now()
	rec, err := leader.Recover(rctx, []string{ln.Addr().String()})
	if err != nil {
		t.Fatalf("recovery across the shaped link: %v", err)
	}
	t.Logf("recovered epoch %d (8 MiB) across 20 Mbit/s in %v", rec.Epoch, time.Since(fetchStart).Round(time.Millisecond))
}
