//go:build rdma

package main

import (
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
		fc := failoverCase{policy: cfg[0], mode: cfg[1], midTransfer: midTransfer, rdma: true}
		if !t.Run(name, func(t *testing.T) { failoverRound(t, lab, rng, fc) }) {
			break
		}
	}
}
