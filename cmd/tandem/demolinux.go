package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	linuxguest "github.com/tandemvm/tandem/images/linux"
)

// linuxHAStory is the set-up of `tandem demo --linux` and of the Linux HA
// latency benchmark: a network namespace holding a bridge (10.79.0.1, the
// client's side) with the primary's and the leader's TAPs, replicas and a
// leader on its loopback, and the test guest's key-value store on a disk
// whose copy the leader holds. Close removes it all.
type linuxHAStory struct {
	self, dir, key, ns string
	kernel, initrd     string
	procs              []*demoProc
	leader, primary    *demoProc
	console            string // the primary's COM1
	leaderDisk         string
}

const (
	storyR1, storyR2, storyLeader = "127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"
	storyGuest                    = "10.79.0.15:7000"
)

func newLinuxHAStory(ctx context.Context, self, dir, key string) (*linuxHAStory, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("the Linux HA story makes a network namespace and TAP devices: run it as root")
	}
	k, err := linuxguest.BuildKernel(ctx)
	if err != nil {
		return nil, err
	}
	initrd, err := linuxguest.BuildInitramfs(ctx)
	if err != nil {
		return nil, err
	}
	s := &linuxHAStory{self: self, dir: dir, key: key, ns: fmt.Sprintf("tandem-demo-%d", os.Getpid()), kernel: k.Vmlinux, initrd: initrd,
		console: filepath.Join(dir, "primary.console"), leaderDisk: filepath.Join(dir, "leader.img")}
	if err := ipCommand("netns", "add", s.ns); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "br0", "type", "bridge"},
		{"addr", "add", "10.79.0.1/24", "dev", "br0"},
		{"link", "set", "br0", "up"},
		{"tuntap", "add", "dev", "tap-primary", "mode", "tap"},
		{"tuntap", "add", "dev", "tap-leader", "mode", "tap"},
		{"link", "set", "tap-primary", "master", "br0"},
		{"link", "set", "tap-leader", "master", "br0"},
		{"link", "set", "tap-primary", "up"},
		{"link", "set", "tap-leader", "up"},
	} {
		if err := ipCommand(append([]string{"-n", s.ns}, args...)...); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// start runs tandem inside the namespace.
func (s *linuxHAStory) start(ctx context.Context, name string, args ...string) (*demoProc, error) {
	p, err := startDemoProc(ctx, "ip", name, append([]string{"netns", "exec", s.ns, s.self}, args...)...)
	if err == nil {
		s.procs = append(s.procs, p)
	}
	return p, err
}

// startCluster starts two replicas and a leader holding a copy of the
// guest's disk and its own TAP.
func (s *linuxHAStory) startCluster(ctx context.Context) error {
	for _, a := range []string{storyR1, storyR2} {
		p, err := s.start(ctx, "replica", "replica", "--listen", a, "--auth-key", s.key)
		if err != nil {
			return err
		}
		if err := p.waitLog("replica listening", 10*time.Second); err != nil {
			return err
		}
	}
	if err := os.WriteFile(s.leaderDisk, make([]byte, 1<<20), 0o600); err != nil {
		return err
	}
	var err error
	s.leader, err = s.start(ctx, "leader", "replica", "--listen", storyLeader, "--leader", "--replicas", storyR1+","+storyR2, "--auth-key", s.key,
		"--serial", "file:"+filepath.Join(s.dir, "leader.console"), "--disk", s.leaderDisk, "--net", "tap:tap-leader")
	if err != nil {
		return err
	}
	return s.leader.waitLog("replica listening", 10*time.Second)
}

// bootPrimary boots the guest's key-value store on a fresh disk, with
// haArgs (none: no replication), and waits until it listens.
func (s *linuxHAStory) bootPrimary(ctx context.Context, haArgs ...string) (time.Duration, error) {
	disk := filepath.Join(s.dir, "primary.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
		return 0, err
	}
	os.Remove(s.console)
	var err error
	s.primary, err = s.start(ctx, "primary", append([]string{"run", "--kernel", s.kernel, "--initrd", s.initrd, "--mem", "128M",
		"--cmdline", "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vda tandem_ip=10.79.0.15/24 tandem_kv=7000",
		"--disk", disk, "--net", "tap:tap-primary", "--serial", "file:" + s.console}, haArgs...)...)
	if err != nil {
		return 0, err
	}
	booted := time.Now()
	for {
		b, _ := os.ReadFile(s.console)
		if bytes.Contains(b, []byte("tandem-init: kv: listening on 7000")) {
			return time.Since(booted), nil
		}
		select {
		case <-s.primary.done:
			return 0, fmt.Errorf("the primary exited:\n%s", s.primary.log.String())
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(booted) > 10*time.Minute {
			return 0, fmt.Errorf("the guest did not start its key-value store in 10 minutes; console:\n%s", b)
		}
	}
}

// haArgs are the primary's replication flags.
func (s *linuxHAStory) haArgs(policy, mode string, epoch time.Duration) []string {
	return []string{"--ha", "--auth-key", s.key, "--replicas", storyR1 + "," + storyR2, "--leader", storyLeader,
		"--policy", policy, "--mode", mode, "--epoch", epoch.String()}
}

// dial connects the client to the guest's key-value store.
func (s *linuxHAStory) dial() (net.Conn, error) {
	return dialInNetns(s.ns, storyGuest, 30*time.Second)
}

// Close stops the processes and removes the namespace with its devices.
func (s *linuxHAStory) Close() {
	for _, p := range s.procs {
		p.stop()
	}
	s.procs = nil
	ipCommand("netns", "del", s.ns)
}

// demoLinux is `tandem demo --linux`: the counter demo's story with a
// Linux guest whose key-value store keeps its values on a replicated disk
// and serves them over TCP on a TAP.
func demoLinux(ctx context.Context, self, dir, key, policy, mode string, puts int) error {
	fmt.Println("demo: building or reusing the Linux guest (images/linux; the first build takes several minutes)")
	s, err := newLinuxHAStory(ctx, self, dir, key)
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("demo: network namespace %s: a bridge at 10.79.0.1 (the client) with the primary's and the leader's TAPs\n", s.ns)
	fmt.Println("demo: starting two replicas and a leader holding a copy of the guest's disk and its own TAP")
	if err := s.startCluster(ctx); err != nil {
		return err
	}
	fmt.Printf("demo: booting Linux under --ha (policy %s, mode %s, 50 ms epochs); where guest ring 0 runs in KVM's emulator this takes 10 s or more\n", policy, mode)
	took, err := s.bootPrimary(ctx, s.haArgs(policy, mode, 50*time.Millisecond)...)
	if err != nil {
		return err
	}
	fmt.Printf("demo: the guest is up after %v; the client PUTs over TCP: an OK comes only once the epoch with the write (memory and disk) is replicated\n", took.Round(100*time.Millisecond))
	conn, err := s.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	var acked atomic.Int64
	ackedAt := make(chan time.Time, 1024)
	go func() {
		r := bufio.NewReader(conn)
		for i := int64(0); ; i++ {
			conn.SetDeadline(time.Now().Add(2 * time.Minute))
			if _, err := fmt.Fprintf(conn, "PUT demo%d value%d\n", i, i); err != nil {
				return
			}
			if line, err := r.ReadString('\n'); err != nil || line != "OK\n" {
				return
			}
			acked.Store(i + 1)
			select {
			case ackedAt <- time.Now():
			default:
			}
		}
	}()
	waitAcked := func(n int64, what string) error {
		for acked.Load() < n {
			select {
			case <-ackedAt:
			case <-time.After(2 * time.Minute):
				return fmt.Errorf("demo: %s: only %d PUTs acknowledged", what, acked.Load())
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}
	if err := waitAcked(int64(puts), "before the kill"); err != nil {
		return err
	}
	fmt.Printf("demo: %d PUTs acknowledged; killing the primary with SIGKILL\n", acked.Load())
	killedAt := time.Now()
	s.primary.kill()
	atKill := acked.Load()
	for len(ackedAt) > 0 {
		<-ackedAt
	}
	if err := waitAcked(atKill+1, "after the kill"); err != nil {
		return err
	}
	fmt.Printf("demo: the leader took over; the client's TCP connection carried on: the next PUT was acknowledged %v after the kill\n", time.Since(killedAt).Round(time.Millisecond))
	if line := s.leader.stdoutLine("leader: recovered"); line != "" {
		fmt.Println("demo:", line)
	}
	if err := waitAcked(atKill+5, "on the recovered guest"); err != nil {
		return err
	}
	conn.Close()
	n := acked.Load()
	fresh, err := s.dial()
	if err != nil {
		return err
	}
	defer fresh.Close()
	fresh.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(fresh)
	lost := 0
	for i := int64(0); i < n; i++ {
		fmt.Fprintf(fresh, "GET demo%d\n", i)
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("demo: GET from the recovered guest: %w", err)
		}
		if strings.TrimSpace(line) != fmt.Sprintf("VALUE value%d", i) {
			lost++
		}
	}
	raw, err := os.ReadFile(s.leaderDisk)
	if err != nil {
		return err
	}
	onDisk := 0
	for i := int64(0); i < n; i++ {
		if bytes.Contains(raw, []byte(fmt.Sprintf("value%d\x00", i))) {
			onDisk++
		}
	}
	fmt.Printf("demo: read back %d acknowledged PUTs from the recovered guest over a new connection: %d lost; the leader's disk copy holds %d of them\n", n, lost, onDisk)
	if lost > 0 || onDisk != int(n) {
		return fmt.Errorf("LOST %d acknowledged PUTs (%d missing from the leader's disk)", lost, int(n)-onDisk)
	}
	return nil
}
