package replicate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
	"github.com/tandemvm/tandem/replicate/disk"
)

// Link is one path from the primary to a replica, shaped like an RDMA
// queue pair doing one-sided writes, so that an RDMA transport fits the same
// epoch engine: the map record goes first (RDMA_WRITE into the replica's map
// buffer), then the data as a scatter-gather list of slices of registered
// memory (RDMA_WRITE), then a completion carrying the epoch
// (RDMA_WRITE_WITH_IMM). The replica acknowledges a complete epoch on the
// Ack channel given when the link was opened.
type Link interface {
	WriteMap(m *MapRecord) error
	WriteSG(sg [][]byte) error
	WriteImm(epoch uint64) error
	// WriteCommit tells the replica that epoch is committed.
	WriteCommit(epoch uint64) error
	Close() error
	String() string
}

// Ack reports that a link (or, with Link = -1, the leader) acknowledged an
// epoch, or failed.
type Ack struct {
	Link  int
	Epoch uint64
	Err   error
	// from is the link or state link that sent it: one that has been
	// replaced (a redial after a failure) may still report, and is not
	// heard.
	from any
}

// maxDataMessage bounds one data message; an epoch's data is split into as
// many as it needs.
const maxDataMessage = 1 << 30

// tcpLink is a Link over one TCP connection. It queues the map, the data
// slices and the completion, and sends them with one writev at WriteImm: the
// data goes from guest memory to the socket with no copy in user space.
type tcpLink struct {
	index int
	c     *conn
	bufs  net.Buffers
	hdrs  []byte
	// chunk, when non-zero, splits writes into pieces of that many bytes and
	// calls progress after each: fault injection kills the primary mid-epoch.
	chunk    int
	progress func(epoch uint64, n int)
	// deadline, when set, bounds the next WriteImm (see SetSendDeadline).
	deadline time.Time
	// active is the link's side of active backup (active.go).
	active *activeLink
	// element is what one more slice costs the link, measured by the
	// probe when it connected (probe.go).
	element time.Duration
	// records is writeBuffers' scratch record, kept across epochs.
	records []byte
}

// sendDeadliner is implemented by links whose sends can be bounded in
// time: the primary gives each epoch's send a deadline, so that a replica
// that stops reading fails its link instead of holding the VM paused.
type sendDeadliner interface {
	// SetSendDeadline bounds the epoch's queued writes, sent at WriteImm.
	SetSendDeadline(t time.Time)
}

// SetSendDeadline implements sendDeadliner.
func (l *tcpLink) SetSendDeadline(t time.Time) { l.deadline = t }

// dialLink connects link index to a replica and says hello.
func dialLink(ctx context.Context, creds *auth.Credentials, addr string, index int, vmID, gen uint64, hello Hello, acks chan<- Ack) (*tcpLink, error) {
	c, err := dialHello(ctx, creds, addr, vmID, gen, hello)
	if err != nil {
		return nil, fmt.Errorf("replicate: link %d: %w", index, err)
	}
	l := &tcpLink{index: index, c: c, active: &activeLink{wants: make(chan wantMsg, 1)}}
	dl, _ := ctx.Deadline()
	if err := l.probe(dl); err != nil {
		c.c.Close()
		return nil, err
	}
	go l.readAcks(acks)
	return l, nil
}

