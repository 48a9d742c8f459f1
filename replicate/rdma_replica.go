//go:build rdma

package replicate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// Queue depths of a replica's connection: sends carry acknowledgements,
// one per epoch; receives catch the epochs' immediates and the commits.
const (
	rdmaConnSendDepth = 16
	rdmaConnRecvDepth = 32
)

// rdmaListener is a replica's rdma_cm listener.
type rdmaListener struct {
	cm   *cmChannel
	id   cmID
	addr string

	mu      sync.Mutex
	serving bool
	closed  bool
	done    chan struct{}
}

// ListenRDMA listens for RDMA links on addr (HOST:PORT; port 0 picks one).
// The address must belong to an interface with an RDMA device (an RNIC, or
// Soft-RoCE), or be 0.0.0.0 for any.
func ListenRDMA(addr string) (RDMAListener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("replicate: rdma listen %q: %w", addr, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("replicate: rdma listen %q: bad port %q", addr, port)
	}
	ip := "0.0.0.0"
	if host != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ip, err = resolveIP(ctx, host)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("replicate: rdma listen %q: %w", addr, err)
		}
	}
	cm, err := newCMChannel()
	if err != nil {
		return nil, fmt.Errorf("replicate: rdma listen %s: %w", addr, err)
	}
	id, err := cm.createID()
	if err != nil {
		cm.destroy()
		return nil, fmt.Errorf("replicate: rdma listen %s: %w", addr, err)
	}
	bound, err := cmListen(id, ip, int(p))
	if err != nil {
		cmDestroyID(id)
		cm.destroy()
		return nil, fmt.Errorf("replicate: rdma listen: %w", err)
	}
	return &rdmaListener{cm: cm, id: id, addr: net.JoinHostPort(ip, strconv.Itoa(bound))}, nil
}

func (l *rdmaListener) Addr() string { return l.addr }

// Close stops the listener; a ServeRDMA on it returns once its links are
// closed.
func (l *rdmaListener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	serving := l.serving
	l.mu.Unlock()
	if serving {
		l.cm.wait.close()
		<-l.done
		return nil
	}
	cmDestroyID(l.id)
	l.cm.destroy()
	return nil
}

func (l *rdmaListener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// ServeRDMA accepts RDMA links on ln until ctx is done or ln is closed.
// Every link is checked and staged exactly like a TCP link (admit,
// beginEpoch, commit); recovery reads the replica over TCP as always.
func (r *Replica) ServeRDMA(ctx context.Context, ln RDMAListener) error {
	if r.cfg.Auth == nil {
		return errNoCredentials
	}
	l, ok := ln.(*rdmaListener)
	if !ok {
		return fmt.Errorf("replicate: ServeRDMA needs a listener from ListenRDMA, not %T", ln)
	}
	l.mu.Lock()
	if l.closed || l.serving {
		l.mu.Unlock()
		return errors.New("replicate: rdma listener closed or already served")
	}
	l.serving, l.done = true, make(chan struct{})
	l.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.cm.wait.close() })
	defer stop()
	conns := map[cmID]*rdmaConn{}
	defer func() {
		for _, c := range conns {
			c.close()
		}
		cmDestroyID(l.id)
		l.cm.destroy()
		close(l.done)
	}()
	for {
		ev, err := l.cm.next(context.Background())
		if err != nil {
			if ctx.Err() != nil || l.isClosed() {
				return nil
			}
			return fmt.Errorf("replicate: rdma listener %s: %w", l.addr, err)
		}
		switch ev.ev {
		case cmConnectRequest:
			c, err := r.acceptRDMA(ev)
			if err != nil {
				r.log.Warn("rdma link refused", "listener", l.addr, "err", err)
				continue
			}
			conns[ev.id] = c
		case cmEstablished:
			if c := conns[ev.id]; c != nil {
				r.log.Info("rdma link up", "link", c.link, "device", c.dev.name, "port", c.ep.port, "staging_odp", c.stagingReg.odp)
			}
		case cmDisconnected, cmConnectError, cmUnreachable, cmRejected, cmDeviceRemoval:
			if ev.id == l.id {
				return fmt.Errorf("replicate: rdma listener %s: %v", l.addr, cmError(ev.ev, ev.status, ""))
			}
			if c := conns[ev.id]; c != nil {
				delete(conns, ev.id)
				if ev.ev != cmDisconnected {
					r.log.Warn("rdma link lost", "link", c.link, "err", cmError(ev.ev, ev.status, ""))
				}
				c.close()
			}
		}
	}
}

// rdmaConn is the replica's end of one RDMA link.
type rdmaConn struct {
	r          *Replica
	id         cmID
	link       uint32
	vmID       uint64
	gen        uint64 // the generation of the set-up's hello
	memBytes   uint64
	dev        *verbsDevice
	ep         *rdmaEndpoint
	staging    []byte // two halves of guest RAM: epoch e in half e%2
	mapBuf     []byte
	stagingReg *memReg
	mapReg     *memReg
	last       uint64 // the newest epoch staged, to expand commits
	started    bool
	claimed    bool // admitted: holds its link index (Replica.liveLinks)

	mu      sync.Mutex
	closing bool
}

