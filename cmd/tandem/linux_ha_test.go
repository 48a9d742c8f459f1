package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLinuxFailoverLosesNoAcknowledgedIncrement boots a Linux guest whose
// init serves a counter on /dev/hvc0 (tandem_counter) and snapshots it;
// each round restores the snapshot under --ha — primary, two replicas and
// a leader, each in its own network namespace —, drives the counter over
// the primary's virtio-console, kills the primary at a
// random moment, and checks that the leader's recovered guest, reached on
// the leader's own --channel, counts every acknowledged increment and
// nothing that was never sent. The guest's memory, its vCPUs, its
// virtio-mmio devices and their queues all come from the recovered epoch.
func TestLinuxFailoverLosesNoAcknowledgedIncrement(t *testing.T) {
	snap := bootedCounterSnapshot(t)
	lab := newNetLab(t, "primary", "r1", "r2", "leader")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	for _, c := range []struct {
		policy, mode string
		args         []string
	}{
		// Every reduction, and with ft pages sent ahead: a failover still
		// loses nothing acknowledged.
		{"fast", "sync", []string{"--reduce", "all"}},
		{"ft", "sync", []string{"--reduce", "all", "--speculate", "0.5"}},
		{"ft", "async", nil},
	} {
		t.Run(c.policy+"/"+c.mode, func(t *testing.T) {
			linuxFailoverRound(t, lab, rng, snap, c.policy, c.mode, c.args...)
		})
	}
}

// haCluster is one round's replicas and leader, started in a lab.
type haCluster struct {
	key            string
	r1, r2, leader string // their addresses
	procs          []*process
	leaderProc     *process
	primaryEnv     []string // the primary's extra environment (fault injection)
}

// startHACluster starts two replicas and a leader (with leaderArgs added)
// in lab's namespaces, waits until they listen, and at the end of the test
// kills them and whatever was added to procs, dumping their stderr and the
// consoles in dir if the test failed.
func startHACluster(t *testing.T, lab *netLab, dir string, leaderArgs ...string) *haCluster {
	t.Helper()
	const port = ":7070"
	c := &haCluster{key: testKeyFile(t), r1: lab.addrs["r1"] + port, r2: lab.addrs["r2"] + port, leader: lab.addrs["leader"] + port}
	t.Cleanup(func() {
		for _, p := range c.procs {
			p.kill()
		}
		if t.Failed() {
			for i, p := range c.procs {
				t.Logf("process %d (%v) stderr:\n%s", i, p.cmd.Args[3:], p.stderr.String())
			}
			for _, f := range []string{"primary.txt", "leader.txt"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("%s:\n%s", f, b)
			}
		}
	})
	c.leaderProc = lab.start("leader", nil, append([]string{"replica", "--listen", c.leader, "--leader", "--auth-key", c.key,
		"--replicas", c.r1 + "," + c.r2, "--heartbeat-timeout", "2s", "--serial", "file:" + dir + "/leader.txt"}, leaderArgs...)...)
	c.procs = append(c.procs,
		lab.start("r1", nil, "replica", "--listen", c.r1, "--auth-key", c.key),
		lab.start("r2", nil, "replica", "--listen", c.r2, "--auth-key", c.key),
		c.leaderProc)
	for _, p := range c.procs {
		waitStderr(t, p, "replica listening")
	}
	return c
}

// startPrimary runs `tandem run` with args (what to run) under --ha
// against c, with COM1 in dir/primary.txt.
func (c *haCluster) startPrimary(t *testing.T, lab *netLab, dir, policy, mode string, args ...string) *process {
	t.Helper()
	primary := lab.start("primary", c.primaryEnv, append(append([]string{"run"}, args...),
		"--serial", "file:"+dir+"/primary.txt",
		"--ha", "--auth-key", c.key, "--replicas", c.r1+","+c.r2+","+c.r1, "--leader", c.leader,
		"--policy", policy, "--mode", mode, "--epoch", "50ms")...)
	c.procs = append(c.procs, primary)
	return primary
}

// bootedCounterSnapshot boots the Linux test guest with its counter on
// hvc0 (tandem_counter), without --ha, and snapshots it once the counter
// is ready: the Linux HA rounds restore it under --ha, so that they test
// --restore with --ha and boot once between them.
func bootedCounterSnapshot(t *testing.T) string {
	t.Helper()
	snap, _ := bootedSnapshot(t, "tandem_counter=1", "counter: ready", "--channel", "unix:"+filepath.Join(t.TempDir(), "ch"))
	return snap
}

