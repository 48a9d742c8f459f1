//go:build rdma

package replicate

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// The failover tests of ha_test.go over RDMA links. They need a verbs
// device; Soft-RoCE gives one on any Linux host with the rdma_rxe module:
//
//	modprobe rdma_rxe && rdma link add rxe0 type rxe netdev IF
//
// They listen on the first local address an RDMA device serves, or on
// TANDEM_RDMA_ADDR. Without a device they skip, unless TANDEM_REQUIRE_RDMA
// is set (for a CI machine that has one).

// rdmaTestIP returns a local IP address served by an RDMA device, or skips.
func rdmaTestIP(t *testing.T) string {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...) + "; to run these tests without an RNIC, create a Soft-RoCE device: " + rdmaSoftRoCEHint
		if os.Getenv("TANDEM_REQUIRE_RDMA") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	devs, err := RDMADevices()
	if len(devs) == 0 {
		why := "ibv_get_device_list found none"
		if err != nil {
			why = err.Error()
		}
		skip("no RDMA device (%s)", why)
	}
	var candidates []string
	if a := os.Getenv("TANDEM_RDMA_ADDR"); a != "" {
		candidates = append(candidates, a)
	}
	ifs, _ := net.Interfaces()
	for _, loopback := range []bool{false, true} {
		for _, ifc := range ifs {
			if ifc.Flags&net.FlagUp == 0 || (ifc.Flags&net.FlagLoopback != 0) != loopback {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
					candidates = append(candidates, n.IP.String())
				}
			}
		}
	}
	for _, ip := range candidates {
		if ln, err := ListenRDMA(net.JoinHostPort(ip, "0")); err == nil {
			ln.Close()
			return ip
		}
	}
	skip("RDMA device %s serves none of the local addresses %v (set TANDEM_RDMA_ADDR)", devs[0].Name, candidates)
	return ""
}

// rdmaCluster is a cluster whose replicas also accept RDMA links.
type rdmaCluster struct {
	*cluster
	rdma  []string // rdma://ADDR of each replica
	stops []func()
}

func newRDMACluster(t *testing.T, replicas int, ip string) *rdmaCluster {
	c := &rdmaCluster{cluster: newCluster(t, replicas)}
	for i, r := range c.replicas {
		ln, err := ListenRDMA(net.JoinHostPort(ip, "0"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := r.ServeRDMA(ctx, ln); err != nil {
				t.Errorf("ServeRDMA: %v", err)
			}
		}()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cancel()
				<-done
			})
		}
		t.Cleanup(stop)
		c.rdma = append(c.rdma, "rdma://"+ln.Addr()+"?auth="+c.addrs[i])
		c.stops = append(c.stops, stop)
	}
	return c
}

// rdmaLinks runs the failover tests of ha_test.go over RDMA links.
func rdmaLinks(ip string) clusterLinks {
	return func(t *testing.T, replicas int) (*cluster, []string, func(int)) {
		c := newRDMACluster(t, replicas, ip)
		return c.cluster, c.rdma, func(i int) {
			c.stops[i]()   // the replica's RDMA links go down
			c.cancels[i]() // and its TCP side
		}
	}
}

func TestRDMAFailoverRecoversACommittedEpoch(t *testing.T) {
	failoverRecovers(t, rdmaLinks(rdmaTestIP(t)))
}

func TestRDMAKillMidTransfer(t *testing.T) { killMidTransfer(t, rdmaLinks(rdmaTestIP(t))) }

func TestRDMALinkLossMidRun(t *testing.T) { linkLossMidRun(t, rdmaLinks(rdmaTestIP(t))) }

// TestRDMAReplicaRefusesAnotherVM checks that a refusal reaches the primary
// with the replica's reason.
func TestRDMAReplicaRefusesAnotherVM(t *testing.T) {
	ip := rdmaTestIP(t)
	c := newRDMACluster(t, 1, ip)
	vm := newFakeVM(t, 64)
	first := c.primary(vm, PolicyFT, ModeSync, c.rdma)
	defer first.Close()
	p, err := NewPrimary(PrimaryConfig{Auth: testCreds, Links: c.rdma, Leader: c.leadAddr, VMID: 0xD1FF, Epoch: time.Millisecond, Log: quietLog()},
		newFakeVM(t, 64), NewOutputGate(io.Discard, 1))
	if err != nil {
		t.Fatal(err)
	}
	err = p.Connect(context.Background())
	if err == nil {
		t.Fatal("a replica serving one VM accepted a link of another")
	}
	// The refusal comes from the authenticated set-up over TCP, before any
	// RDMA connection is attempted.
	if want := "refused: this replica serves another VM"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}
