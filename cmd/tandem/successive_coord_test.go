package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/coord/etcdtest"
)

// TestSuccessiveFailuresCoordinated is TestSuccessiveFailures with a real
// etcd as coordinator, in a namespace of its own on the lab's network, and
// four backup nodes that are all links and all hold the VM state. Five
// faults per round, in random order, each at a random moment: the primary
// is killed twice (the node etcd grants the next term takes over and
// protects the VM with the nodes left), a replica is killed and started
// again empty, stalled (SIGSTOP) or has its link taken down, the leader
// is killed and started again empty, and a node (the primary or a backup)
// is cut off from etcd alone, for 0.5-2.5 s (a blackhole route to etcd in
// its namespace): a primary cut off for longer than its lease stops its
// VM, and another node takes over; the node that was the primary starts
// again empty and joins (tandem add-replica). After every step exactly one node has
// the VM's console and answers, no increment is answered twice, and the
// primary holds every acknowledged increment; every takeover is a term of
// its own generation. TANDEM_SUCCESSIVE_ROUNDS=N runs N rounds per policy
// (the campaign: 100 rounds are 1,000 faults).
func TestSuccessiveFailuresCoordinated(t *testing.T) {
	kvmtest.Open(t)
	rounds := 1
	if s := os.Getenv("TANDEM_SUCCESSIVE_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	lab := newNetLab(t, "primary", "n1", "n2", "n3", "n4", "etcd")
	etcd := etcdtest.StartWith(t, etcdtest.Options{
		Host: lab.addrs["etcd"],
		Command: func(bin string, args ...string) *exec.Cmd {
			return exec.Command("ip", append([]string{"netns", "exec", lab.hosts["etcd"], bin}, args...)...)
		},
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dialInNetns(lab.hosts["primary"], addr, 2*time.Second)
		},
	})
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 17))
	var total campaignStats
	defer func() {
		t.Logf("coordinated campaign: %d rounds, %d faults (%v), %d acknowledged increments, 0 lost (checked after every step), %d answered twice, longest unavailability %v (fault to the next answer)",
			total.rounds, total.faults, total.kinds, total.acked, total.twice, total.longest.Round(time.Millisecond))
	}()
	for round := range rounds {
		for _, policy := range []string{"fast", "ft"} {
			ok := t.Run(fmt.Sprintf("round%02d/%s", round, policy), func(t *testing.T) {
				total.add(coordinatedRound(t, lab, etcd.URL(), rng, policy))
			})
			if !ok {
				return
			}
		}
	}
}

