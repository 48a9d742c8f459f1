package replicate

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// Store is a replica's copy of guest memory: every page with the epoch that
// last wrote it (0: never written, so zero). Seed 003 Fig. 8.
type Store struct {
	mu     sync.RWMutex
	pages  []byte
	epochs []uint64
	// applied is the newest epoch applied from any link.
	applied uint64
	// changed, when track is set, collects the pages applied since it was
	// last taken: what a shadow must copy again (active.go).
	track   bool
	changed []uint64
}

func newStore(memBytes uint64) *Store {
	return &Store{pages: make([]byte, memBytes), epochs: make([]uint64, memBytes/PageSize)}
}

// apply copies a complete, committed staged epoch into the store.
func (s *Store) apply(st *stage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	off := uint64(0)
	for _, r := range st.regions {
		n := r.Pages * PageSize
		copy(s.pages[r.First*PageSize:], st.data[off:off+n])
		for p := r.First; p < r.End(); p++ {
			s.epochs[p] = st.epoch
			if s.track {
				s.changed = append(s.changed, p)
			}
		}
		off += n
	}
	s.applied = max(s.applied, st.epoch)
}

// stage is one link's epoch in flight on a replica: its map and its data.
// An epoch is complete when its completion marker arrived after exactly the
// bytes the map announced.
type stage struct {
	link     uint32
	epoch    uint64
	regions  []Region
	data     []byte
	received uint64
	complete bool
	// appliedEpoch is the newest epoch of this link applied to the store.
	appliedEpoch uint64
	// gen is the generation whose epochs the stage holds: a link's first
	// map of a newer generation starts a fresh stage (see beginEpoch), and
	// no connection of another generation may touch it.
	gen uint64
	// recent is the staging the link needed lately (see beginEpoch).
	recent uint64
	// The binding rules (see the package documentation): the newest epoch
	// whose map the link carried, the newest it acknowledged, and the
	// newest it was told is committed. They outlive a connection.
	lastMap, acked, committed uint64
	// applied is closed when the last committed epoch handed to the
	// background apply has reached the store (nil: none pending).
	applied chan struct{}
	// buf, when set, supplies an epoch's staging area instead of an
	// allocation: an RDMA link's registered buffer, which the primary has
	// already written when the replica learns of the epoch (rdma.go).
	buf func(epoch, need uint64) []byte
	// continued: the staged epoch's map had its second part (MsgMapMore,
	// speculate.go). hashed: its hashes came (MsgHashes, active.go).
	continued, hashed bool
}

// stagingKeep is the staging buffer a link keeps however small its
// epochs: below it, releasing saves too little to be worth a reallocation.
const stagingKeep = 1 << 20

