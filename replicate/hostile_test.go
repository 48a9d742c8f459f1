package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// Hostile peers against a real replica (issue 12, findings 7 and 8): a
// peer without the key, with another key or the other mode gets nothing
// and changes nothing; an authenticated peer that breaks the binding rules
// is refused message by message; and the real primary goes on throughout.

var otherKey = mustGenerateKey()

// hostileHello is a link hello as a primary of vmID would send it.
func hostileHello(vmID uint64, mem uint64) []byte {
	h := Hello{Role: RoleLink, Links: 1, MemBytes: mem, Policy: PolicyFast}
	p := h.marshal()
	return append(appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: vmID, Length: uint32(len(p))}), p...)
}

// expectHangUp waits for the replica to close c (an EOF or reset, not a
// timeout): it refused whatever c sent.
func expectHangUp(t *testing.T, c net.Conn, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the replica kept the connection open", what)
	}
	if err != nil && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) {
		t.Logf("%s: connection ended with %v", what, err)
	}
}

// untouched checks that a replica holds no VM and no memory.
func untouched(t *testing.T, r *Replica, what string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vmID != 0 || r.store != nil || len(r.stages) != 0 {
		t.Fatalf("%s: the replica bound VM %x (store allocated: %v, %d stages)", what, r.vmID, r.store != nil, len(r.stages))
	}
}

// TestHostilePeersWithoutTheKey: no handshake, a wrong key, and the other
// mode (each way) all fail the handshake; the replica binds no VM and
// allocates nothing, and a refusal names nothing about it.
func TestHostilePeersWithoutTheKey(t *testing.T) {
	for _, mode := range []auth.Mode{auth.Encrypted, auth.Plaintext} {
		t.Run(mode.String(), func(t *testing.T) {
			creds := mustCredentials(testKey, mode)
			other := auth.Plaintext
			if mode == auth.Plaintext {
				other = auth.Encrypted
			}
			r, addr, _ := startReplica(t, ReplicaConfig{Auth: creds})
			const vmID = 0x5EC12E7
			// A Tandem hello with no handshake at all.
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			nc.Write(hostileHello(vmID, 64*PageSize))
			expectHangUp(t, nc, "hello without a handshake")
			nc.Close()
			untouched(t, r, "hello without a handshake")

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for name, c := range map[string]*auth.Credentials{
				"wrong key":             mustCredentials(otherKey, mode),
				"wrong key, other mode": mustCredentials(otherKey, other),
				"right key, other mode": mustCredentials(testKey, other),
			} {
				_, err := dialHello(ctx, c, addr, vmID, 1, Hello{Role: RoleLink, Links: 1, MemBytes: 64 * PageSize})
				if !errors.Is(err, auth.ErrHandshake) {
					t.Errorf("%s: %v, want a failed handshake", name, err)
				}
				if err != nil && (strings.Contains(err.Error(), fmt.Sprintf("%x", vmID)) || strings.Contains(err.Error(), "refused")) {
					t.Errorf("%s: the error %q carries a refusal or the VM", name, err)
				}
				untouched(t, r, name)
			}
			// The right key in the right mode is served.
			c, err := dialHello(ctx, creds, addr, vmID, 1, Hello{Role: RoleLink, Links: 1, MemBytes: 64 * PageSize})
			if err != nil {
				t.Fatalf("the key holder: %v", err)
			}
			c.c.Close()
		})
	}
}

// TestHostileHugeMemoryClaim: a 62-byte hello claiming 1 TiB once crashed a
// replica with out of memory (70 bytes now that the header carries the
// generation). Before the handshake it is not even decoded:
// nothing is allocated, and the replica then serves the real primary.
func TestHostileHugeMemoryClaim(t *testing.T) {
	c := newCluster(t, 1)
	// This replica would take a 1 TiB guest from an authenticated primary:
	// only the handshake stands between the claim and the allocation.
	r, addr, _ := startReplica(t, ReplicaConfig{MaxMemBytes: 1 << 40})
	c.replicas[0], c.addrs[0] = r, addr
	hello := hostileHello(0xB16, 1<<40)
	if len(hello) != 70 {
		t.Fatalf("the hostile hello is %d bytes, want the 70 of the finding", len(hello))
	}
	for _, mode := range []string{"no handshake", "wrong key"} {
		nc, err := net.Dial("tcp", c.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		if mode == "wrong key" {
			if _, err := mustCredentials(otherKey, auth.Encrypted).Client(context.Background(), nc, auth.Role(RoleLink)); err == nil {
				t.Fatal("a wrong key passed the handshake")
			}
			nc, _ = net.Dial("tcp", c.addrs[0])
			if _, err := mustCredentials(otherKey, auth.Plaintext).Client(context.Background(), nc, auth.Role(RoleLink)); err == nil {
				t.Fatal("a wrong plaintext key passed the handshake")
			}
			nc, _ = net.Dial("tcp", c.addrs[0])
		}
		nc.Write(hello)
		expectHangUp(t, nc, mode)
		nc.Close()
		untouched(t, r, mode)
	}
	vm := newFakeVM(t, 64)
	p := c.primary(vm, PolicyFT, ModeSync, c.addrs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 5)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 5, 10*time.Second, nil)
	cancel()
	<-runErr
}

