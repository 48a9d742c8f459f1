package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/vmm"
)

// tandemBin is the tandem binary built for these tests.
var tandemBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tandem-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tandemBin = filepath.Join(dir, "tandem")
	build := exec.Command("go", "build", "-o", tandemBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // the README's edge build: static (TestEdgeBinary)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building tandem:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runTandem runs tandem to completion and returns its output and status.
func runTandem(t *testing.T, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	return runTandemFor(t, time.Minute, args...)
}

// runTandemFor is runTandem for a run that may take up to limit (a Linux
// boot where the emulator runs the guest kernel).
func runTandemFor(t *testing.T, limit time.Duration, args ...string) (stdout, stderr string, status int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, tandemBin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		status = exit.ExitCode()
	default:
		t.Fatalf("tandem %v: %v", args, err)
	}
	return out.String(), errOut.String(), status
}

// process is a tandem run in the background.
type process struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	done           chan error
}

func startTandem(t *testing.T, args ...string) *process {
	t.Helper()
	return startCommand(t, tandemBin, args...)
}

// startCommand starts a command in the background, as startTandem does
// (for tandem run through a wrapper such as ip netns exec).
func startCommand(t *testing.T, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case err := <-p.done:
		p.done <- err
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its status.
func (p *process) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(timeout):
		t.Fatalf("tandem still running after %v; stderr:\n%s", timeout, p.stderr.String())
	}
	return -1
}

// dialWhenReady connects to a Unix socket, polling until the process has
// created it.
func dialWhenReady(t *testing.T, p *process, path string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("tandem exited (%v) before listening on %s; stderr:\n%s", err, path, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no listener on %s after 30s: %v; stderr:\n%s", path, err, p.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serialClient speaks the counter protocol over a serial socket.
type serialClient struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

func (c *serialClient) call(line string) string {
	c.t.Helper()
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c.conn, "%s\n", line); err != nil {
		c.t.Fatal(err)
	}
	for {
		reply, err := c.r.ReadString('\n')
		if err != nil {
			c.t.Fatalf("%s: no reply: %v", line, err)
		}
		// The boot banner reaches a client only if it connected in time,
		// and a client that connected while it was written gets its end
		// (the console drops what is written while nobody listens).
		if !strings.HasSuffix("counter: ready\n", reply) {
			return strings.TrimSuffix(reply, "\n")
		}
	}
}

func (c *serialClient) script(steps [][2]string) {
	c.t.Helper()
	for _, s := range steps {
		if got := c.call(s[0]); got != s[1] {
			c.t.Fatalf("%q: reply %q, want %q", s[0], got, s[1])
		}
	}
}

func TestUsageErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-image")
	notEmpty := t.TempDir()
	if err := os.WriteFile(filepath.Join(notEmpty, "notes"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{}, 2, "usage: tandem"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"run"}, 2, "say what to run"},
		{[]string{"run", "--guest", "hello", "--mem", "3K"}, 2, "--mem: vmm: bad guest memory size: 3K is below the minimum of 1 MiB"},
		{[]string{"run", "--guest", "hello", "--mem", "lots"}, 2, `"lots" is not a size`},
		{[]string{"run", "--guest", missing}, 2, "no built-in guest of that name"},
		{[]string{"run", "--guest", "hello", "--vcpus", "0"}, 2, "--vcpus 0"},
		{[]string{"run", "--guest", "hello", "--args", "x=1"}, 2, "takes no arguments"},
		{[]string{"run", "--guest", "dirty", "--args", "pages=many"}, 2, "pages"},
		{[]string{"run", "--guest", "hello", "--dirty", "sometimes"}, 2, "unknown dirty tracker"},
		{[]string{"run", "--guest", "hello", "--serial", "carrier-pigeon"}, 2, "--serial"},
		{[]string{"run", "--guest", "hello", "--entry", "real16"}, 2, "--entry does not apply"},
		{[]string{"run", "--guest", "hello", "--restore", "x.snap"}, 2, "exclude each other"},
		{[]string{"run", "--guest", "hello", "stray"}, 2, `unexpected argument "stray"`},
		{[]string{"run", "--restore", missing}, 1, "no such file"},
		{[]string{"snapshot"}, 2, "--control and --out are required"},
		{[]string{"bench", "--linux", "--quick"}, 2, "--linux takes --epochs and --puts only (--quick)"},
		{[]string{"bench", "--linux", "--puts", "3"}, 2, "--puts 3: want at least 10"},
		{[]string{"run", "--bogus-flag"}, 2, "flag provided but not defined"},
		{[]string{"run", "--guest", "hello", "--persist", notEmpty, "--resume", notEmpty}, 2, "--persist and --resume exclude each other"},
		{[]string{"run", "--guest", "hello", "--persist", notEmpty}, 2, "continue that VM with --resume"},
		{[]string{"run", "--resume", missing}, 1, "not a persisted Tandem VM"},
		{[]string{"run", "--resume", notEmpty, "--guest", "hello"}, 2, "holds its guest"},
		{[]string{"run", "--guest", "hello", "--persist-epoch", "10ms"}, 2, "need --persist or --resume"},
		{[]string{"run", "--guest", "hello", "--persist", missing, "--mem-file", missing}, 2, "leave --mem-file out"},
		{[]string{"run", "--resume", notEmpty, "--kernel", missing}, 2, "holds its guest"},
		{[]string{"run", "--guest", "hello", "--persist", filepath.Join(notEmpty, "new"), "--kernel", missing}, 2, "exclude each other"},
		{[]string{"run", "--guest", "hello", "--persist", missing, "--persist-write-factor", "0.5"}, 2, "--persist-write-factor 0.5: want 1"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, stderr, status := runTandem(t, tc.args...)
			if status != tc.status || !strings.Contains(stderr, tc.want) {
				t.Errorf("status %d, stderr %q; want status %d and %q", status, stderr, tc.status, tc.want)
			}
		})
	}
}