// dialHello opens a connection, authenticates it with creds (both ends
// prove they hold the key; see package auth) and exchanges hello and
// welcome. Nothing is sent in a Tandem message before the handshake.
// gen is the primary term the connection belongs to: a node that has seen
// a newer one answers MsgFenced, and the error wraps ErrFenced.
func dialHello(ctx context.Context, creds *auth.Credentials, addr string, vmID, gen uint64, hello Hello) (*conn, error) {
	if creds == nil {
		return nil, errNoCredentials
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("replica %s unreachable: %w", addr, err)
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	nc, err := creds.Client(ctx, raw, auth.Role(hello.Role))
	if err != nil {
		return nil, fmt.Errorf("replicate: peer %s: %w", addr, err)
	}
	c := newConn(nc)
	c.vmID, c.gen = vmID, gen
	c.peer = addr
	if err := c.send(MsgHello, 0, hello.marshal()); err != nil {
		nc.Close()
		return nil, c.errorf("hello: %w", err)
	}
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	if dl, ok := ctx.Deadline(); ok {
		nc.SetReadDeadline(dl)
	}
	h, err := c.readHeader()
	if err == nil && h.Type == MsgError {
		p, _ := readPayload(c.r, h)
		err = fmt.Errorf("%w: %s", ErrRefused, p)
	} else if err == nil && h.Type == MsgFenced {
		err = c.readFenced(h)
	} else if err == nil && (h.Type != MsgWelcome || (h.Length != 0 && h.Length != welcomeLinkSize)) {
		err = fmt.Errorf("%w: answer to hello is %v of %d bytes", ErrProtocol, h.Type, h.Length)
	} else if err == nil && h.Length == welcomeLinkSize {
		var p []byte
		if p, err = readPayload(c.r, h); err == nil {
			c.resume = parseLinkResume(p)
		}
	}
	if err != nil {
		nc.Close()
		return nil, c.errorf("%w", noEOF(err))
	}
	nc.SetReadDeadline(time.Time{})
	return c, nil
}

func (l *tcpLink) String() string { return fmt.Sprintf("link %d (%s)", l.index, l.c.peer) }

// resume is where the replica stood for this link when it connected.
func (l *tcpLink) resume() linkResume { return l.c.resume }

func (l *tcpLink) readAcks(acks chan<- Ack) {
	defer close(l.active.wants)
	for {
		h, err := l.c.readHeader()
		if err == nil && h.Type == MsgWant {
			var p []byte
			if p, err = readPayload(l.c.r, h); err == nil {
				select {
				case l.active.wants <- wantMsg{epoch: h.Epoch, payload: p}:
					continue
				default:
					err = fmt.Errorf("%w: a want of epoch %d that no hashes asked for", ErrProtocol, h.Epoch)
				}
			}
		} else if err == nil && h.Type == MsgFenced {
			err = l.c.readFenced(h)
		} else if err == nil && h.Type != MsgAck {
			err = fmt.Errorf("%w: unexpected %v message", ErrProtocol, h.Type)
		}
		if err != nil {
			acks <- Ack{from: l, Link: l.index, Err: l.c.errorf("link %d: %w", l.index, noEOF(err))}
			return
		}
		acks <- Ack{from: l, Link: l.index, Epoch: h.Epoch}
	}
}

func (l *tcpLink) WriteMap(m *MapRecord) error {
	l.hdrs = appendMap(l.hdrs[:0], l.c.vmID, l.c.gen, m)
	l.bufs = append(l.bufs[:0], l.hdrs)
	return nil
}

func (l *tcpLink) WriteSG(sg [][]byte) error {
	epoch := l.epochOfMap()
	// Data headers go to their own small buffer so the map slice above
	// stays valid.
	hdr := func(n int) []byte {
		return appendHeader(nil, Header{Type: MsgData, VMID: l.c.vmID, Generation: l.c.gen, Epoch: epoch, Length: uint32(n)})
	}
	for len(sg) > 0 {
		n, k := 0, 0
		for k < len(sg) && n+len(sg[k]) <= maxDataMessage {
			n += len(sg[k])
			k++
		}
		if k == 0 { // one slice larger than a message: split it
			l.bufs = append(l.bufs, hdr(maxDataMessage), sg[0][:maxDataMessage])
			sg[0] = sg[0][maxDataMessage:]
			continue
		}
		l.bufs = append(append(l.bufs, hdr(n)), sg[:k]...)
		sg = sg[k:]
	}
	return nil
}

// WritePages implements pageLink: each message goes as a MsgPages of the
// queued map's epoch, sent with the rest at WriteImm.
func (l *tcpLink) WritePages(msgs [][]byte) error {
	epoch := l.epochOfMap()
	for _, m := range msgs {
		l.bufs = append(l.bufs, appendHeader(nil, Header{Type: MsgPages, VMID: l.c.vmID, Generation: l.c.gen, Epoch: epoch, Length: uint32(len(m))}), m)
	}
	return nil
}

// epochOfMap reads the epoch back from the queued map header.
func (l *tcpLink) epochOfMap() uint64 {
	h, _ := parseHeader(l.hdrs[:headerSize], l.c.vmID)
	return h.Epoch
}

func (l *tcpLink) WriteImm(epoch uint64) error {
	l.bufs = append(l.bufs, appendHeader(nil, Header{Type: MsgDone, VMID: l.c.vmID, Generation: l.c.gen, Epoch: epoch}))
	return l.send(epoch)
}

// SendPart implements partLink: what is queued goes now, and the epoch
// stays open for its second map.
func (l *tcpLink) SendPart() error { return l.send(l.epochOfMap()) }

// WriteMapMore implements partLink: it queues the second map of the epoch
// whose first one was sent (its header stays in hdrs for epochOfMap).
func (l *tcpLink) WriteMapMore(m *MapRecord) error {
	l.bufs = append(l.bufs[:0], appendMapAs(nil, MsgMapMore, l.c.vmID, l.c.gen, m))
	return nil
}

// send writes what is queued, by the send deadline if one is set.
func (l *tcpLink) send(epoch uint64) error {
	bufs := l.bufs
	l.bufs = l.bufs[:0]
	l.c.wmu.Lock()
	defer l.c.wmu.Unlock()
	if !l.deadline.IsZero() {
		l.c.c.SetWriteDeadline(l.deadline)
		defer l.c.c.SetWriteDeadline(time.Time{})
		l.deadline = time.Time{}
	}
	if l.chunk == 0 {
		return writeBuffers(l.c.c, bufs, &l.records)
	}
	for _, b := range bufs {
		for len(b) > 0 {
			n := min(len(b), l.chunk)
			if _, err := l.c.c.Write(b[:n]); err != nil {
				return err
			}
			l.progress(epoch, n)
			b = b[n:]
		}
	}
	return nil
}

// tlsRecord is the most plaintext one TLS record carries: crypto/tls
// seals a record, and makes a write, for every Write call or every
// tlsRecord bytes of it.
const tlsRecord = 16 << 10

// writeBuffers writes bufs to c. A plain TCP connection takes them as they
// are, in one writev. On an encrypted one they are gathered into whole
// records first: a slice of less than a record (a header, the pages of a
// short region, the ends of a long one) is copied into scratch with its
// neighbours instead of costing a record, its seal and a write of its
// own, and the whole records of a longer slice go straight from its
// memory. TCP_CORK meanwhile holds the socket's segments back until they
// are full, not one per record. scratch is reused across calls.
func writeBuffers(c net.Conn, bufs net.Buffers, scratch *[]byte) error {
	tc, ok := c.(*tls.Conn)
	if !ok {
		_, err := bufs.WriteTo(c)
		return err
	}
	setCork(tc.NetConn(), true)
	defer setCork(tc.NetConn(), false) // sends what the cork held
	rec := (*scratch)[:0]
	if cap(rec) < tlsRecord {
		rec = make([]byte, 0, tlsRecord)
	}
	defer func() { *scratch = rec[:0] }()
	for _, b := range bufs {
		for len(b) > 0 {
			if len(rec) == 0 && len(b) >= tlsRecord {
				n := len(b) - len(b)%tlsRecord
				if _, err := tc.Write(b[:n]); err != nil {
					return err
				}
				b = b[n:]
				continue
			}
			n := min(tlsRecord-len(rec), len(b))
			rec, b = append(rec, b[:n]...), b[n:]
			if len(rec) == tlsRecord {
				if _, err := tc.Write(rec); err != nil {
					return err
				}
				rec = rec[:0]
			}
		}
	}
	if len(rec) > 0 {
		if _, err := tc.Write(rec); err != nil {
			return err
		}
	}
	return nil
}

// setCork sets or clears TCP_CORK on c, if it is a TCP connection. It is
// only an optimisation: a socket that refuses it sends the same bytes in
// more segments, so errors are ignored.
func setCork(c net.Conn, on bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return
	}
	v := 0
	if on {
		v = 1
	}
	rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CORK, v) })
}

