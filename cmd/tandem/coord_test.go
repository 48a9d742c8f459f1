package main

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate/coord/etcdtest"
)

// generationIn is the generation= of the first line of a log with msg.
func generationIn(t *testing.T, p *process, msg string) uint64 {
	t.Helper()
	waitStderr(t, p, msg)
	m := regexp.MustCompile(regexp.QuoteMeta(msg) + `.*generation=(\d+)`).FindStringSubmatch(p.stderr.String())
	if m == nil {
		t.Fatalf("no generation in %q; stderr:\n%s", msg, p.stderr.String())
	}
	g, _ := strconv.ParseUint(m[1], 10, 64)
	return g
}

// coordLab is a test's etcd, two free ports for nodes, a key and the
// flags that name the coordinator.
type coordLab struct {
	t     *testing.T
	etcd  *etcdtest.Server
	dir   string
	key   string
	ports []string
	co    []string
}

func newCoordLab(t *testing.T) *coordLab {
	t.Helper()
	l := &coordLab{t: t, etcd: etcdtest.Start(t), dir: t.TempDir(), key: testKeyFile(t)}
	var err error
	if l.ports, err = freePorts(2); err != nil {
		t.Fatal(err)
	}
	l.co = []string{"--coordinator", l.etcd.URL(), "--coordinator-ttl", "1s"}
	return l
}

// node starts a node on addr whose console, should it take over, is
// DIR/name.sock.
func (l *coordLab) node(addr, name string, extra ...string) *process {
	l.t.Helper()
	p := startTandem(l.t, append(append([]string{"replica", "--listen", addr, "--auth-key", l.key, "--heartbeat-timeout", "1s",
		"--serial", "unix:" + l.dir + "/" + name + ".sock"}, l.co...), extra...)...)
	waitStderr(l.t, p, "replica listening")
	return p
}

// TestCoordinatorTakeover runs a primary of the counter guest and two
// nodes, each with a link and each holding the VM state, with a real etcd
// as coordinator, on loopback. The primary's term, and so its generation,
// comes from etcd. crash: the primary is killed, and one node takes over,
// only as a new term of a newer generation, holding every acknowledged
// increment, and protects the VM again with the other. partition: etcd
// stops answering; the primary cannot renew its lease and stops its VM
// with its output held before any takeover can start; once etcd is back a
// node takes over, and the VM never ran on two nodes at once. leader: the
// leader dies; the primary commits on with the other node holding the
// state (recorded at etcd); then the primary dies and that node takes
// over. both: the primary and its leader die at once; the other node
// takes over with every acknowledged increment (the links mirror: ft).
// When only one node is left, the dead one comes back empty, and the new
// primary's output flows once it protects the VM again.
func TestCoordinatorTakeover(t *testing.T) {
	kvmtest.Open(t)
	for _, scenario := range []string{"crash", "partition", "leader", "both"} {
		t.Run(scenario, func(t *testing.T) {
			l := newCoordLab(t)
			etcd, dir, key, ports, co, node := l.etcd, l.dir, l.key, l.ports, l.co, l.node
			nodes := []*process{node(ports[0], "n1"), node(ports[1], "n2")}
			socks := []string{dir + "/n1.sock", dir + "/n2.sock"}
			// ft: the pages of a node that dies with the primary are
			// on the other node too.
			primary := startTandem(t, append([]string{"run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key, "--policy", "ft",
				"--replicas", ports[0] + "," + ports[1], "--leader", ports[1], "--epoch", "10ms", "--heartbeat", "50ms",
				"--serial", "unix:" + dir + "/p.sock", "--control", "unix:" + dir + "/p.ctl"}, co...)...)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("primary stderr:\n%s\nn1 stderr:\n%s\nn2 stderr:\n%s", primary.stderr.String(), nodes[0].stderr.String(), nodes[1].stderr.String())
				}
			})
			g1 := generationIn(t, primary, "primary term granted by the coordinator")
			conn := dialWhenReady(t, primary, dir+"/p.sock")
			client := runCounterClient(conn, 4)
			pollFor(t, "five acknowledged increments", 30*time.Second, func() bool { return client.acked.Load() >= 5 })
			waitStderr(t, primary, "the coordinator knows which nodes hold the VM state")

			// tandem status shows the term, the holders and the links.
			out, stderr, status := runTandem(t, "status", "--control", "unix:"+dir+"/p.ctl")
			for _, want := range []string{"16 MiB, 1 vCPUs", fmt.Sprintf("protected: generation %d", g1), "leader " + ports[1], "state holders 2/2", "link 0 " + ports[0] + ": up"} {
				if status != 0 || !strings.Contains(out, want) {
					t.Errorf("tandem status: status %d, output %q (stderr %q); want %q", status, out, stderr, want)
				}
			}

			var stopped time.Time
			alive := []int{0, 1} // the nodes that may take over
			switch scenario {
			case "leader":
				// The leader dies: the primary commits on with the other
				// node holding the state, once etcd knows.
				nodes[1].kill()
				base := client.acked.Load()
				pollFor(t, "increments acknowledged after the leader died", 30*time.Second, func() bool { return client.acked.Load() >= base+5 })
				waitStderr(t, primary, "the nodes holding the VM state changed")
				alive = []int{0}
				primary.kill()
				stopped = time.Now()
			case "both":
				primary.kill()
				nodes[1].kill()
				stopped = time.Now()
				alive = []int{0}
			case "crash":
				primary.kill()
				stopped = time.Now()
			case "partition":
				etcd.Pause()
				// Within the TTL the primary's term may have ended: it
				// stops its copy of the VM, output held.
				status := primary.wait(t, 10*time.Second)
				stopped = time.Now()
				if status == 0 {
					t.Errorf("the primary that lost its term exited 0")
				}
				waitStderr(t, primary, "this primary was deposed")
				// No term can be granted while etcd does not answer.
				for _, n := range nodes {
					if strings.Contains(n.stderr.String(), "takeover term granted") {
						t.Fatal("a node took over while the coordinator was unreachable")
					}
				}
				etcd.Resume()
			}
			conn.Close()
			<-client.done
			taker := -1
			pollFor(t, "a node to take over", 30*time.Second, func() bool {
				for _, i := range alive {
					if strings.Contains(nodes[i].stderr.String(), "takeover term granted") {
						taker = i
						return true
					}
				}
				return false
			})
			g2 := generationIn(t, nodes[taker], "takeover term granted by the coordinator")
			granted := time.Now()
			if g2 <= g1 {
				t.Errorf("takeover generation %d, not newer than the primary's %d", g2, g1)
			}
			if !granted.After(stopped) {
				t.Errorf("the takeover was granted before the primary stopped")
			}
			if len(alive) == 1 {
				// The new primary's output waits for a backup: the dead
				// node comes back, empty, and is protecting it again.
				nodes[1] = node(ports[1], "n2")
			}
			lconn := dialWhenReady(t, nodes[taker], socks[taker])
			defer lconn.Close()
			checkCount(t, askCount(t, lconn), client.sent.Load(), client.acked.Load())
			for i, n := range nodes {
				if i != taker && strings.Contains(n.stderr.String(), "takeover term granted") {
					t.Errorf("two nodes were granted a takeover")
				}
			}
			if g := generationIn(t, nodes[taker], "protecting the VM again"); g != g2 {
				t.Errorf("the new primary replicates as generation %d, its term is %d", g, g2)
			}
			// The other node holds the new term's state: it can take over
			// in turn.
			waitStderr(t, nodes[taker], "the coordinator knows which nodes hold the VM state")
		})
	}
}

