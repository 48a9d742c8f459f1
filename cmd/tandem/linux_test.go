package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	linuxguest "github.com/tandemvm/tandem/images/linux"
	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/vmm"
)

func TestLinuxUsageErrors(t *testing.T) {
	dir := t.TempDir()
	notKernel := filepath.Join(dir, "notes.txt")
	os.WriteFile(notKernel, []byte("this is not a kernel\n"), 0o644)
	for _, tc := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"run", "--kernel", notKernel, "--guest", "hello"}, 2, "exclude each other"},
		{[]string{"run", "--kernel", notKernel, "--restore", "x.snap"}, 2, "--kernel does not apply to --restore"},
		{[]string{"run", "--disk", "d.img"}, 2, "--disk needs --kernel"},
		{[]string{"run", "--guest", "hello", "--cmdline", "quiet"}, 2, "--cmdline needs --kernel"},
		{[]string{"run", "--kernel", notKernel, "--entry", "real16"}, 2, "--entry does not apply to --kernel"},
		{[]string{"run", "--kernel", notKernel, "--kernel-entry", "uefi"}, 2, "unknown Linux entry"},
		{[]string{"run", "--kernel", notKernel, "--disk", "d.img,rw"}, 2, `unknown option "rw"`},
		{[]string{"run", "--kernel", notKernel, "--net", "bridge:br0"}, 2, "want tap:NAME"},
		{[]string{"run", "--kernel", notKernel, "--channel", "stdio"}, 2, "--channel stdio"},
		{[]string{"run", "--kernel", notKernel, "--vcpus", "300"}, 2, "--vcpus 300"},
		{[]string{"run", "--kernel", filepath.Join(dir, "missing")}, 2, "no such file"},
		{[]string{"run", "--kernel", notKernel, "--initrd", filepath.Join(dir, "missing")}, 2, "--initrd"},
	} {
		t.Run(strings.Join(tc.args[1:], " "), func(t *testing.T) {
			_, stderr, status := runTandem(t, tc.args...)
			if status != tc.status || !strings.Contains(stderr, tc.want) {
				t.Errorf("status %d, stderr %q; want status %d and %q", status, stderr, tc.status, tc.want)
			}
		})
	}
}

func TestLinuxNotAKernel(t *testing.T) {
	kvmtest.Open(t)
	notKernel := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notKernel, []byte("this is not a kernel\n"), 0o644)
	_, stderr, status := runTandem(t, "run", "--kernel", notKernel, "--serial", "none")
	if status != 1 || !strings.Contains(stderr, "not a Linux kernel") {
		t.Errorf("status %d, stderr %q", status, stderr)
	}
}

