package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
)

// netLab is a set of network namespaces joined by veth links to a bridge
// in a switch namespace: one host per role, 10.77.0.0/24.
type netLab struct {
	t      *testing.T
	prefix string
	hosts  map[string]string // role → namespace
	addrs  map[string]string // role → IPv4 address
}

func (l *netLab) ip(args ...string) {
	l.t.Helper()
	runIP(l.t, args...)
}

// runIP runs iproute2's ip and fails the test if it fails.
func runIP(t *testing.T, args ...string) {
	t.Helper()
	if err := ipCommand(args...); err != nil {
		t.Fatal(err)
	}
}

func newNetLab(t *testing.T, roles ...string) *netLab {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("TANDEM_REQUIRE_KVM") != "" {
			t.Fatal("the failover test needs root for network namespaces")
		}
		t.Skip("the failover test needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the failover test needs iproute2 (ip)")
	}
	l := &netLab{t: t, prefix: fmt.Sprintf("tdm%04x", rand.IntN(0x10000)), hosts: map[string]string{}, addrs: map[string]string{}}
	sw := l.prefix + "-sw"
	l.ip("netns", "add", sw)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", sw).Run() })
	l.ip("-n", sw, "link", "add", "br0", "type", "bridge")
	l.ip("-n", sw, "link", "set", "br0", "up")
	for i, role := range roles {
		ns := l.prefix + "-" + role
		l.ip("netns", "add", ns)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		host, port := fmt.Sprintf("%s-h%d", l.prefix, i), fmt.Sprintf("%s-s%d", l.prefix, i)
		l.ip("link", "add", host, "type", "veth", "peer", "name", port)
		l.ip("link", "set", host, "netns", ns)
		l.ip("link", "set", port, "netns", sw)
		l.ip("-n", sw, "link", "set", port, "master", "br0")
		l.ip("-n", sw, "link", "set", port, "up")
		addr := fmt.Sprintf("10.77.0.%d", i+1)
		l.ip("-n", ns, "link", "set", host, "name", "eth0")
		l.ip("-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
		l.ip("-n", ns, "link", "set", "eth0", "up")
		l.ip("-n", ns, "link", "set", "lo", "up")
		l.hosts[role], l.addrs[role] = ns, addr
	}
	return l
}

// start runs tandem inside a role's namespace.
func (l *netLab) start(role string, env []string, args ...string) *process {
	l.t.Helper()
	p := &process{
		cmd:    exec.Command("ip", append([]string{"netns", "exec", l.hosts[role], tandemBin}, args...)...),
		stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan error, 1),
	}
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	return p
}

func (p *process) kill() {
	p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err
}

// powerCut SIGKILLs every process at once, as a power cut across their
// hosts would stop them, and waits for them to end.
func powerCut(procs ...*process) {
	for _, p := range procs {
		p.cmd.Process.Kill()
	}
	for _, p := range procs {
		p.kill()
	}
}

// counterClient pipelines INCs to the counter guest and counts replies:
// maxGap is the longest time (ns) between two replies, twice the replies
// that answered an INC already answered.
type counterClient struct {
	sent, acked   atomic.Int64
	maxGap, twice atomic.Int64
	done          chan struct{}
}

func runCounterClient(conn net.Conn, window int) *counterClient {
	c := &counterClient{done: make(chan struct{})}
	slots := make(chan struct{}, window)
	go func() {
		defer close(c.done)
		r := bufio.NewReader(conn)
		seen := map[string]bool{}
		last := time.Now()
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if rest, ok := strings.CutPrefix(line, "OK "); ok {
				id, _, _ := strings.Cut(rest, " ")
				if seen[id] {
					c.twice.Add(1)
				}
				seen[id] = true
				now := time.Now()
				if gap := int64(now.Sub(last)); gap > c.maxGap.Load() {
					c.maxGap.Store(gap)
				}
				last = now
				c.acked.Add(1)
				<-slots
			}
		}
	}()
	go func() {
		for i := 1; ; i++ {
			select {
			case slots <- struct{}{}:
			case <-c.done:
				return
			}
			c.sent.Add(1)
			if _, err := fmt.Fprintf(conn, "INC r%d\n", i); err != nil {
				c.sent.Add(-1) // never left this host
				return
			}
		}
	}()
	return c
}

