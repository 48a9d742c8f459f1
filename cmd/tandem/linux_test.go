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
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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
		{[]string{"run", "--kernel", notKernel, "--ha"}, 2, "--ha does not apply to --kernel"},
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

// TestRunKernel boots the images/linux kernel through `tandem run` with a
// disk, a channel and the RNG to its init, which reboots: tandem exits 0.
// On a PVM host it also checks that tandem said which parameters the
// emulator needs and why.
func TestRunKernel(t *testing.T) {
	k, initrd := linuxGuest(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o600)
	serial := filepath.Join(dir, "serial.txt")
	_, stderr, status := runTandemFor(t, 6*time.Minute, "run", "--kernel", k.Vmlinux, "--initrd", initrd,
		"--cmdline", "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1",
		"--disk", disk+",ro", "--channel", "unix:"+filepath.Join(dir, "ch.sock"),
		"--vcpus", "1", "--mem", "128M", "--serial", "file:"+serial)
	out, _ := os.ReadFile(serial)
	if !strings.Contains(string(out), "Linux version") || !strings.Contains(string(out), "virtio_mmio.device=4K@0xd0000000:5") {
		t.Fatalf("console:\n%s\nstderr:\n%s", out, stderr)
	}
	if !strings.Contains(stderr, "loaded Linux") || !strings.Contains(stderr, "type=blk") {
		t.Errorf("stderr lacks the load and device lines:\n%s", stderr)
	}
	if vmm.GuestCodeEmulated() {
		for _, p := range []string{"noint3selftest", "clearcpuid="} {
			if !strings.Contains(stderr, "adding "+p) {
				t.Errorf("stderr does not say why it adds %s:\n%s", p, stderr)
			}
		}
	}
	if status != 0 || !strings.Contains(string(out), "tandem-init: done") {
		t.Errorf("status %d, console:\n%s", status, out)
	}
}

// tickLine matches the looping init's progress lines, complete ones only
// (the console file is read while the guest writes it).
var tickLine = regexp.MustCompile(`tandem-init: tick (\d+) disk (\d+)(?: net (\S+))?\n`)

// ticks returns the tick counts in a console, in order, and fails the
// test if a tick's disk read-back differs from its count or its network
// peer's answer is not the echo of that tick.
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
		out = append(out, n)
	}
	return out
}

// snapshotNetwork gives the snapshot test a network namespace holding a
// persistent TAP device at 10.0.2.1/24 and a UDP echo service on it
// (answering "echo-" and the datagram); tandem runs inside it through
// `ip netns exec`. It returns the namespace's name and the datagrams the
// service got.
func snapshotNetwork(t *testing.T, tap string) (string, <-chan string) {
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
	ready := make(chan error, 1)
	go func() {
		// The thread enters the namespace for good; the socket stays there.
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			ready <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ready <- err
			return
		}
		pc, err := net.ListenPacket("udp4", "10.0.2.1:7777")
		if err != nil {
			ready <- err
			return
		}
		t.Cleanup(func() { pc.Close() })
		ready <- nil
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case got <- string(buf[:n]):
			default:
			}
			pc.WriteTo(append([]byte("echo-"), buf[:n]...), from)
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("UDP echo in %s: %v", ns, err)
	}
	return ns, got
}

// TestLinuxSnapshotRestore snapshots a Linux guest in userspace that is
// counting, writing each count to a raw virtio disk and reading it back,
// and printing to COM1 and hvc0; restores it in another process from the
// snapshot alone (devices reopened from the paths it names); and checks
// that the guest carries on from the count it had, with its open file on
// /dev/vda still working. Mismatched restores are refused first.
func TestLinuxSnapshotRestore(t *testing.T) {
	k, initrd := linuxGuest(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	const tap = "tndmsnap0"
	ns, datagrams := snapshotNetwork(t, tap)
	inNS := func(args ...string) []string { return append([]string{"netns", "exec", ns, tandemBin}, args...) }
	serialA, serialB := filepath.Join(dir, "a.txt"), filepath.Join(dir, "b.txt")
	ctl := "unix:" + filepath.Join(dir, "a.ctl")
	a := startCommand(t, "ip", inNS("run", "--kernel", k.Vmlinux, "--initrd", initrd, "--mem", "128M",
		"--cmdline", "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vda tandem_ip=10.0.2.15/24 tandem_peer=10.0.2.1:7777",
		"--disk", disk, "--net", "tap:"+tap, "--channel", "unix:"+filepath.Join(dir, "ch.sock"),
		"--control", ctl, "--serial", "file:"+serialA)...)
	console := func(path string) string {
		b, _ := os.ReadFile(path)
		return strings.ReplaceAll(string(b), "\r\n", "\n")
	}
	pollFor(t, "the guest's third tick", 6*time.Minute, func() bool { return len(ticks(t, console(serialA))) >= 3 })
	if _, stderr, status := runTandem(t, "snapshot", "--control", ctl, "--out", filepath.Join(dir, "snap"), "--stop"); status != 0 {
		t.Fatalf("snapshot: status %d, stderr %q", status, stderr)
	}
	if status := a.wait(t, time.Minute); status != 0 {
		t.Fatalf("the snapshotted tandem exited with %d; stderr:\n%s", status, a.stderr.String())
	}
	before := ticks(t, console(serialA))
	last := before[len(before)-1]
	if strings.Contains(console(serialA), "FAIL") {
		t.Fatalf("the guest reported a failure before the snapshot:\n%s", console(serialA))
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

	for len(datagrams) > 0 {
		<-datagrams // those of the first run
	}
	b := startCommand(t, "ip", inNS("run", "--restore", snap, "--serial", "file:"+serialB)...)
	hvc := dialWhenReady(t, b, filepath.Join(dir, "ch.sock"))
	defer hvc.Close()
	pollFor(t, "three ticks after the restore", 2*time.Minute, func() bool { return len(ticks(t, console(serialB))) >= 3 })
	after := ticks(t, console(serialB))
	t.Logf("ticks before the snapshot: %d to %d; after the restore: %v", before[0], last, after)
	if after[0] != last+1 {
		t.Errorf("ticks before the snapshot ended at %d, after the restore they start at %d (want %d)\n%s", last, after[0], last+1, console(serialB))
	}
	for i := 1; i < len(after); i++ {
		if after[i] != after[i-1]+1 {
			t.Errorf("ticks after the restore skip: %v", after)
			break
		}
	}
	if strings.Contains(console(serialB), "FAIL") {
		t.Errorf("the restored guest reported a failure:\n%s", console(serialB))
	}
	// The network works in the restored guest: the peer got its ticks
	// (ticks checked each answer).
	select {
	case d := <-datagrams:
		if !strings.HasPrefix(d, "tick-") {
			t.Errorf("the peer got %q from the restored guest", d)
		}
	default:
		t.Error("the peer got no datagram from the restored guest")
	}
	// hvc0 works in the restored guest: its ticks reach the new host end.
	// (The first line may be the end of one written before we connected.)
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
	// The disk holds a count the restored guest wrote.
	raw, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimRight(string(raw[:32]), "\x00"))
	if n <= last {
		t.Errorf("disk holds count %d, not one written after the restore (> %d)", n, last)
	}
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
