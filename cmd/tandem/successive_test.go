package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
)

// TestSuccessiveFailures: four backup nodes, all started the same way,
// and a primary of the counter guest with a client running throughout.
// Steps in random order, each at a random moment: the primary is killed
// (its leader takes over and protects the VM again with the nodes left),
// then the new primary, a replica and the leader (each killed and started
// again, empty, on its address: it rejoins). After every step exactly one
// node's console answers, and it holds every acknowledged increment.
func TestSuccessiveFailures(t *testing.T) {
	kvmtest.Open(t)
	rounds := 1
	if s := os.Getenv("TANDEM_SUCCESSIVE_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	lab := newNetLab(t, "primary", "n1", "n2", "n3", "n4")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	for round := range rounds {
		for _, policy := range []string{"fast", "ft"} {
			ok := t.Run(fmt.Sprintf("round%02d/%s", round, policy), func(t *testing.T) {
				successiveRound(t, lab, rng, policy)
			})
			if !ok {
				return
			}
		}
	}
}

// haNode is one backup node's current process.
type haNode struct {
	role, addr string
	proc       *process
	serial     string // its console socket, should it take the VM over
	starts     int
}

func successiveRound(t *testing.T, lab *netLab, rng *rand.Rand, policy string) {
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
	// waitAcks waits until the client has n more acknowledgements.
	waitAcks := func(n int64, what string) {
		t.Helper()
		base := client.acked.Load()
		deadline := time.Now().Add(60 * time.Second)
		for client.acked.Load() < base+n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no increments acknowledged in 60 s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitAcks(3, "start")

	steps := []string{"primary", "primary", "replica", "leader"}
	rng.Shuffle(len(steps), func(i, j int) { steps[i], steps[j] = steps[j], steps[i] })
	for i, step := range steps {
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random moment
		switch step {
		case "primary":
			if primaryNode == nil {
				primary.kill()
			} else {
				primaryNode.proc.kill()
			}
			conn.Close()
			<-client.done
			sent, acked = sent+client.sent.Load(), acked+client.acked.Load()
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
			t.Logf("step %d: killed %s (%s), started again empty", i, step, victim.role)
			victim.proc.kill()
			start(victim)
		}
		waitAcks(5, fmt.Sprintf("after step %d (%s)", i, step))

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
	conn.Close()
	<-client.done
	sent, acked = sent+client.sent.Load(), acked+client.acked.Load()
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
}