func TestRunHello(t *testing.T) {
	kvmtest.Open(t)
	stdout, stderr, status := runTandem(t, "run", "--guest", "hello", "--mem", "32M", "--vcpus", "2", "--serial", "stdio")
	if status != 0 || stdout != "hello: Tandem guest up, 2 vCPUs, 32 MiB\n" {
		t.Errorf("status %d, stdout %q, stderr %q", status, stdout, stderr)
	}
}

func TestRunImageFileReportsGuestStatus(t *testing.T) {
	kvmtest.Open(t)
	dir := t.TempDir()
	long := filepath.Join(dir, "exit7.bin")
	// mov eax, 7; out 0xf4, eax
	os.WriteFile(long, []byte{0xB8, 7, 0, 0, 0, 0xE7, 0xF4}, 0o644)
	if _, stderr, status := runTandem(t, "run", "--guest", long, "--serial", "none"); status != 7 {
		t.Errorf("status %d, want the guest's 7; stderr %q", status, stderr)
	}
	real := filepath.Join(dir, "real.bin")
	// mov al, 'R'; mov dx, 0x3f8; out dx, al; mov al, 0; out 0xf4, al
	os.WriteFile(real, []byte{0xB0, 'R', 0xBA, 0xF8, 0x03, 0xEE, 0xB0, 0, 0xE6, 0xF4}, 0o644)
	if stdout, stderr, status := runTandem(t, "run", "--guest", real, "--entry", "real16"); status != 0 || stdout != "R" {
		t.Errorf("real16: status %d, stdout %q, stderr %q", status, stdout, stderr)
	}
	empty := filepath.Join(dir, "empty.bin")
	os.WriteFile(empty, nil, 0o644)
	if _, stderr, status := runTandem(t, "run", "--guest", empty); status != 2 || !strings.Contains(stderr, "empty") {
		t.Errorf("empty image: status %d, stderr %q", status, stderr)
	}
}

func TestCounterOverSerialSocket(t *testing.T) {
	kvmtest.Open(t)
	sock := filepath.Join(t.TempDir(), "counter.sock")
	p := startTandem(t, "run", "--guest", "counter", "--serial", "unix:"+sock)
	conn := dialWhenReady(t, p, sock)
	defer conn.Close()
	c := &serialClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	c.script([][2]string{
		{"GET", "VALUE 0"},
		{"INC alice", "OK alice 1"},
		{"INC bob", "OK bob 2"},
		{"GET", "VALUE 2"},
		{"HELLO", "ERR unknown command"},
	})
	// A client that reconnects talks to the same guest.
	conn.Close()
	conn2 := dialWhenReady(t, p, sock)
	defer conn2.Close()
	c2 := &serialClient{t: t, conn: conn2, r: bufio.NewReader(conn2)}
	c2.script([][2]string{{"INC alice", "OK alice 3"}})
	p.cmd.Process.Signal(os.Interrupt)
	if status := p.wait(t, 30*time.Second); status != 0 {
		t.Errorf("exit status %d after SIGINT; stderr:\n%s", status, p.stderr.String())
	}
}

