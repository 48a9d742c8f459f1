package replicate

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// runningFake is a fakeVM that can be harvested while it runs (its writes
// and harvests take one lock, as KVM's write protection orders them).
type runningFake struct{ *fakeVM }

func (f runningFake) HarvestDirtyRunning(dst []uint64) ([]uint64, error) { return f.HarvestDirty(dst) }

// slowWriter writes random pages of vm, a few hundred per epoch, so that
// most pages written in an epoch were not written in the one before (they
// go ahead) and most pages harvested ahead are not written again (losing
// them would show).
func slowWriter(ctx context.Context, vm *fakeVM) {
	r := rand.New(rand.NewPCG(6, 1))
	pages := uint64(len(vm.mem) / PageSize)
	for v := uint64(1); ctx.Err() == nil; v++ {
		vm.write(r.Uint64N(pages), v)
		if v%16 == 0 {
			time.Sleep(200 * time.Microsecond) // pacing the workload, not waiting for a condition
		}
	}
}

// TestSpeculativeTransfer: with pages sent ahead while the guest runs, ft
// (the policy speculation needs) with every reduction still recovers
// exactly the guest's memory
// (also after a replica is lost between two parts), some epochs do send
// pages ahead, and the replicas see no protocol error.
func TestSpeculativeTransfer(t *testing.T) {
	for _, policy := range []Policy{PolicyFT} {
		for _, red := range []*Reduction{{}, {Zero: true, CacheBytes: 1 << 20, Similar: true, Compress: true}} {
			t.Run(policy.String()+"/"+red.String(), func(t *testing.T) {
				c := newCluster(t, 2)
				vm := newFakeVM(t, 4096)
				epochs := loseAReplicaAndRecover(t, c, vm, runningFake{vm}, func(ctx context.Context) { slowWriter(ctx, vm) }, 30, PrimaryConfig{
					VMID: 0x5BEC, Epoch: 10 * time.Millisecond, Policy: policy, Reduce: red, Speculate: 0.5,
				})
				ahead, again := 0, 0
				for _, e := range epochs {
					ahead += e.Speculated
					again += e.SpeculatedAgain
				}
				t.Logf("%d pages sent ahead, %d of them written again", ahead, again)
				if ahead == 0 {
					t.Fatal("no page was sent ahead")
				}
			})
		}
	}
}