func coordinatedRound(t *testing.T, lab *netLab, etcdURL string, rng *rand.Rand, policy string) (stats campaignStats) {
	stats.kinds = map[string]int{}
	dir := t.TempDir()
	key := testKeyFile(t)
	co := []string{"--coordinator", etcdURL, "--coordinator-ttl", "1s"}
	var all []*process
	defer func() {
		for _, p := range all {
			p.kill()
		}
		if t.Failed() {
			for _, p := range all {
				t.Logf("%v stderr:\n%s", p.cmd.Args[3:], p.stderr.String())
			}
		}
	}()
	start := func(n *haNode) {
		n.starts++
		n.serial = fmt.Sprintf("%s/%s-%d.sock", dir, n.role, n.starts)
		n.control = fmt.Sprintf("%s/%s-%d.ctl", dir, n.role, n.starts)
		n.proc = lab.start(n.role, nil, append([]string{"replica", "--listen", n.addr, "--auth-key", key,
			"--heartbeat-timeout", "1s", "--serial", "unix:" + n.serial, "--control", "unix:" + n.control}, co...)...)
		all = append(all, n.proc)
		waitStderr(t, n.proc, "replica listening")
	}
	var nodes []*haNode
	byAddr := map[string]*haNode{}
	for _, role := range []string{"n1", "n2", "n3", "n4"} {
		n := &haNode{role: role, addr: lab.addrs[role] + ":7070"}
		nodes, byAddr[n.addr] = append(nodes, n), n
		start(n)
	}
	var links []string
	for _, n := range nodes {
		links = append(links, n.addr)
	}
	leader := nodes[3].addr
	primary := lab.start("primary", nil, append([]string{"run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key,
		"--replicas", strings.Join(links, ","), "--leader", leader, "--policy", policy, "--epoch", "10ms",
		"--heartbeat", "50ms", "--serial", "unix:" + dir + "/primary.sock"}, co...)...)
	all = append(all, primary)
	// The primary now: its process, its role (namespace) and its node
	// (nil for the first, which is not a backup node).
	curProc, curRole := primary, "primary"
	var curNode *haNode
	took := map[*process]bool{} // processes that took the VM over

	var sent, acked int64
	conn := dialWhenReady(t, primary, dir+"/primary.sock")
	client := runCounterClient(conn, 4)
	endClient := func() {
		conn.Close()
		<-client.done
		sent, acked = sent+client.sent.Load(), acked+client.acked.Load()
		stats.twice += client.twice.Load()
		if client.twice.Load() > 0 {
			t.Errorf("%d increments were answered twice", client.twice.Load())
		}
	}
	waitAcks := func(n int64, what string) {
		t.Helper()
		base := client.acked.Load()
		pollFor(t, what+": increments acknowledged", time.Minute, func() bool { return client.acked.Load() >= base+n })
	}
	// takenOver is the backup node whose process newly took the VM over,
	// if one did.
	takenOver := func() *haNode {
		for _, n := range nodes {
			if !took[n.proc] && strings.Contains(n.proc.stdout.String(), "leader: recovered epoch") {
				return n
			}
		}
		return nil
	}
	// switchTo makes n the primary: the client's count so far must be in
	// its VM, and a new client runs on its console. A node that was the
	// primary starts again, empty, and is added to the new primary's
	// links (tandem add-replica), so the cluster keeps its four nodes.
	switchTo := func(n *haNode, i int) {
		t.Helper()
		endClient()
		took[n.proc] = true
		newLinks, newLeader := replicate.Cluster{Links: links}.Successor(n.addr)
		t.Logf("step %d: %s took over, replicating to %v led by %s", i, n.role, newLinks, newLeader)
		conn = dialWhenReady(t, n.proc, n.serial)
		checkCount(t, askCount(t, conn), sent, acked)
		conn.Close()
		prev := curNode
		curProc, curRole, curNode, links, leader = n.proc, n.role, n, newLinks, newLeader
		conn = dialWhenReady(t, n.proc, n.serial)
		client = runCounterClient(conn, 4)
		if prev != nil {
			start(prev)
			if out, stderr, status := runTandem(t, "add-replica", "--control", "unix:"+n.control, "--replica", prev.addr); status != 0 {
				t.Fatalf("add-replica %s: status %d, %s%s", prev.addr, status, out, stderr)
			}
			links = append(links, prev.addr)
			t.Logf("step %d: %s started again empty and added to the links", i, prev.role)
		}
	}
	awaitTakeover := func(i int, why string) {
		t.Helper()
		var n *haNode
		pollFor(t, fmt.Sprintf("step %d: a node to take over (%s)", i, why), time.Minute, func() bool { n = takenOver(); return n != nil })
		switchTo(n, i)
	}
	etcdIP := lab.addrs["etcd"] + "/32"

	waitAcks(3, "start")
	steps := []string{"primary", "primary", "replica", "leader", "coordinator"}
	rng.Shuffle(len(steps), func(i, j int) { steps[i], steps[j] = steps[j], steps[i] })
	takeovers := 0
	for i, step := range steps {
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random moment
		fault := time.Now()
		kind := step
		d := 500*time.Millisecond + time.Duration(rng.IntN(2000))*time.Millisecond
		switch step {
		case "primary":
			curProc.kill()
			t.Logf("step %d: killed the primary (%s)", i, curRole)
			awaitTakeover(i, "the primary was killed")
			takeovers++
		case "coordinator":
			role, isPrimary := curRole, true
			if rng.IntN(2) == 0 && len(links) > 0 {
				role, isPrimary = byAddr[links[rng.IntN(len(links))]].role, false
			}
			kind = "coordinator/backup"
			if isPrimary {
				kind = "coordinator/primary"
			}
			t.Logf("step %d: cut %s off from etcd for %v", i, role, d)
			lab.ip("-n", lab.hosts[role], "route", "add", "blackhole", etcdIP)
			time.Sleep(d) // the length of the fault
			lab.ip("-n", lab.hosts[role], "route", "del", "blackhole", etcdIP)
			if !isPrimary {
				break
			}
			// Either the primary's lease held, and it answers on, or it
			// stopped its VM (and exited), and a node takes over.
			base := client.acked.Load()
			pollFor(t, fmt.Sprintf("step %d: the primary to answer on or to stop", i), time.Minute, func() bool {
				return curProc.exited() || takenOver() != nil || client.acked.Load() >= base+4
			})
			if curProc.exited() || takenOver() != nil {
				if curProc.wait(t, 10*time.Second) == 0 {
					t.Errorf("step %d: the primary cut off from etcd exited 0", i)
				}
				awaitTakeover(i, "the primary lost its term")
				takeovers++
				kind += "/takeover"
			}
		case "replica", "leader":
			var victim *haNode
			if step == "leader" {
				victim = byAddr[leader]
			} else {
				for _, l := range links {
					if l != leader {
						victim = byAddr[l]
						break
					}
				}
				if victim == nil {
					victim = byAddr[links[0]]
				}
			}
			how := "kill"
			if step == "replica" {
				how = []string{"kill", "stall", "link-down"}[rng.IntN(3)]
			}
			kind = step + "/" + how
			switch how {
			case "kill":
				t.Logf("step %d: killed %s (%s), started again empty", i, step, victim.role)
				victim.proc.kill()
				start(victim)
			case "stall":
				t.Logf("step %d: stalled %s (%s) for %v", i, step, victim.role, d)
				victim.proc.cmd.Process.Signal(syscall.SIGSTOP)
				time.Sleep(d) // the length of the fault
				victim.proc.cmd.Process.Signal(syscall.SIGCONT)
			case "link-down":
				t.Logf("step %d: took %s (%s)'s link down for %v", i, step, victim.role, d)
				lab.ip("-n", lab.hosts[victim.role], "link", "set", "eth0", "down")
				time.Sleep(d) // the length of the fault
				lab.ip("-n", lab.hosts[victim.role], "link", "set", "eth0", "up")
			}
		}
		stats.faults++
		stats.kinds[kind]++
		waitAcks(1, fmt.Sprintf("after step %d (%s)", i, kind))
		stats.longest = max(stats.longest, time.Since(fault))
		waitAcks(4, fmt.Sprintf("after step %d (%s)", i, kind))
		// No node took the VM over unseen, and only the primary has a
		// console (a console takes one client: the primary's is not
		// dialled here).
		if n := takenOver(); n != nil {
			t.Fatalf("after step %d: %s took the VM over beside the primary %s", i, n.role, curRole)
		}
		for _, n := range nodes {
			if n == curNode {
				continue
			}
			if c, err := net.Dial("unix", n.serial); err == nil {
				c.Close()
				t.Errorf("after step %d: node %s, not the primary, has a console", i, n.role)
			}
		}
	}
	endClient()
	stats.acked = acked
	final := dialWhenReady(t, curProc, curNode.serial)
	defer final.Close()
	checkCount(t, askCount(t, final), sent, acked)

	// Each takeover was a term of its own generation.
	var gens []string
	for _, p := range all {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			if _, rest, ok := strings.Cut(line, "protecting the VM again"); ok {
				if _, g, ok := strings.Cut(rest, "generation="); ok {
					g, _, _ = strings.Cut(g, " ")
					gens = append(gens, g)
				}
			}
		}
	}
	slices.Sort(gens)
	if len(gens) != takeovers || len(slices.Compact(slices.Clone(gens))) != len(gens) {
		t.Errorf("takeovers by generation %v, want %d of distinct generations", gens, takeovers)
	}
	return stats
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return true
	default:
		return false
	}
}