// TestHostileRecoveryWithoutTheKey: a peer without the key cannot query,
// resolve (discarding staged epochs) or fetch guest memory, whether it
// skips the handshake or tries a wrong key; the staged epoch survives and
// the real leader recovers afterwards.
func TestHostileRecoveryWithoutTheKey(t *testing.T) {
	c := newCluster(t, 1)
	vm := newFakeVM(t, 64)
	for p := uint64(0); p < 64; p++ {
		vm.write(p, p+1)
	}
	p := c.primary(vm, PolicyFT, ModeSync, c.addrs)
	ctx, cancel := context.WithCancel(context.Background())
	go vm.run(ctx, 6)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 4, 10*time.Second, nil)
	cancel()
	<-runErr
	// The replica has taken everything the primary sent once its link
	// connection has ended: only then is the report the one to compare.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		r := c.replicas[0]
		r.mu.Lock()
		live := len(r.liveLinks)
		r.mu.Unlock()
		if live == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replica still serves the dead primary's link")
		}
	}
	before := c.replicas[0].report()

	const vmID = 0x7E57
	hello := Hello{Role: RoleRecovery, MemBytes: 64 * PageSize, Policy: PolicyFT}
	attack := func(nc net.Conn) {
		b := append(appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: vmID, Length: uint32(len(hello.marshal()))}), hello.marshal()...)
		b = appendHeader(b, Header{Generation: 1, Type: MsgResolve, VMID: vmID, Epoch: 0})
		b = appendHeader(b, Header{Generation: 1, Type: MsgQuery, VMID: vmID})
		f := appendRegions(nil, []Region{{First: 0, Pages: 64}})
		b = append(appendHeader(b, Header{Generation: 1, Type: MsgFetch, VMID: vmID, Length: uint32(len(f))}), f...)
		nc.Write(b)
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, _ := io.ReadAll(nc)
		if len(got) > 0 && strings.Contains(string(got), "TNDM") {
			t.Errorf("a peer without the key got a Tandem answer: %q", got[:min(len(got), 64)])
		}
		if len(got) > 4096 {
			t.Errorf("a peer without the key read %d bytes", len(got))
		}
	}
	nc, err := net.Dial("tcp", c.addrs[0])
	if err != nil {
		t.Fatal(err)
	}
	attack(nc)
	nc.Close()
	for _, m := range []auth.Mode{auth.Encrypted, auth.Plaintext} {
		raw, err := net.Dial("tcp", c.addrs[0])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := mustCredentials(otherKey, m).Client(context.Background(), raw, auth.Role(RoleRecovery)); err == nil {
			t.Fatalf("%v: a wrong key passed the handshake", m)
		}
		_, err = dialHello(context.Background(), mustCredentials(otherKey, m), c.addrs[0], 1, vmID, hello)
		if !errors.Is(err, auth.ErrHandshake) {
			t.Fatalf("%v: recovery dial with a wrong key: %v", m, err)
		}
	}
	after := c.replicas[0].report()
	if fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the replica's report changed under peers without the key:\nbefore %+v\nafter  %+v", before, after)
	}
	c.recoverAndCheck(vm, p.Committed())
}

