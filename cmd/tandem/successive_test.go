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
	lab := newNetLab(t, "primary", "n1", "n2", "n3", "n4")
	runCampaign(t, "campaign", 13, func(t *testing.T, rng *rand.Rand, policy string) campaignStats {
		return successiveRound(t, lab, rng, policy)
	})
}

// runCampaign runs round once per policy, TANDEM_SUCCESSIVE_ROUNDS times
// (once by default), stopping at the first failed round, and logs the
// totals as name.
func runCampaign(t *testing.T, name string, seed uint64, round func(*testing.T, *rand.Rand, string) campaignStats) {
	rounds := 1
	if s := os.Getenv("TANDEM_SUCCESSIVE_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), seed))
	var total campaignStats
	defer func() {
		t.Logf("%s: %d rounds, %d faults (%v), %d acknowledged increments, 0 lost (checked after every step), %d answered twice, longest unavailability %v (fault to the next answer)",
			name, total.rounds, total.faults, total.kinds, total.acked, total.twice, total.longest.Round(time.Millisecond))
	}()
	for r := range rounds {
		for _, policy := range []string{"fast", "ft"} {
			ok := t.Run(fmt.Sprintf("round%02d/%s", r, policy), func(t *testing.T) {
				total.add(round(t, rng, policy))
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

// haRound is one round of successive failures: its nodes and processes,
// and the client that counts on the primary's console throughout.
type haRound struct {
	t        *testing.T
	lab      *netLab
	dir, key string
	flags    []string // every process gets them (the coordinator)
	all      []*process
	nodes    []*haNode
	byAddr   map[string]*haNode
	stats    campaignStats

	conn        net.Conn
	client      *counterClient
	sent, acked int64 // over the clients that ended
}

// newHARound starts the four backup nodes n1-n4.
func newHARound(t *testing.T, lab *netLab, flags ...string) *haRound {
	r := &haRound{t: t, lab: lab, dir: t.TempDir(), key: testKeyFile(t), flags: flags, byAddr: map[string]*haNode{}}
	r.stats.kinds = map[string]int{}
	t.Cleanup(func() {
		for _, p := range r.all {
			p.kill()
		}
		if t.Failed() {
			for _, p := range r.all {
				t.Logf("%v stderr:\n%s", p.cmd.Args[3:], p.stderr.String())
			}
		}
	})
	for _, role := range []string{"n1", "n2", "n3", "n4"} {
		n := &haNode{role: role, addr: lab.addrs[role] + ":7070"}
		r.nodes, r.byAddr[n.addr] = append(r.nodes, n), n
		r.start(n)
	}
	return r
}

// start starts n's node (again: empty).
func (r *haRound) start(n *haNode) {
	n.starts++
	n.serial = fmt.Sprintf("%s/%s-%d.sock", r.dir, n.role, n.starts)
	n.control = fmt.Sprintf("%s/%s-%d.ctl", r.dir, n.role, n.starts)
	n.proc = r.lab.start(n.role, nil, append([]string{"replica", "--listen", n.addr, "--auth-key", r.key,
		"--heartbeat-timeout", "1s", "--serial", "unix:" + n.serial, "--control", "unix:" + n.control}, r.flags...)...)
	r.all = append(r.all, n.proc)
	waitStderr(r.t, n.proc, "replica listening")
}

// startPrimary runs the first primary, in its own namespace.
func (r *haRound) startPrimary(policy string, links []string, leader string) *process {
	p := r.lab.start("primary", nil, append([]string{"run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", r.key,
		"--replicas", strings.Join(links, ","), "--leader", leader, "--policy", policy, "--epoch", "10ms",
		"--heartbeat", "50ms", "--serial", "unix:" + r.dir + "/primary.sock"}, r.flags...)...)
	r.all = append(r.all, p)
	r.connect(p, r.dir+"/primary.sock")
	return p
}

// connect runs a new client on the console of p at sock.
func (r *haRound) connect(p *process, sock string) {
	r.conn = dialWhenReady(r.t, p, sock)
	r.client = runCounterClient(r.conn, 4)
}

// endClient ends the client, adding up what it sent and had answered.
func (r *haRound) endClient() {
	r.conn.Close()
	<-r.client.done
	r.sent, r.acked = r.sent+r.client.sent.Load(), r.acked+r.client.acked.Load()
	r.stats.twice += r.client.twice.Load()
	if r.client.twice.Load() > 0 {
		r.t.Errorf("%d increments were answered twice", r.client.twice.Load())
	}
}

// waitAcks waits until the client has n more acknowledgements.
func (r *haRound) waitAcks(n int64, what string) {
	r.t.Helper()
	base := r.client.acked.Load()
	pollFor(r.t, what+": increments acknowledged", time.Minute, func() bool { return r.client.acked.Load() >= base+n })
}

// checkCount ends the client and checks that the VM on n's console holds
// every increment acknowledged so far.
func (r *haRound) checkCount(n *haNode) {
	r.t.Helper()
	r.endClient()
	c := dialWhenReady(r.t, n.proc, n.serial)
	defer c.Close()
	checkCount(r.t, askCount(r.t, c), r.sent, r.acked)
}

// faultBackup is a replica or leader step: the leader is killed and
// started again empty; a replica (a link that is not the leader, if there
// is one) is too, or stalled, or has its link down, for d. It returns the
// fault's kind.
func (r *haRound) faultBackup(i int, step string, rng *rand.Rand, links []string, leader string, d time.Duration) string {
	r.t.Helper()
	var victim *haNode
	if step == "leader" {
		victim = r.byAddr[leader]
	} else {
		for _, l := range links {
			if l != leader {
				victim = r.byAddr[l]
				break
			}
		}
		if victim == nil {
			victim = r.byAddr[links[0]]
		}
	}
	how := "kill"
	if step == "replica" {
		how = []string{"kill", "stall", "link-down"}[rng.IntN(3)]
	}
	switch how {
	case "kill":
		r.t.Logf("step %d: killed %s (%s), started again empty", i, step, victim.role)
		victim.proc.kill()
		r.start(victim)
	case "stall":
		r.t.Logf("step %d: stalled %s (%s) for %v", i, step, victim.role, d)
		victim.proc.cmd.Process.Signal(syscall.SIGSTOP)
		time.Sleep(d) // the length of the fault, not a wait for a condition
		victim.proc.cmd.Process.Signal(syscall.SIGCONT)
	case "link-down":
		r.t.Logf("step %d: took %s (%s)'s link down for %v", i, step, victim.role, d)
		r.lab.ip("-n", r.lab.hosts[victim.role], "link", "set", "eth0", "down")
		time.Sleep(d) // the length of the fault
		r.lab.ip("-n", r.lab.hosts[victim.role], "link", "set", "eth0", "up")
	}
	return step + "/" + how
}

// afterStep counts the fault that began at fault, waits for the client to
// be answered again, and checks that the VM answers on the primary's node
// only: no other node has a console (a console takes one client: the
// primary's is not dialled here).
func (r *haRound) afterStep(i int, kind string, fault time.Time, primary *haNode) {
	r.t.Helper()
	r.stats.faults++
	r.stats.kinds[kind]++
	r.waitAcks(1, fmt.Sprintf("after step %d (%s)", i, kind))
	r.stats.longest = max(r.stats.longest, time.Since(fault))
	r.waitAcks(4, fmt.Sprintf("after step %d (%s)", i, kind))
	for _, n := range r.nodes {
		if n == primary {
			continue
		}
		if c, err := net.Dial("unix", n.serial); err == nil {
			c.Close()
			r.t.Errorf("after step %d: node %s, not the primary, has a console", i, n.role)
		}
	}
}

// checkGenerations checks that the round's takeovers were n, each of a
// generation of its own.
func (r *haRound) checkGenerations(n int) {
	r.t.Helper()
	var gens []string
	for _, p := range r.all {
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
	if len(gens) != n || len(slices.Compact(slices.Clone(gens))) != n {
		r.t.Errorf("takeovers by generation %v, want %d of distinct generations", gens, n)
	}
}

func successiveRound(t *testing.T, lab *netLab, rng *rand.Rand, policy string) campaignStats {
	r := newHARound(t, lab)
	links := []string{r.nodes[0].addr, r.nodes[1].addr, r.nodes[2].addr}
	leader := r.nodes[3].addr
	primary := r.startPrimary(policy, links, leader)
	var primaryNode *haNode // nil: the first primary, not a backup node
	r.waitAcks(3, "start")

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
			// The leader takes over and protects the VM with the rest.
			next := r.byAddr[leader]
			newLinks, newLeader := replicate.Cluster{Links: links}.Successor(leader)
			t.Logf("step %d: killed the primary; %s takes over, replicating to %v led by %s", i, next.role, newLinks, newLeader)
			r.checkCount(next)
			primaryNode, links, leader = next, newLinks, newLeader
			r.connect(next.proc, next.serial)
		case "replica", "leader":
			kind = r.faultBackup(i, step, rng, links, leader, 500*time.Millisecond+time.Duration(rng.IntN(2000))*time.Millisecond)
		}
		r.afterStep(i, kind, fault, primaryNode)
	}
	r.checkCount(primaryNode)
	r.stats.acked = r.acked
	r.checkGenerations(2)
	return r.stats
}