// TestFailoverLosesNoAcknowledgedIncrement runs primary, two replicas and a
// leader as separate processes in their own network namespaces, drives the
// counter guest, kills the primary with SIGKILL at random moments (some in
// the middle of an epoch's transfer), and checks after every failover that
// the leader's counter holds every acknowledged increment and nothing that
// was never sent.
func TestFailoverLosesNoAcknowledgedIncrement(t *testing.T) {
	kvmtest.Open(t)
	lab := newNetLab(t, "primary", "r1", "r2", "leader")
	rounds := 32
	if s := os.Getenv("TANDEM_FAILOVER_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	type config struct {
		policy, mode, dirty string
		active              bool
	}
	var configs []config
	for _, policy := range []string{"fast", "ft"} {
		for _, mode := range []string{"sync", "async"} {
			for _, dirty := range []string{"bitmap", "ring"} {
				configs = append(configs, config{policy: policy, mode: mode, dirty: dirty})
			}
		}
	}
	// The leader, also a link, runs a shadow of the guest (active backup).
	configs = append(configs, config{policy: "ft", mode: "sync", dirty: "bitmap", active: true})
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for round := 0; round < rounds; round++ {
		cfg := configs[round%len(configs)]
		// Every other pass over the configurations kills mid-transfer.
		midTransfer := (round/len(configs))%2 == 1
		name := fmt.Sprintf("round%02d/%s/%s/%s", round, cfg.policy, cfg.mode, cfg.dirty)
		if cfg.active {
			name += "/active-backup"
		}
		if midTransfer {
			name += "/mid-transfer"
		}
		ok := t.Run(name, func(t *testing.T) {
			failoverRound(t, lab, rng, failoverCase{policy: cfg.policy, mode: cfg.mode, dirty: cfg.dirty, midTransfer: midTransfer, active: cfg.active})
		})
		if !ok {
			break
		}
	}
}

// failoverCase is one round's configuration.
type failoverCase struct {
	policy, mode, dirty string
	midTransfer         bool
	// rdma runs the replica links over RDMA (failover_rdma_test.go): the
	// replicas also listen with --rdma-listen and the links are rdma://.
	rdma bool
	// active makes the leader a link too, running a shadow of the guest
	// (--shadow), and the primary use it (--active-backup on).
	active bool
}