// waitApplied waits for a link's background apply; call without r.mu.
func (r *Replica) waitApplied(st *stage) {
	r.mu.Lock()
	ch := st.applied
	r.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

// ReplicaConfig configures a replica server.
type ReplicaConfig struct {
	Log *slog.Logger
	// Leader makes this replica also accept the primary's state connection
	// and report primary failure through Failed.
	Leader bool
	// Coordinated leaves the primary's failure to a coordinator (its
	// term's lease expiring, package coord): the node never declares it
	// from heartbeats, progress or a lost state connection, Failed closes
	// only when the primary says goodbye, and a state connection is
	// admitted whenever its generation is the newest seen, also after a
	// takeover attempt this node gave up (a new primary's holder).
	Coordinated bool
	// HeartbeatTimeout is how long the leader waits for a heartbeat or
	// state message before it declares the primary failed. It is also the
	// slack of the progress rule (see the package documentation,
	// "Liveness"): once the primary has sent a state, the leader declares
	// it failed when its next state or commit is later than the primary
	// announced plus HeartbeatTimeout, heartbeats or not.
	HeartbeatTimeout time.Duration
	// ReconnectWait is how long the leader waits, once the state
	// connection breaks, for the primary to reconnect before it declares
	// it failed: a primary that is alive redials at once, and every
	// millisecond of the wait is one more of downtime after a real crash.
	// Zero means 250 ms, or HeartbeatTimeout if that is shorter.
	ReconnectWait time.Duration
	// MinLinkRate is the slowest rate, in bytes per second, at which the
	// leader expects a state message to arrive once its header has: its
	// payload may take its length at this rate on top of
	// HeartbeatTimeout. Zero means 1 MB/s.
	MinLinkRate float64
	// Delay, when set, is called after every data read of n bytes into
	// staging: tandem bench uses it to emulate memory with slow writes.
	Delay func(n int)
	// MaxMemBytes is the largest guest this replica accepts; a hello for a
	// larger one is refused before anything is allocated (a replica holds
	// a copy of guest memory plus staging). Zero means the host's physical
	// memory (HostMemBytes).
	MaxMemBytes uint64
	// RecoveryStepTimeout bounds each step of a recovery a replica must
	// answer (query, settle; a fetch gets this for every MiB it moves).
	// Zero means 10 s.
	RecoveryStepTimeout time.Duration
	// Auth authenticates every connection this replica accepts, and the
	// leader's recovery connections to the replicas; its Timeout bounds
	// each handshake. Required: Serve, ServeRDMA and Recover fail without.
	Auth *auth.Credentials
	// Disks are the leader's copies of the primary's disks, in its order:
	// the primary brings each to its own content before the first epoch
	// (diskrep.go), and refuses to start if the counts or sizes differ.
	Disks []DiskCopy
	// Committed, when set, is given the state of every epoch the leader
	// learns is committed, once, in epoch order, and at recovery those of
	// the recovered epoch and earlier not given yet: what applies an
	// epoch's disk writes to the copies. An error makes recovery refuse.
	Committed func(epoch uint64, state []byte) error
	// Shadow, when set, lets this node run a copy of the VM it holds the
	// state of, from each epoch its store applies, so that the primary's
	// links to it send only the pages the copy wrote differently (active
	// backup, active.go). It costs a second copy of guest memory and the
	// guest's CPU.
	Shadow NewShadow
}

// maxHandshakes bounds the connections a replica authenticates at once:
// beyond it a new connection is closed at once, so peers without the key
// cannot pile up goroutines and sockets (each waits at most the handshake
// timeout).
const maxHandshakes = 64

// Replica keeps a copy of one VM's memory, fed by one or more links, and
// answers the leader's recovery queries. It serves one VM: the first hello
// fixes the VM's identity and size, and a connection for another VM is
// refused with an error.
type Replica struct {
	cfg ReplicaConfig
	log *slog.Logger

	// handshakes holds a token per connection being authenticated.
	handshakes chan struct{}

	protocolErrors atomic.Uint64

	mu     sync.Mutex
	vmID   uint64
	hello  Hello
	store  *Store
	stages map[uint32]*stage

	// Leader side (cfg.Leader): the state stream, and how the primary
	// replicates (MsgCluster).
	cluster     *Cluster
	states      map[uint64]*StateRecord
	committed   uint64
	failed      chan struct{}
	failOnce    sync.Once
	failReason  string
	disks       leaderDisks
	ended       bool // the primary said goodbye: its VM stopped on purpose
	stateActive bool
	stateConns  uint64 // state connections admitted so far
	stateGen    uint64 // the generation of the newest one
	// progressBy is when the primary's next progress (a new state or
	// commit) is due; zero until its first state. interval is the epoch
	// interval it announced, stateEpoch the newest epoch whose state
	// arrived, progressEpoch the newest epoch seen committed.
	progressBy                time.Time
	progressWhy               string // what set progressBy, for the failure's reason
	interval                  time.Duration
	stateEpoch, progressEpoch uint64

	// liveLinks holds the link indices bound to a live connection of the
	// primary (TCP or RDMA), with that connection's generation: a second
	// connection of the generation claiming one is refused.
	liveLinks map[uint32]uint64
	// gen is the newest generation any hello brought here; conns are the
	// admitted connections, fenced (told and closed) once a newer
	// generation arrives.
	gen   uint64
	conns map[*conn]struct{}
	// rdmaGrants are the RDMA link tickets outstanding (rdma_auth.go).
	rdmaGrants []*rdmaGrant
	// active runs the shadow, with cfg.Shadow (active.go).
	active *activeNode
	// durable keeps the store on persistent media (OpenReplica,
	// replica_persist.go); nil for a replica in memory.
	durable *replicaDir
}

// NewReplica returns a replica that holds no VM yet.
func NewReplica(cfg ReplicaConfig) *Replica {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.HeartbeatTimeout == 0 {
		cfg.HeartbeatTimeout = time.Second
	}
	if cfg.ReconnectWait == 0 {
		cfg.ReconnectWait = min(250*time.Millisecond, cfg.HeartbeatTimeout)
	}
	if cfg.MinLinkRate <= 0 {
		cfg.MinLinkRate = defaultMinLinkRate
	}
	r := &Replica{cfg: cfg, log: cfg.Log, stages: map[uint32]*stage{}, states: map[uint64]*StateRecord{}, failed: make(chan struct{}),
		disks:      leaderDisks{synced: make([]bool, len(cfg.Disks))},
		handshakes: make(chan struct{}, maxHandshakes), liveLinks: map[uint32]uint64{}, conns: map[*conn]struct{}{}}
	if cfg.Shadow != nil {
		r.active = &activeNode{newShadow: cfg.Shadow}
	}
	return r
}

// Serve accepts connections until ctx is done.
func (r *Replica) Serve(ctx context.Context, ln net.Listener) error {
	if r.cfg.Auth == nil {
		ln.Close()
		return errNoCredentials
	}
	defer r.closeShadow("the node stopped serving")
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("replicate: accept: %w", err)
		}
		select {
		case r.handshakes <- struct{}{}:
		default:
			r.log.Warn("replica connection refused: too many handshakes in progress", "peer", c.RemoteAddr(), "limit", maxHandshakes)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			defer c.Close()
			if err := r.serveConn(ctx, c); err != nil && !errors.Is(err, io.EOF) && ctx.Err() == nil {
				r.log.Warn("replica connection ended", "peer", c.RemoteAddr(), "err", err)
			}
		}()
	}
}

// conn is a connection with buffered reads and the peer's name for errors.
type conn struct {
	c    net.Conn
	r    *bufio.Reader
	peer string
	vmID uint64
	// gen is the generation of the primary term the connection belongs
	// to: its hello's, carried by every message either way.
	gen uint64
	// resume is what a link's welcome said (the primary's end).
	resume linkResume
	wmu    sync.Mutex
}

func newConn(c net.Conn) *conn {
	return &conn{c: c, r: bufio.NewReaderSize(c, 256<<10), peer: c.RemoteAddr().String()}
}

// readHeader reads and checks the next header: of this connection's VM
// and generation.
func (c *conn) readHeader() (Header, error) {
	h, err := readHeader(c.r, c.vmID)
	if err == nil {
		err = checkGeneration(h, c.gen)
	}
	return h, err
}