// acceptRDMA answers a connect request: the hello is admitted as for TCP,
// the buffers registered, the receives posted, and their keys sent back in
// the accept. A refusal says why in the reject.
func (r *Replica) acceptRDMA(ev cmEventInfo) (*rdmaConn, error) {
	c := &rdmaConn{r: r, id: ev.id}
	fail := func(err error) (*rdmaConn, error) {
		cmReject(ev.id, marshalRDMAReject(publicText(err)))
		c.teardown()
		return nil, err
	}
	ticket, err := parseRDMAConnect(ev.pdata)
	if err != nil {
		return fail(err)
	}
	// Only a request with a ticket from an authenticated set-up gets
	// anywhere; the hello is the one admitted there (rdma_auth.go).
	g, err := r.takeRDMATicket(ticket)
	if err != nil {
		return fail(err)
	}
	hello, confirm := g.hello, g.confirm
	if err := r.admit(g.vmID, g.gen, &hello, nil); err != nil {
		return fail(err)
	}
	c.claimed = true // link index bound: released in teardown
	c.link, c.vmID, c.gen, c.memBytes = hello.Link, g.vmID, g.gen, hello.MemBytes
	if c.dev, err = acquireDevice(cmVerbs(ev.id)); err != nil {
		return fail(err)
	}
	c.staging = make([]byte, 2*c.memBytes)
	if c.stagingReg, err = c.dev.register(c.staging, fmt.Sprintf("link %d's staging buffer (twice guest memory)", c.link), true, true); err != nil {
		return fail(err)
	}
	c.mapBuf = make([]byte, rdmaMapCapacity(c.memBytes/PageSize))
	if c.mapReg, err = c.dev.register(c.mapBuf, fmt.Sprintf("link %d's map buffer", c.link), true, true); err != nil {
		return fail(err)
	}
	if c.ep, err = newEndpoint(ev.id, c.dev, rdmaConnSendDepth, rdmaConnRecvDepth, c.onRecv, c.onFail); err != nil {
		return fail(err)
	}
	r.attachRDMAStaging(c.link, c.gen, c.staging, c.memBytes)
	acc := rdmaAcceptData{
		StagingAddr: uint64(addrOf(c.staging)), StagingHalf: c.memBytes, StagingKey: c.stagingReg.rkey,
		MapKey: c.mapReg.rkey, MapAddr: uint64(addrOf(c.mapBuf)), MapLen: uint32(len(c.mapBuf)),
		Receives: uint32(c.ep.rqDepth), MaxMsg: c.ep.maxMsg,
	}
	if err := cmConnect(ev.id, acc.marshal(confirm), true); err != nil {
		return fail(err)
	}
	c.ep.start()
	c.started = true
	return c, nil
}

// onRecv handles a completed receive: an epoch's immediate or a commit.
func (c *rdmaConn) onRecv(w wcInfo) error {
	switch {
	case w.opcode == wcOpRecvImm:
		return c.epochDone(decodeImm(w.imm), w.byteLen)
	case w.opcode == wcOpRecv && w.flags&wcFlagWithImm != 0:
		return c.r.commit(c.link, c.gen, expandEpoch(decodeImm(w.imm), c.last))
	}
	return fmt.Errorf("%w: link %d: unexpected RDMA message (completion opcode %d)", ErrProtocol, c.link, w.opcode)
}

// epochDone stages an epoch whose map and data the primary has written,
// and acknowledges it.
func (c *rdmaConn) epochDone(low, finalBytes uint32) error {
	m, err := c.r.stageRDMAEpoch(c.link, c.vmID, c.gen, c.mapBuf, low, finalBytes)
	if err != nil {
		return err
	}
	c.last = m.Epoch
	// The send queue holds at most a few acknowledgements (the next epoch
	// waits for this one): no room is a failure, not a wait, since this
	// goroutine is the one that frees room.
	if _, err := c.ep.post(wrIDSend, []rdmaDesc{{opcode: wrSendImm, imm: encodeImm(m.Epoch)}}, time.Now()); err != nil {
		return fmt.Errorf("link %d: acknowledging epoch %d: %w", c.link, m.Epoch, err)
	}
	return nil
}

// onFail ends the connection: the primary sees the disconnect, and the
// listener's loop frees it.
func (c *rdmaConn) onFail(err error) {
	c.mu.Lock()
	closing := c.closing
	c.mu.Unlock()
	if !closing {
		c.r.log.Warn("rdma link failed", "link", c.link, "err", err)
		cmDisconnect(c.id)
	}
}

func (c *rdmaConn) close() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	cmDisconnect(c.id)
	if c.ep != nil {
		c.ep.fail(errLinkClosed)
	}
	c.teardown()
}

// teardown frees the connection. The staging buffer is only deregistered:
// the link's stage may still hold an epoch in it for recovery.
func (c *rdmaConn) teardown() {
	if c.ep != nil {
		c.ep.stop(c.started)
		c.ep.destroy()
	}
	if c.stagingReg != nil {
		c.stagingReg.deregister()
	}
	if c.mapReg != nil {
		c.mapReg.deregister()
	}
	if c.dev != nil {
		c.dev.release()
	}
	cmDestroyID(c.id)
	if c.claimed {
		c.claimed = false
		c.r.releaseLink(c.link, c.gen)
	}
}