// bootedSnapshot boots the Linux test guest with cmdline and device args,
// without --ha, waits for its init's line ready, and snapshots it; it
// returns the snapshot and the directory holding what the guest used (its
// disk, if args name one there).
func bootedSnapshot(t *testing.T, cmdline, ready string, args ...string) (snap, dir string) {
	t.Helper()
	k, initrd := linuxGuest(t)
	dir = t.TempDir()
	ctl := "unix:" + filepath.Join(dir, "ctl")
	p := startCommand(t, tandemBin, append([]string{"run", "--kernel", k.Vmlinux, "--initrd", initrd, "--mem", "128M",
		"--cmdline", "console=ttyS0 reboot=k panic=-1 " + cmdline,
		"--serial", "file:" + filepath.Join(dir, "console.txt"), "--control", ctl}, args...)...)
	pollFor(t, "the guest's "+ready, 6*time.Minute, func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "console.txt"))
		return strings.Contains(string(b), "tandem-init: "+ready)
	})
	snap = filepath.Join(dir, "guest.snap")
	if _, stderr, status := runTandem(t, "snapshot", "--control", ctl, "--out", snap, "--stop"); status != 0 {
		t.Fatalf("snapshot: status %d, stderr %q", status, stderr)
	}
	if status := p.wait(t, time.Minute); status != 0 {
		t.Fatalf("the snapshotted tandem exited with %d; stderr:\n%s", status, p.stderr.String())
	}
	return snap, dir
}

// killAfter kills p once client has three increments acknowledged and a
// random moment more has passed.
func killAfter(t *testing.T, rng *rand.Rand, client *counterClient, p *process) {
	t.Helper()
	pollFor(t, "three acknowledged increments", time.Minute, func() bool { return client.acked.Load() >= 3 })
	time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
	p.kill()
}

// askCount sends GET on conn and returns the counter's VALUE.
func askCount(t *testing.T, conn net.Conn) int64 {
	t.Helper()
	conn.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(conn, "GET\n")
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no VALUE from the counter: %v", err)
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "VALUE "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("counter answered %q", line)
			}
			return n
		}
	}
}

// checkCount fails the test if a recovered counter lost an acknowledged
// increment or counts one never sent.
func checkCount(t *testing.T, value, sent, acked int64) {
	t.Helper()
	t.Logf("sent %d, acknowledged %d, the recovered counter holds %d", sent, acked, value)
	if value < acked {
		t.Errorf("LOST INCREMENTS: %d acknowledged, the recovered counter holds %d", acked, value)
	}
	if value > sent {
		t.Errorf("the recovered counter holds %d, more than the %d increments sent", value, sent)
	}
}