func (c *conn) errorf(format string, args ...any) error {
	return fmt.Errorf("replicate: peer %s: %w", c.peer, fmt.Errorf(format, args...))
}

// send writes one message.
func (c *conn) send(t MsgType, epoch uint64, payload []byte) error {
	return c.sendBy(time.Time{}, t, epoch, payload)
}

// sendBy is send with a write deadline (none when zero): the write fails
// once deadline passes rather than wait for a peer that stopped reading.
func (c *conn) sendBy(deadline time.Time, t MsgType, epoch uint64, payload []byte) error {
	b := appendHeader(make([]byte, 0, headerSize+len(payload)), Header{Type: t, VMID: c.vmID, Generation: c.gen, Epoch: epoch, Length: uint32(len(payload))})
	b = append(b, payload...)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !deadline.IsZero() {
		c.c.SetWriteDeadline(deadline)
		defer c.c.SetWriteDeadline(time.Time{})
	}
	_, err := c.c.Write(b)
	return err
}

func (c *conn) sendError(msg string) {
	c.send(MsgError, 0, []byte(msg))
}

// serveConn authenticates a connection, admits its hello and serves it.
// Nothing is read from the peer but handshake frames, and nothing is
// allocated from its claims, until it has proved it holds the key; a peer
// that fails is told nothing (the handshake fails).
func (r *Replica) serveConn(ctx context.Context, raw net.Conn) error {
	nc, role, err := r.cfg.Auth.Server(ctx, raw)
	<-r.handshakes
	if err != nil {
		return fmt.Errorf("replicate: peer %s: %w", raw.RemoteAddr(), err)
	}
	c := newConn(nc)
	nc.SetReadDeadline(time.Now().Add(r.cfg.Auth.Timeout()))
	h, err := readHeader(c.r, 0)
	if err != nil {
		return c.errorf("%w", noEOF(err))
	}
	if h.Type != MsgHello {
		return c.errorf("%w: first message is %v, want hello", ErrProtocol, h.Type)
	}
	p, err := readPayload(c.r, h)
	if err != nil {
		return c.errorf("%w", err)
	}
	// A refusal goes out under the VM id the peer sent, so that its client
	// reads it instead of rejecting a message for another VM; it says what
	// is wrong without telling the peer anything about the VM served here.
	c.vmID, c.gen = h.VMID, h.Generation
	var hello Hello
	if err := hello.unmarshal(p); err != nil {
		c.sendError(err.Error())
		return c.errorf("%w", err)
	}
	if auth.Role(hello.Role) != role {
		err := fmt.Errorf("%w: %v hello on a connection authenticated as role %d", ErrProtocol, hello.Role, role)
		c.sendError(err.Error())
		return c.errorf("%w", err)
	}
	if err := r.admit(c.vmID, c.gen, &hello, c); err != nil {
		var f *fencedError
		if errors.As(err, &f) {
			c.sendFenced(f.newer)
		} else {
			c.sendError(publicText(err))
		}
		return c.errorf("%w", err)
	}
	defer r.release(c)
	if hello.Role == RoleLink {
		defer r.releaseLink(hello.Link, c.gen)
	}
	nc.SetReadDeadline(time.Time{})
	var welcome []byte
	if hello.Role == RoleLink {
		welcome = r.linkResume(hello.Link, c.gen).marshal()
	}
	if err := c.send(MsgWelcome, 0, welcome); err != nil {
		return c.errorf("%w", err)
	}
	switch hello.Role {
	case RoleLink:
		err = r.serveLink(c, hello.Link)
	case RoleState:
		err = r.serveState(c)
	case RoleRDMA:
		err = r.serveRDMASetup(c, hello)
	default:
		err = r.serveRecovery(c)
	}
	if errors.Is(err, ErrProtocol) {
		r.protocolErrors.Add(1)
	}
	return err
}

// ProtocolErrors counts the connections this replica dropped for breaking
// the protocol after their hello (a malformed message, a delta that does
// not apply, a binding rule broken).
func (r *Replica) ProtocolErrors() uint64 { return r.protocolErrors.Load() }

// maxMem is the configured MaxMemBytes or the host's memory.
func (r *Replica) maxMem() uint64 {
	if r.cfg.MaxMemBytes > 0 {
		return r.cfg.MaxMemBytes
	}
	return HostMemBytes()
}

// HostMemBytes is the host's physical memory (sysinfo), or 1 TiB if it
// cannot be read.
func HostMemBytes() uint64 {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil || si.Totalram == 0 {
		return 1 << 40
	}
	return uint64(si.Totalram) * uint64(si.Unit)
}

// refusal is an admission error with a public text for the peer and a
// detailed one for this replica's log.
type refusal struct{ public, detail string }

func (e *refusal) Error() string { return e.detail }

// publicText is what a peer is told of an admission error.
func publicText(err error) string {
	var ref *refusal
	if errors.As(err, &ref) {
		return ref.public
	}
	return err.Error()
}

// fencedError refuses a connection of a generation older than one this
// node has seen: its peer is told the newer one (MsgFenced).
type fencedError struct{ gen, newer uint64 }

func (e *fencedError) Error() string {
	return fmt.Sprintf("generation %d is fenced: this node has seen generation %d", e.gen, e.newer)
}

func (e *fencedError) Unwrap() error { return ErrFenced }

// ErrFenced reports that a node has seen a newer generation than a
// connection's: another primary term has begun, so this one may neither
// commit nor release output, and none of its data is applied.
var ErrFenced = errors.New("replicate: fenced: a newer primary term has begun")