// WriteCommit sends a commit, bounded by commitSendTimeout: a replica
// that stopped reading fails the link instead of holding the primary.
func (l *tcpLink) WriteCommit(epoch uint64) error {
	return l.c.sendBy(time.Now().Add(commitSendTimeout), MsgCommit, epoch, nil)
}

// commitSendTimeout bounds the send of a commit (a 32-byte message).
const commitSendTimeout = time.Second

func (l *tcpLink) Close() error { return l.c.c.Close() }

// abort closes the link at once (see closeNow): the primary gives up on it.
func (l *tcpLink) abort() { closeNow(l.c.c) }

// closeNow closes a connection at once. A TLS connection's Close first
// sends a close_notify alert and waits up to 5 s for a peer that stopped
// reading to take it: closing the TCP connection underneath does not wait,
// and the primary only closes connections it gives up on.
func closeNow(c net.Conn) error {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		err := tc.NetConn().Close()
		c.Close() // frees the TLS state; fails at once on the closed socket
		return err
	}
	return c.Close()
}

// stateLink is the primary's connection to the leader, or to another state
// holder (holders.go): state records, commits and heartbeats. When the
// connection breaks, it redials (for up to redialWithin, the holder keeping
// the primary's slot free for its heartbeat timeout) and sends again the
// state the holder has not acknowledged and the newest commit, so a broken
// connection alone does not make the holder take over. If the redial
// fails, the acks channel gets the error.
type stateLink struct {
	d            stateDial
	dial         func(ctx context.Context) (*conn, error)
	redialWithin time.Duration
	vmID         uint64

	mu         sync.Mutex
	c          *conn
	pending    *StateRecord // sent, not yet acknowledged
	lastCommit uint64
	closed     bool
	// cluster is the newest Cluster, which a redial tells first.
	cluster atomic.Pointer[Cluster]

	stop chan struct{}
	once sync.Once
}