func linuxFailoverRound(t *testing.T, lab *netLab, rng *rand.Rand, snap, policy, mode string, args ...string) {
	dir := t.TempDir()
	c := startHACluster(t, lab, dir, "--channel", "unix:"+dir+"/leader.ch")
	primary := c.startPrimary(t, lab, dir, policy, mode, append([]string{"--restore", snap, "--channel", "unix:" + dir + "/primary.ch"}, args...)...)
	conn := dialWhenReady(t, primary, dir+"/primary.ch")
	client := runCounterClient(conn, 4)
	killAfter(t, rng, client, primary)
	conn.Close()
	<-client.done
	lconn := dialWhenReady(t, c.leaderProc, dir+"/leader.ch")
	defer lconn.Close()
	checkCount(t, askCount(t, lconn), client.sent.Load(), client.acked.Load())
	if out := c.leaderProc.stdout.String(); !strings.Contains(out, "leader: recovered epoch") {
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

// dialGuestFor connects from the client's namespace to a guest that p
// runs, retrying until it answers (a restored guest's network takes a
// moment to be reached: replication starts first).
func dialGuestFor(t *testing.T, lab *netLab, p *process, addr string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := dialInNetns(lab.hosts["client"], addr, time.Second)
		if err == nil {
			return c
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("the primary exited (%v) before its guest answered; stderr:\n%s", err, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest at %s did not answer in 2 minutes: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dialFrom opens a TCP connection from role's namespace.
func (l *netLab) dialFrom(role, addr string) (net.Conn, error) {
	return dialInNetns(l.hosts[role], addr, 30*time.Second)
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
	// The guest boots once, on a TAP of its own, and every round restores
	// it onto the segment (announcing its MAC there).
	snap, _ := bootedSnapshot(t, "tandem_ip=10.78.0.15/24 tandem_counter=tcp:7000", "counter: listening on 7000", "--net", "tap:tndmboot0")
	lab := newNetLab(t, "primary", "r1", "r2", "leader", "client")
	tap := lab.guestSegment(0, "client", "primary", "leader")
	const guest = "10.78.0.15:7000"
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))
	for _, c := range []struct{ policy, mode string }{{"fast", "sync"}, {"ft", "async"}} {
		t.Run(c.policy+"/"+c.mode, func(t *testing.T) {
			dir := t.TempDir()
			cl := startHACluster(t, lab, dir, "--net", "tap:"+tap)
			primary := cl.startPrimary(t, lab, dir, c.policy, c.mode, "--restore", snap, "--net", "tap:"+tap)
			conn := dialGuestFor(t, lab, primary, guest)
			defer conn.Close()
			client := runCounterClient(conn, 4)
			killAfter(t, rng, client, primary)
			atKill := client.acked.Load()
			// The same connection goes on with the recovered guest.
			pollFor(t, "increments acknowledged by the recovered guest", 2*time.Minute, func() bool {
				return client.acked.Load() >= atKill+10
			})
			conn.Close()
			<-client.done
			fresh, err := lab.dialFrom("client", guest)
			if err != nil {
				t.Fatalf("a new connection to the recovered guest: %v", err)
			}
			defer fresh.Close()
			t.Logf("%d increments acknowledged before the kill, over the connection that carried on", atKill)
			checkCount(t, askCount(t, fresh), client.sent.Load(), client.acked.Load())
		})
	}
}

// TestLinuxFailoverKeepsDiskWrites runs the test guest's key-value store
// (tandem_kv: every PUT is fsynced to /dev/vda before its OK) under --ha
// with its disk replicated: the leader's copy starts out different and is
// brought to the primary's disk when replication starts, then takes every
// committed epoch's writes. A client PUTs keys over one TCP connection,
// the primary dies — killed at a random moment, or by fault injection in
// the middle of an epoch's transfer —, and every acknowledged key must come
// back from the recovered guest, which runs on the leader's copy, over the
// same connection and a new one, and be in that copy's bytes. Both
// policies, both modes.
func TestLinuxFailoverKeepsDiskWrites(t *testing.T) {
	// The guest boots once, on its own disk and TAP; every round restores
	// it onto the segment with a copy of that disk.
	bootDisk := filepath.Join(t.TempDir(), "boot.img")
	os.WriteFile(bootDisk, make([]byte, 1<<20), 0o600)
	snap, _ := bootedSnapshot(t, "tandem_loop=/dev/vda tandem_ip=10.78.0.15/24 tandem_kv=7000", "kv: listening on 7000",
		"--net", "tap:tndmboot1", "--disk", bootDisk)
	lab := newNetLab(t, "primary", "r1", "r2", "leader", "client")
	tap := lab.guestSegment(0, "client", "primary", "leader")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 17))
	for _, c := range []struct {
		policy, mode string
		midTransfer  bool
	}{{"fast", "sync", false}, {"ft", "async", false}, {"fast", "async", true}, {"ft", "sync", true}} {
		name := c.policy + "/" + c.mode
		if c.midTransfer {
			name += "/mid-transfer"
		}
		t.Run(name, func(t *testing.T) {
			diskFailoverRound(t, lab, rng, snap, bootDisk, tap, c.policy, c.mode, c.midTransfer)
		})
	}
}

func diskFailoverRound(t *testing.T, lab *netLab, rng *rand.Rand, snap, bootDisk, tap, policy, mode string, midTransfer bool) {
	const guest = "10.78.0.15:7000"
	dir := t.TempDir()
	primaryDisk, leaderDisk := filepath.Join(dir, "primary.img"), filepath.Join(dir, "leader.img")
	booted, err := os.ReadFile(bootDisk)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(primaryDisk, booted, 0o600)
	// The leader's copy differs: garbage the sync must replace.
	os.WriteFile(leaderDisk, bytes.Repeat([]byte("stale copy "), (1<<20)/11+1)[:1<<20], 0o600)
	c := startHACluster(t, lab, dir, "--net", "tap:"+tap, "--disk", leaderDisk)
	armed := filepath.Join(dir, "armed")
	if midTransfer {
		// Die while an epoch's pages are on the wire, once PUTs flow.
		c.primaryEnv = []string{fmt.Sprintf("%s=after:%s:%d", faultEnv, armed, 1+rng.IntN(3*4096))}
	}
	primary := c.startPrimary(t, lab, dir, policy, mode, "--restore", snap, "--net", "tap:"+tap, "--disk", primaryDisk)
	conn := dialGuestFor(t, lab, primary, guest)
	defer conn.Close()
	if !strings.Contains(primary.stderr.String(), "disk sync done") {
		t.Errorf("the primary did not report its disk sync; stderr:\n%s", primary.stderr.String())
	}
	acked, done := putKeys(conn)
	pollFor(t, "five acknowledged PUTs", time.Minute, func() bool { return acked.Load() >= 5 })
	if midTransfer {
		os.WriteFile(armed, nil, 0o600)
		select {
		case <-primary.done:
			primary.done <- nil
		case <-time.After(time.Minute):
			t.Fatal("the fault injection did not kill the primary")
		}
	} else {
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
		primary.kill()
	}
	atKill := acked.Load()
	pollFor(t, "PUTs acknowledged by the recovered guest", 2*time.Minute, func() bool { return acked.Load() >= atKill+5 })
	conn.Close()
	<-done
	n := acked.Load()
	fresh, err := lab.dialFrom("client", guest)
	if err != nil {
		t.Fatalf("a new connection to the recovered guest: %v", err)
	}
	defer fresh.Close()
	// Every acknowledged value is in the guest, and in the leader's copy,
	// which the recovered guest runs on (its PUTs were fsynced).
	lost := checkKeys(t, fresh, n, leaderDisk)
	raw, err := os.ReadFile(leaderDisk)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("stale copy")) {
		t.Error("the leader's disk still holds its stale content: the sync missed chunks")
	}
	t.Logf("%d PUTs acknowledged before the primary died, %d in all over one connection; lost %d", atKill, n, lost)
}

