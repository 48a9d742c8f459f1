package replicate

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// TestLinkRejoins: a replica dies and comes back empty on its address, or
// (cut) its link's connection is cut while the replica lives on with what
// it staged. The link is redialled; with fast it counts at once (the other
// link got a full copy), with ft it first catches up slice by slice,
// counted only once it holds every page; a replica that kept its store
// resumes the binding rules where it left them (its welcome), its staged
// epoch never applied. Then the other replica dies, and the one that came
// back alone lets the leader recover exactly the guest's memory.
func TestLinkRejoins(t *testing.T) {
	for _, tc := range []struct {
		policy Policy
		mode   Mode
		cut    bool
	}{{PolicyFast, ModeSync, false}, {PolicyFT, ModeSync, false}, {PolicyFT, ModeAsync, false}, {PolicyFast, ModeSync, true}, {PolicyFT, ModeSync, true}} {
		name := tc.policy.String() + "/" + tc.mode.String()
		if tc.cut {
			name += "/cut"
		}
		t.Run(name, func(t *testing.T) {
			c := newCluster(t, 2)
			const pages = 4096 // 16 MiB: several catch-up slices
			vm := newFakeVM(t, pages)
			links := append([]string(nil), c.addrs...)
			var cutNow atomic.Bool
			if tc.cut {
				// The proxy hangs up link 1 in the middle of an epoch,
				// once; the redial goes through it again.
				links[1] = startMessageProxy(t, c.addrs[1], 0, func(typ MsgType, length uint32) proxyAction {
					if (typ == MsgData || typ == MsgPages) && cutNow.CompareAndSwap(true, false) {
						return hangUp
					}
					return forward
				})
			}
			p := mustConnectPrimary(t, PrimaryConfig{
				Links: links, Leader: c.leadAddr, VMID: 0x2E10, Guest: "fake", VCPUs: 1,
				Epoch: 5 * time.Millisecond, Policy: tc.policy, Mode: tc.mode, SGMax: 8,
				// Deltas against cached copies: a replica that comes back
				// empty must not be sent one against a copy it lost.
				Reduce: &Reduction{Zero: true, CacheBytes: 1 << 20, Similar: true},
			}, vm, nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			guestDone := make(chan struct{})
			go func() { defer close(guestDone); vm.run(ctx, 11) }()
			defer func() { cancel(); vm.Resume(); <-guestDone }()
			runErr := make(chan error, 1)
			go func() { runErr <- p.Run(ctx) }()
			waitCommitted(t, p, 5, 20*time.Second, nil)

			if tc.cut {
				cutNow.Store(true)
			} else {
				c.cancels[1]()
			}
			waitFor(t, "link 1 to fail", func() bool { return !p.Status().Links[1].Alive })
			if st := p.Status(); !st.Degraded || !st.Protected {
				t.Fatalf("status with one of two links: %v, want degraded and protected", st)
			}
			lost := p.Committed()
			waitCommitted(t, p, lost+5, 20*time.Second, nil)

			if !tc.cut {
				// The replica comes back, empty, on its address.
				r1, _, stop1 := startReplicaAt(t, ReplicaConfig{}, c.addrs[1])
				c.replicas[1], c.cancels[1] = r1, stop1
			}
			var sawJoining bool
			waitFor(t, "link 1 to be back and count", func() bool {
				st := p.Status()
				sawJoining = sawJoining || st.Links[1].Joining
				return st.Links[1].Alive && !st.Links[1].Joining && !st.Degraded
			})
			if tc.policy == PolicyFT && !sawJoining {
				t.Log("the catch-up finished between two looks at the status")
			}
			back := p.Committed()
			waitCommitted(t, p, back+3, 20*time.Second, nil)

			// The original replica goes: the one that came back holds it all.
			c.cancels[0]()
			waitFor(t, "link 0 to fail", func() bool { return !p.Status().Links[0].Alive })
			gone := p.Committed()
			waitCommitted(t, p, gone+5, 20*time.Second, nil)
			cancel()
			if err := <-runErr; err != nil {
				t.Fatalf("the primary: %v", err)
			}
			vm.Resume()
			for i, r := range c.replicas {
				if n := r.ProtocolErrors(); n != 0 {
					t.Errorf("replica %d dropped %d connections for protocol errors (a delta against a copy it did not hold?)", i, n)
				}
			}
			rec := c.recoverAndCheck(vm, p.Committed())
			if len(rec.Unreachable) != 1 || rec.Unreachable[0] != c.addrs[0] {
				t.Errorf("unreachable %v, want [%s]", rec.Unreachable, c.addrs[0])
			}
		})
	}
}

// TestAddedLinkJoins: a link added to a running primary (a node that was
// not there at the start) is dialled, gets all of memory while the VM runs
// (ft), and counts once it holds every page; the leader learns the new
// cluster at once. Once the first replica is gone the added one alone
// holds every page: the leader recovers from it the committed epoch's
// memory exactly.
func TestAddedLinkJoins(t *testing.T) {
	c := newCluster(t, 1)
	_, added, _ := startReplica(t, ReplicaConfig{})
	vm := newFakeVM(t, 2048) // 8 MiB: the catch-up takes several epochs
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0xADD1, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, AckTimeout: 500 * time.Millisecond, Policy: PolicyFT, SGMax: 8,
	}, vm, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 5)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 3, 10*time.Second, nil)

	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	defer acancel()
	for _, bad := range []string{"no-port", "tcp://"} {
		if err := p.AddLink(actx, bad); err == nil {
			t.Errorf("AddLink(%q) took a malformed address", bad)
		}
	}
	if err := p.AddLink(actx, c.addrs[0]); !errors.Is(err, ErrLinkExists) {
		t.Errorf("AddLink of an existing link: %v, want ErrLinkExists", err)
	}
	if err := p.AddLink(actx, added); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the leader to learn the added link", func() bool {
		cl, ok := c.leader.Cluster()
		return ok && slices.Equal(cl.Links, []string{c.addrs[0], added})
	})
	waitFor(t, "the added link to hold every page", func() bool {
		st := p.Status()
		return len(st.Links) == 2 && st.Links[1].Alive && !st.Links[1].Joining && !st.Degraded
	})
	c.cancels[0]() // the first replica goes: the added one has everything
	waitFor(t, "the primary to notice the first replica's loss", func() bool { return !p.Status().Links[0].Alive })
	held := p.Committed()
	waitCommitted(t, p, held+3, 10*time.Second, nil)
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("the primary: %v", err)
	}
	vm.Resume()
	c.addrs = []string{added}
	c.recoverAndCheck(vm, p.Committed())
}
