package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
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