// sendFenced tells the peer of an older generation that a newer one
// exists, without waiting long for a peer that may not read.
func (c *conn) sendFenced(newer uint64) {
	c.sendBy(time.Now().Add(100*time.Millisecond), MsgFenced, 0, binary.LittleEndian.AppendUint64(nil, newer))
}

// readFenced reads a MsgFenced payload and returns the error it means.
func (c *conn) readFenced(h Header) error {
	p, err := readPayload(c.r, h)
	if err != nil {
		return err
	}
	if len(p) != 8 || binary.LittleEndian.Uint64(p) <= c.gen {
		return fmt.Errorf("%w: a fenced message that names no newer generation than %d", ErrProtocol, c.gen)
	}
	return fmt.Errorf("%w: %s has seen generation %d, this term is generation %d", ErrFenced, c.peer, binary.LittleEndian.Uint64(p), c.gen)
}

// checkGen is the node half of fencing: a connection of a generation
// older than the newest seen here may do nothing more. Call with r.mu.
func (r *Replica) checkGen(gen uint64) error {
	if gen < r.gen {
		return &fencedError{gen: gen, newer: r.gen}
	}
	return nil
}

// fence raises the newest generation to gen and fences every connection
// of an older one: each is told, and closed, so a deposed primary's links
// and state connection end here at once. Call with r.mu.
func (r *Replica) fence(gen uint64) {
	if gen <= r.gen {
		return
	}
	if r.gen != 0 {
		r.log.Warn("a newer primary term: fencing the older one", "generation", gen, "fenced", r.gen)
	}
	r.gen = gen
	if r.stateActive && r.stateGen < gen {
		// The fenced term's state connection no longer holds the slot
		// (its end does not free it: see stateEnded): the new term's may
		// come at once, of this very generation after a recovery.
		r.stateActive = false
	}
	for c := range r.conns {
		if c.gen < gen {
			delete(r.conns, c)
			go func() {
				c.sendFenced(gen)
				closeNow(c.c)
			}()
		}
	}
}

// release forgets an admitted connection that ended.
func (r *Replica) release(c *conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.conns, c)
}

// admit checks a hello (with the VM id and generation of its header)
// against the VM this replica serves and the newest generation seen here,
// fences older generations, and records the connection c (nil for RDMA)
// to be fenced in turn.
func (r *Replica) admit(vmID, gen uint64, h *Hello, c *conn) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if vmID == 0 {
		return fmt.Errorf("%w: hello without a VM id", ErrProtocol)
	}
	if gen == 0 {
		return fmt.Errorf("%w: hello without a generation", ErrProtocol)
	}
	if limit := r.maxMem(); h.MemBytes > limit {
		msg := fmt.Sprintf("a guest of %d MiB is more than this replica takes (%d MiB; tandem replica --max-mem)", h.MemBytes>>20, limit>>20)
		return &refusal{public: msg, detail: msg}
	}
	if r.vmID == 0 {
		if h.Role == RoleRecovery {
			return errors.New("this replica holds no VM")
		}
		r.vmID, r.hello = vmID, *h
		if err := r.persistHello(); err != nil {
			r.vmID, r.hello = 0, Hello{}
			return fmt.Errorf("persisting the VM's hello: %w", err)
		}
		r.log.Info("replica serving VM", "vm", fmt.Sprintf("%016x", vmID), "mem_MiB", h.MemBytes>>20, "guest", h.Guest)
	}
	switch {
	case vmID != r.vmID:
		return &refusal{public: "this replica serves another VM",
			detail: fmt.Sprintf("this replica serves VM %016x, not %016x", r.vmID, vmID)}
	case h.MemBytes != r.hello.MemBytes:
		return &refusal{public: "the memory size in the hello differs from the VM's here",
			detail: fmt.Sprintf("VM %016x has %d bytes of memory here, hello says %d", vmID, r.hello.MemBytes, h.MemBytes)}
	case h.Role == RoleState && !r.cfg.Leader:
		return errors.New("this replica is not the leader")
	case h.Role == RoleRDMA && r.durable != nil:
		return errPersistRDMA
	}
	if err := r.checkGen(gen); err != nil {
		return err
	}
	newer := gen > r.gen
	if newer {
		// Durable before anything of the generation is accepted: a
		// reopened replica must still fence the older ones.
		if err := r.persist(true, recGen, u64s(gen)); err != nil {
			return fmt.Errorf("persisting generation %d: %w", gen, err)
		}
	}
	switch {
	case h.Role == RoleState && r.stateActive && !newer:
		return errors.New("the leader already has a state connection")
	case h.Role == RoleState && r.isFailed():
		return errors.New("the leader has declared the primary failed")
	case (h.Role == RoleLink || h.Role == RoleRDMA) && r.liveLinks[h.Link] == gen:
		return fmt.Errorf("link %d of this VM is already connected", h.Link)
	}
	r.fence(gen)
	if c != nil {
		r.conns[c] = struct{}{}
	}
	switch h.Role {
	case RoleState:
		r.stateGen = gen
		if newer {
			// The states of an older term are of no use to this one:
			// a takeover uses only this term's.
			clear(r.states)
		}
		r.stateActive = true // until serveState ends
		r.stateConns++
		// The progress bound starts again with this connection's first
		// state: the one set by an earlier connection (another term's,
		// or one the primary dropped and dials again) would fail it.
		r.progressBy = time.Time{}
		r.hello.VCPUs, r.hello.Guest, r.hello.Links, r.hello.Policy = h.VCPUs, h.Guest, h.Links, h.Policy
		cleared := byte(0)
		if newer {
			cleared = 1
		}
		if err := r.persist(false, recStateConn, u64s(gen), []byte{cleared}); err != nil {
			return fmt.Errorf("persisting the state connection: %w", err)
		}
		if err := r.persistHello(); err != nil {
			return fmt.Errorf("persisting the VM's hello: %w", err)
		}
	case RoleLink:
		// Only a replica that links feed holds a copy of guest memory.
		if r.store == nil {
			r.store = newStore(h.MemBytes)
			r.store.track = r.active != nil
		}
		r.liveLinks[h.Link] = gen // until releaseLink
	case RoleRecovery:
		if r.store == nil {
			return errors.New("this replica holds no pages: no link feeds it")
		}
	}
	return nil
}