// TestHostileSecondLinkConnection: while the primary's link 0 is live, an
// authenticated connection claiming link 0 is refused; the primary goes on.
func TestHostileSecondLinkConnection(t *testing.T) {
	c := newCluster(t, 1)
	vm := newFakeVM(t, 64)
	p := c.primary(vm, PolicyFT, ModeSync, c.addrs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 7)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 3, 10*time.Second, nil)
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	_, err := dialHello(dctx, testCreds, c.addrs[0], 0x7E57, 1, Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: 64 * PageSize, Policy: PolicyFT})
	if err == nil || !strings.Contains(err.Error(), "link 0 of this VM is already connected") {
		t.Fatalf("a second connection for live link 0: %v, want a refusal", err)
	}
	committed := p.Committed()
	waitCommitted(t, p, committed+3, 10*time.Second, nil)
	cancel()
	if err := <-runErr; err != nil {
		t.Fatalf("the primary: %v", err)
	}
	// Once the primary's link is gone, the index is free again.
	waitFor(t, "link 0 to be released", func() bool {
		c.replicas[0].mu.Lock()
		defer c.replicas[0].mu.Unlock()
		return c.replicas[0].liveLinks[0] == 0
	})
}

// TestHostileBindingRules drives one authenticated link by hand and breaks
// each binding rule in turn: the replica refuses the message, drops the
// connection, and its store and staging are unchanged.
func TestHostileBindingRules(t *testing.T) {
	const vm, pages = 0xB1D, 16
	hello := Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize}
	setup := func(t *testing.T) (*Replica, string, *linkClient) {
		r, addr, _ := startReplica(t, ReplicaConfig{})
		l := dialAs(t, addr, vm, hello)
		l.epoch(1, 0, []Region{{First: 0, Pages: 2}}, 0x11, true)
		if err := l.c.send(MsgCommit, 1, nil); err != nil {
			t.Fatal(err)
		}
		l.epoch(2, 1, []Region{{First: 2, Pages: 2}}, 0x22, true)
		l.epoch(3, 2, []Region{{First: 4, Pages: 2}}, 0x33, true) // 3 staged, complete
		return r, addr, l
	}
	state := func(r *Replica) string {
		rep := r.report()
		r.store.mu.RLock()
		defer r.store.mu.RUnlock()
		return fmt.Sprintf("%+v %v", rep, r.store.epochs)
	}
	send := func(t *testing.T, l *linkClient, b []byte) {
		if _, err := l.c.c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		msg  func() []byte
	}{
		{"map epoch repeats", func() []byte {
			return appendMap(nil, vm, 1, &MapRecord{Epoch: 3, Committed: 2, Regions: []Region{{First: 8, Pages: 1}}})
		}},
		{"map epoch regresses", func() []byte {
			return appendMap(nil, vm, 1, &MapRecord{Epoch: 1, Committed: 0, Regions: []Region{{First: 8, Pages: 1}}})
		}},
		{"map commits an unacknowledged epoch", func() []byte {
			return appendMap(nil, vm, 1, &MapRecord{Epoch: 5, Committed: 4, Regions: []Region{{First: 8, Pages: 1}}})
		}},
		{"map commits far ahead", func() []byte {
			return appendMap(nil, vm, 1, &MapRecord{Epoch: 1 << 40, Committed: 1<<40 - 1, Regions: []Region{{First: 8, Pages: 1}}})
		}},
		{"map commit goes back", func() []byte {
			return appendMap(nil, vm, 1, &MapRecord{Epoch: 4, Committed: 1, Regions: []Region{{First: 8, Pages: 1}}})
		}},
		{"commit of an unacknowledged epoch", func() []byte {
			return appendHeader(nil, Header{Generation: 1, Type: MsgCommit, VMID: vm, Epoch: 9})
		}},
		{"commit goes back", func() []byte {
			return appendHeader(nil, Header{Generation: 1, Type: MsgCommit, VMID: vm, Epoch: 1})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, addr, l := setup(t)
			before := state(r)
			send(t, l, tc.msg())
			expectHangUp(t, l.c.c, tc.name)
			if after := state(r); after != before {
				t.Fatalf("the refused message changed the replica:\nbefore %s\nafter  %s", before, after)
			}
			// The link index is free again and the rules still hold for a
			// new connection: epochs go on increasing from 3.
			waitFor(t, "link 0 to be released", func() bool {
				r.mu.Lock()
				defer r.mu.Unlock()
				return r.liveLinks[0] == 0
			})
			l2 := dialAs(t, addr, vm, hello)
			send(t, l2, appendMap(nil, vm, 1, &MapRecord{Epoch: 2, Committed: 2, Regions: []Region{{First: 8, Pages: 1}}}))
			expectHangUp(t, l2.c.c, "a regression on a new connection")
			l3 := dialAs(t, addr, vm, hello)
			l3.epoch(4, 3, []Region{{First: 8, Pages: 1}}, 0x44, true)
		})
	}
	// The rules allow exactly what a primary does: the next epoch carrying
	// the commit of its predecessor, a commit of the acknowledged epoch,
	// and a repeated commit.
	r, _, l := setup(t)
	l.epoch(4, 3, []Region{{First: 8, Pages: 1}}, 0x44, true)
	for _, e := range []uint64{4, 4} {
		if err := l.c.send(MsgCommit, e, nil); err != nil {
			t.Fatal(err)
		}
	}
	l.epoch(5, 4, []Region{{First: 9, Pages: 1}}, 0x55, true)
	waitFor(t, "epoch 4 to reach the store", func() bool {
		r.waitApplies()
		r.store.mu.RLock()
		defer r.store.mu.RUnlock()
		return r.store.epochs[8] == 4
	})
}

