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

// TestCoordinatorTakeover runs a primary of the counter guest and two
// nodes with a real etcd as coordinator, on loopback. The primary's term,
// and so its generation, comes from etcd. crash: the primary is killed,
// and its leader takes over only as a new term, of a newer generation,
// holding every acknowledged increment. partition: etcd stops answering;
// the primary cannot renew its lease and stops its VM with its output
// held before any takeover can start; once etcd is back the leader takes
// over, and the VM never ran on two nodes at once. leader: the leader
// dies; the primary moves to the other node as its leader (recorded at
// etcd) and commits on; then the primary dies and that node takes over.
func TestCoordinatorTakeover(t *testing.T) {
	kvmtest.Open(t)
	for _, scenario := range []string{"crash", "partition", "leader"} {
		t.Run(scenario, func(t *testing.T) {
			etcd := etcdtest.Start(t)
			dir := t.TempDir()
			key := testKeyFile(t)
			ports, err := freePorts(2)
			if err != nil {
				t.Fatal(err)
			}
			co := []string{"--coordinator", etcd.URL(), "--coordinator-ttl", "1s"}
			node := func(addr, name string) *process {
				p := startTandem(t, append([]string{"replica", "--listen", addr, "--auth-key", key, "--heartbeat-timeout", "1s",
					"--serial", "unix:" + dir + "/" + name + ".sock"}, co...)...)
				waitStderr(t, p, "replica listening")
				return p
			}
			n1 := node(ports[0], "n1")
			leader := node(ports[1], "n2")
			takerSock := dir + "/n2.sock"
			primary := startTandem(t, append([]string{"run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key,
				"--replicas", ports[0], "--leader", ports[1], "--epoch", "10ms", "--heartbeat", "50ms",
				"--serial", "unix:" + dir + "/p.sock", "--control", "unix:" + dir + "/p.ctl"}, co...)...)
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("primary stderr:\n%s\nleader stderr:\n%s", primary.stderr.String(), leader.stderr.String())
				}
			})
			g1 := generationIn(t, primary, "primary term granted by the coordinator")
			conn := dialWhenReady(t, primary, dir+"/p.sock")
			client := runCounterClient(conn, 4)
			pollFor(t, "five acknowledged increments", 30*time.Second, func() bool { return client.acked.Load() >= 5 })

			// tandem status shows the term and the links.
			out, stderr, status := runTandem(t, "status", "--control", "unix:"+dir+"/p.ctl")
			for _, want := range []string{"16 MiB, 1 vCPUs", fmt.Sprintf("protected: generation %d", g1), "leader " + ports[1], "link 0 " + ports[0] + ": up"} {
				if status != 0 || !strings.Contains(out, want) {
					t.Errorf("tandem status: status %d, output %q (stderr %q); want %q", status, out, stderr, want)
				}
			}

			var stopped time.Time
			switch scenario {
			case "leader":
				// The leader dies: the primary moves to the other node,
				// records it as the leader, and commits on.
				leader.kill()
				base := client.acked.Load()
				pollFor(t, "increments acknowledged after the leader died", 30*time.Second, func() bool { return client.acked.Load() >= base+5 })
				waitStderr(t, primary, "moving to the next node that may lead")
				leader, takerSock = n1, dir+"/n1.sock"
				primary.kill()
				stopped = time.Now()
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
				// The leader sees the primary fail, but no term can be
				// granted while etcd does not answer.
				waitStderr(t, leader, "waiting for the primary's term to end")
				if strings.Contains(leader.stderr.String(), "takeover term granted") {
					t.Fatal("a node took over while the coordinator was unreachable")
				}
				etcd.Resume()
			}
			conn.Close()
			<-client.done
			g2 := generationIn(t, leader, "takeover term granted by the coordinator")
			granted := time.Now()
			if g2 <= g1 {
				t.Errorf("takeover generation %d, not newer than the primary's %d", g2, g1)
			}
			if !granted.After(stopped) {
				t.Errorf("the takeover was granted before the primary stopped")
			}
			lconn := dialWhenReady(t, leader, takerSock)
			defer lconn.Close()
			checkCount(t, askCount(t, lconn), client.sent.Load(), client.acked.Load())
			if scenario == "leader" {
				return // no node is left to protect it
			}
			if g := generationIn(t, leader, "protecting the VM again"); g != g2 {
				t.Errorf("the new primary replicates as generation %d, its term is %d", g, g2)
			}
		})
	}
}