// releaseLink frees a link index when its connection (of generation gen)
// ends, unless a connection of a newer generation holds it now.
func (r *Replica) releaseLink(link uint32, gen uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.liveLinks[link] == gen {
		delete(r.liveLinks, link)
	}
}

// serveLink receives one link's epochs: map, data, completion; acknowledges
// complete epochs and applies them when they are committed.
func (r *Replica) serveLink(c *conn, link uint32) error {
	pages := uint64(len(r.store.epochs))
	mapped := false // a probe comes before the first map
	var dec *pageDecoder
	defer func() {
		if dec != nil {
			dec.close()
		}
	}()
	for {
		h, err := c.readHeader()
		if err != nil {
			return c.errorf("link %d: %w", link, err)
		}
		switch h.Type {
		case MsgProbe:
			if err := r.answerProbe(c, link, h, mapped); err != nil {
				return err
			}
		case MsgMap, MsgMapMore:
			mapped = true
			p, err := readPayload(c.r, h)
			if err != nil {
				return c.errorf("link %d: %w", link, err)
			}
			m, err := parseMap(h, p, pages)
			if err != nil {
				return c.errorf("link %d: %w", link, err)
			}
			stageMap := r.beginEpoch
			if h.Type == MsgMapMore {
				stageMap = r.continueEpoch // the second part of a speculated epoch
			}
			if err := stageMap(link, c.gen, m); err != nil {
				return c.errorf("%w", err)
			}
		case MsgData:
			if err := r.receiveData(c, link, h); err != nil {
				return err
			}
		case MsgPages:
			if dec == nil {
				var err error
				if dec, err = newPageDecoder(); err != nil {
					return c.errorf("link %d: %w", link, err)
				}
				if r.active != nil { // kept records (active.go)
					dec.dec.Shadow = func(p uint64, dst []byte) bool { return r.active.page(link, p, dst) }
				}
			}
			if err := r.receivePages(c, link, h, dec); err != nil {
				return err
			}
		case MsgDone:
			r.mu.Lock()
			st, err := r.linkStage(link, c.gen)
			ok := st != nil && st.epoch == h.Epoch && !st.complete && st.received == uint64(len(st.data))
			if ok {
				st.complete = true
				st.acked = max(st.acked, h.Epoch)
			}
			r.mu.Unlock()
			if err != nil {
				return c.errorf("link %d: %w", link, err)
			}
			if !ok {
				return c.errorf("link %d: %w: completion of epoch %d does not match the data received", link, ErrProtocol, h.Epoch)
			}
			if err := r.persistStaged(st); err != nil {
				return c.errorf("link %d: persisting epoch %d before acknowledging it: %w", link, h.Epoch, err)
			}
			if err := c.send(MsgAck, h.Epoch, nil); err != nil {
				return c.errorf("link %d: %w", link, err)
			}
		case MsgCommit:
			if err := r.commit(link, c.gen, h.Epoch); err != nil {
				return c.errorf("%w", err)
			}
		case MsgHashes:
			if err := r.receiveHashes(c, link, h); err != nil {
				return err
			}
		default:
			return c.errorf("link %d: %w: unexpected %v message", link, ErrProtocol, h.Type)
		}
	}
}

func (r *Replica) stageOf(link uint32) *stage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stages[link]
}

// linkResume is where a new connection of generation gen picks link up
// (see linkResume): zero for a link new here or of an older generation.
func (r *Replica) linkResume(link uint32, gen uint64) linkResume {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stages[link]
	if st == nil || st.gen != gen {
		return linkResume{}
	}
	return linkResume{acked: st.acked, committed: st.committed}
}

// linkStage is the stage of a link for a connection of generation gen: nil
// if the link has none, an error if a newer generation holds the link or
// was seen here. Call with r.mu.
func (r *Replica) linkStage(link uint32, gen uint64) (*stage, error) {
	if err := r.checkGen(gen); err != nil {
		return nil, err
	}
	st := r.stages[link]
	if st != nil && st.gen != gen {
		return nil, &fencedError{gen: gen, newer: st.gen}
	}
	return st, nil
}

// checkCommitted applies the binding rule on commits to a link: the
// primary commits an epoch only once every live link acknowledged it, and
// commits in order, so a commit (in a map or a commit message) may name
// neither an epoch this link has not acknowledged nor one older than a
// commit it already carried. Call with r.mu held.
func checkCommitted(st *stage, what string, e uint64) error {
	switch {
	case e > st.acked:
		return fmt.Errorf("%w: link %d: %s says epoch %d is committed, but the link acknowledged no epoch after %d", ErrProtocol, st.link, what, e, st.acked)
	case e < st.committed:
		return fmt.Errorf("%w: link %d: %s says epoch %d is committed after a commit of epoch %d: commits must not go back", ErrProtocol, st.link, what, e, st.committed)
	}
	return nil
}

