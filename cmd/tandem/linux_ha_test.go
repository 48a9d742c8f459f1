package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLinuxFailoverLosesNoAcknowledgedIncrement runs a Linux guest under
// --ha — primary, two replicas and a leader, each in its own network
// namespace — whose init serves a counter on /dev/hvc0 (tandem_counter),
// drives it over the primary's virtio-console, kills the primary at a
// random moment, and checks that the leader's recovered guest, reached on
// the leader's own --channel, counts every acknowledged increment and
// nothing that was never sent. The guest's memory, its vCPUs, its
// virtio-mmio devices and their queues all come from the recovered epoch.
func TestLinuxFailoverLosesNoAcknowledgedIncrement(t *testing.T) {
	k, initrd := linuxGuest(t)
	lab := newNetLab(t, "primary", "r1", "r2", "leader")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	for _, c := range []struct{ policy, mode string }{{"fast", "sync"}, {"ft", "async"}} {
		t.Run(c.policy+"/"+c.mode, func(t *testing.T) {
			linuxFailoverRound(t, lab, rng, k.Vmlinux, initrd, c.policy, c.mode)
		})
	}
}

func linuxFailoverRound(t *testing.T, lab *netLab, rng *rand.Rand, kernel, initrd, policy, mode string) {
	dir := t.TempDir()
	const port = ":7070"
	var procs []*process
	defer func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for i, p := range procs {
				t.Logf("process %d (%v) stderr:\n%s", i, p.cmd.Args[3:], p.stderr.String())
			}
			b, _ := os.ReadFile(dir + "/primary.txt")
			t.Logf("primary's console:\n%s", b)
		}
	}()
	r1, r2 := lab.addrs["r1"]+port, lab.addrs["r2"]+port
	key := testKeyFile(t)
	leader := lab.start("leader", nil, "replica", "--listen", lab.addrs["leader"]+port, "--leader", "--auth-key", key,
		"--replicas", r1+","+r2, "--heartbeat-timeout", "2s", "--serial", "file:"+dir+"/leader.txt",
		"--channel", "unix:"+dir+"/leader.ch")
	procs = append(procs,
		lab.start("r1", nil, "replica", "--listen", r1, "--auth-key", key),
		lab.start("r2", nil, "replica", "--listen", r2, "--auth-key", key),
		leader)
	for _, p := range procs {
		waitStderr(t, p, "replica listening")
	}
	primary := lab.start("primary", nil, "run", "--kernel", kernel, "--initrd", initrd, "--mem", "128M",
		"--cmdline", "console=ttyS0 reboot=k panic=-1 tandem_counter=1",
		"--channel", "unix:"+dir+"/primary.ch", "--serial", "file:"+dir+"/primary.txt",
		"--ha", "--auth-key", key, "--replicas", r1+","+r2+","+r1, "--leader", lab.addrs["leader"]+port,
		"--policy", policy, "--mode", mode, "--epoch", "50ms")
	procs = append(procs, primary)
	// The counter answers once the guest is up, which takes the boot; the
	// guest drops what reaches hvc0 before it listens.
	conn := dialWhenReady(t, primary, dir+"/primary.ch")
	pollFor(t, "the guest's counter", 6*time.Minute, func() bool {
		b, _ := os.ReadFile(dir + "/primary.txt")
		return strings.Contains(string(b), "tandem-init: counter: ready")
	})
	client := runCounterClient(conn, 4)
	deadline := time.Now().Add(time.Minute)
	for client.acked.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no increments acknowledged in a minute; primary stderr:\n%s", primary.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
	primary.cmd.Process.Kill()
	select {
	case <-primary.done:
		primary.done <- nil
	case <-time.After(time.Minute):
		t.Fatal("the primary did not die")
	}
	conn.Close()
	<-client.done
	sent, acked := client.sent.Load(), client.acked.Load()

	lconn := dialWhenReady(t, leader, dir+"/leader.ch")
	defer lconn.Close()
	lconn.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(lconn, "GET\n")
	r := bufio.NewReader(lconn)
	var value int64 = -1
	for value < 0 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no VALUE from the leader's guest: %v", err)
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "VALUE "); ok {
			value, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	t.Logf("sent %d, acknowledged %d, the leader's guest counts %d", sent, acked, value)
	if value < acked {
		t.Errorf("LOST INCREMENTS: %d acknowledged, the leader's guest counts %d", acked, value)
	}
	if value > sent {
		t.Errorf("the leader's guest counts %d, more than the %d increments sent", value, sent)
	}
	if out := leader.stdout.String(); !strings.Contains(out, "leader: recovered epoch") {
		t.Errorf("the leader did not report its recovery; stdout %q", out)
	}
}