// TestTwoPartEpoch walks the replica's rules for a speculated epoch one
// message at a time: a second map appends to the staged epoch and its
// copy of a page wins; a second map the rules forbid fails the link.
func TestTwoPartEpoch(t *testing.T) {
	const vm, pages = 79, 16
	hello := Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize}
	part := func(l *linkClient, typ MsgType, e, committed uint64, regions []Region, fill byte, data bool) []byte {
		m := &MapRecord{Epoch: e, Committed: committed, Regions: regions}
		b := appendMapAs(nil, typ, l.c.vmID, l.c.gen, m)
		if data {
			d := bytes.Repeat([]byte{fill}, int(m.Pages()*PageSize))
			b = appendHeader(b, Header{Generation: l.c.gen, Type: MsgData, VMID: l.c.vmID, Epoch: e, Length: uint32(len(d))})
			b = append(b, d...)
		}
		return b
	}
	done := func(l *linkClient, e uint64) []byte {
		return appendHeader(nil, Header{Generation: l.c.gen, Type: MsgDone, VMID: l.c.vmID, Epoch: e})
	}
	send := func(l *linkClient, b []byte) {
		t.Helper()
		if _, err := l.c.c.Write(b); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("accepted", func(t *testing.T) {
		r, addr, _ := startReplica(t, ReplicaConfig{})
		l := dialAs(t, addr, vm, hello)
		l.epoch(1, 0, []Region{{First: 0, Pages: pages}}, 0x11, true)
		b := part(l, MsgMap, 2, 1, []Region{{First: 2, Pages: 3}}, 0x22, true)
		b = append(b, part(l, MsgMapMore, 2, 1, []Region{{First: 3, Pages: 1}, {First: 9, Pages: 1}}, 0x33, true)...)
		send(l, append(b, done(l, 2)...))
		if h, err := l.c.readHeader(); err != nil || h.Type != MsgAck || h.Epoch != 2 {
			t.Fatalf("after the two parts: %+v, %v; want the ack of epoch 2", h, err)
		}
		if err := l.c.send(MsgCommit, 2, nil); err != nil {
			t.Fatal(err)
		}
		want := map[uint64]byte{0: 0x11, 2: 0x22, 3: 0x33, 4: 0x22, 9: 0x33}
		waitFor(t, "epoch 2 applied", func() bool {
			r.waitApplies()
			r.store.mu.RLock()
			defer r.store.mu.RUnlock()
			for pg, v := range want {
				if r.store.pages[pg*PageSize] != v {
					return false
				}
			}
			return r.store.epochs[9] == 2 && r.store.epochs[0] == 1
		})
	})

	refused := []struct {
		name string
		msgs func(l *linkClient) []byte
	}{
		{"no epoch staged", func(l *linkClient) []byte {
			return part(l, MsgMapMore, 2, 1, []Region{{First: 3, Pages: 1}}, 0x33, false)
		}},
		{"another epoch", func(l *linkClient) []byte {
			b := part(l, MsgMap, 2, 1, []Region{{First: 2, Pages: 1}}, 0x22, true)
			return append(b, part(l, MsgMapMore, 3, 1, []Region{{First: 3, Pages: 1}}, 0x33, false)...)
		}},
		{"before the first part's data", func(l *linkClient) []byte {
			b := part(l, MsgMap, 2, 1, []Region{{First: 2, Pages: 1}}, 0x22, false)
			return append(b, part(l, MsgMapMore, 2, 1, []Region{{First: 3, Pages: 1}}, 0x33, false)...)
		}},
		{"a third part", func(l *linkClient) []byte {
			b := part(l, MsgMap, 2, 1, []Region{{First: 2, Pages: 1}}, 0x22, true)
			b = append(b, part(l, MsgMapMore, 2, 1, []Region{{First: 3, Pages: 1}}, 0x33, true)...)
			return append(b, part(l, MsgMapMore, 2, 1, []Region{{First: 4, Pages: 1}}, 0x44, false)...)
		}},
		{"another commit", func(l *linkClient) []byte {
			b := part(l, MsgMap, 2, 1, []Region{{First: 2, Pages: 1}}, 0x22, true)
			return append(b, part(l, MsgMapMore, 2, 0, []Region{{First: 3, Pages: 1}}, 0x33, false)...)
		}},
		{"after the completion", func(l *linkClient) []byte {
			b := part(l, MsgMap, 2, 1, []Region{{First: 2, Pages: 1}}, 0x22, true)
			return append(append(b, done(l, 2)...), part(l, MsgMapMore, 2, 1, []Region{{First: 3, Pages: 1}}, 0x33, false)...)
		}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			r, addr, _ := startReplica(t, ReplicaConfig{})
			l := dialAs(t, addr, vm, hello)
			l.epoch(1, 0, []Region{{First: 0, Pages: pages}}, 0x11, true)
			send(l, tt.msgs(l))
			for {
				h, err := l.c.readHeader()
				if err != nil {
					break // the link was dropped
				}
				if h.Type != MsgAck || h.Epoch != 2 || tt.name != "after the completion" {
					t.Fatalf("got %+v; want the link dropped", h)
				}
			}
			waitFor(t, "the protocol error to be counted", func() bool { return r.ProtocolErrors() == 1 })
		})
	}
}

func TestWithoutPages(t *testing.T) {
	tests := []struct {
		ext   []Region
		pages []uint64
		want  []Region
	}{
		{[]Region{{0, 4}}, nil, []Region{{0, 4}}},
		{[]Region{{0, 4}}, []uint64{0}, []Region{{1, 3}}},
		{[]Region{{0, 4}}, []uint64{3}, []Region{{0, 3}}},
		{[]Region{{0, 4}, {10, 2}}, []uint64{1, 2, 10, 11, 20}, []Region{{0, 1}, {3, 1}}},
		{[]Region{{5, 3}}, []uint64{1, 6}, []Region{{5, 1}, {7, 1}}},
	}
	for _, tt := range tests {
		if got := withoutPages(tt.ext, tt.pages); !slices.Equal(got, tt.want) {
			t.Errorf("withoutPages(%v, %v) = %v, want %v", tt.ext, tt.pages, got, tt.want)
		}
	}
}

// TestSpeculationNeedsFT: with fast, a page sent ahead on one link could
// be sent at the pause on another, two copies of one epoch that recovery
// cannot order, so a fast primary refuses to speculate.
func TestSpeculationNeedsFT(t *testing.T) {
	_, err := NewPrimary(PrimaryConfig{Links: []string{"x"}, Leader: "x", Epoch: time.Millisecond, VMID: 1, Auth: testCreds,
		Policy: PolicyFast, Speculate: 0.5}, nil, nil)
	if !errors.Is(err, errSpeculateFast) {
		t.Fatalf("fast with speculation: %v", err)
	}
}
