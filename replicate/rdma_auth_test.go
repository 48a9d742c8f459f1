package replicate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// TestRDMASetupTickets: the TCP set-up of an RDMA link (rdma_auth.go)
// needs the key; its ticket stands for the admitted hello, works once, and
// dies with the set-up connection; a connect request with any other ticket
// is refused before any buffer exists. No RDMA device is needed: these are
// the checks acceptRDMA runs.
func TestRDMASetupTickets(t *testing.T) {
	r, addr, _ := startReplica(t, ReplicaConfig{})
	const vmID = 0x4D4A
	hello := Hello{Links: 2, MemBytes: 64 * PageSize, Policy: PolicyFast, Link: 1}
	p := &Primary{cfg: PrimaryConfig{Auth: testCreds, Generation: 1, VMID: vmID}}
	a := LinkAddr{Transport: TransportRDMA, Host: "192.0.2.1", Port: "7471", Auth: addr}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	outstanding := func() int {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.rdmaGrants)
	}

	// Without the key: no ticket, nothing bound.
	for _, m := range []auth.Mode{auth.Encrypted, auth.Plaintext} {
		bad := &Primary{cfg: PrimaryConfig{Auth: mustCredentials(otherKey, m), VMID: vmID}}
		if _, _, _, err := bad.rdmaSetup(ctx, a, hello); !errors.Is(err, auth.ErrHandshake) {
			t.Fatalf("%v set-up with a wrong key: %v", m, err)
		}
	}
	untouched(t, r, "rdma set-up with a wrong key")
	if n := outstanding(); n != 0 {
		t.Fatalf("%d tickets after failed set-ups", n)
	}
	if _, _, _, err := p.rdmaSetup(ctx, LinkAddr{Transport: TransportRDMA, Host: "h", Port: "1"}, hello); err == nil || !strings.Contains(err.Error(), "?auth=HOST:PORT") {
		t.Errorf("rdma link without ?auth=: %v", err)
	}

	// A random ticket is refused, with a reason that names nothing.
	if _, err := r.takeRDMATicket(rdmaTicket{1, 2, 3}); err == nil || strings.Contains(publicText(err), "4d4a") {
		t.Fatalf("random ticket: %v", err)
	}

	// A real ticket: once, with the admitted hello.
	c, tk, confirm, err := p.rdmaSetup(ctx, a, hello)
	if err != nil {
		t.Fatal(err)
	}
	g, err := r.takeRDMATicket(tk)
	if err != nil {
		t.Fatal(err)
	}
	id, h, key := g.vmID, g.hello, g.confirm
	if g.gen != 1 || id != vmID || h.Role != RoleLink || h.Link != 1 || h.MemBytes != hello.MemBytes || key != confirm {
		t.Fatalf("ticket stands for %x %+v (key matches: %v), %v", id, h, key == confirm, err)
	}
	if _, err := r.takeRDMATicket(tk); err == nil {
		t.Fatal("a ticket was used twice")
	}
	c.c.Close()

	// An unused ticket dies with its set-up connection.
	c, tk, _, err = p.rdmaSetup(ctx, a, hello)
	if err != nil {
		t.Fatal(err)
	}
	c.c.Close()
	waitFor(t, "the ticket to be revoked", func() bool { return outstanding() == 0 })
	if _, err := r.takeRDMATicket(tk); err == nil {
		t.Fatal("a ticket outlived its set-up connection")
	}

	// A live link index gets no ticket.
	r.mu.Lock()
	r.liveLinks[1] = 1
	r.mu.Unlock()
	if _, _, _, err := p.rdmaSetup(ctx, a, hello); err == nil || !strings.Contains(err.Error(), "link 1 of this VM is already connected") {
		t.Fatalf("set-up for a live link: %v", err)
	}
}

// TestRDMASetupTicketExpires: a set-up connection held open does not keep
// its ticket past the handshake timeout.
func TestRDMASetupTicketExpires(t *testing.T) {
	r, addr, _ := startReplica(t, ReplicaConfig{Auth: testCreds.WithTimeout(200 * time.Millisecond)})
	p := &Primary{cfg: PrimaryConfig{Auth: testCreds, Generation: 1, VMID: 0x4D4B}}
	a := LinkAddr{Transport: TransportRDMA, Host: "192.0.2.1", Port: "7471", Auth: addr}
	c, tk, _, err := p.rdmaSetup(context.Background(), a, Hello{Links: 1, MemBytes: 64 * PageSize, Policy: PolicyFT})
	if err != nil {
		t.Fatal(err)
	}
	defer c.c.Close()
	expectHangUp(t, c.c, "an idle rdma set-up")
	if _, err := r.takeRDMATicket(tk); err == nil {
		t.Fatal("a ticket outlived the handshake timeout")
	}
}