func TestSnapshotRestoreAcrossProcesses(t *testing.T) {
	kvmtest.Open(t)
	dir := t.TempDir()
	snapA, snapB := filepath.Join(dir, "a.snap"), filepath.Join(dir, "b.snap")

	a := startTandem(t, "run", "--guest", "counter", "--vcpus", "2", "--serial", "unix:"+dir+"/a.sock", "--control", "unix:"+dir+"/a.ctl")
	conn := dialWhenReady(t, a, dir+"/a.sock")
	ca := &serialClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	ca.script([][2]string{{"INC 1", "OK 1 1"}, {"INC 2", "OK 2 2"}, {"INC 3", "OK 3 3"}})
	stdout, stderr, status := runTandem(t, "snapshot", "--control", "unix:"+dir+"/a.ctl", "--out", snapA, "--stop")
	if status != 0 || !strings.Contains(stdout, "wrote "+snapA) {
		t.Fatalf("snapshot: status %d, stdout %q, stderr %q", status, stdout, stderr)
	}
	if status := a.wait(t, 30*time.Second); status != 0 {
		t.Fatalf("process A exited with %d after the stopping snapshot; stderr:\n%s", status, a.stderr.String())
	}
	conn.Close()

	b := startTandem(t, "run", "--restore", snapA, "--serial", "unix:"+dir+"/b.sock", "--control", "unix:"+dir+"/b.ctl")
	// The counter idles in hlt until input arrives, so a snapshot of B taken
	// before any input shows exactly the machine A saved.
	dialWhenReady(t, b, dir+"/b.ctl").Close()
	if _, stderr, status := runTandem(t, "snapshot", "--control", "unix:"+dir+"/b.ctl", "--out", snapB); status != 0 {
		t.Fatalf("snapshot of B: status %d, stderr %q", status, stderr)
	}
	stA, memA := readSnapshot(t, snapA)
	stB, memB := readSnapshot(t, snapB)
	for _, d := range vmm.DiffStates(stA, stB) {
		t.Error("restored machine differs: " + d)
	}
	if !bytes.Equal(memA, memB) {
		for pg := 0; pg < len(memA)/vmm.PageSize; pg++ {
			if !bytes.Equal(memA[pg*vmm.PageSize:(pg+1)*vmm.PageSize], memB[pg*vmm.PageSize:(pg+1)*vmm.PageSize]) {
				t.Errorf("guest page %#x differs after restore", pg)
				break
			}
		}
	}
	conn = dialWhenReady(t, b, dir+"/b.sock")
	defer conn.Close()
	cb := &serialClient{t: t, conn: conn, r: bufio.NewReader(conn)}
	cb.script([][2]string{{"GET", "VALUE 3"}, {"INC 4", "OK 4 4"}})
}

func readSnapshot(t *testing.T, path string) (*vmm.State, []byte) {
	t.Helper()
	s, err := vmm.OpenSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mem := make([]byte, s.Meta.MemBytes)
	if err := s.ReadMemory(mem); err != nil {
		t.Fatal(err)
	}
	return s.State, mem
}

func TestDemo(t *testing.T) {
	kvmtest.Open(t)
	stdout, stderr, status := runTandem(t, "demo", "--incs", "10")
	if status != 0 || !strings.Contains(stdout, "increments were acknowledged and none were lost") || !strings.Contains(stdout, "leader: recovered epoch") {
		t.Errorf("status %d\nstdout:\n%s\nstderr:\n%s", status, stdout, stderr)
	}
}

