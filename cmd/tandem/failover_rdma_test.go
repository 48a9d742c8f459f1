//go:build rdma

package main

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
)

// TestRDMAFailoverLosesNoAcknowledgedIncrement is the failover test of
// failover_test.go with every replica link over RDMA: each host of the
// network lab gets a Soft-RoCE device on its interface, the replicas accept
// links with --rdma-listen, and the primary names them rdma://. It needs
// root, KVM and the rdma_rxe module; without them it skips and says how to
// get Soft-RoCE (TANDEM_REQUIRE_RDMA makes that a failure).
func TestRDMAFailoverLosesNoAcknowledgedIncrement(t *testing.T) {
	skip := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...) + "; on a kernel with Soft-RoCE: " + replicate.RDMASoftRoCEHint()
		if os.Getenv("TANDEM_REQUIRE_RDMA") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if os.Geteuid() != 0 {
		skip("the RDMA failover test needs root for network namespaces and Soft-RoCE devices")
	}
	if out, err := exec.Command("modprobe", "rdma_rxe").CombinedOutput(); err != nil {
		skip("no Soft-RoCE: modprobe rdma_rxe: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if _, err := exec.LookPath("rdma"); err != nil {
		skip("the rdma tool (iproute2) is missing")
	}
	kvmtest.Open(t)

	// The lab's processes run a tandem built with RDMA.
	bin := filepath.Join(t.TempDir(), "tandem-rdma")
	build := exec.Command("go", "build", "-tags", "rdma", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build -tags rdma: %v\n%s", err, out)
	}
	saved := tandemBin
	tandemBin = bin
	defer func() { tandemBin = saved }()

	lab := newNetLab(t, "primary", "r1", "r2", "leader")
	for _, role := range []string{"primary", "r1", "r2", "leader"} {
		dev := fmt.Sprintf("%s-%s", lab.prefix, role)
		if out, err := exec.Command("ip", "netns", "exec", lab.hosts[role], "rdma", "link", "add", dev, "type", "rxe", "netdev", "eth0").CombinedOutput(); err != nil {
			skip("rdma link add %s type rxe netdev eth0 (in %s): %v: %s", dev, lab.hosts[role], err, strings.TrimSpace(string(out)))
		}
		t.Cleanup(func() { exec.Command("rdma", "link", "delete", dev).Run() })
	}

	rounds := 8
	if s := os.Getenv("TANDEM_FAILOVER_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	configs := [][2]string{{"fast", "sync"}, {"ft", "sync"}, {"fast", "async"}, {"ft", "async"}}
	for round := 0; round < rounds; round++ {
		cfg := configs[round%len(configs)]
		midTransfer := (round/len(configs))%2 == 1
		name := fmt.Sprintf("round%02d/%s/%s", round, cfg[0], cfg[1])
		if midTransfer {
			name += "/mid-transfer"
		}
		if !t.Run(name, func(t *testing.T) { rdmaFailoverRound(t, lab, rng, cfg[0], cfg[1], midTransfer) }) {
			break
		}
	}
}

func rdmaFailoverRound(t *testing.T, lab *netLab, rng *rand.Rand, policy, mode string, midTransfer bool) {
	dir := t.TempDir()
	const port, rport = ":7070", ":7471"
	var procs []*process
	defer func() {
		for _, p := range procs {
			p.kill()
		}
		if t.Failed() {
			for i, p := range procs {
				t.Logf("process %d (%v) stderr:\n%s", i, p.cmd.Args[3:], p.stderr.String())
			}
		}
	}()
	r1, r2 := lab.addrs["r1"]+port, lab.addrs["r2"]+port
	procs = append(procs,
		lab.start("r1", nil, "replica", "--listen", r1, "--rdma-listen", lab.addrs["r1"]+rport),
		lab.start("r2", nil, "replica", "--listen", r2, "--rdma-listen", lab.addrs["r2"]+rport),
		lab.start("leader", nil, "replica", "--listen", lab.addrs["leader"]+port, "--leader",
			"--replicas", r1+","+r2, "--heartbeat-timeout", "2s", "--serial", "unix:"+dir+"/leader.sock"))
	for _, p := range procs {
		waitStderr(t, p, "replica listening")
	}
	var env []string
	if midTransfer {
		env = append(env, fmt.Sprintf("%s=%d:%d", faultEnv, 5+rng.IntN(20), 1+rng.IntN(3*4096)))
	}
	rr1, rr2 := "rdma://"+lab.addrs["r1"]+rport, "rdma://"+lab.addrs["r2"]+rport
	primary := lab.start("primary", env, "run", "--guest", "counter", "--mem", "16M", "--ha",
		"--replicas", rr1+","+rr2+","+rr1, "--leader", lab.addrs["leader"]+port,
		"--policy", policy, "--mode", mode, "--epoch", "10ms", "--serial", "unix:"+dir+"/primary.sock")
	procs = append(procs, primary)
	conn := dialWhenReady(t, primary, dir+"/primary.sock")
	client := runCounterClient(conn, 4)
	if !midTransfer {
		deadline := time.Now().Add(30 * time.Second)
		for client.acked.Load() < 3 {
			if time.Now().After(deadline) {
				t.Fatalf("no increments acknowledged in 30s; primary stderr:\n%s", primary.stderr.String())
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		primary.cmd.Process.Kill()
	}
	select {
	case <-primary.done:
		primary.done <- nil
	case <-time.After(60 * time.Second):
		t.Fatal("the primary did not die")
	}
	conn.Close()
	<-client.done
	if !strings.Contains(primary.stderr.String(), "rdma link up") {
		t.Errorf("the primary did not report its RDMA links; stderr:\n%s", primary.stderr.String())
	}
	sent, acked := client.sent.Load(), client.acked.Load()

	lconn := dialWhenReady(t, procs[2], dir+"/leader.sock")
	defer lconn.Close()
	lconn.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(lconn, "GET\n")
	r := bufio.NewReader(lconn)
	var value int64 = -1
	for value < 0 {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("no VALUE from the leader: %v", err)
		}
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "VALUE "); ok {
			value, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	t.Logf("sent %d, acknowledged %d, leader counts %d", sent, acked, value)
	if value < acked {
		t.Errorf("LOST INCREMENTS: %d acknowledged, the leader's counter is %d", acked, value)
	}
	if value > sent {
		t.Errorf("the leader's counter %d exceeds the %d increments sent", value, sent)
	}
}