// beginEpoch starts staging a new epoch on a link. A staged epoch that was
// committed in the meantime is applied first; one that was not will never
// be (the primary decided every earlier epoch before starting this one).
// A map that breaks the binding rules is refused and changes nothing.
//
// A link's first map of a newer generation replaces its stage with a fresh
// one (no buffer of the old is reused, so a fenced connection's last
// write cannot land in it): the older term's staged epoch was either
// settled by the recovery that began the new term or is of no use, and
// the binding rules start again with the term.
func (r *Replica) beginEpoch(link uint32, gen uint64, m *MapRecord) error {
	if st := r.stageOf(link); st != nil {
		r.waitApplied(st)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.checkGen(gen); err != nil {
		return err
	}
	st := r.stages[link]
	switch {
	case st == nil:
		st = &stage{link: link, gen: gen}
		r.stages[link] = st
	case st.gen > gen:
		return &fencedError{gen: gen, newer: st.gen}
	case st.gen < gen:
		st = &stage{link: link, gen: gen, appliedEpoch: st.appliedEpoch}
		r.stages[link] = st
	}
	if m.Epoch <= st.lastMap {
		return fmt.Errorf("%w: link %d: map of epoch %d after one of epoch %d: epochs on a link must increase", ErrProtocol, link, m.Epoch, st.lastMap)
	}
	if err := checkCommitted(st, "the map of epoch "+fmt.Sprint(m.Epoch), m.Committed); err != nil {
		return err
	}
	st.lastMap, st.committed = m.Epoch, m.Committed
	if st.complete && st.epoch <= m.Committed {
		r.store.apply(st)
		st.appliedEpoch = max(st.appliedEpoch, st.epoch)
	}
	need := m.Pages() * PageSize
	// recent is the link's recent need, decaying by an eighth per epoch: a
	// buffer over four times it (a full copy long past) is released.
	st.recent = max(need, st.recent-st.recent/8)
	switch {
	case st.buf != nil:
		st.data = st.buf(m.Epoch, need)
	case uint64(cap(st.data)) < need:
		st.data = make([]byte, need)
	case uint64(cap(st.data)) > stagingKeep && uint64(cap(st.data)) > 4*st.recent:
		st.data = make([]byte, need, max(need, st.recent))
	}
	st.epoch, st.regions, st.data, st.received, st.complete, st.continued, st.hashed = m.Epoch, m.Regions, st.data[:need], 0, false, false, false
	return nil
}

// nextStaging returns where the next n bytes of epoch e's data go in the
// link's staging area, and the stage, or a protocol error if the link is
// not staging e or the map announced less.
func (r *Replica) nextStaging(c *conn, link uint32, e, n uint64) (*stage, []byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.linkStage(link, c.gen)
	switch {
	case err != nil:
		return nil, nil, c.errorf("link %d: %w", link, err)
	case st == nil || st.epoch != e || st.complete:
		return nil, nil, c.errorf("link %d: %w: data for epoch %d without its map", link, ErrProtocol, e)
	case n > uint64(len(st.data))-st.received:
		return nil, nil, c.errorf("link %d: %w: %d data bytes exceed the %d the map announced", link, ErrProtocol, st.received+n, len(st.data))
	}
	return st, st.data[st.received : st.received+n], nil
}

// receiveData reads a data message straight into the link's staging area.
func (r *Replica) receiveData(c *conn, link uint32, h Header) error {
	n := uint64(h.Length)
	st, dst, err := r.nextStaging(c, link, h.Epoch, n)
	if err != nil {
		return err
	}
	// Only this link's goroutine writes its staging data, so the read
	// itself needs no lock.
	if _, err := io.ReadFull(c.r, dst); err != nil {
		return c.errorf("link %d: epoch %d data: %w", link, h.Epoch, noEOF(err))
	}
	if r.cfg.Delay != nil {
		r.cfg.Delay(int(n))
	}
	r.mu.Lock()
	st.received += n
	r.mu.Unlock()
	return nil
}

// commit applies a link's staged epoch once it is committed, in the
// background; the next map on the link waits for it. A commit that breaks
// the binding rules is refused.
func (r *Replica) commit(link uint32, gen, epoch uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.linkStage(link, gen)
	if err != nil {
		return fmt.Errorf("link %d: %w", link, err)
	}
	if st == nil {
		return fmt.Errorf("%w: link %d: commit of epoch %d before any epoch", ErrProtocol, link, epoch)
	}
	if err := checkCommitted(st, "a commit message", epoch); err != nil {
		return err
	}
	if err := r.persist(false, recCommit, binary.LittleEndian.AppendUint32(nil, link), u64s(gen, epoch)); err != nil {
		return fmt.Errorf("link %d: persisting the commit of epoch %d: %w", link, epoch, err)
	}
	st.committed = epoch
	if !st.complete || st.epoch > epoch {
		return nil
	}
	// The staged epoch moves to a background apply, which hands the staging
	// buffer back when done; the link's next map waits for that.
	job := &stage{epoch: st.epoch, regions: st.regions, data: st.data}
	done := make(chan struct{})
	st.appliedEpoch = max(st.appliedEpoch, st.epoch) // visible once done closes: report waits for it
	st.epoch, st.complete, st.regions, st.data, st.applied = 0, false, nil, nil, done
	go func() {
		r.store.apply(job)
		if r.active != nil {
			r.restartShadow(job.epoch)
		}
		r.mu.Lock()
		if st.data == nil {
			st.data = job.data[:0]
		}
		r.mu.Unlock()
		close(done)
	}()
	return nil
}

// waitApplies waits for every link's background apply.
func (r *Replica) waitApplies() {
	r.mu.Lock()
	var pending []*stage
	for _, st := range r.stages {
		pending = append(pending, st)
	}
	r.mu.Unlock()
	for _, st := range pending {
		r.waitApplied(st)
	}
}

// serveState receives the primary's state stream (leader only) and watches
// the primary: heartbeats show its connection is alive, new states and
// commits that its epochs progress (see the package documentation).
func (r *Replica) serveState(c *conn) error {
	defer r.stateEnded(c)
	for {
		now := time.Now()
		deadline, progress, why := now.Add(r.cfg.HeartbeatTimeout), false, ""
		r.mu.Lock()
		if by := r.progressBy; !by.IsZero() && by.Before(deadline) {
			deadline, progress, why = by, true, r.progressWhy
		}
		r.mu.Unlock()
		c.c.SetReadDeadline(deadline)
		h, err := c.readHeader()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if progress {
					r.suspectFailed(fmt.Sprintf("the epochs of %s stopped progressing: no new state or commit by %s (%s)", c.peer, deadline.Format(time.RFC3339Nano), why))
				} else {
					r.suspectFailed(fmt.Sprintf("no heartbeat from %s for %v", c.peer, r.cfg.HeartbeatTimeout))
				}
			}
			return c.errorf("state: %w", err)
		}
		switch h.Type {
		case MsgHeartbeat:
			// A heartbeat carries the newest committed epoch: a new one is
			// progress too.
			r.progressed(h.Epoch)
		case MsgBye:
			if err := r.persist(true, recBye); err != nil {
				return c.errorf("state: persisting the goodbye: %w", err)
			}
			r.mu.Lock()
			r.ended = true
			r.mu.Unlock()
			r.declareFailed("the primary stopped its VM on purpose")
			return c.send(MsgAck, h.Epoch, nil)
		case MsgCluster:
			p, err := readPayload(c.r, h)
			if err != nil {
				return c.errorf("state: %w", err)
			}
			cl, err := parseCluster(p)
			if err != nil {
				return c.errorf("state: %w", err)
			}
			r.mu.Lock()
			if err := r.checkGen(c.gen); err != nil {
				r.mu.Unlock()
				return c.errorf("state: %w", err)
			}
			r.cluster = cl
			r.mu.Unlock()
			if err := r.persist(true, recCluster, p); err != nil {
				return c.errorf("state: persisting the cluster: %w", err)
			}
		case MsgDiskHashes, MsgDiskChunk, MsgDiskDone:
			p, err := readPayload(c.r, h)
			if err != nil {
				return c.errorf("state: %w", err)
			}
			if err := r.serveDiskSync(c, h, p); err != nil {
				return err
			}
		case MsgState:
			// Reading the state may take its bytes at the floor rate on
			// top of the heartbeat timeout.
			c.c.SetReadDeadline(time.Now().Add(stateReadTime(r.cfg.HeartbeatTimeout, h.Length, r.cfg.MinLinkRate)))
			p, err := readPayload(c.r, h)
			if err != nil {
				return c.errorf("state: %w", err)
			}
			s, err := parseState(h, p)
			if err != nil {
				return c.errorf("state: %w", err)
			}
			if err := r.checkDisksSynced(); err != nil {
				c.sendError(err.Error())
				return c.errorf("state: %w", err)
			}
			// Durable before it is acknowledged (replica_persist.go).
			if err := r.persist(true, recState, u64s(c.gen, h.Epoch), p); err != nil {
				return c.errorf("state: persisting the state of epoch %d: %w", h.Epoch, err)
			}
			r.mu.Lock()
			if err := r.checkGen(c.gen); err != nil {
				r.mu.Unlock()
				return c.errorf("state: %w", err)
			}
			r.states[s.Epoch] = s
			r.interval = s.Interval
			r.stateEpoch = max(r.stateEpoch, s.Epoch)
			// Next: this epoch's commit once its transfer is done, or, if
			// it fails, the next epoch's state an interval later.
			r.progressBy = time.Now().Add(s.Within + s.Interval + r.cfg.HeartbeatTimeout)
			r.progressWhy = fmt.Sprintf("the state of epoch %d allowed its transfer %v", s.Epoch, s.Within)
			r.mu.Unlock()
			if err := c.send(MsgAck, h.Epoch, nil); err != nil {
				return c.errorf("state: %w", err)
			}
		case MsgCommit:
			// The copies of the disks follow the commits (an error is kept
			// for recovery to refuse).
			r.mu.Lock()
			err := r.checkGen(c.gen)
			r.mu.Unlock()
			if err != nil {
				return c.errorf("state: %w", err)
			}
			r.deliverCommitted(h.Epoch)
			if err := r.persist(false, recLeaderCommit, u64s(h.Epoch)); err != nil {
				return c.errorf("state: persisting the commit of epoch %d: %w", h.Epoch, err)
			}
			r.mu.Lock()
			r.leaderCommitted(h.Epoch)
			r.mu.Unlock()
			r.progressed(h.Epoch)
		default:
			return c.errorf("state: %w: unexpected %v message", ErrProtocol, h.Type)
		}
	}
}

