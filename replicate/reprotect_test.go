package replicate

import (
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestTakeoverReprotects: every node can lead. The primary dies; its
// leader recovers and runs the VM as the next generation, replicating to
// the links left (Cluster.Successor) with the first of them as its leader;
// that primary dies too and its leader recovers again, with nothing
// committed lost at either step and the generations 1, 2, 3.
func TestTakeoverReprotects(t *testing.T) {
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		t.Run(policy.String(), func(t *testing.T) {
			nodes := map[string]*Replica{}
			var addrs []string
			for range 3 {
				r, addr, _ := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: time.Second})
				nodes[addr] = r
				addrs = append(addrs, addr)
			}
			first, firstAddr, _ := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: time.Second})
			nodes[firstAddr] = first

			const pages = 512
			vm := newFakeVM(t, pages)
			cfg := PrimaryConfig{Links: addrs, Leader: firstAddr, VMID: 0x5EC0, Guest: "fake", VCPUs: 1,
				Epoch: 5 * time.Millisecond, Heartbeat: 20 * time.Millisecond, Policy: policy, SGMax: 8}
			leader := first
			for gen := uint64(1); gen <= 3; gen++ {
				p := mustConnectPrimary(t, cfg, vm, nil)
				if st := p.Status(); st.Generation != gen {
					t.Fatalf("primary of generation %d reports %d", gen, st.Generation)
				}
				ctx, cancel := context.WithCancel(context.Background())
				guestDone := make(chan struct{})
				go func() { defer close(guestDone); vm.run(ctx, gen) }()
				runErr := make(chan error, 1)
				go func() { runErr <- p.Run(ctx) }()
				waitCommitted(t, p, cfg.StartEpoch+5, 20*time.Second, nil)
				cancel() // the primary dies
				<-runErr
				vm.Resume()
				<-guestDone
				committed := p.Committed()

				select {
				case <-leader.Failed():
				case <-time.After(10 * time.Second):
					t.Fatalf("generation %d: the leader did not see its primary fail", gen)
				}
				cl, ok := leader.Cluster()
				if !ok {
					t.Fatal("the leader holds no cluster description")
				}
				from := append([]string(nil), cl.Links...)
				rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
				rec, err := leader.Recover(rctx, from)
				rcancel()
				if err != nil {
					t.Fatalf("generation %d: %v", gen, err)
				}
				if rec.Epoch < committed || rec.Generation != gen+1 || rec.VMID != cfg.VMID {
					t.Fatalf("generation %d: recovered epoch %d (committed %d), generation %d, VM %x", gen, rec.Epoch, committed, rec.Generation, rec.VMID)
				}
				vm.mu.Lock()
				want, ok := vm.snaps[binary.LittleEndian.Uint64(rec.State)]
				vm.mu.Unlock()
				if !ok || string(want) != string(rec.Memory) {
					t.Fatalf("generation %d: the recovered memory is not the guest's at a captured state", gen)
				}
				if gen == 3 {
					break
				}
				// The leader's node runs the VM now, replicating to the
				// others; its own links go.
				self := ""
				for a, r := range nodes {
					if r == leader {
						self = a
					}
				}
				links, next := cl.Successor(self)
				if len(links) == 0 {
					t.Fatal("no links left")
				}
				vm = newFakeVM(t, pages)
				copy(vm.mem, rec.Memory)
				cfg.Links, cfg.Leader, cfg.Generation, cfg.StartEpoch, cfg.Reprotect = links, next, rec.Generation, rec.Epoch+1, true
				leader = nodes[next]
				t.Logf("generation %d recovered epoch %d; generation %d replicates to %v, led by %s", gen, rec.Epoch, gen+1, links, next)
			}
		})
	}
}

// TestStaleLeaderRefusesToRecover: a primary moves to another leader in
// the same term (its first leader unreachable) and commits on. The first
// leader's states are then older than what the replicas applied: asked to
// recover, it refuses instead of building an image of mixed epochs.
func TestStaleLeaderRefusesToRecover(t *testing.T) {
	c := newCluster(t, 2)
	l2, l2Addr, _ := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: time.Second})
	vm := newFakeVM(t, 256)
	cfg := PrimaryConfig{Links: c.addrs, Leader: c.leadAddr, VMID: 0x57A1E, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFT, SGMax: 8}
	run := func(cfg PrimaryConfig, epochs uint64) uint64 {
		p := mustConnectPrimary(t, cfg, vm, nil)
		ctx, cancel := context.WithCancel(context.Background())
		guestDone := make(chan struct{})
		go func() { defer close(guestDone); vm.run(ctx, 3) }()
		runErr := make(chan error, 1)
		go func() { runErr <- p.Run(ctx) }()
		waitCommitted(t, p, cfg.StartEpoch+epochs, 20*time.Second, nil)
		cancel()
		<-runErr
		vm.Resume()
		<-guestDone
		return p.Committed()
	}
	first := run(cfg, 5)
	// The same term goes on with the second leader, well past the first's
	// states.
	cfg.Leader, cfg.StartEpoch, cfg.Reprotect = l2Addr, first+10, true
	run(cfg, 10)
	<-c.leader.Failed()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.leader.Recover(ctx, c.addrs); !errors.Is(err, ErrUnrecoverable) || !strings.Contains(err.Error(), "stale") {
		t.Fatalf("recovery from the stale leader: %v; want a refusal naming its stale states", err)
	}
	// The current leader recovers.
	<-l2.Failed()
	if _, err := l2.Recover(ctx, c.addrs); err != nil {
		t.Fatalf("recovery from the current leader: %v", err)
	}
}