// guestSegment gives the lab an L2 segment for guests, 10.78.<n>.0/24, on
// a bridge of its own in the switch namespace: in each of tapRoles'
// namespaces a local bridge holds a persistent TAP named tap<n> and an
// uplink to it, as a host bridges its VMs onto a network; client's
// namespace gets 10.78.<n>.100 on it. Each n is a fresh segment, with no
// bridge or neighbour that remembers another's guests. It returns the
// TAP's name.
func (l *netLab) guestSegment(n int, client string, tapRoles ...string) string {
	l.t.Helper()
	sw := l.prefix + "-sw"
	br, tap := fmt.Sprintf("brg%d", n), fmt.Sprintf("tndmha%d", n)
	l.ip("-n", sw, "link", "add", br, "type", "bridge")
	l.ip("-n", sw, "link", "set", br, "up")
	uplink := func(ns, name string, i int) {
		host, port := fmt.Sprintf("%s-g%d%d", l.prefix, n, i), fmt.Sprintf("%s-G%d%d", l.prefix, n, i)
		l.ip("link", "add", host, "type", "veth", "peer", "name", port)
		l.ip("link", "set", host, "netns", ns)
		l.ip("link", "set", port, "netns", sw)
		l.ip("-n", sw, "link", "set", port, "master", br)
		l.ip("-n", sw, "link", "set", port, "up")
		l.ip("-n", ns, "link", "set", host, "name", name)
		l.ip("-n", ns, "link", "set", name, "up")
	}
	for i, role := range tapRoles {
		ns, local, up := l.hosts[role], fmt.Sprintf("brl%d", n), fmt.Sprintf("upl%d", n)
		l.ip("-n", ns, "link", "add", local, "type", "bridge")
		l.ip("-n", ns, "link", "set", local, "up")
		l.ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
		l.ip("-n", ns, "link", "set", tap, "master", local)
		l.ip("-n", ns, "link", "set", tap, "up")
		uplink(ns, up, i)
		l.ip("-n", ns, "link", "set", up, "master", local)
	}
	name := fmt.Sprintf("guestnet%d", n)
	uplink(l.hosts[client], name, len(tapRoles))
	l.ip("-n", l.hosts[client], "addr", "add", fmt.Sprintf("10.78.%d.100/24", n), "dev", name)
	return tap
}

// dialFrom opens a TCP connection from role's namespace.
func (l *netLab) dialFrom(role, addr string) (net.Conn, error) {
	p := &guestPeers{ns: l.hosts[role]}
	var c net.Conn
	err := p.inNamespace(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 30*time.Second)
		return err
	})
	return c, err
}

