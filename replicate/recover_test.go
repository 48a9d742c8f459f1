package replicate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// proxyAction is what a messageProxy does with a message from the client.
type proxyAction int

const (
	forward proxyAction = iota
	hangUp              // close both connections
	freeze              // forward nothing more either way, close nothing
)

// startMessageProxy listens on loopback and forwards every connection to
// target, authenticating both sides with the tests' key and parsing the client's stream message by message and asking decide
// what to do with each. rcvBuf, when non-zero, fixes the client socket's
// receive buffer (no autotuning), so a frozen proxy makes the sender block
// soon. It returns the proxy's address.
func startMessageProxy(t *testing.T, target string, rcvBuf int, decide func(typ MsgType, length uint32) proxyAction) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			rawClient, err := ln.Accept()
			if err != nil {
				return
			}
			if rcvBuf > 0 {
				rawClient.(*net.TCPConn).SetReadBuffer(rcvBuf)
			}
			// The proxy holds the key: it authenticates each side and sees
			// the messages in clear.
			client, role, err := testCreds.Server(context.Background(), rawClient)
			if err != nil {
				continue
			}
			rawServer, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			server, err := testCreds.Client(context.Background(), rawServer, role)
			if err != nil {
				client.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, client, server)
			mu.Unlock()
			var frozen atomic.Bool
			go func() {
				// Server → client, until frozen.
				buf := make([]byte, 64<<10)
				for {
					n, err := server.Read(buf)
					if frozen.Load() {
						return
					}
					if n > 0 {
						client.Write(buf[:n])
					}
					if err != nil {
						client.Close()
						return
					}
				}
			}()
			go func() {
				// Client → server, message by message.
				for {
					var hb [headerSize]byte
					if _, err := io.ReadFull(client, hb[:]); err != nil {
						server.Close()
						return
					}
					typ := MsgType(binary.LittleEndian.Uint16(hb[6:]))
					length := binary.LittleEndian.Uint32(hb[32:])
					switch decide(typ, length) {
					case hangUp:
						client.Close()
						server.Close()
						return
					case freeze:
						frozen.Store(true)
						return
					}
					server.Write(hb[:])
					if _, err := io.CopyN(server, client, int64(length)); err != nil {
						server.Close()
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestRecoveryLosesAReplicaAfterTheQuery runs a primary over two
// replicas, kills it, and recovers with one replica failing after it
// answered the query: closing or going silent while settling, or while
// sending pages. With fast its pages have no other copy: recovery must
// fail and name it, never build an image without them. With ft the other
// replica holds everything: recovery must succeed with the exact memory of
// the recovered state and report the lost replica.
func TestRecoveryLosesAReplicaAfterTheQuery(t *testing.T) {
	for _, policy := range []Policy{PolicyFast, PolicyFT} {
		for _, step := range []MsgType{MsgResolve, MsgFetch} {
			for _, silent := range []bool{false, true} {
				name := fmt.Sprintf("%v/at-%v/silent=%v", policy, step, silent)
				t.Run(name, func(t *testing.T) {
					c := newCluster(t, 2)
					// Recovery steps time out quickly in this test.
					c.leader, c.leadAddr, _ = startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: 2 * time.Second, RecoveryStepTimeout: 500 * time.Millisecond})
					vm := newFakeVM(t, 512)
					p := c.primary(vm, policy, ModeSync, c.addrs)
					ctx, cancel := context.WithCancel(context.Background())
					go vm.run(ctx, 5)
					runErr := make(chan error, 1)
					go func() { runErr <- p.Run(ctx) }()
					waitCommitted(t, p, 10, 20*time.Second, nil)
					cancel()
					<-runErr
					select {
					case <-c.leader.Failed():
					case <-time.After(10 * time.Second):
						t.Fatal("the leader did not notice the primary's failure")
					}
					action := hangUp
					if silent {
						action = freeze
					}
					bad := startMessageProxy(t, c.addrs[0], 0, func(typ MsgType, _ uint32) proxyAction {
						if typ == step {
							return action
						}
						return forward
					})
					rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer rcancel()
					began := time.Now()
					rec, err := c.leader.Recover(rctx, []string{bad, c.addrs[1]})
					if took := time.Since(began); took > 10*time.Second {
						t.Errorf("recovery took %v with a failed replica", took)
					}
					if policy == PolicyFast {
						if !errors.Is(err, ErrUnrecoverable) || !strings.Contains(err.Error(), bad) {
							t.Fatalf("Recover = %v, %v; want ErrUnrecoverable naming %s", rec, err, bad)
						}
						return
					}
					if err != nil {
						t.Fatalf("ft recovery with one replica lost: %v", err)
					}
					if len(rec.Unreachable) != 1 || rec.Unreachable[0] != bad {
						t.Errorf("unreachable %v, want [%s]", rec.Unreachable, bad)
					}
					vm.mu.Lock()
					want, ok := vm.snaps[binary.LittleEndian.Uint64(rec.State)]
					vm.mu.Unlock()
					if !ok || string(rec.Memory) != string(want) {
						t.Fatalf("recovered epoch %d: image differs from the memory of its state (state known: %v)", rec.Epoch, ok)
					}
				})
			}
		}
	}
}

// TestRefusalsReachTheClient: a replica's refusal reaches the tandem
// client that was refused (it used to carry VM id 0, which the client
// rejected as a message for another VM), and tells it what is wrong
// without revealing the VM the replica serves.
func TestRefusalsReachTheClient(t *testing.T) {
	_, addr, _ := startReplica(t, ReplicaConfig{})
	const served = 0x5EC12E7
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialHello(ctx, testCreds, addr, served, 1, Hello{Role: RoleLink, Links: 1, MemBytes: 64 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	defer c.c.Close()
	for _, tc := range []struct {
		name  string
		vmID  uint64
		hello Hello
		want  string
	}{
		{"another VM", 0xBAD, Hello{Role: RoleLink, Links: 1, MemBytes: 64 * PageSize}, "refused: this replica serves another VM"},
		{"other memory size", served, Hello{Role: RoleLink, Links: 1, MemBytes: 128 * PageSize}, "refused: the memory size in the hello differs"},
		{"not the leader", served, Hello{Role: RoleState, Links: 1, MemBytes: 64 * PageSize}, "refused: this replica is not the leader"},
	} {
		_, err := dialHello(ctx, testCreds, addr, tc.vmID, 1, tc.hello)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			continue
		}
		for _, secret := range []string{fmt.Sprintf("%x", served), fmt.Sprint(64 * PageSize)} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: the refusal %q reveals %s", tc.name, err, secret)
			}
		}
	}
}