// stateDial is what reaching the leader (or another holder) takes.
type stateDial struct {
	creds     *auth.Credentials
	addr      string
	vmID, gen uint64
	hello     Hello
	acks      chan<- Ack
	// heartbeat is the heartbeat interval; redialWithin bounds a redial
	// after a break and every send.
	heartbeat, redialWithin time.Duration
	// committed is the newest committed epoch, which heartbeats carry so
	// that the leader sees the epochs progress.
	committed func() uint64
	// cluster is how the primary replicates, told to the leader first.
	cluster Cluster
	log     *slog.Logger
}

// dialHolder opens a state connection to the leader or another holder,
// bringing its disk copies to the guest's disks first (diskrep.go; on a redial they already
// are). The guest must not be writing its disks meanwhile: before it
// runs, or paused (see connect and start).
func dialHolder(ctx context.Context, d stateDial, disks []DiskImage) (*stateLink, error) {
	hashes, err := hashDisks(disks)
	if err != nil {
		return nil, err
	}
	s, c, err := d.connect(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.start(c, disks, hashes); err != nil {
		return nil, err
	}
	return s, nil
}

// connect dials the leader and exchanges hello and welcome; the link does
// nothing more until start.
func (d stateDial) connect(ctx context.Context) (*stateLink, *conn, error) {
	s := &stateLink{stop: make(chan struct{}), vmID: d.vmID, redialWithin: d.redialWithin, d: d}
	s.cluster.Store(&d.cluster)
	s.dial = func(ctx context.Context) (*conn, error) {
		c, err := dialHello(ctx, d.creds, d.addr, d.vmID, d.gen, d.hello)
		if err != nil {
			return nil, fmt.Errorf("replicate: leader: %w", err)
		}
		if err := c.sendBy(time.Now().Add(d.redialWithin), MsgCluster, 0, s.cluster.Load().marshal()); err != nil {
			c.c.Close()
			return nil, c.errorf("leader: %w", err)
		}
		return c, nil
	}
	c, err := s.dial(ctx)
	if err != nil {
		return nil, nil, err
	}
	return s, c, nil
}

// start brings the leader's disk copies to the disks' content (hashes are
// theirs, taken while the guest does not write them), then serves c:
// acknowledgements, heartbeats, redials.
func (s *stateLink) start(c *conn, disks []DiskImage, hashes [][]disk.Hash) error {
	if err := syncDisks(c, disks, hashes, s.d.log); err != nil {
		c.c.Close()
		return fmt.Errorf("replicate: leader: %w", err)
	}
	s.c = c
	go s.readAcks(s.d.acks)
	go func() {
		t := time.NewTicker(s.d.heartbeat)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.mu.Lock()
				// A leader that stopped reading must not hold the sends
				// of states and commits up behind a heartbeat.
				if err := s.c.sendBy(time.Now().Add(s.redialWithin), MsgHeartbeat, s.d.committed(), nil); err != nil {
					closeNow(s.c.c) // readAcks notices, and redials
				}
				s.mu.Unlock()
			}
		}
	}()
	return nil
}