// progressed records that the primary committed epoch e. A commit of the
// newest epoch whose state arrived ends that epoch: the next state is due
// an epoch interval later, plus the heartbeat timeout. An older commit (a
// heartbeat sent before the newest state) changes nothing: that epoch is
// still in flight, and its own bound holds.
func (r *Replica) progressed(e uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e <= r.progressEpoch || e < r.stateEpoch || r.progressBy.IsZero() {
		return
	}
	r.progressEpoch = e
	r.progressBy = time.Now().Add(r.interval + r.cfg.HeartbeatTimeout)
	r.progressWhy = fmt.Sprintf("epoch %d committed", e)
}

// stateReadTime is how long the leader gives a state message's payload of
// n bytes once its header has arrived.
func stateReadTime(heartbeat time.Duration, n uint32, floor float64) time.Duration {
	return heartbeat + time.Duration(float64(n)/floor*float64(time.Second))
}

// stateEnded frees the state connection's slot. The primary may redial
// (stateLink.redial) within ReconnectWait; if no state connection is
// admitted by then, it has failed.
func (r *Replica) stateEnded(c *conn) {
	peer := c.peer
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.gen < r.gen {
		return // fenced: a newer term's connection holds the slot, or will
	}
	r.stateActive = false
	n := r.stateConns
	timeout := r.cfg.ReconnectWait
	time.AfterFunc(timeout, func() {
		r.mu.Lock()
		again := r.stateConns != n
		r.mu.Unlock()
		if !again {
			r.suspectFailed(fmt.Sprintf("state connection from %s lost, and the primary did not reconnect within %v", peer, timeout))
		}
	})
}

