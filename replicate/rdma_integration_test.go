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
	"sync/atomic"
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
	for _, r := range c.replicas {
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
		c.rdma = append(c.rdma, "rdma://"+ln.Addr())
		c.stops = append(c.stops, stop)
	}
	return c
}

func TestRDMAFailoverRecoversACommittedEpoch(t *testing.T) {
	ip := rdmaTestIP(t)
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		for _, mode := range []Mode{ModeSync, ModeAsync} {
			t.Run(fmt.Sprintf("%v/%v", policy, mode), func(t *testing.T) {
				c := newRDMACluster(t, 2, ip)
				vm := newFakeVM(t, 512)
				// Three RDMA links: the first replica gets two.
				p := c.primary(vm, policy, mode, []string{c.rdma[0], c.rdma[1], c.rdma[0]})
				ctx, cancel := context.WithCancel(context.Background())
				go vm.run(ctx, 1)
				runErr := make(chan error, 1)
				go func() { runErr <- p.Run(ctx) }()
				deadline := time.Now().Add(20 * time.Second)
				for p.Committed() < 20 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				cancel()
				<-runErr
				committed := p.Committed()
				if committed < 20 {
					t.Fatalf("only %d epochs committed", committed)
				}
				rec := c.recoverAndCheck(vm, committed)
				t.Logf("committed %d, recovered %d in %v", committed, rec.Epoch, rec.Took)
			})
		}
	}
}

// TestRDMAKillMidTransfer cuts the primary's RDMA links in the middle of an
// epoch's writes: recovery must settle on the previous, committed epoch.
func TestRDMAKillMidTransfer(t *testing.T) {
	ip := rdmaTestIP(t)
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		for _, cut := range []int{PageSize, 20 * PageSize} {
			t.Run(fmt.Sprintf("%v/after-%d-bytes", policy, cut), func(t *testing.T) {
				c := newRDMACluster(t, 2, ip)
				vm := newFakeVM(t, 1024)
				const killFrom = 12
				var p *Primary
				var sent atomic.Int64
				var killedIn atomic.Uint64
				var once sync.Once
				p, err := NewPrimary(PrimaryConfig{
					Links: c.rdma, Leader: c.leadAddr, VMID: 0xC0FFEE, Guest: "fake", VCPUs: 1,
					Epoch: 5 * time.Millisecond, Policy: policy, SGMax: 32, Log: quietLog(),
					FaultChunk: PageSize,
					FaultProgress: func(e uint64, n int) {
						if e >= killFrom && sent.Add(int64(n)) >= int64(cut) {
							once.Do(func() {
								killedIn.Store(e)
								p.Close()
							})
						}
					},
				}, vm, NewOutputGate(io.Discard, 1<<20))
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Connect(context.Background()); err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go vm.run(ctx, 2)
				if err := p.Run(ctx); err == nil {
					t.Fatal("the primary ran on after its links were cut")
				}
				killed := killedIn.Load()
				if got := p.Committed(); got != killed-1 {
					t.Fatalf("committed %d, want %d: the links were cut in epoch %d", got, killed-1, killed)
				}
				rec := c.recoverAndCheck(vm, killed-1)
				if rec.Epoch != killed-1 {
					t.Errorf("recovered epoch %d; the interrupted epoch %d was incomplete", rec.Epoch, killed)
				}
			})
		}
	}
}

// TestRDMALinkLossMidRun takes a replica away (its RDMA listener and
// connections, and its TCP side) while the primary runs.
func TestRDMALinkLossMidRun(t *testing.T) {
	ip := rdmaTestIP(t)
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		t.Run(policy.String(), func(t *testing.T) {
			c := newRDMACluster(t, 2, ip)
			vm := newFakeVM(t, 256)
			p := c.primary(vm, policy, ModeSync, c.rdma)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go vm.run(ctx, 3)
			runErr := make(chan error, 1)
			go func() { runErr <- p.Run(ctx) }()
			waitCommitted := func(n uint64) {
				deadline := time.Now().Add(20 * time.Second)
				for p.Committed() < n {
					if time.Now().After(deadline) {
						t.Fatalf("stuck at epoch %d, want %d", p.Committed(), n)
					}
					time.Sleep(time.Millisecond)
				}
			}
			waitCommitted(10)
			c.stops[1]()   // replica 1's RDMA links go down
			c.cancels[1]() // and its TCP side
			lost := p.Committed()
			waitCommitted(lost + 10)
			cancel()
			<-runErr
			rec := c.recoverAndCheck(vm, p.Committed())
			if len(rec.Unreachable) != 1 || rec.Unreachable[0] != c.addrs[1] {
				t.Errorf("unreachable %v, want [%s]", rec.Unreachable, c.addrs[1])
			}
		})
	}
}

// TestRDMAReplicaRefusesAnotherVM checks that a refusal reaches the primary
// with the replica's reason.
func TestRDMAReplicaRefusesAnotherVM(t *testing.T) {
	ip := rdmaTestIP(t)
	c := newRDMACluster(t, 1, ip)
	vm := newFakeVM(t, 64)
	first := c.primary(vm, PolicyFT, ModeSync, c.rdma)
	defer first.Close()
	p, err := NewPrimary(PrimaryConfig{Links: c.rdma, Leader: c.leadAddr, VMID: 0xD1FF, Epoch: time.Millisecond, Log: quietLog()},
		newFakeVM(t, 64), NewOutputGate(io.Discard, 1))
	if err != nil {
		t.Fatal(err)
	}
	err = p.Connect(context.Background())
	if err == nil {
		t.Fatal("a replica serving one VM accepted a link of another")
	}
	if want := "refused the link: this replica serves VM"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q lacks %q", err, want)
	}
}
