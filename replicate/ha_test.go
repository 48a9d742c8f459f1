package replicate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// fakeVM is a Source whose "guest" is a goroutine writing pages. Its memory
// is an mmap, like guest RAM, so the primary may read it while the guest
// writes (as KVM guests do) without the race detector objecting to a race
// the design accepts. Every captured state records the memory it belongs to.
type fakeVM struct {
	mu     sync.Mutex
	cond   sync.Cond
	paused bool
	mem    []byte
	dirty  map[uint64]bool
	writes uint64
	snaps  map[uint64][]byte // writes count (the state) → memory at capture
	order  []uint64          // keys of snaps, oldest first
	gone   bool              // mem is unmapped: the test is over
}

func newFakeVM(t *testing.T, pages int) *fakeVM {
	mem, err := syscall.Mmap(-1, 0, pages*PageSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeVM{mem: mem, dirty: map[uint64]bool{}, snaps: map[uint64][]byte{}}
	f.cond.L = &f.mu
	t.Cleanup(func() {
		// A writer (run) may not have seen its context end yet.
		f.mu.Lock()
		defer f.mu.Unlock()
		f.gone = true
		f.cond.Broadcast()
		syscall.Munmap(mem)
	})
	// Some initial content for the initial copy.
	for p := 0; p < pages; p += 3 {
		mem[p*PageSize] = byte(p) | 1
	}
	return f
}

func (f *fakeVM) Pause() error {
	f.mu.Lock()
	f.paused = true
	f.mu.Unlock()
	return nil
}

func (f *fakeVM) Resume() {
	f.mu.Lock()
	f.paused = false
	f.cond.Broadcast()
	f.mu.Unlock()
}

func (f *fakeVM) Memory() []byte { return f.mem }

func (f *fakeVM) HarvestDirty(dst []uint64) ([]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := range f.dirty {
		dst = append(dst, p)
	}
	clear(f.dirty)
	slices.Sort(dst)
	return dst, nil
}

func (f *fakeVM) CaptureState() ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, seen := f.snaps[f.writes]; !seen {
		f.order = append(f.order, f.writes)
	}
	f.snaps[f.writes] = bytes.Clone(f.mem)
	// Recovery picks the committed epoch or the one after it: only recent
	// states matter, and keeping every one would fill memory.
	if len(f.order) > 16 {
		delete(f.snaps, f.order[0])
		f.order = f.order[1:]
	}
	return binary.LittleEndian.AppendUint64(nil, f.writes), nil
}

// write is one guest store: a page gets a new value, unless paused.
func (f *fakeVM) write(page uint64, v uint64) { f.writeUnless(context.Background(), page, v) }

// writeUnless is write, given up when ctx ends while the VM is paused (a
// primary cancelled mid-epoch leaves it paused) or once the test is over.
func (f *fakeVM) writeUnless(ctx context.Context, page uint64, v uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for f.paused && !f.gone && ctx.Err() == nil {
		f.cond.Wait()
	}
	if f.gone || f.paused {
		return
	}
	binary.LittleEndian.PutUint64(f.mem[page*PageSize+8*(v%500):], v)
	f.dirty[page] = true
	f.writes++
}

// waitWrites waits until the guest has made n more writes: it runs.
func (f *fakeVM) waitWrites(t *testing.T, n uint64, what string) {
	t.Helper()
	f.mu.Lock()
	from := f.writes
	f.mu.Unlock()
	waitFor(t, what, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.writes >= from+n
	})
}

// run writes pages in a scattered pattern until ctx is done.
func (f *fakeVM) run(ctx context.Context, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 1))
	pages := uint64(len(f.mem) / PageSize)
	// Wake a write waiting for a resume that will not come.
	stop := context.AfterFunc(ctx, func() {
		f.mu.Lock()
		f.cond.Broadcast()
		f.mu.Unlock()
	})
	defer stop()
	for v := uint64(1); ctx.Err() == nil; v++ {
		f.writeUnless(ctx, r.Uint64N(pages), v)
		if v%64 == 0 {
			time.Sleep(50 * time.Microsecond) // a guest that also computes
		}
	}
}

// waitCommitted polls until p has committed epoch n and fails the test
// after limit, with detail (if not nil) in the message.
func waitCommitted(t *testing.T, p *Primary, n uint64, limit time.Duration, detail func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for p.Committed() < n {
		if time.Now().After(deadline) {
			msg := ""
			if detail != nil {
				msg = " (" + detail() + ")"
			}
			t.Fatalf("replication stuck at epoch %d, want %d%s", p.Committed(), n, msg)
		}
		time.Sleep(time.Millisecond)
	}
}