func failoverRound(t *testing.T, lab *netLab, rng *rand.Rand, fc failoverCase) {
	dir := t.TempDir()
	const port, rport = ":7070", ":7471"
	var procs []*process
	defer func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for i, p := range procs {
				t.Logf("process %d (%v) stderr:\n%s", i, p.cmd.Args[3:], p.stderr.String())
			}
		}
	}()
	r1, r2 := lab.addrs["r1"]+port, lab.addrs["r2"]+port
	key := testKeyFile(t)
	replicaArgs := func(role string) []string {
		args := []string{"replica", "--listen", lab.addrs[role] + port, "--auth-key", key}
		if fc.rdma {
			args = append(args, "--rdma-listen", lab.addrs[role]+rport)
		}
		return args
	}
	recoverFrom := r1 + "," + r2
	if fc.active {
		recoverFrom += "," + lab.addrs["leader"] + port
	}
	leaderArgs := []string{"replica", "--listen", lab.addrs["leader"] + port, "--leader", "--auth-key", key,
		"--replicas", recoverFrom, "--heartbeat-timeout", "2s", "--serial", "unix:" + dir + "/leader.sock"}
	if fc.active {
		leaderArgs = append(leaderArgs, "--shadow")
	}
	procs = append(procs,
		lab.start("r1", nil, replicaArgs("r1")...),
		lab.start("r2", nil, replicaArgs("r2")...),
		lab.start("leader", nil, leaderArgs...))
	for _, p := range procs {
		waitStderr(t, p, "replica listening")
	}
	var env []string
	if fc.midTransfer {
		// Die while epoch K's pages are on the wire, after B bytes.
		// With active backup, late enough for the shadow to have run.
		first := 5
		if fc.active {
			first = 12
		}
		env = append(env, fmt.Sprintf("%s=%d:%d", faultEnv, first+rng.IntN(20), 1+rng.IntN(3*4096)))
	}
	// Links: r1 twice (two links to one host) and r2 once.
	l1, l2 := r1, r2
	if fc.rdma {
		l1, l2 = "rdma://"+lab.addrs["r1"]+rport+"?auth="+r1, "rdma://"+lab.addrs["r2"]+rport+"?auth="+r2
	}
	links := l1 + "," + l2 + "," + l1
	if fc.active {
		links = l1 + "," + l2 + "," + lab.addrs["leader"] + port
	}
	args := []string{"run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key,
		"--replicas", links, "--leader", lab.addrs["leader"] + port,
		"--policy", fc.policy, "--mode", fc.mode, "--epoch", "10ms", "--serial", "unix:" + dir + "/primary.sock"}
	if fc.active {
		args = append(args, "--active-backup", "on", "--trace", dir+"/trace.jsonl")
	}
	if fc.dirty != "" {
		args = append(args, "--dirty", fc.dirty)
	}
	primary := lab.start("primary", env, args...)
	procs = append(procs, primary)
	conn := dialWhenReady(t, primary, dir+"/primary.sock")
	client := runCounterClient(conn, 4)
	if !fc.midTransfer {
		// Let some increments through, then kill at a random moment.
		deadline := time.Now().Add(30 * time.Second)
		want := int64(3)
		if fc.active {
			// Some epochs compared with the shadow first.
			waitStderr(t, procs[2], "running a shadow of the VM")
			want = client.acked.Load() + 8
		}
		for client.acked.Load() < want {
			if time.Now().After(deadline) {
				t.Fatalf("no increments acknowledged in 30s; primary stderr:\n%s", primary.stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		primary.cmd.Process.Kill()
	}
	select {
	case <-primary.done:
		primary.done <- nil
	case <-time.After(60 * time.Second):
		t.Fatal("the primary did not die")
	}
	conn.Close()
	<-client.done
	if fc.rdma && !strings.Contains(primary.stderr.String(), "rdma link up") {
		t.Errorf("the primary did not report its RDMA links; stderr:\n%s", primary.stderr.String())
	}
	sent, acked := client.sent.Load(), client.acked.Load()

	lconn := dialWhenReady(t, procs[2], dir+"/leader.sock")
	defer lconn.Close()
	checkCount(t, askCount(t, lconn), sent, acked)
	if !strings.Contains(procs[2].stdout.String(), "leader: recovered epoch") {
		t.Errorf("the leader did not report its recovery; stdout %q", procs[2].stdout.String())
	}
	if fc.active {
		checkActiveBackup(t, dir+"/trace.jsonl", procs[2])
	}
}

// checkActiveBackup checks that the leader ran a shadow and that the
// primary's epochs had their hashes compared with it.
func checkActiveBackup(t *testing.T, trace string, leader *process) {
	t.Helper()
	if !strings.Contains(leader.stderr.String(), "running a shadow of the VM") {
		t.Errorf("the leader ran no shadow; stderr:\n%s", leader.stderr.String())
	}
	f, err := os.Open(trace)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	epochs, err := replicate.ReadTrace(f)
	if err != nil {
		t.Fatal(err)
	}
	var compared, pages, kept uint64
	for _, e := range epochs {
		if e.Active != nil {
			compared += uint64(e.Active.Compared)
			pages += e.Active.Pages
			kept += e.Active.Kept
		}
	}
	t.Logf("active backup: %d epochs compared, %d of %d pages kept", compared, kept, pages)
	if compared == 0 {
		t.Errorf("no epoch of %d had its hashes compared with the shadow", len(epochs))
	}
}

// waitStderr polls until a process has logged want.
func waitStderr(t *testing.T, p *process, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(p.stderr.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%v did not log %q in 30s; stderr:\n%s", p.cmd.Args[3:], want, p.stderr.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
}
