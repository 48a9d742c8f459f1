package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"strings"
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
// again empty and joins (tandem add-replica). After every step exactly one
// node has the VM's console and answers, no increment is answered twice,
// and the primary holds every acknowledged increment; every takeover is a
// term of its own generation. TANDEM_SUCCESSIVE_ROUNDS=N runs N rounds per
// policy (the campaign: 100 rounds are 1,000 faults).
func TestSuccessiveFailuresCoordinated(t *testing.T) {
	kvmtest.Open(t)
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
	runCampaign(t, "coordinated campaign", 17, func(t *testing.T, rng *rand.Rand, policy string) campaignStats {
		return coordinatedRound(t, lab, etcd.URL(), rng, policy)
	})
}

func coordinatedRound(t *testing.T, lab *netLab, etcdURL string, rng *rand.Rand, policy string) campaignStats {
	r := newHARound(t, lab, "--coordinator", etcdURL, "--coordinator-ttl", "1s")
	var links []string
	for _, n := range r.nodes {
		links = append(links, n.addr)
	}
	leader := r.nodes[3].addr
	// The primary now: its process, its role (namespace) and its node
	// (nil for the first, which is not a backup node).
	curProc, curRole := r.startPrimary(policy, links, leader), "primary"
	var curNode *haNode
	took := map[*process]bool{} // processes that took the VM over

	// takenOver is the backup node whose process newly took the VM over,
	// if one did.
	takenOver := func() *haNode {
		for _, n := range r.nodes {
			if !took[n.proc] && strings.Contains(n.proc.stdout.String(), "leader: recovered epoch") {
				return n
			}
		}
		return nil
	}
	// switchTo makes n the primary: its VM must hold the client's count so
	// far, and a new client runs on its console. A node that was the
	// primary starts again, empty, and is added to the new primary's
	// links (tandem add-replica), so the cluster keeps its four nodes.
	switchTo := func(n *haNode, i int) {
		t.Helper()
		took[n.proc] = true
		newLinks, newLeader := replicate.Cluster{Links: links}.Successor(n.addr)
		t.Logf("step %d: %s took over, replicating to %v led by %s", i, n.role, newLinks, newLeader)
		r.checkCount(n)
		prev := curNode
		curProc, curRole, curNode, links, leader = n.proc, n.role, n, newLinks, newLeader
		r.connect(n.proc, n.serial)
		if prev != nil {
			r.start(prev)
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

	r.waitAcks(3, "start")
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
				role, isPrimary = r.byAddr[links[rng.IntN(len(links))]].role, false
			}
			kind = "coordinator/backup"
			if isPrimary {
				kind = "coordinator/primary"
			}
			t.Logf("step %d: cut %s off from etcd for %v", i, role, d)
			cut := time.Now()
			lab.ip("-n", lab.hosts[role], "route", "add", "blackhole", etcdIP)
			time.Sleep(d) // the length of the fault
			lab.ip("-n", lab.hosts[role], "route", "del", "blackhole", etcdIP)
			if !isPrimary {
				break
			}
			// Either the primary's lease held, and it answers on, or it
			// stopped its VM (and exited), and a node takes over. Its
			// last renewal before the cut bounds its term: by a TTL (1 s)
			// after the cut began it has renewed or stopped, even if it
			// answered after the cut was healed.
			base := r.client.acked.Load()
			pollFor(t, fmt.Sprintf("step %d: the primary to answer on or to stop", i), time.Minute, func() bool {
				return curProc.exited() || takenOver() != nil ||
					(r.client.acked.Load() >= base+4 && time.Since(cut) > 2*time.Second)
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
			kind = r.faultBackup(i, step, rng, links, leader, d)
		}
		r.afterStep(i, kind, fault, curNode)
		if n := takenOver(); n != nil {
			t.Fatalf("after step %d: %s took the VM over beside the primary %s", i, n.role, curRole)
		}
	}
	r.checkCount(curNode)
	r.stats.acked = r.acked
	r.checkGenerations(takeovers)
	return r.stats
}