// cluster is replicas and a leader on loopback.
type cluster struct {
	t        *testing.T
	replicas []*Replica
	addrs    []string
	cancels  []context.CancelFunc
	leader   *Replica
	leadAddr string
	// stopLeader ends the leader (its listener and connections close).
	stopLeader context.CancelFunc
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startReplica(t testing.TB, cfg ReplicaConfig) (*Replica, string, context.CancelFunc) {
	t.Helper()
	return startReplicaAt(t, cfg, "127.0.0.1:0")
}

// startReplicaAt is startReplica listening on addr (a replica that comes
// back on the address it had).
func startReplicaAt(t testing.TB, cfg ReplicaConfig, addr string) (*Replica, string, context.CancelFunc) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log = quietLog()
	if cfg.Auth == nil {
		cfg.Auth = testCreds
	}
	r := NewReplica(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Serve(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r, ln.Addr().String(), cancel
}

// replicaAddr serves a replica until the test ends and returns its address.
func replicaAddr(tb testing.TB, cfg ReplicaConfig) string {
	_, addr, _ := startReplica(tb, cfg)
	return addr
}

func newCluster(t *testing.T, replicas int) *cluster {
	return newClusterWith(t, replicas, ReplicaConfig{Leader: true, HeartbeatTimeout: 2 * time.Second})
}

// newClusterWith is newCluster with the leader configured by leader.
func newClusterWith(t *testing.T, replicas int, leader ReplicaConfig) *cluster {
	c := &cluster{t: t}
	for i := 0; i < replicas; i++ {
		r, addr, cancel := startReplica(t, ReplicaConfig{})
		c.replicas = append(c.replicas, r)
		c.addrs = append(c.addrs, addr)
		c.cancels = append(c.cancels, cancel)
	}
	c.leader, c.leadAddr, c.stopLeader = startReplica(t, leader)
	return c
}

// connectPrimary makes a primary of cfg — with the test key, a quiet log
// and an output gate that discards unless given — and connects it within
// 20 s.
func connectPrimary(cfg PrimaryConfig, src Source, gate Gate) (*Primary, error) {
	if cfg.Auth == nil {
		cfg.Auth = testCreds
	}
	if cfg.Log == nil {
		cfg.Log = quietLog()
	}
	if gate == nil {
		gate = NewOutputGate(io.Discard, 1<<20)
	}
	p, err := NewPrimary(cfg, src, gate)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return p, p.Connect(ctx)
}

// mustConnectPrimary is connectPrimary, failing the test on an error.
func mustConnectPrimary(t testing.TB, cfg PrimaryConfig, src Source, gate Gate) *Primary {
	t.Helper()
	p, err := connectPrimary(cfg, src, gate)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (c *cluster) primary(src Source, policy Policy, mode Mode, links []string) *Primary {
	c.t.Helper()
	p, err := NewPrimary(PrimaryConfig{Auth: testCreds,
		Links: links, Leader: c.leadAddr, VMID: 0x7E57, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: policy, Mode: mode, SGMax: 8, Log: quietLog(),
	}, src, NewOutputGate(io.Discard, 1<<20))
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Connect(ctx); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// recoverAndCheck waits for the leader to see the primary fail, recovers,
// and checks the image is exactly the memory of the recovered state.
func (c *cluster) recoverAndCheck(vm *fakeVM, committed uint64) *Recovered {
	c.t.Helper()
	select {
	case <-c.leader.Failed():
	case <-time.After(10 * time.Second):
		c.t.Fatal("the leader did not notice the primary's failure")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rec, err := c.leader.Recover(ctx, c.addrs)
	if err != nil {
		c.t.Fatal(err)
	}
	checkRecovered(c.t, vm, rec, committed)
	return rec
}

// checkRecovered checks that rec is no older than the committed epoch and
// that its memory is exactly the guest's when its state was captured.
func checkRecovered(t *testing.T, vm *fakeVM, rec *Recovered, committed uint64) {
	t.Helper()
	if rec.Epoch < committed {
		t.Fatalf("recovered epoch %d is older than the committed epoch %d", rec.Epoch, committed)
	}
	vm.mu.Lock()
	want, ok := vm.snaps[binary.LittleEndian.Uint64(rec.State)]
	vm.mu.Unlock()
	if !ok {
		t.Fatalf("recovered state %x matches no captured state", rec.State)
	}
	if !bytes.Equal(rec.Memory, want) {
		for p := 0; p < len(want)/PageSize; p++ {
			if !bytes.Equal(rec.Memory[p*PageSize:(p+1)*PageSize], want[p*PageSize:(p+1)*PageSize]) {
				t.Fatalf("recovered epoch %d: page %d differs from the memory of its state", rec.Epoch, p)
			}
		}
	}
}

// clusterLinks makes a cluster of replicas and returns the address each
// replica's links use and a way to take replica i away, so the failover
// tests run over TCP here and over RDMA in rdma_integration_test.go.
type clusterLinks func(t *testing.T, replicas int) (c *cluster, links []string, drop func(i int))

func tcpLinks(t *testing.T, replicas int) (*cluster, []string, func(int)) {
	c := newCluster(t, replicas)
	return c, c.addrs, func(i int) { c.cancels[i]() }
}

func TestFailoverRecoversACommittedEpoch(t *testing.T) { failoverRecovers(t, tcpLinks) }
func TestKillMidTransfer(t *testing.T)                 { killMidTransfer(t, tcpLinks) }
func TestLinkLossMidRun(t *testing.T)                  { linkLossMidRun(t, tcpLinks) }

func failoverRecovers(t *testing.T, mk clusterLinks) {
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		for _, mode := range []Mode{ModeSync, ModeAsync} {
			t.Run(fmt.Sprintf("%v/%v", policy, mode), func(t *testing.T) {
				c, links, _ := mk(t, 2)
				vm := newFakeVM(t, 512)
				// Three links: the first replica gets two.
				p := c.primary(vm, policy, mode, []string{links[0], links[1], links[0]})
				ctx, cancel := context.WithCancel(context.Background())
				go vm.run(ctx, 1)
				runErr := make(chan error, 1)
				go func() { runErr <- p.Run(ctx) }()
				deadline := time.Now().Add(20 * time.Second)
				for p.Committed() < 20 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				// The primary dies: everything it had open closes at once.
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

// TestKillMidTransfer stops the primary in the middle of sending an epoch,
// after some links finished it and before others did: recovery must settle
// on one whole epoch, with nothing of an incomplete one applied.
func killMidTransfer(t *testing.T, mk clusterLinks) {
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		for _, cut := range []int{PageSize, 20 * PageSize} {
			t.Run(fmt.Sprintf("%v/after-%d-bytes", policy, cut), func(t *testing.T) {
				c, links, _ := mk(t, 2)
				vm := newFakeVM(t, 1024)
				const killFrom = 12
				var p *Primary
				var sent atomic.Int64
				var killedIn atomic.Uint64
				var once sync.Once
				p, err := NewPrimary(PrimaryConfig{Auth: testCreds,
					Links: links, Leader: c.leadAddr, VMID: 0xC0FFEE, Guest: "fake", VCPUs: 1,
					Epoch: 5 * time.Millisecond, Policy: policy, SGMax: 32, Log: quietLog(),
					FaultChunk: PageSize,
					FaultProgress: func(e uint64, n int) {
						// Cut the connections once the epochs from killFrom on
						// have sent cut bytes: in the middle of an epoch.
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
					t.Fatal("the primary ran on after its connections were cut")
				}
				killed := killedIn.Load()
				if got := p.Committed(); got != killed-1 {
					t.Fatalf("committed %d, want %d: the connections were cut in epoch %d", got, killed-1, killed)
				}
				// recoverAndCheck has checked that the image is exactly one
				// captured state. That is the committed epoch, or the cut
				// one if every link and the leader had it all anyway (an
				// epoch smaller than the cut).
				rec := c.recoverAndCheck(vm, killed-1)
				if rec.Epoch != killed-1 && rec.Epoch != killed {
					t.Errorf("recovered epoch %d, cut in epoch %d", rec.Epoch, killed)
				}
			})
		}
	}
}

// TestLinkLossMidRun takes a replica away while the primary runs: fast
// resynchronises the remaining link, ft goes on degraded; both recover.
func linkLossMidRun(t *testing.T, mk clusterLinks) {
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		t.Run(policy.String(), func(t *testing.T) {
			c, links, drop := mk(t, 2)
			vm := newFakeVM(t, 256)
			p := c.primary(vm, policy, ModeSync, links)
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
			drop(1) // replica 1 goes away
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

func TestReplicaRejectsMalformedInput(t *testing.T) {
	c := newCluster(t, 1)
	vm := newFakeVM(t, 64)
	p := c.primary(vm, PolicyFT, ModeSync, c.addrs)
	ctx, cancel := context.WithCancel(context.Background())
	go vm.run(ctx, 4)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	hello := Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: 64 * PageSize}
	for _, tc := range []struct {
		name string
		// authed runs the handshake first: the bytes then reach the
		// protocol's decoders; without it they reach the handshake's.
		authed bool
		msg    []byte
	}{
		{"garbage", false, []byte("GET / HTTP/1.1\r\nHost: replica\r\n\r\n")},
		{"hello without handshake", false, append(appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: 0x7E57, Length: uint32(len(hello.marshal()))}), hello.marshal()...)},
		{"garbage after handshake", true, []byte("GET / HTTP/1.1\r\nHost: replica\r\n\r\n")},
		{"truncated header", true, appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: 0x7E57})[:20]},
		{"other VM", true, append(appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: 0xBAD, Length: uint32(len(hello.marshal()))}), hello.marshal()...)},
		{"huge payload", true, appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: 0x7E57, Length: 1 << 30})},
		{"map outside the guest", true, func() []byte {
			h := hello
			h.Link = 0
			b := append(appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: 0x7E57, Length: uint32(len(h.marshal()))}), h.marshal()...)
			return appendMap(b, 0x7E57, 1, &MapRecord{Epoch: 99, Regions: []Region{{First: 60, Pages: 10}}})
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := net.Dial("tcp", c.addrs[0])
			if err != nil {
				t.Fatal(err)
			}
			defer raw.Close()
			var nc net.Conn = raw
			if tc.authed {
				if nc, err = testCreds.Client(context.Background(), raw, auth.Role(RoleLink)); err != nil {
					t.Fatal(err)
				}
			}
			nc.Write(tc.msg)
			// The replica hangs up (possibly after an error message, or
			// resetting a connection whose bytes it did not read).
			nc.SetReadDeadline(time.Now().Add(15 * time.Second))
			if _, err := io.Copy(io.Discard, nc); err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("the replica did not close the connection: %v", err)
			}
		})
	}
	// The real primary was never disturbed.
	before := p.Committed()
	deadline := time.Now().Add(10 * time.Second)
	for p.Committed() < before+5 {
		if time.Now().After(deadline) {
			t.Fatal("replication stalled after the malformed connections")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-runErr
	c.recoverAndCheck(vm, p.Committed())
}

func TestUnreachableReplicaFailsConnect(t *testing.T) {
	c := newCluster(t, 1)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	p, err := NewPrimary(PrimaryConfig{Auth: testCreds, Links: []string{c.addrs[0], dead}, Leader: c.leadAddr, VMID: 9, Epoch: time.Millisecond}, newFakeVM(t, 16), NewOutputGate(io.Discard, 1))
	if err != nil {
		t.Fatal(err)
	}
	err = p.Connect(context.Background())
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(dead)) {
		t.Fatalf("connect error %v, want one naming %s", err, dead)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("error %v does not wrap ECONNREFUSED", err)
	}
}

// TestFinishSaysGoodbye: a VM that stops on purpose is not taken over, and
// the output it wrote last is released.
func TestFinishSaysGoodbye(t *testing.T) {
	c := newCluster(t, 1)
	vm := newFakeVM(t, 64)
	var out lockedWriter
	gate := NewOutputGate(&out, 1<<20)
	p, err := NewPrimary(PrimaryConfig{Auth: testCreds, Links: c.addrs, Leader: c.leadAddr, VMID: 0xB1E, Epoch: 5 * time.Millisecond, Log: quietLog()}, vm, gate)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(context.Background()) }()
	for p.Committed() < 3 {
		time.Sleep(time.Millisecond)
	}
	gate.Write([]byte("last words")) // written after the last epoch
	p.Finish()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.leader.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("the leader was not told")
	}
	if !c.leader.Ended() {
		t.Error("the leader treats a goodbye as a failure")
	}
	if !strings.Contains(out.String(), "last words") {
		t.Errorf("output after the last epoch was not released: %q", out.String())
	}
}

type lockedWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
