package replicate

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"time"
)

// # Authenticating an RDMA link
//
// An RDMA connect request carries at most 56 bytes of private data and
// gets no answer before the replica accepts it and hands out the keys of
// its buffers, too little for a handshake. So the handshake happens over
// TCP first: the primary opens an authenticated connection (package auth)
// to the replica's TCP address, named by the link's ?auth=HOST:PORT, with
// role RoleRDMA and the link's hello. The replica admits the hello exactly
// as for a TCP link and answers with a ticket message: a random 16-byte
// ticket and a random 32-byte confirmation key. The connect request then
// carries the ticket; the replica accepts only a request with a ticket it
// issued, once, while the TCP connection that asked for it is open and
// within the handshake timeout, and uses the hello it admitted with it.
// Its accept carries an HMAC-SHA256 of its buffers' addresses and keys
// under the confirmation key, which the primary checks before it writes
// anything (rdmaAcceptData).
//
// The ticket travels in clear over the RDMA fabric; the confirmation key
// never does. RDMA traffic itself is neither encrypted nor authenticated
// by Tandem: an attacker on the RDMA fabric can read guest memory as it
// passes, and one who can also inject packets can race a ticket. The
// authentication keeps out everyone without the key who can merely reach
// the replica.

// rdmaTicket names one authenticated RDMA link set-up.
type rdmaTicket [16]byte

// rdmaGrant is what a ticket stands for.
type rdmaGrant struct {
	ticket  rdmaTicket
	confirm [32]byte
	vmID    uint64
	gen     uint64
	hello   Hello // RoleLink
	expires time.Time
}

// maxRDMATickets bounds the tickets outstanding at once.
const maxRDMATickets = 2 * MaxLinks

// ticketPayload is the ticket message: ticket, then confirmation key.
const ticketPayload = 16 + 32

// serveRDMASetup answers an authenticated RoleRDMA connection: it issues a
// ticket for the admitted hello and revokes it when the connection closes
// or the handshake timeout passes, whichever is first.
func (r *Replica) serveRDMASetup(c *conn, hello Hello) error {
	g := &rdmaGrant{vmID: c.vmID, gen: c.gen, hello: hello, expires: time.Now().Add(r.cfg.Auth.Timeout())}
	g.hello.Role = RoleLink
	if _, err := rand.Read(g.ticket[:]); err != nil {
		return c.errorf("rdma setup: %w", err)
	}
	if _, err := rand.Read(g.confirm[:]); err != nil {
		return c.errorf("rdma setup: %w", err)
	}
	r.mu.Lock()
	if len(r.rdmaGrants) >= maxRDMATickets {
		r.mu.Unlock()
		c.sendError("too many RDMA link set-ups in progress")
		return c.errorf("rdma setup: %d tickets outstanding", maxRDMATickets)
	}
	r.rdmaGrants = append(r.rdmaGrants, g)
	r.mu.Unlock()
	defer r.revokeRDMATicket(g)
	payload := append(g.ticket[:], g.confirm[:]...)
	if err := c.send(MsgTicket, 0, payload); err != nil {
		return c.errorf("rdma setup: %w", err)
	}
	// The primary closes the connection once its RDMA link is up (or
	// failed); nothing else may arrive on it.
	c.c.SetReadDeadline(g.expires)
	h, err := c.readHeader()
	if err == nil {
		return c.errorf("rdma setup: %w: unexpected %v message", ErrProtocol, h.Type)
	}
	return nil
}

// revokeRDMATicket forgets a ticket, used or not.
func (r *Replica) revokeRDMATicket(g *rdmaGrant) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, x := range r.rdmaGrants {
		if x == g {
			r.rdmaGrants = append(r.rdmaGrants[:i], r.rdmaGrants[i+1:]...)
			return
		}
	}
}

// errNoTicket refuses an RDMA connect request that no authenticated
// connection asked for; the peer learns nothing else.
var errNoTicket = &refusal{public: "the RDMA link was not authenticated", detail: "rdma connect request without a valid ticket (no authenticated set-up asked for it, or it was used or expired)"}

// takeRDMATicket consumes the ticket of a connect request and returns what
// it stands for. Every outstanding ticket is compared in constant time.
func (r *Replica) takeRDMATicket(t rdmaTicket) (*rdmaGrant, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	found := -1
	for i, g := range r.rdmaGrants {
		if subtle.ConstantTimeCompare(g.ticket[:], t[:]) == 1 && now.Before(g.expires) {
			found = i
		}
	}
	if found < 0 {
		return nil, errNoTicket
	}
	g := r.rdmaGrants[found]
	r.rdmaGrants = append(r.rdmaGrants[:found], r.rdmaGrants[found+1:]...)
	return g, nil
}

// rdmaSetup is the primary's side: an authenticated connection to the
// replica's TCP address that obtains a ticket for the link. The caller
// closes it once the RDMA connection is decided.
func (p *Primary) rdmaSetup(ctx context.Context, a LinkAddr, hello Hello) (*conn, rdmaTicket, [32]byte, error) {
	var t rdmaTicket
	var key [32]byte
	if a.Auth == "" {
		return nil, t, key, fmt.Errorf("an rdma:// link needs ?auth=HOST:PORT, the replica's --listen address, where the link is authenticated before its RDMA connection")
	}
	h := hello
	h.Role = RoleRDMA
	c, err := dialHello(ctx, p.cfg.Auth, a.Auth, p.cfg.VMID, p.cfg.Generation, h)
	if err != nil {
		return nil, t, key, fmt.Errorf("authenticating at %s: %w", a.Auth, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		c.c.SetReadDeadline(dl)
	} else {
		c.c.SetReadDeadline(time.Now().Add(p.cfg.Auth.Timeout()))
	}
	hd, err := c.readHeader()
	if err == nil && hd.Type == MsgError {
		pl, _ := readPayload(c.r, hd)
		err = fmt.Errorf("refused: %s", pl)
	} else if err == nil && (hd.Type != MsgTicket || hd.Length != ticketPayload) {
		err = fmt.Errorf("%w: answer to an rdma set-up is %v of %d bytes", ErrProtocol, hd.Type, hd.Length)
	}
	var pl []byte
	if err == nil {
		pl, err = readPayload(c.r, hd)
	}
	if err != nil {
		c.c.Close()
		return nil, t, key, c.errorf("rdma setup: %w", noEOF(err))
	}
	c.c.SetReadDeadline(time.Time{})
	copy(t[:], pl)
	copy(key[:], pl[16:])
	return c, t, key, nil
}