// TestLeaderDeviceUsageErrors: a node's devices for a Linux guest it may
// take over are checked when it starts, not at takeover.
func TestLeaderDeviceUsageErrors(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.img")
	os.WriteFile(empty, nil, 0o600)
	key := testKeyFile(t)
	leader := []string{"replica", "--listen", "127.0.0.1:0", "--auth-key", key, "--leader", "--replicas", "127.0.0.1:1"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		// Every node may take over: each checks its devices.
		{[]string{"replica", "--listen", "127.0.0.1:0", "--auth-key", key, "--net", "tap:tndmnosuch0"}, "no such network device"},
		{append(leader, "--net", "tap:tndmnosuch0"), "no such network device"},
		{append(leader, "--net", "bridge:br0"), "want tap:NAME"},
		{append(leader, "--disk", filepath.Join(dir, "missing.img")), "missing.img"},
		{append(leader, "--disk", empty), "is empty"},
	} {
		_, stderr, status := runTandem(t, tc.args...)
		if status != 2 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: status %d, stderr %q; want status 2 and %q", tc.args[5:], status, stderr, tc.want)
		}
	}
}

// putKeys PUTs key<i> value<i> over conn, one after the other, until the
// connection ends (done is closed then); acked counts those answered OK.
func putKeys(conn net.Conn) (acked *atomic.Int64, done chan struct{}) {
	acked, done = &atomic.Int64{}, make(chan struct{})
	go func() {
		defer close(done)
		r := bufio.NewReader(conn)
		for i := int64(0); ; i++ {
			conn.SetDeadline(time.Now().Add(2 * time.Minute))
			if _, err := fmt.Fprintf(conn, "PUT key%d value%d\n", i, i); err != nil {
				return
			}
			if line, err := r.ReadString('\n'); err != nil || line != "OK\n" {
				return
			}
			acked.Store(i + 1)
		}
	}()
	return acked, done
}

// checkKeys GETs key0 to key<n-1> over c, and checks that the disk image
// at disk holds each value (the guest fsyncs a PUT before its OK); it
// fails the test for every one missing and returns how many were.
func checkKeys(t *testing.T, c net.Conn, n int64, disk string) (lost int) {
	t.Helper()
	kv := newKVClient(t, c)
	for i := int64(0); i < n; i++ {
		if got, want := kv.ask(t, fmt.Sprintf("GET key%d", i)), fmt.Sprintf("VALUE value%d", i); got != want {
			t.Errorf("LOST WRITE: GET key%d answered %q, want %q", i, got, want)
			lost++
		}
	}
	raw, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < n; i++ {
		if !bytes.Contains(raw, []byte(fmt.Sprintf("value%d\x00", i))) {
			t.Errorf("LOST WRITE: the disk %s lacks value%d", filepath.Base(disk), i)
			lost++
		}
	}
	return lost
}
