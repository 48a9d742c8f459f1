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

// demoLinux is `tandem demo --linux`: the same story as the counter demo
// with a Linux guest whose key-value store keeps its values on a
// replicated disk and serves them over TCP on a TAP. Tandem makes a
// network namespace for it (a bridge with the primary's and the leader's
// TAPs, where the client sits) and removes it at the end; replicas, leader
// and primary run inside it on loopback.
func demoLinux(ctx context.Context, self, dir, key, policy, mode string, puts int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("demo --linux makes a network namespace and TAP devices: run it as root")
	}
	fmt.Println("demo: building or reusing the Linux guest (images/linux; the first build takes several minutes)")
	k, err := linuxguest.BuildKernel(ctx)
	if err != nil {
		return err
	}
	initrd, err := linuxguest.BuildInitramfs(ctx)
	if err != nil {
		return err
	}
	ns := fmt.Sprintf("tandem-demo-%d", os.Getpid())
	if err := ipCommand("netns", "add", ns); err != nil {
		return err
	}
	defer ipCommand("netns", "del", ns)
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
		if err := ipCommand(append([]string{"-n", ns}, args...)...); err != nil {
			return err
		}
	}
	fmt.Printf("demo: network namespace %s: a bridge at 10.79.0.1 (the client) with the primary's and the leader's TAPs\n", ns)
	primaryDisk, leaderDisk := filepath.Join(dir, "primary.img"), filepath.Join(dir, "leader.img")
	for _, p := range []string{primaryDisk, leaderDisk} {
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			return err
		}
	}
	var procs []*demoProc
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	start := func(name string, args ...string) (*demoProc, error) {
		p, err := startDemoProc(ctx, "ip", name, append([]string{"netns", "exec", ns, self}, args...)...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}
	const r1, r2, leader = "127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"
	fmt.Println("demo: starting two replicas and a leader holding a copy of the guest's disk and its own TAP")
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
		"--serial", "file:"+filepath.Join(dir, "leader.console"), "--disk", leaderDisk, "--net", "tap:tap-leader")
	if err != nil {
		return err
	}
	if err := lp.waitLog("replica listening", 10*time.Second); err != nil {
		return err
	}
	fmt.Printf("demo: booting Linux under --ha (policy %s, mode %s, 50 ms epochs); where guest ring 0 runs in KVM's emulator this takes 10 s or more\n", policy, mode)
	console := filepath.Join(dir, "primary.console")
	pp, err := start("primary", "run", "--kernel", k.Vmlinux, "--initrd", initrd, "--mem", "128M",
		"--cmdline", "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vda tandem_ip=10.79.0.15/24 tandem_kv=7000",
		"--disk", primaryDisk, "--net", "tap:tap-primary", "--serial", "file:"+console,
		"--ha", "--auth-key", key, "--replicas", r1+","+r2, "--leader", leader, "--policy", policy, "--mode", mode, "--epoch", "50ms")
	if err != nil {
		return err
	}
	booted := time.Now()
	for {
		b, _ := os.ReadFile(console)
		if bytes.Contains(b, []byte("tandem-init: kv: listening on 7000")) {
			break
		}
		select {
		case <-pp.done:
			return fmt.Errorf("demo: the primary exited:\n%s", pp.log.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(booted) > 10*time.Minute {
			return fmt.Errorf("demo: the guest did not start its key-value store in 10 minutes; console:\n%s", b)
		}
	}
	fmt.Printf("demo: the guest is up after %v; the client PUTs over TCP: an OK comes only once the epoch with the write (memory and disk) is replicated\n", time.Since(booted).Round(100*time.Millisecond))
	dial := func() (net.Conn, error) {
		var c net.Conn
		err := inNetns(ns, func() (err error) {
			c, err = net.DialTimeout("tcp4", "10.79.0.15:7000", 30*time.Second)
			return err
		})
		return c, err
	}
	conn, err := dial()
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
	pp.kill()
	atKill := acked.Load()
	for len(ackedAt) > 0 {
		<-ackedAt
	}
	if err := waitAcked(atKill+1, "after the kill"); err != nil {
		return err
	}
	fmt.Printf("demo: the leader took over; the client's TCP connection carried on: the next PUT was acknowledged %v after the kill\n", time.Since(killedAt).Round(time.Millisecond))
	if line := lp.stdoutLine("leader: recovered"); line != "" {
		fmt.Println("demo:", line)
	}
	if err := waitAcked(atKill+5, "on the recovered guest"); err != nil {
		return err
	}
	conn.Close()
	n := acked.Load()
	fresh, err := dial()
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
	raw, err := os.ReadFile(leaderDisk)
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