// TestDemoLinux runs `tandem demo --linux`, the Linux HA story in one
// command: it must end with nothing lost and its namespace removed.
func TestDemoLinux(t *testing.T) {
	linuxGuest(t)
	if os.Geteuid() != 0 {
		if kvmtest.Required() {
			t.Fatal("tandem demo --linux needs root for its network namespace")
		}
		t.Skip("tandem demo --linux needs root for its network namespace")
	}
	stdout, stderr, status := runTandemFor(t, 10*time.Minute, "demo", "--linux", "--incs", "5")
	if status != 0 || !strings.Contains(stdout, ": 0 lost; the leader's disk copy holds") || !strings.Contains(stdout, "connection carried on") {
		t.Errorf("status %d\nstdout:\n%s\nstderr:\n%s", status, stdout, stderr)
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), "tandem-demo-") {
		t.Errorf("the demo left its namespace behind: %s", out)
	}
}

// BenchmarkResidentMemory starts `tandem run` with an idle counter guest and
// reports the process's resident memory outside guest RAM, and the guest RAM
// that is resident. Firecracker documents at most 5 MiB of VMM overhead.
func BenchmarkResidentMemory(b *testing.B) {
	kvmtest.Open(b)
	const guestMiB = 256
	for i := 0; i < b.N; i++ {
		dir := b.TempDir()
		cmd := exec.Command(tandemBin, "run", "--guest", "counter", "--mem", fmt.Sprintf("%dM", guestMiB), "--serial", "unix:"+dir+"/s.sock")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		// The guest is up once it answers on its serial line.
		deadline := time.Now().Add(30 * time.Second)
		var conn net.Conn
		for {
			var err error
			if conn, err = net.Dial("unix", dir+"/s.sock"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal(err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Fprintf(conn, "GET\n")
		r := bufio.NewReader(conn)
		for line, _ := r.ReadString('\n'); !strings.HasPrefix(line, "VALUE"); line, _ = r.ReadString('\n') {
			if time.Now().After(deadline) {
				b.Fatal("no answer from the guest")
			}
		}
		other, guest, err := residentKiB(cmd.Process.Pid, guestMiB<<20)
		conn.Close()
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(other), "vmm-rss-KiB")
		b.ReportMetric(float64(guest), "guest-rss-KiB")
	}
}

// residentKiB sums the Rss of a process's mappings from /proc/PID/smaps,
// separating the guest-RAM mapping (the one of exactly guestBytes).
func residentKiB(pid int, guestBytes uint64) (other, guest uint64, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, 0, err
	}
	inGuest := false
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		var lo, hi uint64
		if _, err := fmt.Sscanf(f[0], "%x-%x", &lo, &hi); err == nil && strings.Contains(f[0], "-") && len(f) >= 5 {
			inGuest = hi-lo == guestBytes
			continue
		}
		if f[0] == "Rss:" && len(f) >= 2 {
			var kib uint64
			fmt.Sscanf(f[1], "%d", &kib)
			if inGuest {
				guest += kib
			} else {
				other += kib
			}
		}
	}
	return other, guest, nil
}

// TestHAGuestExitIsNoFailure: a replicated guest that exits on its own says
// goodbye, its last output is released, and the leader does not take over.
func TestHAGuestExitIsNoFailure(t *testing.T) {
	kvmtest.Open(t)
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	key := testKeyFile(t)
	replica := startTandem(t, "replica", "--listen", ports[0], "--auth-key", key)
	leader := startTandem(t, "replica", "--listen", ports[1], "--leader", "--replicas", ports[0], "--serial", "none", "--auth-key", key)
	for _, p := range []*process{replica, leader} {
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(p.stderr.String(), "replica listening") {
			if time.Now().After(deadline) {
				t.Fatalf("replica did not start: %s", p.stderr.String())
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	stdout, stderr, status := runTandem(t, "run", "--guest", "hello", "--serial", "stdio", "--ha", "--replicas", ports[0], "--leader", ports[1], "--epoch", "5ms", "--auth-key", key)
	if status != 0 || stdout != "hello: Tandem guest up, 1 vCPUs, 64 MiB\n" {
		t.Fatalf("status %d, stdout %q, stderr:\n%s", status, stdout, stderr)
	}
	if status := leader.wait(t, 30*time.Second); status != 0 || !strings.Contains(leader.stdout.String(), "no takeover") {
		t.Errorf("leader: status %d, stdout %q, stderr:\n%s", status, leader.stdout.String(), leader.stderr.String())
	}
}