// TestHostileTruncatedHandshakes: handshake frames cut short, then silence
// or a hang-up, in both modes: the replica drops the peer by its handshake
// deadline, binds nothing, and serves the key holder afterwards.
func TestHostileTruncatedHandshakes(t *testing.T) {
	for _, mode := range []auth.Mode{auth.Encrypted, auth.Plaintext} {
		t.Run(mode.String(), func(t *testing.T) {
			creds := mustCredentials(testKey, mode)
			r, addr, _ := startReplica(t, ReplicaConfig{Auth: creds.WithTimeout(300 * time.Millisecond)})
			first := firstHandshakeFlight(t, creds)
			for _, cut := range []int{0, 1, 5, len(first) / 2, len(first) - 1} {
				for _, hangUp := range []bool{false, true} {
					nc, err := net.Dial("tcp", addr)
					if err != nil {
						t.Fatal(err)
					}
					nc.Write(first[:cut])
					if hangUp {
						nc.(*net.TCPConn).CloseWrite()
					}
					start := time.Now()
					expectHangUp(t, nc, fmt.Sprintf("cut at %d", cut))
					if d := time.Since(start); d > 5*time.Second {
						t.Errorf("cut at %d: dropped after %v", cut, d)
					}
					nc.Close()
					untouched(t, r, fmt.Sprintf("cut at %d", cut))
				}
			}
			c, err := dialHello(context.Background(), creds, addr, 0x600D, 1, Hello{Role: RoleLink, Links: 1, MemBytes: 64 * PageSize})
			if err != nil {
				t.Fatalf("the key holder after truncated handshakes: %v", err)
			}
			c.c.Close()
		})
	}
}

// firstHandshakeFlight is what a client sends first in the handshake
// (a TLS ClientHello, or the plaintext client hello).
func firstHandshakeFlight(t *testing.T, creds *auth.Credentials) []byte {
	t.Helper()
	a, b := net.Pipe()
	go creds.WithTimeout(time.Second).Client(context.Background(), a, auth.Role(RoleLink))
	buf := make([]byte, 4096)
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	return buf[:n]
}

// TestHostileSilentPeersHoldNothing: peers that connect and say nothing
// fill at most the replica's handshake slots, each for at most the
// handshake timeout; the real primary is served once they are dropped.
func TestHostileSilentPeersHoldNothing(t *testing.T) {
	r, addr, _ := startReplica(t, ReplicaConfig{Auth: testCreds.WithTimeout(500 * time.Millisecond)})
	var silent []net.Conn
	for range maxHandshakes + 8 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, nc)
	}
	for i, nc := range silent {
		expectHangUp(t, nc, fmt.Sprintf("silent peer %d", i))
		nc.Close()
	}
	untouched(t, r, "silent peers")
	c, err := dialHello(context.Background(), testCreds, addr, 0x600D, 1, Hello{Role: RoleLink, Links: 1, MemBytes: 64 * PageSize})
	if err != nil {
		t.Fatalf("after the silent peers: %v", err)
	}
	c.c.Close()
}

// TestHostileRoleMismatch: a hello whose role differs from the role the
// handshake authenticated is refused.
func TestHostileRoleMismatch(t *testing.T) {
	r, addr, _ := startReplica(t, ReplicaConfig{})
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := testCreds.Client(context.Background(), raw, auth.Role(RoleRecovery))
	if err != nil {
		t.Fatal(err)
	}
	nc.Write(hostileHello(0x600D, 64*PageSize))
	expectHangUp(t, nc, "link hello on a recovery connection")
	nc.Close()
	untouched(t, r, "role mismatch")
}
