package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// cmdDemo tells the whole story on one machine: two replicas and a leader,
// a primary running the counter guest with --ha, a client incrementing the
// counter, the primary killed with SIGKILL, the leader taking over, and the
// count checked against what the client was told.
func cmdDemo(ctx context.Context, args []string) error {
	fs := newFlagSet("demo", "[--linux] [--incs N] [--policy fast|ft] [--mode sync|async]")
	incs := fs.Int("incs", 50, "kill the primary once this many increments (with --linux: PUTs) are acknowledged")
	linux := fs.Bool("linux", false, "run the story with a Linux guest: its key-value store on a replicated disk, over TCP on a TAP (needs root; builds or reuses the guest kernel)")
	policy := fs.String("policy", "fast", "replication policy: fast or ft")
	mode := fs.String("mode", "sync", "replication mode: sync or async")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *incs < 1 {
		return usagef("--incs %d: want at least 1", *incs)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "tandem-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// One replication key for the demo's nodes, made for this run (0600,
	// in the temporary directory removed at the end).
	key := filepath.Join(dir, "replication.key")
	if err := newKeyFile(key); err != nil {
		return err
	}
	if *linux {
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "incs" })
		if !given {
			*incs = 20
		}
		return demoLinux(ctx, self, dir, key, *policy, *mode, *incs)
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	r1, r2, leader := ports[0], ports[1], ports[2]
	var procs []*demoProc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	start := func(name string, args ...string) (*demoProc, error) {
		p, err := startDemoProc(ctx, self, name, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}

	fmt.Println("demo: made a replication key for this run; every connection is authenticated and encrypted (TLS 1.3)")
	fmt.Println("demo: starting two replicas and a leader on 127.0.0.1")
	for _, a := range []string{r1, r2} {
		p, err := start("replica", "replica", "--listen", a, "--auth-key", key)
		if err != nil {
			return err
		}
		if err := p.waitLog("replica listening", 10*time.Second); err != nil {
			return err
		}
	}
	lp, err := start("leader", "replica", "--listen", leader, "--leader", "--replicas", r1+","+r2, "--auth-key", key,
		"--serial", "unix:"+dir+"/leader.sock")
	if err != nil {
		return err
	}
	if err := lp.waitLog("replica listening", 10*time.Second); err != nil {
		return err
	}
	fmt.Printf("demo: starting the primary: counter guest, --ha over 2 links (%s), leader %s, policy %s, mode %s\n", r1+","+r2, leader, *policy, *mode)
	pp, err := start("primary", "run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key,
		"--replicas", r1+","+r2, "--leader", leader, "--policy", *policy, "--mode", *mode, "--epoch", "20ms",
		"--serial", "unix:"+dir+"/primary.sock")
	if err != nil {
		return err
	}
	conn, err := dialUnix(ctx, dir+"/primary.sock", pp, 30*time.Second)
	if err != nil {
		return err
	}
	fmt.Println("demo: client sends INC requests; a reply comes only once its epoch is replicated")
	var sent, acked atomic.Int64
	replies := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(conn)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "OK ") {
				acked.Add(1)
				select {
				case replies <- struct{}{}:
				default:
				}
			}
		}
	}()
	go func() {
		for i := 1; ; i++ {
			for sent.Load()-acked.Load() >= 4 { // four requests in flight
				time.Sleep(100 * time.Microsecond)
			}
			sent.Add(1)
			if _, err := fmt.Fprintf(conn, "INC demo-%d\n", i); err != nil {
				sent.Add(-1)
				return
			}
		}
	}()
	t0 := time.Now()
	for acked.Load() < int64(*incs) {
		select {
		case <-replies:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("only %d increments acknowledged in 30s; primary log:\n%s", acked.Load(), pp.log.String())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	fmt.Printf("demo: %d increments acknowledged in %v; killing the primary with SIGKILL\n", acked.Load(), time.Since(t0).Round(time.Millisecond))
	killedAt := time.Now()
	pp.kill()
	conn.Close()
	nSent, nAcked := sent.Load(), acked.Load()

	lconn, err := dialUnix(ctx, dir+"/leader.sock", lp, 30*time.Second)
	if err != nil {
		return err
	}
	defer lconn.Close()
	fmt.Printf("demo: the leader took over; its serial console answered %v after the kill\n", time.Since(killedAt).Round(100*time.Microsecond))
	if line := lp.stdoutLine("leader: recovered"); line != "" {
		fmt.Println("demo:", line)
	}
	lconn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(lconn, "GET\n")
	sc := bufio.NewScanner(lconn)
	var value int64 = -1
	for value < 0 && sc.Scan() {
		fmt.Sscanf(sc.Text(), "VALUE %d", &value)
	}
	if value < 0 {
		return fmt.Errorf("no answer from the leader's counter: %v", sc.Err())
	}
	fmt.Printf("demo: sent %d, acknowledged %d, the leader's counter reads %d\n", nSent, nAcked, value)
	switch {
	case value < nAcked:
		return fmt.Errorf("LOST %d acknowledged increments", nAcked-value)
	case value > nSent:
		return fmt.Errorf("the counter %d exceeds the %d increments sent", value, nSent)
	}
	fmt.Printf("demo: %d increments were acknowledged and none were lost (%d more, sent but unacknowledged, were applied)\n", nAcked, value-nAcked)
	return nil
}

// freePorts finds n free TCP ports on loopback.
func freePorts(n int) ([]string, error) {
	var addrs []string
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// demoProc is one tandem process the demo runs.
type demoProc struct {
	name     string
	cmd      *exec.Cmd
	log, out *lockedBuffer
	done     chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func startDemoProc(ctx context.Context, self, name string, args ...string) (*demoProc, error) {
	p := &demoProc{name: name, cmd: exec.CommandContext(ctx, self, args...), log: &lockedBuffer{}, out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.log
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("demo: start %s: %w", name, err)
	}
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *demoProc) waitLog(want string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.log.String(), want) {
		select {
		case <-p.done:
			return fmt.Errorf("demo: %s exited:\n%s", p.name, p.log.String())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: %s did not start in %v:\n%s", p.name, timeout, p.log.String())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

func (p *demoProc) stdoutLine(prefix string) string {
	for _, l := range strings.Split(p.out.String(), "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

func (p *demoProc) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

func (p *demoProc) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.kill()
	}
}

// dialUnix connects to a process's Unix socket once it exists.
func dialUnix(ctx context.Context, path string, p *demoProc, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("demo: %s exited before listening on %s:\n%s", p.name, filepath.Base(path), p.log.String())
		case <-ctx.Done():
			return nil, ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return nil, errors.Join(fmt.Errorf("demo: %s: no %s after %v", p.name, filepath.Base(path), timeout), err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
