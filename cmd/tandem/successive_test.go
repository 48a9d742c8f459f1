package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
)

// TestSuccessiveFailures: four backup nodes, all started the same way,
// and a primary of the counter guest with a client running throughout.
// Steps in random order, each at a random moment: the primary is killed
// (its leader takes over and protects the VM again with the nodes left),
// then the new primary, a replica (killed and started again empty, stalled
// with SIGSTOP, or its link taken down in its namespace, for 0.5-2.5 s)
// and the leader (killed and started again empty). After every step no
// node but the primary has a console, the client gets answers again, none
// twice, and the primary holds every acknowledged increment. Each round
// is four faults; TANDEM_SUCCESSIVE_ROUNDS=N runs N rounds per policy (the
// campaign: 125 rounds are 1,000 faults) and logs the totals.
func TestSuccessiveFailures(t *testing.T) {
	kvmtest.Open(t)
	rounds := 1
	if s := os.Getenv("TANDEM_SUCCESSIVE_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	lab := newNetLab(t, "primary", "n1", "n2", "n3", "n4")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	var total campaignStats
	defer func() {
		t.Logf("campaign: %d rounds, %d faults (%v), %d acknowledged increments, 0 lost (checked after every step), %d answered twice, longest unavailability %v (fault to the next answer)",
			total.rounds, total.faults, total.kinds, total.acked, total.twice, total.longest.Round(time.Millisecond))
	}()
	for round := range rounds {
		for _, policy := range []string{"fast", "ft"} {
			ok := t.Run(fmt.Sprintf("round%02d/%s", round, policy), func(t *testing.T) {
				total.add(successiveRound(t, lab, rng, policy))
			})
			if !ok {
				return
			}
		}
	}
}

// campaignStats sums up rounds of faults.
type campaignStats struct {
	rounds, faults int
	kinds          map[string]int
	acked, twice   int64
	longest        time.Duration
}

func (c *campaignStats) add(r campaignStats) {
	c.rounds++
	c.faults += r.faults
	if c.kinds == nil {
		c.kinds = map[string]int{}
	}
	for k, n := range r.kinds {
		c.kinds[k] += n
	}
	c.acked += r.acked
	c.twice += r.twice
	c.longest = max(c.longest, r.longest)
}

// haNode is one backup node's current process.
type haNode struct {
	role, addr string
	proc       *process
	serial     string // its console socket, should it take the VM over
	control    string // its control socket, likewise
	starts     int
}

func successiveRound(t *testing.T, lab *netLab, rng *rand.Rand, policy string) (stats campaignStats) {
	stats.kinds = map[string]int{}
	dir := t.TempDir()
	key := testKeyFile(t)
	nodes := map[string]*haNode{}
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
		n.proc = lab.start(n.role, nil, "replica", "--listen", n.addr, "--auth-key", key,
			"--heartbeat-timeout", "1s", "--serial", "unix:"+n.serial)
		all = append(all, n.proc)
		waitStderr(t, n.proc, "replica listening")
	}
	byAddr := map[string]*haNode{}
	for _, role := range []string{"n1", "n2", "n3", "n4"} {
		n := &haNode{role: role, addr: lab.addrs[role] + ":7070"}
		nodes[role], byAddr[n.addr] = n, n
		start(n)
	}
	links := []string{nodes["n1"].addr, nodes["n2"].addr, nodes["n3"].addr}
	leader := nodes["n4"].addr
	primary := lab.start("primary", nil, "run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key,
		"--replicas", strings.Join(links, ","), "--leader", leader, "--policy", policy, "--epoch", "10ms",
		"--heartbeat", "50ms", "--serial", "unix:"+dir+"/primary.sock")
	all = append(all, primary)
	primarySock := dir + "/primary.sock"
	var primaryNode *haNode // nil: the first primary, not a backup node

	var sent, acked int64
	conn := dialWhenReady(t, primary, primarySock)
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
	// waitAcks waits until the client has n more acknowledgements.
	waitAcks := func(n int64, what string) {
		t.Helper()
		base := client.acked.Load()
		pollFor(t, what+": increments acknowledged", time.Minute, func() bool { return client.acked.Load() >= base+n })
	}
	waitAcks(3, "start")

	steps := []string{"primary", "primary", "replica", "leader"}
	rng.Shuffle(len(steps), func(i, j int) { steps[i], steps[j] = steps[j], steps[i] })
	for i, step := range steps {
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random moment
		fault := time.Now()
		kind := step
		switch step {
		case "primary":
			if primaryNode == nil {
				primary.kill()
			} else {
				primaryNode.proc.kill()
			}
			endClient()
			// The leader takes over and protects the VM with the rest.
			next := byAddr[leader]
			newLinks, newLeader := replicate.Cluster{Links: links}.Successor(leader)
			t.Logf("step %d: killed the primary; %s takes over, replicating to %v led by %s", i, next.role, newLinks, newLeader)
			conn = dialWhenReady(t, next.proc, next.serial)
			checkCount(t, askCount(t, conn), sent, acked)
			conn.Close()
			primaryNode, links, leader = next, newLinks, newLeader
			conn = dialWhenReady(t, next.proc, next.serial)
			client = runCounterClient(conn, 4)
		case "replica", "leader":
			var victim *haNode
			if step == "leader" {
				victim = byAddr[leader]
			} else {
				// A link replica that is not the leader, if there is one.
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
			d := 500*time.Millisecond + time.Duration(rng.IntN(2000))*time.Millisecond
			switch how {
			case "kill":
				t.Logf("step %d: killed %s (%s), started again empty", i, step, victim.role)
				victim.proc.kill()
				start(victim)
			case "stall":
				t.Logf("step %d: stalled %s (%s) for %v", i, step, victim.role, d)
				victim.proc.cmd.Process.Signal(syscall.SIGSTOP)
				time.Sleep(d) // the length of the fault, not a wait for a condition
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
		waitAcks(1, fmt.Sprintf("after step %d (%s)", i, step))
		stats.longest = max(stats.longest, time.Since(fault))
		waitAcks(4, fmt.Sprintf("after step %d (%s)", i, step))

		// The VM answers on one node only: the primary's, whose console
		// the client holds (a console takes one client: it is not dialled
		// here), and on no other node.
		for _, n := range nodes {
			if n == primaryNode {
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
	final := dialWhenReady(t, primaryNode.proc, primaryNode.serial)
	defer final.Close()
	checkCount(t, askCount(t, final), sent, acked)

	// Each takeover was made by one node, each generation by one.
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
	if len(gens) != 2 || gens[0] == gens[1] {
		t.Errorf("takeovers by generation %v, want two of distinct generations", gens)
	}
	return stats
}