// TestCoordinatorJoin: a node started after the primary offers itself
// with --join (the VM id tandem status shows); the primary adds it as a
// link and a state holder, and once the first node is gone it alone takes
// the VM over when the primary is killed, with every acknowledged
// increment (its output flows once the first node is back, empty, and
// protects it). A bad --join is refused before anything starts.
func TestCoordinatorJoin(t *testing.T) {
	kvmtest.Open(t)
	l := newCoordLab(t)
	dir, key, ports, co, node := l.dir, l.key, l.ports, l.co, l.node
	for _, tc := range []struct{ args []string }{
		{[]string{"--join", "0123456789abcdef"}},                // no coordinator
		{append([]string{"--join", "12345"}, co...)},            // not 16 digits
		{append([]string{"--join", "0123456789abcdeg"}, co...)}, // not hex
	} {
		_, stderr, status := runTandem(t, append([]string{"replica", "--listen", "127.0.0.1:0", "--auth-key", key}, tc.args...)...)
		if status != 2 || !strings.Contains(stderr, "--join") {
			t.Errorf("replica %v: status %d, stderr %q; want a usage error naming --join", tc.args, status, stderr)
		}
	}
	n1 := node(ports[0], "n1")
	primary := startTandem(t, append([]string{"run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key, "--policy", "ft",
		"--replicas", ports[0], "--leader", ports[0], "--epoch", "10ms", "--heartbeat", "50ms",
		"--serial", "unix:" + dir + "/p.sock", "--control", "unix:" + dir + "/p.ctl"}, co...)...)
	var n2 *process
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("primary stderr:\n%s\nn1 stderr:\n%s", primary.stderr.String(), n1.stderr.String())
			if n2 != nil {
				t.Logf("n2 stderr:\n%s", n2.stderr.String())
			}
		}
	})
	conn := dialWhenReady(t, primary, dir+"/p.sock")
	client := runCounterClient(conn, 4)
	pollFor(t, "five acknowledged increments", 30*time.Second, func() bool { return client.acked.Load() >= 5 })
	out, _, _ := runTandem(t, "status", "--control", "unix:"+dir+"/p.ctl")
	m := regexp.MustCompile(`vm ([0-9a-f]{16})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("tandem status names no VM id:\n%s", out)
	}
	n2 = node(ports[1], "n2", "--join", m[1])
	pollFor(t, "the joined node to be a link and a state holder", 30*time.Second, func() bool {
		out, _, _ := runTandem(t, "status", "--control", "unix:"+dir+"/p.ctl")
		return strings.Contains(out, "link 1 "+ports[1]+": up") && strings.Contains(out, "state holder "+ports[1]+": up") &&
			strings.Contains(out, "protected:")
	})
	n1.kill()
	base := client.acked.Load()
	pollFor(t, "increments acknowledged without the first node", 30*time.Second, func() bool { return client.acked.Load() >= base+5 })
	primary.kill()
	conn.Close()
	<-client.done
	waitStderr(t, n2, "takeover term granted by the coordinator")
	// Its output waits for a backup: the first node comes back, empty.
	n1 = node(ports[0], "n1")
	lconn := dialWhenReady(t, n2, dir+"/n2.sock")
	defer lconn.Close()
	checkCount(t, askCount(t, lconn), client.sent.Load(), client.acked.Load())
}