// TestReplicaRefusesGuestsLargerThanItsLimit: a hello claiming more memory
// than the replica may hold (1 TiB, the protocol's limit, once ended a
// replica with "out of memory") is refused before anything is allocated
// and leaves the replica free to serve a real VM.
func TestReplicaRefusesGuestsLargerThanItsLimit(t *testing.T) {
	r, addr, _ := startReplica(t, ReplicaConfig{MaxMemBytes: 256 * PageSize})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, mem := range []uint64{1 << 40, 257 * PageSize} {
		_, err := dialHello(ctx, testCreds, addr, 0xB16, 1, Hello{Role: RoleLink, Links: 1, MemBytes: mem})
		if err == nil || !strings.Contains(err.Error(), "more than this replica takes") {
			t.Errorf("hello for %d bytes: %v, want a refusal naming the limit", mem, err)
		}
	}
	r.mu.Lock()
	bound, store := r.vmID, r.store
	r.mu.Unlock()
	if bound != 0 || store != nil {
		t.Fatalf("refused hellos bound the replica to VM %x (store allocated: %v)", bound, store != nil)
	}
	c, err := dialHello(ctx, testCreds, addr, 0x600D, 1, Hello{Role: RoleLink, Links: 1, MemBytes: 256 * PageSize})
	if err != nil {
		t.Fatalf("a guest within the limit: %v", err)
	}
	c.c.Close()
	if HostMemBytes() < 1<<20 {
		t.Errorf("HostMemBytes = %d", HostMemBytes())
	}
}

// barrierVM is a fakeVM with a "vCPU" that writes output to a gate, and a
// Pause that, like a real VM's, waits for that vCPU to reach the barrier
// between two of its writes: a vCPU stuck inside a write is not paused.
type barrierVM struct {
	*fakeVM
	gate     *OutputGate
	mu       sync.Mutex
	cond     sync.Cond
	pauseReq bool
	parked   bool
}

func newBarrierVM(t *testing.T, pages int, gate *OutputGate) *barrierVM {
	b := &barrierVM{fakeVM: newFakeVM(t, pages), gate: gate}
	b.cond.L = &b.mu
	return b
}

func (b *barrierVM) Pause() error {
	b.mu.Lock()
	b.pauseReq = true
	for !b.parked {
		b.cond.Wait()
	}
	b.mu.Unlock()
	return b.fakeVM.Pause()
}

func (b *barrierVM) Resume() {
	b.fakeVM.Resume()
	b.mu.Lock()
	b.pauseReq = false
	b.cond.Broadcast()
	b.mu.Unlock()
}