// TestLinuxFailoverKeepsTCPConnections runs a Linux guest under --ha with a
// network interface on a TAP that the primary's and the leader's hosts
// each bridge onto one L2 segment, where a client in its own namespace
// talks to the guest's counter over TCP (tandem_counter=tcp:7000). It
// kills the primary while the client pipelines increments, and checks that
// the client's TCP connection carries on with the leader's recovered guest
// (the frames of uncommitted epochs never left the primary, so the
// client's and the guest's TCP agree), and that the counter holds every
// acknowledged increment and nothing never sent.
func TestLinuxFailoverKeepsTCPConnections(t *testing.T) {
	k, initrd := linuxGuest(t)
	lab := newNetLab(t, "primary", "r1", "r2", "leader", "client")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	for round, c := range []struct{ policy, mode string }{{"fast", "sync"}, {"ft", "async"}} {
		t.Run(c.policy+"/"+c.mode, func(t *testing.T) {
			tap := lab.guestSegment(round, "client", "primary", "leader")
			guest := fmt.Sprintf("10.78.%d.15", round)
			dir := t.TempDir()
			const port = ":7070"
			var procs []*process
			defer func() {
				for _, p := range procs {
					p.kill()
				}
				if t.Failed() {
					for i, p := range procs {
						t.Logf("process %d (%v) stderr:\n%s", i, p.cmd.Args[3:], p.stderr.String())
					}
					for _, f := range []string{"primary.txt", "leader.txt"} {
						b, _ := os.ReadFile(filepath.Join(dir, f))
						t.Logf("%s:\n%s", f, b)
					}
				}
			}()
			r1, r2 := lab.addrs["r1"]+port, lab.addrs["r2"]+port
			key := testKeyFile(t)
			leader := lab.start("leader", nil, "replica", "--listen", lab.addrs["leader"]+port, "--leader", "--auth-key", key,
				"--replicas", r1+","+r2, "--heartbeat-timeout", "2s", "--serial", "file:"+dir+"/leader.txt", "--net", "tap:"+tap)
			procs = append(procs,
				lab.start("r1", nil, "replica", "--listen", r1, "--auth-key", key),
				lab.start("r2", nil, "replica", "--listen", r2, "--auth-key", key),
				leader)
			for _, p := range procs {
				waitStderr(t, p, "replica listening")
			}
			primary := lab.start("primary", nil, "run", "--kernel", k.Vmlinux, "--initrd", initrd, "--mem", "128M",
				"--cmdline", "console=ttyS0 reboot=k panic=-1 tandem_ip="+guest+"/24 tandem_counter=tcp:7000",
				"--net", "tap:"+tap, "--serial", "file:"+dir+"/primary.txt",
				"--ha", "--auth-key", key, "--replicas", r1+","+r2+","+r1, "--leader", lab.addrs["leader"]+port,
				"--policy", c.policy, "--mode", c.mode, "--epoch", "50ms")
			procs = append(procs, primary)
			pollFor(t, "the guest's counter", 6*time.Minute, func() bool {
				b, _ := os.ReadFile(dir + "/primary.txt")
				return strings.Contains(string(b), "tandem-init: counter: listening on 7000")
			})
			conn, err := lab.dialFrom("client", guest+":7000")
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			client := runCounterClient(conn, 4)
			pollFor(t, "three acknowledged increments", time.Minute, func() bool { return client.acked.Load() >= 3 })
			time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
			primary.cmd.Process.Kill()
			<-primary.done
			primary.done <- nil
			atKill := client.acked.Load()
			// The same connection goes on with the recovered guest.
			pollFor(t, "increments acknowledged by the recovered guest", 2*time.Minute, func() bool {
				return client.acked.Load() >= atKill+10
			})
			conn.Close()
			<-client.done
			sent, acked := client.sent.Load(), client.acked.Load()
			fresh, err := lab.dialFrom("client", guest+":7000")
			if err != nil {
				t.Fatalf("a new connection to the recovered guest: %v", err)
			}
			defer fresh.Close()
			fresh.SetDeadline(time.Now().Add(time.Minute))
			fmt.Fprintf(fresh, "GET\n")
			line, err := bufio.NewReader(fresh).ReadString('\n')
			value, perr := strconv.ParseInt(strings.TrimPrefix(strings.TrimSpace(line), "VALUE "), 10, 64)
			if err != nil || perr != nil {
				t.Fatalf("GET from the recovered guest: %q, %v", line, err)
			}
			t.Logf("acknowledged %d before the kill; sent %d, acknowledged %d over the same connection; the recovered guest counts %d", atKill, sent, acked, value)
			if value < acked {
				t.Errorf("LOST INCREMENTS: %d acknowledged, the recovered guest counts %d", acked, value)
			}
			if value > sent {
				t.Errorf("the recovered guest counts %d, more than the %d increments sent", value, sent)
			}
		})
	}
}
