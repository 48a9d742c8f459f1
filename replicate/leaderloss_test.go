package replicate

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestLeaderLossHoldsOutputAndResumes: the leader dies. The primary does
// not stop its VM: the guest runs on, its output is held (nothing can
// commit), the status says unprotected; a leader that comes back on the
// address resumes protection, the held output goes out, and that leader
// can take over from the replicas with nothing committed lost.
func TestLeaderLossHoldsOutputAndResumes(t *testing.T) {
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		t.Run(policy.String(), func(t *testing.T) {
			c := newCluster(t, 2)
			vm := newFakeVM(t, 128)
			out := &lockedWriter{}
			gate := NewOutputGate(out, 1<<20)
			p := mustConnectPrimary(t, PrimaryConfig{
				Links: c.addrs, Leader: c.leadAddr, VMID: 0x1055, Guest: "fake", VCPUs: 1,
				Epoch: 5 * time.Millisecond, Heartbeat: 20 * time.Millisecond, AckTimeout: 300 * time.Millisecond,
				Policy: policy, SGMax: 8,
			}, vm, gate)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go vm.run(ctx, 5)
			runErr := make(chan error, 1)
			go func() { runErr <- p.Run(ctx) }()
			waitCommitted(t, p, 5, 10*time.Second, nil)
			gate.Write([]byte("before;"))
			waitFor(t, "output of a protected VM", func() bool { return strings.Contains(out.String(), "before;") })
			if st := p.Status(); !st.Protected || st.Degraded || !st.LeaderConnected {
				t.Fatalf("status of a fully protected VM: %v", st)
			}

			c.stopLeader()
			waitFor(t, "the primary to notice the leader's loss", func() bool { return !p.Status().LeaderConnected })
			if st := p.Status(); st.Protected {
				t.Fatalf("status without a leader: %v", st)
			}
			gate.Write([]byte("during;"))
			vm.waitWrites(t, 2000, "the guest to run on without its leader")
			if strings.Contains(out.String(), "during;") {
				t.Fatal("output escaped while nothing could commit")
			}
			select {
			case err := <-runErr:
				t.Fatalf("the primary stopped when its leader was lost: %v", err)
			default:
			}
			held := p.Committed()

			// The leader comes back (a fresh process, on its address).
			leader2, _, stop2 := startReplicaAt(t, ReplicaConfig{Leader: true, HeartbeatTimeout: 2 * time.Second}, c.leadAddr)
			c.leader, c.stopLeader = leader2, stop2
			waitCommitted(t, p, held+5, 20*time.Second, nil)
			waitFor(t, "the held output after protection resumed", func() bool { return strings.Contains(out.String(), "during;") })
			if st := p.Status(); !st.Protected || !st.LeaderConnected {
				t.Fatalf("status after the leader came back: %v", st)
			}

			// The primary dies: the new leader recovers a committed epoch
			// whose memory is exactly the guest's at its state.
			cancel()
			if err := <-runErr; err != nil {
				t.Fatalf("the primary: %v", err)
			}
			vm.Resume()
			c.recoverAndCheck(vm, p.Committed())
		})
	}
}