// linuxGuest returns the images/linux kernel and the initramfs path,
// building them if this machine has not yet. Without KVM the test skips
// (kvmtest's policy), and without build tools too unless KVM tests are
// required.
func linuxGuest(t *testing.T) (linuxguest.Kernel, string) {
	t.Helper()
	kvmtest.Open(t)
	k, err := linuxguest.BuildKernel(context.Background())
	if err != nil {
		if errors.Is(err, linuxguest.ErrToolsMissing) && !kvmtest.Required() {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	initrd, err := linuxguest.BuildInitramfs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return k, initrd
}

// tickLine matches the looping init's progress lines, complete ones only
// (the console file is read while the guest writes it).
var tickLine = regexp.MustCompile(`tandem-init: tick (\d+) disk (\d+)(?: net (\S+))?(?: tcp (\S+))?\n`)

// ticks returns the tick counts in a console, in order, and fails the
// test if a tick's disk read-back differs from its count or the answer of
// its UDP or TCP peer is not the echo of that tick.
func ticks(t *testing.T, console string) []int {
	t.Helper()
	var out []int
	for _, m := range tickLine.FindAllStringSubmatch(console, -1) {
		n, _ := strconv.Atoi(m[1])
		if m[1] != m[2] {
			t.Errorf("tick %s read %s back from the disk", m[1], m[2])
		}
		if want := "echo-tick-" + m[1]; m[3] != want {
			t.Errorf("tick %s: network answer %q, want %q", m[1], m[3], want)
		}
		if want := "echo-tcp-tick-" + m[1]; m[4] != want {
			t.Errorf("tick %s: TCP answer %q, want %q", m[1], m[4], want)
		}
		out = append(out, n)
	}
	return out
}

// guestPeers is what the snapshot test's network namespace serves the
// guest: the datagrams its UDP echo got, and how many TCP connections its
// TCP echo accepted.
type guestPeers struct {
	ns        string
	datagrams <-chan string
	tcpConns  atomic.Int32
}

// inNamespace runs fn in the namespace (see inNetns).
func (p *guestPeers) inNamespace(fn func() error) error { return inNetns(p.ns, fn) }

// dialGuest opens a TCP connection to the guest from the namespace.
func (p *guestPeers) dialGuest(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := dialInNetns(p.ns, addr, 30*time.Second)
	if err != nil {
		t.Fatalf("dial the guest at %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// snapshotNetwork gives the snapshot test a network namespace holding a
// persistent TAP device at 10.0.2.1/24, a UDP echo service on port 7777
// (answering "echo-" and the datagram) and a TCP echo service on port 7778
// (answering each line with "echo-" and the line); tandem runs inside it
// through `ip netns exec`. The services live as long as the test, so a
// guest's TCP connection outlives the tandem process that opened it.
func snapshotNetwork(t *testing.T, tap string) (string, *guestPeers) {
	t.Helper()
	ns := fmt.Sprintf("tandem-snap-%d", os.Getpid())
	ip := func(args ...string) { t.Helper(); runIP(t, args...) }
	ip("netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ip("-n", ns, "link", "set", "lo", "up")
	ip("-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
	ip("-n", ns, "addr", "add", "10.0.2.1/24", "dev", tap)
	ip("-n", ns, "link", "set", tap, "up")

	got := make(chan string, 1024)
	peers := &guestPeers{datagrams: got, ns: ns}
	var sk struct {
		pc net.PacketConn
		ln net.Listener
	}
	err := peers.inNamespace(func() (err error) {
		if sk.pc, err = net.ListenPacket("udp4", "10.0.2.1:7777"); err != nil {
			return err
		}
		if sk.ln, err = net.Listen("tcp4", "10.0.2.1:7778"); err != nil {
			sk.pc.Close()
		}
		return err
	})
	if err != nil {
		t.Fatalf("echo services in %s: %v", ns, err)
	}
	t.Cleanup(func() { sk.pc.Close(); sk.ln.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := sk.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- string(buf[:n]):
			default:
			}
			sk.pc.WriteTo(append([]byte("echo-"), buf[:n]...), from)
		}
	}()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := sk.ln.Accept()
			if err != nil {
				return
			}
			peers.tcpConns.Add(1)
			conns = append(conns, c)
			go func() {
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte("echo-" + line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ns, peers
}

// TestLinuxSnapshotRestore boots the images/linux kernel with two vCPUs
// through `tandem run --kernel` into a looping init that counts, writes
// each count to a raw virtio disk and reads it back, prints to COM1 and
// hvc0, and exchanges each count with a UDP and a TCP peer, while a child
// serves a key-value store on the same disk; snapshots it in userspace;
// restores it in another process from the snapshot alone (devices reopened
// from the paths it names); and checks that the guest carries on from the
// count it had — its open file on /dev/vda, its TCP connection out (never
// reopened), a client's TCP connection in to its key-value store, its UDP
// socket and hvc0 still working —
// until a "stop" sent over hvc0 lets it reboot, which ends tandem with
// status 0. Mismatched restores are refused first. It is the package's one
// Linux boot: the `tandem run --kernel` path is checked on the way.
func TestLinuxSnapshotRestore(t *testing.T) {
	k, initrd := linuxGuest(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	const tap = "tndmsnap0"
	ns, peers := snapshotNetwork(t, tap)
	inNS := func(args ...string) []string { return append([]string{"netns", "exec", ns, tandemBin}, args...) }
	serialA, serialB := filepath.Join(dir, "a.txt"), filepath.Join(dir, "b.txt")
	ctl := "unix:" + filepath.Join(dir, "a.ctl")
	a := startCommand(t, "ip", inNS("run", "--kernel", k.Vmlinux, "--initrd", initrd, "--mem", "128M", "--vcpus", "2",
		"--cmdline", "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vda tandem_ip=10.0.2.15/24 tandem_peer=10.0.2.1:7777 tandem_tcp=10.0.2.1:7778 tandem_kv=7000",
		"--disk", disk, "--net", "tap:"+tap, "--channel", "unix:"+filepath.Join(dir, "ch.sock"),
		"--control", ctl, "--serial", "file:"+serialA)...)
	console := func(path string) string {
		b, _ := os.ReadFile(path)
		return strings.ReplaceAll(string(b), "\r\n", "\n")
	}
	pollFor(t, "the guest's third tick", 6*time.Minute, func() bool { return len(ticks(t, console(serialA))) >= 3 })
	pollFor(t, "the guest's key-value store", time.Minute, func() bool { return strings.Contains(console(serialA), "tandem-init: kv: listening on 7000") })
	kv := newKVClient(t, peers.dialGuest(t, "10.0.2.15:7000"))
	if got := kv.ask(t, "PUT before-snapshot 1111"); got != "OK" {
		t.Fatalf("PUT before the snapshot: %q", got)
	}
	if _, stderr, status := runTandem(t, "snapshot", "--control", ctl, "--out", filepath.Join(dir, "snap"), "--stop"); status != 0 {
		t.Fatalf("snapshot: status %d, stderr %q; the snapshotted tandem's stderr:\n%s", status, stderr, a.stderr.String())
	}
	if status := a.wait(t, time.Minute); status != 0 {
		t.Fatalf("the snapshotted tandem exited with %d; stderr:\n%s", status, a.stderr.String())
	}
	bootConsole, stderrA := console(serialA), a.stderr.String()
	if !strings.Contains(bootConsole, "Linux version") || !strings.Contains(bootConsole, "virtio_mmio.device=4K@0xd0000000:5") {
		t.Errorf("the boot console lacks the banner or the devices' parameters:\n%s", bootConsole)
	}
	if !strings.Contains(stderrA, "loaded Linux") || !strings.Contains(stderrA, "type=blk") {
		t.Errorf("stderr lacks the load and device lines:\n%s", stderrA)
	}
	if vmm.GuestCodeEmulated() {
		for _, p := range []string{"noint3selftest", "clearcpuid="} {
			if !strings.Contains(stderrA, "adding "+p) {
				t.Errorf("stderr does not say why it adds %s:\n%s", p, stderrA)
			}
		}
	}
	before := ticks(t, bootConsole)
	last := before[len(before)-1]
	if strings.Contains(bootConsole, "FAIL") {
		t.Fatalf("the guest reported a failure before the snapshot:\n%s", bootConsole)
	}

	// Mismatches are refused with what is wrong.
	snap := filepath.Join(dir, "snap")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mem", "256M"}, "disagrees with the snapshot's 128 MiB"},
		{[]string{"--disk", disk, "--disk", disk}, "the snapshot has 1 disks, 2 given"},
		{[]string{"--net", "tap:x", "--net", "tap:y"}, "the snapshot has 1 network interfaces, 2 given"},
		{[]string{"--disk", filepath.Join(dir, "missing.img")}, "missing.img"},
		{[]string{"--kernel", k.Vmlinux}, "does not apply to --restore"},
	} {
		args := append([]string{"run", "--restore", snap, "--serial", "none"}, tc.args...)
		_, stderr, status := runTandem(t, args...)
		if status == 0 || !strings.Contains(stderr, tc.want) {
			t.Errorf("run %v: status %d, stderr %q; want a refusal naming %q", tc.args, status, stderr, tc.want)
		}
	}

	for len(peers.datagrams) > 0 {
		<-peers.datagrams // those of the first run
	}
	b := startCommand(t, "ip", inNS("run", "--restore", snap, "--serial", "file:"+serialB)...)
	hvc := dialWhenReady(t, b, filepath.Join(dir, "ch.sock"))
	defer hvc.Close()
	// The snapshot may cut a tick's line in two: its start ends the first
	// console, its end begins the second. Read as one console, the ticks
	// run on from those before the snapshot without a gap or a repeat.
	pollFor(t, "three ticks after the restore", 2*time.Minute, func() bool { return len(ticks(t, console(serialB))) >= 3 })
	rawA, _ := os.ReadFile(serialA)
	rawB, _ := os.ReadFile(serialB)
	both := ticks(t, strings.ReplaceAll(string(rawA)+string(rawB), "\r\n", "\n"))
	t.Logf("ticks before the snapshot: %d to %d; after the restore: %v", before[0], last, ticks(t, console(serialB)))
	if both[0] != before[0] || both[len(both)-1] < last+3 {
		t.Errorf("ticks across the snapshot %v: want %d on to beyond %d", both, before[0], last+2)
	}
	for i := 1; i < len(both); i++ {
		if both[i] != both[i-1]+1 {
			t.Errorf("ticks across the snapshot skip or repeat: %v\n%s", both, console(serialB))
			break
		}
	}
	// The TCP peer answered every tick (ticks checked each answer) on the
	// connection the guest opened before the snapshot.
	if n := peers.tcpConns.Load(); n != 1 {
		t.Errorf("the TCP peer accepted %d connections, want the one the guest kept across the restore", n)
	}
	// The guest's key-value store serves the connection a client opened
	// before the snapshot, and new ones.
	if got := kv.ask(t, "GET before-snapshot"); got != "VALUE 1111" {
		t.Errorf("GET after the restore, on the connection from before: %q, want VALUE 1111", got)
	}
	if got := kv.ask(t, "PUT after-restore 2222"); got != "OK" {
		t.Errorf("PUT after the restore: %q", got)
	}
	if got := newKVClient(t, peers.dialGuest(t, "10.0.2.15:7000")).ask(t, "GET after-restore"); got != "VALUE 2222" {
		t.Errorf("GET on a new connection after the restore: %q, want VALUE 2222", got)
	}
	// The network works in the restored guest: the UDP peer got its ticks.
	select {
	case d := <-peers.datagrams:
		if !strings.HasPrefix(d, "tick-") {
			t.Errorf("the peer got %q from the restored guest", d)
		}
	default:
		t.Error("the peer got no datagram from the restored guest")
	}
	// hvc0 works in the restored guest in both directions: its ticks reach
	// the new host end (the first line may be the end of one written before
	// we connected), and a "stop" from it ends the loop.
	hvc.SetReadDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(hvc)
	var lines []string
	for len(lines) < 3 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Errorf("virtio-console after the restore: %v after %q", err, lines)
			break
		}
		if lines = append(lines, line); strings.HasPrefix(line, "tick ") {
			break
		}
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[len(lines)-1], "tick ") {
		t.Errorf("virtio-console after the restore: %q, want a tick", lines)
	}
	if _, err := hvc.Write([]byte("stop\n")); err != nil {
		t.Fatalf("virtio-console: %v", err)
	}
	if status := b.wait(t, 2*time.Minute); status != 0 {
		t.Errorf("the restored tandem exited with %d after the guest's reboot; stderr:\n%s", status, b.stderr.String())
	}
	final := console(serialB)
	if !strings.Contains(final, "tandem-init: stopped at") || !strings.Contains(final, "tandem-init: done") {
		t.Errorf("the restored guest did not stop and reboot on hvc0's \"stop\":\n%s", final)
	}
	if strings.Contains(final, "FAIL") {
		t.Errorf("the restored guest reported a failure:\n%s", final)
	}
	// The disk holds a count the restored guest wrote.
	raw, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimRight(string(raw[:32]), "\x00"))
	if n <= last {
		t.Errorf("disk holds count %d, not one written after the restore (> %d)", n, last)
	}
	// And the key-value store's values, both of them.
	for _, v := range []string{"before-snapshot\x00", "1111\x00", "after-restore\x00", "2222\x00"} {
		if !strings.Contains(string(raw[4096:]), v) {
			t.Errorf("the disk's key-value store lacks %q", strings.TrimRight(v, "\x00"))
		}
	}
}

// kvClient speaks the test guest's key-value protocol (images/linux
// initramfs: one request line, one answer line) over one connection.
type kvClient struct {
	c net.Conn
	r *bufio.Reader
}

func newKVClient(t *testing.T, c net.Conn) *kvClient { return &kvClient{c, bufio.NewReader(c)} }

// ask sends one request and returns the answer without its newline.
func (k *kvClient) ask(t *testing.T, req string) string {
	t.Helper()
	k.c.SetDeadline(time.Now().Add(time.Minute))
	if _, err := k.c.Write([]byte(req + "\n")); err != nil {
		t.Fatalf("key-value %q: %v", req, err)
	}
	line, err := k.r.ReadString('\n')
	if err != nil {
		t.Fatalf("key-value %q: %v after %q", req, err, line)
	}
	return strings.TrimSuffix(line, "\n")
}

// pollFor polls cond until it holds, failing the test after limit.
func pollFor(t *testing.T, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestDevicesFromMeta(t *testing.T) {
	good := linuxDevices{
		disks:   []diskSpec{{path: "/a.img"}, {path: "/b.img", readOnly: true}},
		nets:    []netSpec{{tap: "tap0", mac: netMAC(0)}},
		channel: "unix:/tmp/ch.sock",
		rng:     true,
	}
	back, err := devicesFromMeta(good.meta())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(back) != fmt.Sprint(good) {
		t.Errorf("round trip: %v, want %v", back, good)
	}
	for _, tc := range []struct {
		name string
		cfgs []vmm.VirtioConfig
		want string
	}{
		{"unknown type", []vmm.VirtioConfig{{Type: "gpu"}}, `unknown type "gpu"`},
		{"out of order", []vmm.VirtioConfig{{Type: "rng"}, {Type: "blk", Path: "/a"}}, "out of order"},
		{"disk without path", []vmm.VirtioConfig{{Type: "blk"}}, "no path"},
		{"bad MAC", []vmm.VirtioConfig{{Type: "net", TAP: "t", MAC: "zz"}}, "MAC"},
		{"two consoles", []vmm.VirtioConfig{{Type: "console", Console: "file:/a"}, {Type: "console", Console: "file:/b"}}, "more than one virtio-console"},
		{"two rngs", []vmm.VirtioConfig{{Type: "rng"}, {Type: "rng"}}, "more than one virtio-rng"},
	} {
		_, err := devicesFromMeta(tc.cfgs)
		if !errors.Is(err, vmm.ErrSnapshot) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrSnapshot naming %q", tc.name, err, tc.want)
		}
	}

	// Overrides keep the count and the guest's MACs.
	l := &linuxFlags{channel: new(string)}
	l.nets = listFlag{"tap:other"}
	d := good
	if err := d.override(l, map[string]bool{"net": true}); err != nil {
		t.Fatal(err)
	}
	if d.nets[0].tap != "other" || d.nets[0].mac.String() != netMAC(0).String() {
		t.Errorf("net override: %+v", d.nets[0])
	}
	l.disks = listFlag{"/only.img"}
	if err := d.override(l, map[string]bool{"disk": true}); err == nil || !strings.Contains(err.Error(), "2 disks, 1 given") {
		t.Errorf("disk count mismatch: %v", err)
	}
	*l.channel = "stdio"
	if err := d.override(l, map[string]bool{"channel": true}); err == nil {
		t.Error("--channel stdio accepted on restore")
	}
}