// vcpu writes output until ctx is done, parking whenever a pause is asked.
func (b *barrierVM) vcpu(ctx context.Context) {
	line := []byte(strings.Repeat("x", 511) + "\n")
	for ctx.Err() == nil {
		b.mu.Lock()
		if b.pauseReq {
			b.parked = true
			b.cond.Broadcast()
			for b.pauseReq {
				b.cond.Wait()
			}
			b.parked = false
		}
		b.mu.Unlock()
		if _, err := b.gate.Write(line); err != nil {
			return
		}
	}
	b.mu.Lock()
	b.parked = true // an exited vCPU counts as still
	b.cond.Broadcast()
	b.mu.Unlock()
}

// TestGateNeverDeadlocksThePause: after a failed fast epoch its sealed
// output stays held while the VM runs, so a busy vCPU fills the gate and
// blocks in its write; the next pause must still complete (it used to wait
// forever for that vCPU, which only a commit after the pause could free).
func TestGateNeverDeadlocksThePause(t *testing.T) {
	c := newCluster(t, 2)
	gate := NewOutputGate(io.Discard, 4<<10)
	vm := newBarrierVM(t, 128, gate)
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0x6A7E, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFast, Mode: ModeSync, SGMax: 8, Log: quietLog(),
	}, vm, gate)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	guestDone, vcpuDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(guestDone); vm.run(ctx, 6) }()
	go func() { defer close(vcpuDone); vm.vcpu(ctx) }()
	// The guest writes the mmap the test's cleanup unmaps: stop it first.
	defer func() {
		cancel()
		gate.Close()
		vm.Resume()
		<-guestDone
		<-vcpuDone
	}()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waiters := func() string { return fmt.Sprintf("gate waiters %d", gate.waiters()) }
	waitCommitted(t, p, 10, 20*time.Second, waiters)
	c.cancels[1]() // a replica goes: the epoch in flight fails, its output stays sealed
	lost := p.Committed()
	waitCommitted(t, p, lost+10, 20*time.Second, waiters)
	cancel()
	<-runErr
}

// TestStalledLinkFailsInsteadOfHanging: the remaining replica freezes in
// the middle of a full resynchronisation larger than the socket buffers.
// The send must fail by the epoch's deadline, so the primary lets its VM
// run on (output held) instead of holding it paused forever.
func TestStalledLinkFailsInsteadOfHanging(t *testing.T) {
	c := newCluster(t, 2)
	const pages = 8192 // 32 MiB: more than the socket buffers hold
	// The replica behind this proxy freezes, once armed, at the first data
	// message of 8 MiB or more: a full copy, not an ordinary epoch.
	var armed atomic.Bool
	frozen := startMessageProxy(t, c.addrs[1], 64<<10, func(typ MsgType, length uint32) proxyAction {
		if armed.Load() && typ == MsgData && length >= 8<<20 {
			return freeze
		}
		return forward
	})
	vm := newFakeVM(t, pages)
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: []string{c.addrs[0], frozen}, Leader: c.leadAddr, VMID: 0x57A1, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFast, Mode: ModeSync, SGMax: 8, Log: quietLog(),
		// A floor of 10 MB/s bounds the frozen link's deadline (32 MiB:
		// under 4 s) whatever rate the loaded proxy was measured at.
		AckTimeout: 500 * time.Millisecond, MinLinkRate: 10e6,
		// Raw data: the fake guest's pages are mostly zero, which the
		// default reduction would send in a few kilobytes.
		Reduce: &Reduction{},
	}, vm, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	guestDone := make(chan struct{})
	go func() { defer close(guestDone); vm.run(ctx, 8) }()
	defer func() {
		cancel()
		vm.Resume()
		<-guestDone
	}()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 10, 30*time.Second, func() string { return "before the fault" })
	armed.Store(true)
	c.cancels[0]() // the other replica goes: a full copy goes to the frozen one
	// The frozen link fails by its deadline; with no link left nothing
	// can commit, but the VM is not held paused: it runs on, its output
	// held, while the links are redialled.
	waitFor(t, "the frozen link to fail", func() bool {
		st := p.Status()
		return !st.Links[0].Alive && !st.Links[1].Alive
	})
	if st := p.Status(); st.Protected {
		t.Fatalf("status with no live link: %v", st)
	}
	vm.waitWrites(t, 1000, "the guest to run on without links")
	select {
	case err := <-runErr:
		t.Fatalf("the primary stopped when its links failed: %v", err)
	default:
	}
}