// readAcks reads the leader's acknowledgements, redialling once per break.
func (s *stateLink) readAcks(acks chan<- Ack) {
	for {
		s.mu.Lock()
		c := s.c
		s.mu.Unlock()
		h, err := c.readHeader()
		switch {
		case err != nil:
		case h.Type == MsgFenced:
			// Another primary term has begun: no redial may go on with
			// this one.
			acks <- Ack{from: s, Link: -1, Err: c.errorf("leader: %w", c.readFenced(h))}
			return
		case h.Type == MsgError:
			// A refusal is the leader's answer, not a broken connection:
			// redialling would only be refused again.
			p, _ := readPayload(c.r, h)
			acks <- Ack{from: s, Link: -1, Err: c.errorf("leader: %w: %s", ErrLeaderRefused, p)}
			return
		case h.Type != MsgAck:
			err = fmt.Errorf("%w: unexpected %v message", ErrProtocol, h.Type)
		}
		if err != nil {
			err = c.errorf("leader: %w", noEOF(err))
			if rerr := s.redial(c); rerr != nil {
				acks <- Ack{from: s, Link: -1, Err: fmt.Errorf("%w; redialling: %w", err, rerr)}
				return
			}
			continue
		}
		s.mu.Lock()
		if s.pending != nil && s.pending.Epoch <= h.Epoch {
			s.pending = nil
		}
		s.mu.Unlock()
		acks <- Ack{from: s, Link: -1, Epoch: h.Epoch}
	}
}

// redial replaces the broken connection old: it dials again until
// redialWithin has passed, then sends the unacknowledged state and the
// newest commit on the new connection.
func (s *stateLink) redial(old *conn) error {
	closeNow(old.c) // a sender blocked on it lets go of s.mu
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("the state connection was closed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.redialWithin)
	defer cancel()
	go func() { // Close ends a redial at once
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var err error
	for {
		var c *conn
		if c, err = s.dial(ctx); err == nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.closed {
				c.c.Close()
				return errors.New("the state connection was closed")
			}
			s.c = c
			deadline := time.Now().Add(s.redialWithin)
			if s.pending != nil {
				err = c.sendBy(deadline, MsgState, s.pending.Epoch, s.pending.marshal())
			}
			if err == nil && s.lastCommit > 0 {
				err = c.sendBy(deadline, MsgCommit, s.lastCommit, nil)
			}
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(redialPause):
		}
	}
}

// redialPause spaces the attempts of a redial: the leader frees the
// primary's slot only once it has seen the old connection end.
const redialPause = 20 * time.Millisecond

// sendState sends an epoch's state, failing once deadline passes (a
// leader that stopped reading). A connection that breaks meanwhile is
// redialled and the state sent again (readAcks): its acknowledgement, or
// the failure of the redial, comes on the acks channel.
func (s *stateLink) sendState(rec *StateRecord, deadline time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pending = rec
	if err := s.c.sendBy(deadline, MsgState, rec.Epoch, rec.marshal()); err != nil {
		closeNow(s.c.c)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return err // the leader stopped reading: no redial helps
		}
	}
	return nil
}

func (s *stateLink) sendCommit(epoch uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastCommit = max(s.lastCommit, epoch)
	if err := s.c.sendBy(time.Now().Add(s.redialWithin), MsgCommit, epoch, nil); err != nil {
		closeNow(s.c.c) // readAcks redials and sends the commit again
		return err
	}
	return nil
}

// sendCluster tells the holder how the primary replicates now (a link was
// added); a redial tells it too.
func (s *stateLink) sendCluster(c Cluster) error {
	s.cluster.Store(&c)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.c.sendBy(time.Now().Add(s.redialWithin), MsgCluster, 0, c.marshal()); err != nil {
		closeNow(s.c.c) // readAcks redials, and the redial tells it
		return err
	}
	return nil
}

func (s *stateLink) sendBye() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.c.sendBy(time.Now().Add(s.redialWithin), MsgBye, 0, nil)
}

func (s *stateLink) Close() error {
	s.once.Do(func() { close(s.stop) })
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return s.c.c.Close()
}