func (r *Replica) isFailed() bool {
	select {
	case <-r.failed:
		return true
	default:
		return false
	}
}

// suspectFailed declares the primary failed for reason, unless a
// coordinator decides that (ReplicaConfig.Coordinated).
func (r *Replica) suspectFailed(reason string) {
	if r.cfg.Coordinated {
		r.log.Warn("the primary may have failed; the coordinator decides", "reason", reason)
		return
	}
	r.declareFailed(reason)
}

func (r *Replica) declareFailed(reason string) {
	r.failOnce.Do(func() {
		r.failReason = reason
		close(r.failed)
	})
	r.closeShadow("the primary failed")
}

// closeShadow ends the shadow, if any: a takeover needs its memory and
// CPU, and the node's store stops changing.
func (r *Replica) closeShadow(reason string) {
	if r.active != nil {
		r.active.close(reason)
	}
}

// Failed is closed when the leader decides the primary has failed.
func (r *Replica) Failed() <-chan struct{} { return r.failed }

// Ended reports whether the primary stopped its VM on purpose (a graceful
// shutdown), in which case there is nothing to take over. Valid once Failed
// is closed.
func (r *Replica) Ended() bool {
	<-r.failed
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ended
}

// FailReason says why the primary was declared failed.
func (r *Replica) FailReason() string {
	<-r.failed
	return r.failReason
}

// serveRecovery answers the leader: what is staged and applied, resolve to
// an epoch, the page epochs, and page contents.
func (r *Replica) serveRecovery(c *conn) error {
	pages := uint64(len(r.store.epochs))
	for {
		h, err := c.readHeader()
		if err != nil {
			return c.errorf("recovery: %w", err)
		}
		switch h.Type {
		case MsgQuery:
			if err := c.send(MsgReport, 0, r.report().marshal()); err != nil {
				return c.errorf("recovery: %w", err)
			}
		case MsgResolve:
			r.resolve(h.Epoch)
			if err := r.sendEpochs(c); err != nil {
				return c.errorf("recovery: %w", err)
			}
		case MsgFetch:
			p, err := readPayload(c.r, h)
			if err != nil {
				return c.errorf("recovery: %w", err)
			}
			regions, err := parseRegions(p, pages)
			if err != nil {
				return c.errorf("recovery: %w", err)
			}
			if err := r.sendPages(c, regions); err != nil {
				return c.errorf("recovery: %w", err)
			}
		default:
			return c.errorf("recovery: %w: unexpected %v message", ErrProtocol, h.Type)
		}
	}
}

func (r *Replica) report() *Report {
	r.waitApplies()
	r.mu.Lock()
	defer r.mu.Unlock()
	rep := &Report{Applied: r.store.applied}
	for _, st := range r.stages {
		rep.Staged = append(rep.Staged, Staged{Link: st.link, Epoch: st.epoch, Complete: st.complete, Applied: st.appliedEpoch})
	}
	return rep
}

// resolve applies every complete staged epoch up to e and discards the rest.
func (r *Replica) resolve(e uint64) {
	r.waitApplies()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.persist(true, recResolve, u64s(e)); err != nil {
		r.log.Error("persisting the recovery's epoch", "epoch", e, "err", err)
	}
	r.resolveStages(e)
}

func (r *Replica) sendEpochs(c *conn) error {
	r.store.mu.RLock()
	b := make([]byte, 8*len(r.store.epochs))
	for i, e := range r.store.epochs {
		binary.LittleEndian.PutUint64(b[8*i:], e)
	}
	r.store.mu.RUnlock()
	return c.send(MsgEpochs, 0, b)
}

func (r *Replica) sendPages(c *conn, regions []Region) error {
	r.store.mu.RLock()
	defer r.store.mu.RUnlock()
	var n uint64
	for _, g := range regions {
		n += g.Pages * PageSize
	}
	bufs := net.Buffers{appendHeader(nil, Header{Type: MsgData, VMID: c.vmID, Generation: c.gen, Length: uint32(n)})}
	if n > 1<<31 {
		return fmt.Errorf("fetch of %d bytes is too large for one message", n)
	}
	for _, g := range regions {
		bufs = append(bufs, r.store.pages[g.First*PageSize:g.End()*PageSize])
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := bufs.WriteTo(c.c)
	return err
}
