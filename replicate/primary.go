package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// Mode is how an epoch's transfer relates to the VM's execution.
type Mode int

const (
	// ModeSync keeps the VM paused until the epoch is committed: nothing the
	// guest does after the epoch can be lost.
	ModeSync Mode = iota
	// ModeAsync copies the dirty pages to a local staging buffer, resumes the
	// VM and transfers in the background (Remus, qemu-mc): shorter pauses,
	// output held for longer.
	ModeAsync
)

func (m Mode) String() string {
	if m == ModeAsync {
		return "async"
	}
	return "sync"
}

// ParseMode parses "sync" or "async".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "sync":
		return ModeSync, nil
	case "async":
		return ModeAsync, nil
	}
	return 0, fmt.Errorf("replicate: unknown mode %q (want sync or async)", s)
}

// Source is the VM as the primary sees it. Package vmm implements it.
type Source interface {
	// Pause stops every vCPU between two instructions; Resume undoes it.
	Pause() error
	Resume()
	// HarvestDirty appends the pages written since the previous call, in
	// ascending order, to dst. The VM is paused.
	HarvestDirty(dst []uint64) ([]uint64, error)
	// Memory is guest RAM, one mapping; page i is Memory()[i*4096:].
	Memory() []byte
	// CaptureState returns the encoded vCPU and device state. The VM is
	// paused.
	CaptureState() ([]byte, error)
}

// DiskWriteSizer is implemented by a Source whose captured state carries
// the epoch's disk writes: DiskWriteBytes is how many bytes of the last
// CaptureState they were, for the epoch's trace.
type DiskWriteSizer interface {
	DiskWriteBytes() int
}

// PrimaryConfig configures the replicating side.
type PrimaryConfig struct {
	// Links are the replica addresses, one per link; several links may
	// name one replica.
	Links []string
	// Leader is the address of the leader's state endpoint.
	Leader string
	VMID   uint64
	// Generation is this primary's term (see the package documentation,
	// "Generations and fencing"): every message carries it, and a node
	// that has seen a newer one refuses it. Zero means 1, a VM's first
	// term; a takeover runs under Recovered.Generation.
	Generation uint64
	// StartEpoch is the epoch of the initial copy; the epochs go on from
	// it. Zero means 1. A takeover continues after the epoch it recovered
	// (Recovered.Epoch+1), so a page's epoch in a store never goes back;
	// its initial copy then sends all of memory, zero pages too, since a
	// store may hold an older generation's copy of a page now zero.
	StartEpoch uint64
	// Reprotect starts replication with what answers: Connect succeeds
	// whatever links or leader it reaches, the others are dialled again
	// in the background, and the guest runs with its output held until an
	// epoch commits. A takeover's new primary uses it: its VM must run
	// even if no backup is left.
	Reprotect bool
	// Term, when set, is this primary's term at a coordinator (package
	// coord): no epoch is committed, and no output released, unless
	// Term.Held() says the term certainly still holds; once it does not,
	// the primary stops with ErrTermLost, since another node may take
	// over once the term's lease has expired.
	Term Term
	// Holders are further nodes that receive every epoch's state, and
	// keep copies of the disks, as the leader does, so that each of them
	// can take over: losing the leader, even with the primary, loses
	// nothing (holders.go). Only with a Term: without a coordinator, two
	// nodes holding the state could both take over. RecordHolders, called
	// before an epoch commits whenever the set of holders that
	// acknowledged its state is not the one it recorded last (and with
	// nil at a graceful stop), records at the coordinator which nodes
	// hold the state of the newest committed epoch; a takeover by any
	// other is refused there. An error keeps the epoch from committing.
	Holders       []string
	RecordHolders func(holders []string) error
	Guest         string
	VCPUs         int
	// Epoch is how long the VM runs between two pauses.
	Epoch  time.Duration
	Policy Policy
	Mode   Mode
	// SGMax, when set, groups an epoch's dirty pages into at most this
	// many regions, whatever the transport (seed 003's fixed 32). Zero
	// groups by cost for the links in service (GroupByCost): a clean gap
	// is merged only where that is cheaper than another element.
	SGMax int
	// Reduce chooses how TCP links reduce their bytes (reduce.go); nil
	// means DefaultReduction.
	Reduce *Reduction
	// Record, when set, records every epoch's dirty pages and their
	// contents (recording.go), for TrafficReplay.
	Record *EpochRecorder
	// Speculate, between 0 and 1, sends pages ahead that far through each
	// interval while the VM runs (speculate.go): ft, sync mode, TCP links
	// and a Source that is a RunningHarvester. 0: off.
	Speculate float64
	// ActiveBackup lets the links to nodes that run a shadow of the VM
	// (ReplicaConfig.Shadow) send only the pages the shadow wrote
	// differently (active.go): ft, sync mode, TCP links, no Speculate.
	ActiveBackup ActiveBackup
	// Persist, when set, makes every epoch durable on this host too before
	// it commits (local.go). Not with Speculate.
	Persist LocalPersister
	// AckTimeout is what an epoch may take on a link beyond the time the
	// link's bytes need at its rate (see MinLinkRate), from the first send
	// to the acknowledgement; a link (or leader) that has not taken its
	// bytes and acknowledged by then has failed.
	AckTimeout time.Duration
	// MinLinkRate is the slowest a link may move bytes, in bytes per
	// second, before it counts as failed: a link's deadlines assume a
	// quarter of the rate it was measured at on earlier acknowledgements,
	// never less than this. Zero means 1 MB/s.
	MinLinkRate float64
	Heartbeat   time.Duration
	// Disks are the guest's disks: before the first epoch the leader's
	// copies are brought to their content (diskrep.go). Their writes then
	// travel in each epoch's state, which the Source captures.
	Disks []DiskImage
	Trace *TraceWriter
	Log   *slog.Logger
	// Summary, when set, receives a one-line summary about every second.
	Summary func(line string)
	// Observe, when set, receives every epoch's record once the epoch
	// is over, on the replication loop's goroutine: it must return at
	// once and must not keep rec, which is reused.
	Observe func(rec *EpochTrace)
	// FaultChunk and FaultProgress inject faults: epoch data is written in
	// chunks of FaultChunk bytes and FaultProgress is called after each
	// with the epoch and the chunk's size.
	FaultChunk    int
	FaultProgress func(epoch uint64, n int)
	// StagingDelay, when set, is called after the async staging copy of n
	// bytes: tandem bench emulates slow local memory with it.
	StagingDelay func(n int)
	// Auth authenticates every connection to the replicas and the leader
	// (and encrypts it unless its mode is plaintext). Required.
	Auth *auth.Credentials
}

// errNoCredentials is the error of a primary or replica configured
// without credentials: replication never falls back to unauthenticated
// connections.
var errNoCredentials = errors.New("replicate: no credentials: every replication connection is authenticated (a key from tandem keygen, --auth-key)")

// Term is what the primary needs of a coordinator's term (coord.Term).
type Term interface {
	Generation() uint64
	Held() bool
}

// Errors that end a primary's run.
var (
	// ErrTermLost is a primary whose coordinator term may have ended: it
	// is fenced as much as if a node had said so.
	ErrTermLost   = fmt.Errorf("%w: this primary's term at the coordinator is lost (its lease may have expired)", ErrFenced)
	ErrLeaderLost = errors.New("replicate: lost the leader: nothing can commit")
	// ErrLeaderRefused is a leader refusing what the primary sent (a
	// configuration the two disagree on): unlike a lost leader, waiting
	// does not mend it, so replication stops.
	ErrLeaderRefused = errors.New("replicate: the leader refused")
	// ErrRefused is a peer's refusal of a hello or of what followed it
	// (the message says why).
	ErrRefused = errors.New("refused")
	// ErrCannotProtect ends a Reprotect primary whose leader refused it
	// (a node without the disk copies the guest needs, say): waiting does
	// not mend that, and holding the output for ever would make the VM
	// that was just taken over unavailable. The caller lets the VM run
	// unprotected.
	ErrCannotProtect = errors.New("replicate: the VM cannot be protected again")
	ErrNoLinks       = errors.New("replicate: every link has failed")
)

type linkState struct {
	Link
	index int
	alive bool
	// rate is the link's measured rate in bytes per second (an EWMA over
	// epochs large enough to measure; 0: not measured yet).
	rate float64
	// joining marks an ft link that came back and does not hold every
	// page yet; cursor is the first page it has not been sent since
	// (rejoin.go).
	joining bool
	cursor  uint64
	// acked is the newest epoch the link acknowledged and commitSent the
	// newest commit it carried, on this connection or, as its welcome
	// said (linkResume), on earlier ones: a map's commit must lie between
	// the two (the replica's binding rules), see mapCommit.
	acked, commitSent uint64
}

// mapCommit is the commit a map on the link carries: the newest committed
// epoch if the link acknowledged it, else the newest commit the link
// already carried (a link that came back, or a new primary of the same
// term, must not make a replica go back nor apply what it never acked).
func (l *linkState) mapCommit(committed uint64) uint64 {
	if committed <= l.acked && committed >= l.commitSent {
		l.commitSent = committed
	}
	return l.commitSent
}

// newLinkState is a link taken into service, where its welcome said the
// replica stands.
func newLinkState(l Link, index int) *linkState {
	ls := &linkState{Link: l, index: index, alive: true}
	if r, ok := l.(interface{ resume() linkResume }); ok {
		ls.acked, ls.commitSent = r.resume().acked, r.resume().committed
	}
	return ls
}

// counts reports whether the link's acknowledgements decide its epochs.
func (l *linkState) counts() bool { return l.alive && !l.joining }

// Primary replicates a running VM, epoch by epoch.
type Primary struct {
	cfg      PrimaryConfig
	src      Source
	gate     Gate
	log      *slog.Logger
	links    []*linkState
	leader   *stateLink
	acks     chan Ack
	assigner *Assigner

	epoch     uint64        // last epoch started
	lastEpoch *EpochTrace   // the newest epoch's record, for Status
	committed atomic.Uint64 // newest committed epoch; read by other goroutines
	needFull  bool          // the next epoch sends all of memory (a fast-mode link was lost)
	// carry holds the pages of epochs that did not commit: the next
	// epoch sends them again with its own dirty pages.
	carry []uint64
	// stateHello is the hello of the state connections. holders are the
	// nodes that receive the states, the leader first (holders.go);
	// recorded is the set of them last recorded at the coordinator, and
	// holderBack brings those dialled again to the run loop.
	stateHello Hello
	holders    []*holder
	recorded   []string
	holderBack chan holderDialled
	// adds brings AddLink's links to the run loop (rejoin.go).
	adds    chan addRequest
	status  statusBoard
	summary Summary
	lastSum time.Time

	pages   []uint64
	regions []Region
	perLink [][]Region
	// sgs holds each link's slices of the epoch in transfer, kept
	// across epochs.
	sgs     [][][]byte
	staging []byte
	// red reduces the links' traffic (nil: raw data); sent is what each
	// link that completed the epoch carried, which its cache learns once
	// the epoch commits.
	red  *reducer
	sent linkSends
	// activePay decides whether active backup pays (ActiveBackupAuto).
	activePay payWindow
	// recordFailed: the epoch recording failed (said once).
	recordFailed bool
	specState    speculation

	finish     chan struct{} // closed by Finish: end replication gracefully
	finishOnce sync.Once

	// hello is the hello of the links, less role and index. bg lives as
	// long as the primary: the redials of failed links run in it and hand
	// what they dialled over on rejoined (rejoin.go).
	hello    Hello
	bg       context.Context
	stopBg   context.CancelFunc
	rejoined chan rejoined
}

// NewPrimary prepares a primary; Connect and Run start it. gate holds the
// guest's output until its epoch commits: an [OutputGate], or [Gates]
// when the guest has several outputs (consoles, network interfaces).
func NewPrimary(cfg PrimaryConfig, src Source, gate Gate) (*Primary, error) {
	switch {
	case len(cfg.Links) == 0:
		return nil, errors.New("replicate: no replica links")
	case len(cfg.Links) > MaxLinks:
		return nil, fmt.Errorf("replicate: %d links, at most %d", len(cfg.Links), MaxLinks)
	case cfg.Leader == "":
		return nil, errors.New("replicate: no leader")
	case cfg.Epoch <= 0:
		return nil, fmt.Errorf("replicate: epoch interval %v must be positive", cfg.Epoch)
	case cfg.VMID == 0:
		return nil, errors.New("replicate: VM id 0 is reserved")
	case cfg.Auth == nil:
		return nil, errNoCredentials
	case len(cfg.Holders) > 0 && cfg.Term == nil:
		return nil, errors.New("replicate: other state holders need a coordinator's term: without one, two of them could take over")
	}
	if cfg.Speculate < 0 || cfg.Speculate >= 1 {
		return nil, fmt.Errorf("replicate: speculate %v: want 0 (off) or a fraction of the interval below 1", cfg.Speculate)
	}
	if cfg.Speculate > 0 && cfg.Policy != PolicyFT {
		return nil, errSpeculateFast
	}
	if cfg.Persist != nil && cfg.Speculate > 0 {
		return nil, errPersistSpeculate
	}
	if cfg.ActiveBackup < ActiveBackupOff || cfg.ActiveBackup > ActiveBackupOn {
		return nil, fmt.Errorf("replicate: active backup %v: want off, auto or on", cfg.ActiveBackup)
	}
	if cfg.ActiveBackup != ActiveBackupOff && (cfg.Policy != PolicyFT || cfg.Mode != ModeSync || cfg.Speculate > 0) {
		return nil, errActiveBackup
	}
	if cfg.SGMax < 0 {
		return nil, fmt.Errorf("replicate: sg-max %d: want 0 (by cost) or more", cfg.SGMax)
	}
	if cfg.Reduce == nil {
		cfg.Reduce = &DefaultReduction
	}
	if cfg.Reduce.Similar && cfg.Reduce.CacheBytes < PageSize {
		return nil, errors.New("replicate: similar pages need a page cache (Reduction.CacheBytes)")
	}
	var red *reducer
	if cfg.Reduce.any() || cfg.ActiveBackup != ActiveBackupOff {
		red = newReducer(*cfg.Reduce) // active backup sends kept records
	}
	if cfg.Generation == 0 && cfg.Term != nil {
		cfg.Generation = cfg.Term.Generation()
	}
	if cfg.Generation == 0 {
		cfg.Generation = 1
	}
	if cfg.StartEpoch == 0 {
		cfg.StartEpoch = 1
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 2 * time.Second
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 100 * time.Millisecond
	}
	if cfg.MinLinkRate <= 0 {
		cfg.MinLinkRate = defaultMinLinkRate
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	bg, stopBg := context.WithCancel(context.Background())
	holders := newHolders(&cfg)
	return &Primary{
		cfg: cfg, src: src, gate: gate, log: cfg.Log, finish: make(chan struct{}),
		holders: holders, holderBack: make(chan holderDialled, MaxLinks+1), adds: make(chan addRequest),
		acks:     make(chan Ack, 4*(MaxLinks+1)),
		assigner: NewAssigner(cfg.Policy, len(cfg.Links)),
		red:      red,
		bg:       bg, stopBg: stopBg, rejoined: make(chan rejoined, MaxLinks),
	}, nil
}

// Connect opens every link and the leader connection. Any replica that
// cannot be reached is an error: replication starts complete or not at all.
func (p *Primary) Connect(ctx context.Context) error {
	mem := uint64(len(p.src.Memory()))
	hello := Hello{Links: uint32(len(p.cfg.Links)), MemBytes: mem, VCPUs: uint32(p.cfg.VCPUs), Policy: p.cfg.Policy, Guest: p.cfg.Guest}
	p.hello = hello
	p.links = make([]*linkState, len(p.cfg.Links))
	errs := make([]error, len(p.cfg.Links)+len(p.holders))
	var wg sync.WaitGroup
	for i, addr := range p.cfg.Links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := p.dialTransport(ctx, addr, i, p.linkHello(i)) // TCP, or RDMA for rdma:// (rdma.go)
			if err != nil {
				errs[i] = err
				return
			}
			p.links[i] = newLinkState(l, i)
		}()
	}
	p.stateHello = hello
	p.stateHello.Role = RoleState
	for i, h := range p.holders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.link, errs[len(p.cfg.Links)+i] = dialHolder(ctx, p.stateDialTo(h.addr), p.cfg.Disks)
		}()
	}
	wg.Wait()
	if p.cfg.Reprotect {
		for i, err := range errs[:len(p.cfg.Links)] {
			if err != nil {
				p.links[i] = &linkState{index: i, Link: deadLink{p.cfg.Links[i]}}
				p.log.Warn("replica link unreachable; dialling it again in the background", "addr", p.cfg.Links[i], "err", err)
				p.redialLink(i)
			}
		}
		var refused []error
		for i, h := range p.holders {
			switch err := errs[len(p.cfg.Links)+i]; {
			case errors.Is(err, ErrRefused):
				refused = append(refused, fmt.Errorf("%s: %w", h.addr, err))
			case err != nil:
				p.log.Warn("state holder unreachable; output is held until a holder answers", "holder", h.addr, "err", err)
				p.redialHolder(h)
			}
		}
		if len(refused) == len(p.holders) {
			p.Close()
			return fmt.Errorf("%w: every node that would hold its state refused: %w", ErrCannotProtect, errors.Join(refused...))
		}
		for _, err := range refused {
			p.log.Warn("a node refused to hold the VM state; going on without it", "err", err)
		}
		p.publishStatus()
		return nil
	}
	if err := errors.Join(errs...); err != nil {
		p.Close()
		return err
	}
	p.publishStatus()
	return nil
}

// deadLink stands for a link that never connected (Reprotect).
type deadLink struct{ addr string }

func (d deadLink) String() string          { return "link to " + d.addr + " (not connected)" }
func (deadLink) WriteMap(*MapRecord) error { return ErrNoLinks }
func (deadLink) WriteSG([][]byte) error    { return ErrNoLinks }
func (deadLink) WriteImm(uint64) error     { return ErrNoLinks }
func (deadLink) WriteCommit(uint64) error  { return ErrNoLinks }
func (deadLink) Close() error              { return nil }

// linkHello is the hello of link i.
func (p *Primary) linkHello(i int) Hello {
	h := p.hello
	h.Role, h.Link, h.Links = RoleLink, uint32(i), uint32(len(p.cfg.Links)) // links may be added (AddLink)
	return h
}

// Close closes every connection.
func (p *Primary) Close() {
	p.stopBg()
	for {
		select {
		case r := <-p.rejoined:
			r.link.Close()
			continue
		default:
		}
		break
	}
	for {
		select {
		case d := <-p.holderBack:
			if d.c != nil {
				d.c.c.Close()
			}
			continue
		default:
		}
		break
	}
	for _, l := range p.links {
		if l != nil {
			l.Close()
		}
	}
	for _, h := range p.holders {
		if h.link != nil {
			h.link.Close()
		}
	}
	if p.red != nil {
		p.red.close()
	}
}

// Committed is the newest committed epoch.
func (p *Primary) Committed() uint64 { return p.committed.Load() }

// Run sends the initial copy of memory, then replicates one epoch per
// interval until ctx is done or replication can no longer commit. The VM
// must be running; Run leaves it running unless it returns an error, in
// which case the VM is left paused so that no output escapes.
func (p *Primary) Run(ctx context.Context) error {
	defer p.Close()
	if err := p.initialSync(ctx); err != nil {
		return p.stopped(ctx, err)
	}
	// The VM runs a whole interval between two pauses: timed from the end
	// of the previous epoch, not on a fixed tick, so an epoch whose pause or
	// transfer outlasts the interval cannot starve the guest.
	t := time.NewTimer(p.cfg.Epoch)
	defer t.Stop()
	// ahead fires Speculate of the way through each interval.
	ahead := time.NewTimer(p.aheadIn())
	defer ahead.Stop()
	p.lastSum = time.Now()
	p.publishStatus()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.finish:
			return p.goodbye()
		case <-ahead.C:
			p.speculate()
			continue
		case <-t.C:
		}
		p.installAdded()
		p.installRejoined()
		if err := p.installHolders(); err != nil {
			return p.stopped(ctx, err)
		}
		if p.termLost() {
			return p.stopped(ctx, ErrTermLost)
		}
		if len(p.inService()) == 0 {
			t.Reset(firstLeaderBackoff) // nothing can commit: wait for a redial
			continue
		}
		if !p.anyLinkAlive() {
			t.Reset(firstLinkBackoff) // nothing to send to: wait for a redial
			continue
		}
		p.rebuildIfNoneCounts()
		if err := p.runEpoch(ctx); err != nil {
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return nil // cancelled in the middle of an epoch: not a failure
			}
			if p.bg.Err() != nil {
				// Closed under it: whatever failed, nothing is redialled.
				return fmt.Errorf("replicate: the primary was closed: %w", err)
			}
			if errors.Is(err, ErrLeaderLost) && !errors.Is(err, ErrFenced) {
				p.publishStatus() // holderLost said what happened
				t.Reset(firstLeaderBackoff)
				continue
			}
			if errors.Is(err, ErrNoLinks) {
				p.log.Error("every replica link has failed: the VM runs on with its output held while they are redialled", "committed", p.committed.Load())
				p.publishStatus()
				t.Reset(firstLinkBackoff)
				continue
			}
			return p.stopped(ctx, err)
		}
		p.publishStatus()
		t.Reset(p.cfg.Epoch)
		ahead.Reset(p.aheadIn())
	}
}

// aheadIn is when, from the end of an epoch, the next one's pages are sent
// ahead; with speculation off, never in practice.
func (p *Primary) aheadIn() time.Duration {
	if p.cfg.Speculate <= 0 {
		return 24 * time.Hour
	}
	return time.Duration(float64(p.cfg.Epoch) * p.cfg.Speculate)
}

// termLost reports whether the primary has a coordinator term that may
// have ended (PrimaryConfig.Term).
func (p *Primary) termLost() bool { return p.cfg.Term != nil && !p.cfg.Term.Held() }

// anyLinkAlive reports whether any link is in service, counted or not.
func (p *Primary) anyLinkAlive() bool {
	for _, l := range p.links {
		if l.alive {
			return true
		}
	}
	return false
}

// rebuildIfNoneCounts handles links that came back after every counted
// link was lost: no copy of memory is whole any more, so the next epoch
// sends all of it to the links in service, which then all count.
func (p *Primary) rebuildIfNoneCounts() {
	for _, l := range p.links {
		if l.counts() {
			return
		}
	}
	for _, l := range p.links {
		l.joining = false
	}
	p.needFull = true
	p.log.Warn("replica links back after all were lost: the next epoch sends them all of memory")
}

// Leader loss. Nothing can commit without a node holding the state, so
// the guest's output stays held (its writers wait once the gates are
// full), but the VM goes on running: stopping it would turn the loss of a
// backup into an outage. No split brain can follow: a leader that takes
// over fences this primary (its recovery runs as the next generation), and
// one that comes back empty has no state to take over with. The primary
// dials the holders again in the background (holders.go); once one
// answers, its disk copies are brought to the disks' content and the
// epochs, and the output, go on.

// stopped handles an epoch that could not run. If the VM itself has ended
// (it cannot be paused), whether that was on purpose is the caller's call:
// Finish says goodbye, a cancelled ctx leaves the leader to take over.
func (p *Primary) stopped(ctx context.Context, err error) error {
	if !errors.Is(err, errSourcePause) {
		return err
	}
	select {
	case <-p.finish:
		return p.goodbye()
	case <-ctx.Done():
		return err
	}
}

// errSourcePause marks a Pause that failed: the VM is no longer running.
var errSourcePause = errors.New("replicate: the VM cannot be paused")

// Finish ends replication on purpose: Run tells the leader the VM has
// stopped (so it does not take over), releases the output still held, and
// returns. Call it when the VM ended normally; a primary that dies instead
// never says goodbye, and the leader takes over.
func (p *Primary) Finish() { p.finishOnce.Do(func() { close(p.finish) }) }

// goodbye waits for the leader to acknowledge the end; only then can the
// held output go out, since no takeover can contradict it any more.
func (p *Primary) goodbye() error {
	if p.cfg.RecordHolders != nil {
		// No node may take over from now on, whether or not its goodbye
		// arrives.
		if err := p.cfg.RecordHolders(nil); err != nil {
			return fmt.Errorf("%w: goodbye: recording the end at the coordinator: %v", ErrLeaderLost, err)
		}
	}
	holders := p.inService()
	if len(holders) == 0 && p.cfg.RecordHolders == nil {
		return fmt.Errorf("%w: the VM ended while the leader was unreachable; its last output stays held", ErrLeaderLost)
	}
	waiting := map[*stateLink]string{}
	for _, h := range holders {
		if err := h.link.sendBye(); err != nil {
			if p.cfg.RecordHolders == nil {
				return fmt.Errorf("%w: goodbye: %v", ErrLeaderLost, err)
			}
			p.log.Warn("goodbye to a state holder", "holder", h.addr, "err", err)
			continue
		}
		waiting[h.link] = h.addr
	}
	timeout := time.After(p.cfg.AckTimeout)
	for len(waiting) > 0 {
		select {
		case a := <-p.acks:
			s, _ := a.from.(*stateLink)
			addr, ok := waiting[s]
			if a.Link >= 0 || !ok {
				continue
			}
			delete(waiting, s)
			if a.Err == nil {
				continue
			}
			if p.cfg.RecordHolders == nil {
				return fmt.Errorf("%w: goodbye: %v", ErrLeaderLost, a.Err)
			}
			p.log.Warn("goodbye to a state holder", "holder", addr, "err", a.Err)
		case <-timeout:
			if p.cfg.RecordHolders == nil {
				return fmt.Errorf("%w: no answer to goodbye", ErrLeaderLost)
			}
			p.log.Warn("no answer to goodbye from some state holders; the coordinator has the end", "holders", slices.Collect(maps.Values(waiting)))
			waiting = nil
		}
	}
	// The VM has stopped: what it wrote since the last epoch is final.
	p.gate.Seal(p.epoch + 1)
	return p.gate.Release(p.epoch + 1)
}

// initialSync sends every non-zero page while the VM runs, as epoch 1.
// Pages the guest writes meanwhile are dirty again and go out in epoch 2;
// pages never sent are zero on the replicas too.
func (p *Primary) initialSync(ctx context.Context) error {
	if err := p.pauseSource(); err != nil {
		return err
	}
	var err error
	p.pages, err = p.src.HarvestDirty(p.pages[:0]) // start tracking from here
	p.resumeSource()
	if err != nil {
		return err
	}
	start := time.Now()
	mem := p.src.Memory()
	e := p.cfg.StartEpoch
	p.epoch = e
	if !p.anyLinkAlive() {
		// Reprotect with no link yet: the first epoch with one sends it
		// all of memory instead.
		p.needFull = true
		p.prepareStaging(len(mem))
		return nil
	}
	if e == 1 {
		// A large guest with fragmented memory can have more runs than a
		// map record may carry (the replica refuses maps over
		// maxMapRegions): merge the smallest gaps, whose zero pages then
		// travel along.
		p.regions = MergeRegions(nonZeroRuns(p.regions[:0], mem), maxInitialRegions)
	} else {
		p.regions = append(p.regions[:0], Region{First: 0, Pages: uint64(len(mem)) / PageSize})
	}
	rec := &EpochTrace{Epoch: e, Time: start, Mode: "initial", Policy: p.cfg.Policy.String()}
	ok, err := p.transfer(ctx, e, p.regions, nil, func(r Region) []byte { return mem[r.First*PageSize : r.End()*PageSize] }, nil, rec)
	if p.cfg.Reprotect && (errors.Is(err, ErrNoLinks) || (err == nil && !ok)) {
		p.needFull, ok, err = true, true, nil // the next epoch tries again
	}
	if err != nil {
		return err
	}
	if !ok {
		return errors.New("replicate: initial copy of memory failed")
	}
	if p.needFull {
		p.prepareStaging(len(mem))
		return nil
	}
	if p.termLost() {
		return ErrTermLost
	}
	p.commit(e)
	p.prepareStaging(len(mem)) // async: see staging.go
	p.log.Info("initial copy sent", "pages", Transferred(p.regions), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// maxInitialRegions bounds the regions of the initial copy, well inside
// the map limit whatever way assignment splits them.
const maxInitialRegions = maxMapRegions / 4

// nonZeroRuns lists the runs of pages holding a non-zero byte.
func nonZeroRuns(dst []Region, mem []byte) []Region {
	for pg := uint64(0); pg < uint64(len(mem))/PageSize; pg++ {
		if isZero(mem[pg*PageSize : (pg+1)*PageSize]) {
			continue
		}
		if n := len(dst); n > 0 && dst[n-1].End() == pg {
			dst[n-1].Pages++
		} else {
			dst = append(dst, Region{First: pg, Pages: 1})
		}
	}
	return dst
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// defaultMinLinkRate is PrimaryConfig.MinLinkRate's default: a floor well
// below any link Tandem should run on, so that a slow link is never taken
// for a failed one.
const defaultMinLinkRate = 1e6 // bytes per second

// rateMargin is how much slower than its measured rate a link may move an
// epoch before its deadline passes: rates vary with load, and a link that
// slows down is not a link that failed.
const rateMargin = 4

// minRateSample is the smallest transfer that updates a link's measured
// rate: smaller ones measure round trips, not bandwidth.
const minRateSample = 1 << 20

// allowance is how long bytes may take on a link measured at rate (0: not
// measured) from the first send to the acknowledgement: AckTimeout plus
// the bytes at a quarter of the measured rate, never at less than floor.
func allowance(ackTimeout time.Duration, bytes uint64, rate, floor float64) time.Duration {
	r := max(rate/rateMargin, floor)
	return ackTimeout + time.Duration(float64(bytes)/r*float64(time.Second))
}

// observeRate updates a link's measured rate with one acknowledged
// transfer of bytes that took d.
func observeRate(old float64, bytes uint64, d time.Duration) float64 {
	if bytes < minRateSample || d <= 0 {
		return old
	}
	r := float64(bytes) / d.Seconds()
	if old == 0 {
		return r
	}
	return 0.7*old + 0.3*r
}

// pauseSource pauses the VM with the output gate open to blocked writers
// (see OutputGate.BeginPause), so that no vCPU waits on the gate while the
// pause waits on the vCPU.
func (p *Primary) pauseSource() error {
	p.gate.BeginPause()
	if err := p.src.Pause(); err != nil {
		p.gate.EndPause()
		return fmt.Errorf("%w: %v", errSourcePause, err)
	}
	return nil
}

// resumeSource resumes the VM and lets the gate push back on writers again.
func (p *Primary) resumeSource() {
	p.src.Resume()
	p.gate.EndPause()
}

// runEpoch is one epoch: pause, harvest, capture, group, assign, transfer,
// wait, commit, resume (sync), or resume before the transfer (async).
func (p *Primary) runEpoch(ctx context.Context) error {
	e := p.epoch + 1
	p.epoch = e
	rec := &EpochTrace{Epoch: e, Time: time.Now(), Mode: p.cfg.Mode.String(), Policy: p.cfg.Policy.String()}
	t0 := time.Now()
	if err := p.pauseSource(); err != nil {
		return err
	}
	paused := true
	resume := func() {
		if paused {
			p.resumeSource()
			paused = false
		}
	}
	mem := p.src.Memory()
	var err error
	p.pages, err = p.src.HarvestDirty(p.pages[:0])
	if err != nil {
		resume()
		return err
	}
	if len(p.carry) > 0 {
		p.pages = append(p.pages, p.carry...)
		slices.Sort(p.pages)
		p.pages = slices.Compact(p.pages)
		p.carry = p.carry[:0]
	}
	p.pages = p.takeSpeculated(e, p.pages, rec)
	p.recordEpoch(e, mem)
	full := p.needFull
	rec.DirtyPages = len(p.pages)
	state, err := p.src.CaptureState()
	if err != nil {
		return err // leave the VM paused: no output may escape unreplicated
	}
	rec.StateBytes = len(state)
	if d, ok := p.src.(DiskWriteSizer); ok {
		rec.DiskBytes = d.DiskWriteBytes()
	}
	p.gate.Seal(e)
	rec.HeldBytes = Held(p.gate)
	local, err := p.persistLocally(e, mem, state)
	if err != nil {
		return err // paused, the output held
	}
	defer local.wait(e) // never two epochs at the persister at once
	t1 := time.Now()
	rec.Pause.Harvest = t1.Sub(t0)

	if full {
		p.regions = append(p.regions[:0], Region{First: 0, Pages: uint64(len(mem)) / PageSize})
	} else {
		p.regions = p.group(p.regions[:0], p.pages)
	}
	rec.Regions = len(p.regions)
	rec.TransferredPages = Transferred(p.regions)
	// Joining links (ft) also get the next slice of memory (rejoin.go).
	total := uint64(len(mem)) / PageSize
	var catchUp map[int]Region
	staged := p.regions
	for _, l := range p.links {
		if l.alive && l.joining {
			if catchUp == nil {
				catchUp = map[int]Region{}
			}
			catchUp[l.index] = p.catchUpSlice(l, total)
			staged = unionRegions(staged, []Region{catchUp[l.index]})
		}
	}
	src := func(r Region) []byte { return mem[r.First*PageSize : r.End()*PageSize] }
	if p.cfg.Mode == ModeAsync {
		src = p.stage(mem, staged)
		resume()
	}
	t2 := time.Now()
	rec.Pause.Group = t2.Sub(t1)
	ok, err := p.transfer(ctx, e, p.regions, catchUp, src, state, rec)
	if lerr := local.wait(e); lerr != nil && err == nil {
		err = lerr // nothing commits that is not durable here
	}
	if local != nil {
		rec.Durable = local.took
	}
	if err == nil && ok && state != nil {
		if rerr := p.recordHolders(e); rerr != nil {
			// Nothing commits until the coordinator knows who holds the
			// state: the term may be ending, which the next check or
			// epoch sees.
			p.log.Warn("epoch not committed", "epoch", e, "err", rerr)
			ok = false
		}
	}
	if err == nil && ok && p.termLost() {
		ok, err = false, ErrTermLost // checked last: nothing is released after it
	}
	if !ok {
		p.carry = append(p.carry, p.pages...) // sent again next epoch
	}
	if err != nil {
		p.specDone(e, p.pages, false, rec)
		if (errors.Is(err, ErrLeaderLost) && !errors.Is(err, ErrFenced)) || errors.Is(err, ErrNoLinks) {
			resume() // the output stays held in the gates
		}
		return err
	}
	if ok {
		rec.Commit = time.Since(t0)
		p.commit(e)
		p.learnSent(e, src, rec)
		p.caughtUp(catchUp, total)
		if full {
			p.needFull = false
			p.log.Info("links resynchronised with a full copy of memory", "epoch", e)
		}
	} else {
		rec.Failed = "not every link completed the epoch"
	}
	p.specDone(e, p.pages, ok, rec)
	resume()
	rec.Pause.Total = time.Since(t0)
	if p.cfg.Mode == ModeAsync {
		rec.Pause.Total = t2.Sub(t0)
	}
	p.record(rec)
	return nil
}

// stage copies regions (the epoch's, and the slices of joining links) into
// the staging buffer (async mode) and returns where each region's pages
// are found there.
func (p *Primary) stage(mem []byte, regions []Region) func(Region) []byte {
	n := Transferred(regions) * PageSize
	if uint64(cap(p.staging)) < n {
		p.staging = make([]byte, n)
	}
	p.staging = p.staging[:n]
	offs := make([]uint64, len(regions))
	var off uint64
	for i, r := range regions {
		offs[i] = off
		off += uint64(copy(p.staging[off:], mem[r.First*PageSize:r.End()*PageSize]))
	}
	if p.cfg.StagingDelay != nil {
		p.cfg.StagingDelay(int(n))
	}
	return func(x Region) []byte {
		i := sort.Search(len(regions), func(i int) bool { return regions[i].End() > x.First }) // region holding x
		o := offs[i] + (x.First-regions[i].First)*PageSize
		return p.staging[o : o+x.Pages*PageSize]
	}
}

// transfer sends epoch e's regions over the live links and the state (if
// any) to the leader, and waits for the acknowledgements. It reports whether
// the epoch may commit; an error means replication cannot go on.
//
// catchUp holds the slice of memory each joining link gets besides its
// pages (rejoin.go); only counted links decide whether the epoch commits,
// and only they are named in its state.
func (p *Primary) transfer(ctx context.Context, e uint64, regions []Region, catchUp map[int]Region, src func(Region) []byte, state []byte, rec *EpochTrace) (bool, error) {
	start := time.Now()
	var alive, counted []uint32
	for _, l := range p.links {
		if l.alive {
			alive = append(alive, uint32(l.index))
		}
		if l.counts() {
			counted = append(counted, uint32(l.index))
		}
	}
	if len(counted) == 0 {
		return false, ErrNoLinks
	}
	// The assigner spreads work over the live links only; it starts a new
	// rotation whenever the set of live links changes.
	if p.assigner.Links() != len(alive) {
		p.assigner = NewAssigner(p.cfg.Policy, len(alive))
	}
	p.perLink = p.assigner.Assign(p.perLink, regions)
	rec.LinkBytes = make([]uint64, len(p.links))
	p.sgs = slices.Grow(p.sgs[:0], len(alive))[:len(alive)]
	sgs := p.sgs
	exts := make([][]Region, len(alive))
	for slot, li := range alive {
		l := p.links[li]
		ext := p.perLink[slot]
		if s, ok := catchUp[l.index]; ok {
			ext = unionRegions(ext, []Region{s})
		}
		exts[slot] = ext
		sgs[slot] = sgs[slot][:0]
		for _, x := range ext {
			b := src(x)
			sgs[slot] = append(sgs[slot], b)
			rec.LinkBytes[l.index] += uint64(len(b))
		}
	}
	// Every deadline is set before anything is sent: a link's sends and
	// its acknowledgement must be done by its deadline (its bytes at its
	// rate, see allowance), the state and the leader's acknowledgement by
	// the leader's, so a peer that stops reading fails instead of stalling
	// the VM.
	deadlines := map[int]time.Time{}
	for _, li := range alive {
		l := p.links[li]
		deadlines[l.index] = start.Add(allowance(p.cfg.AckTimeout, rec.LinkBytes[l.index], l.rate, p.cfg.MinLinkRate))
	}
	var within time.Duration // the latest deadline: the holders' progress bound
	for _, d := range deadlines {
		within = max(within, d.Sub(start))
	}
	// Holders wait under negative keys: holder i under -1-i.
	var holders []*holder
	var stateBy time.Time
	if state != nil {
		holders = p.inService()
		if len(holders) == 0 {
			return false, fmt.Errorf("%w: no node holding the state is in service", ErrLeaderLost)
		}
		stateBy = start.Add(allowance(p.cfg.AckTimeout, uint64(len(state)), 0, p.cfg.MinLinkRate))
		for i := range p.holders {
			deadlines[-1-i] = stateBy
		}
		within = max(within, stateBy.Sub(start))
	}
	var wg sync.WaitGroup
	sendErrs := make([]error, len(p.links))
	// Links to nodes running a shadow send hashes first (active.go).
	var actives []*tcpLink
	var perActive []linkActive
	var ae activeEpoch
	if p.cfg.ActiveBackup != ActiveBackupOff {
		actives, perActive = make([]*tcpLink, len(alive)), make([]linkActive, len(p.links))
		for slot, li := range alive {
			if hashesFit(exts[slot]) {
				actives[slot] = p.activeLinkOf(p.links[li], e)
			}
		}
	}
	encoded, err := p.prepareEncoding(alive, exts, actives)
	if err != nil {
		return false, err
	}
	for slot, li := range alive {
		l := p.links[li]
		ext := exts[slot]
		sg := sgs[slot]
		if d, ok := l.Link.(sendDeadliner); ok {
			d.SetSendDeadline(deadlines[l.index])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc := encoded[slot]
			m := &MapRecord{Epoch: e, Committed: l.mapCommit(p.committed.Load()), Regions: ext}
			var err error
			if tl := activeAt(actives, slot); tl != nil {
				perActive[l.index].used = true
				err = p.sendActive(l, tl, m, ext, src, enc, &ae, deadlines[l.index], &perActive[l.index])
			} else {
				if enc != nil {
					enc.encode(p.red, ext, src)
				}
				if p.sentAhead(e, l.index) {
					err = l.Link.(partLink).WriteMapMore(m)
				} else {
					err = l.WriteMap(m)
				}
				if err == nil && enc != nil {
					err = enc.write()
				} else if err == nil {
					err = l.WriteSG(sg)
				}
			}
			if err == nil {
				err = l.WriteImm(e)
			}
			sendErrs[l.index] = err
		}()
	}
	st := &StateRecord{Epoch: e, Within: within, Interval: p.cfg.Epoch, Links: counted, Blob: state}
	for _, h := range holders {
		if err := h.link.sendState(st, stateBy); err != nil {
			p.holderLost(h, err)
		}
	}
	wg.Wait()
	rec.Pause.Transfer = time.Since(start)
	p.finishEncoding(alive, encoded, rec)
	p.finishActive(&ae, perActive, rec, e)
	p.sent = p.sent[:0]
	for slot, li := range alive {
		p.sent = append(p.sent, linkSend{link: int(li), ext: exts[slot]})
	}
	for i, err := range sendErrs {
		if err != nil {
			p.linkFailed(i, err)
		}
	}

	// Wait for every live link and, with state, the leader.
	ackStart := time.Now()
	waiting := map[int]bool{}
	for _, l := range p.links {
		if l.alive {
			waiting[l.index] = true
		}
	}
	for _, h := range holders {
		if h.link != nil {
			waiting[-1-slices.Index(p.holders, h)] = true
		}
	}
	handle := func(a Ack) error {
		if !p.current(a) {
			return nil
		}
		if a.Link < 0 {
			return p.holderAck(a, e, waiting)
		}
		switch {
		case a.Err != nil && errors.Is(a.Err, ErrFenced):
			// Another term has begun: stop, neither degrade nor wait.
			return a.Err
		case a.Err != nil:
			p.linkFailed(a.Link, a.Err)
			delete(waiting, a.Link)
		case a.Epoch == e:
			if a.Link >= 0 && waiting[a.Link] {
				l := p.links[a.Link]
				l.acked = max(l.acked, e)
				l.rate = observeRate(l.rate, rec.LinkBytes[a.Link], time.Since(start))
			}
			delete(waiting, a.Link)
		}
		return nil
	}
	// next is the earliest deadline of those still waited for.
	next := func() time.Time {
		var t time.Time
		for i := range waiting {
			if d := deadlines[i]; t.IsZero() || d.Before(t) {
				t = d
			}
		}
		return t
	}
	timeout := time.NewTimer(time.Until(next()))
	defer timeout.Stop()
	for len(waiting) > 0 {
		select {
		case a := <-p.acks:
			if err := handle(a); err != nil {
				return false, err
			}
		case <-timeout.C:
			// Acknowledgements that arrived while a send was blocked
			// count: take them before blaming anyone.
		drain:
			for {
				select {
				case a := <-p.acks:
					if err := handle(a); err != nil {
						return false, err
					}
				default:
					break drain
				}
			}
			now := time.Now()
			for i := range waiting {
				if now.Before(deadlines[i]) {
					continue
				}
				if i < 0 {
					p.holderLost(p.holders[-1-i], fmt.Errorf("no acknowledgement of the state of epoch %d within %v", e, deadlines[i].Sub(start).Round(time.Millisecond)))
					delete(waiting, i)
					continue
				}
				l := p.links[i]
				p.linkFailed(i, fmt.Errorf("no acknowledgement of epoch %d (%d bytes) within %v (link measured at %.1f MB/s, floor %.1f MB/s)",
					e, rec.LinkBytes[i], deadlines[i].Sub(start).Round(time.Millisecond), l.rate/1e6, p.cfg.MinLinkRate/1e6))
				delete(waiting, i)
			}
			if len(waiting) > 0 {
				timeout.Reset(time.Until(next()))
			}
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	rec.Pause.Ack = time.Since(ackStart)
	if state != nil && !slices.ContainsFunc(p.holders, func(h *holder) bool { return h.link != nil && h.acked >= e }) {
		return false, fmt.Errorf("%w: no node holding the state acknowledged epoch %d", ErrLeaderLost, e)
	}

	// Which counted links completed decides the epoch.
	complete := 0
	for _, l := range p.links {
		if l.counts() {
			complete++
		}
	}
	if complete == 0 {
		return false, ErrNoLinks
	}
	if complete < len(counted) && p.cfg.Policy == PolicyFast {
		// The lost link held pages no other link has: this epoch cannot
		// commit, and the next one resends all of memory to the others.
		p.needFull = true
		return false, nil
	}
	return true, nil
}

// current reports whether a was sent by a connection still in service
// (not one replaced since).
func (p *Primary) current(a Ack) bool {
	if a.from == nil {
		return true
	}
	if a.Link < 0 {
		return p.holderOf(a.from) != nil
	}
	return a.Link < len(p.links) && a.from == any(p.links[a.Link].Link)
}

// linkFailed takes a link out of service.
func (p *Primary) linkFailed(i int, err error) {
	l := p.links[i]
	if !l.alive {
		return
	}
	if p.cfg.Policy == PolicyFast && !l.joining {
		// Its pages of every earlier epoch have no other copy: the links
		// in service get all of memory in the next epoch.
		p.needFull = true
	}
	l.alive = false
	if p.red != nil {
		p.red.linkLost(i)
	}
	if a, ok := l.Link.(interface{ abort() }); ok {
		a.abort() // no goodbye to a peer that may have stopped reading
	} else {
		l.Close()
	}
	what := "continuing degraded on the remaining links (every link has every page)"
	switch {
	case l.joining:
		what = "it was still catching up: nothing else changes"
	case p.cfg.Policy == PolicyFast:
		what = "the epoch fails and the remaining links get a full copy of memory"
	}
	p.log.Error("replica link failed; redialling it with backoff", "link", l.String(), "err", err, "action", what)
	if p.bg.Err() == nil {
		p.redialLink(i)
	}
}

// commit records epoch e as committed, releases its output and tells the
// replicas and the leader.
func (p *Primary) commit(e uint64) {
	p.committed.Store(e)
	if err := p.gate.Release(e); err != nil {
		p.log.Warn("serial output", "err", err)
	}
	for _, l := range p.links {
		if l.alive && l.acked >= e {
			if err := l.WriteCommit(e); err != nil {
				p.linkFailed(l.index, err)
			} else {
				l.commitSent = max(l.commitSent, e)
			}
		}
	}
	if e > p.cfg.StartEpoch { // the initial copy has no state for the holders to commit
		for _, h := range p.holders {
			if h.link != nil && h.acked >= e {
				if err := h.link.sendCommit(e); err != nil {
					p.log.Warn("commit to a state holder", "holder", h.addr, "err", err)
				}
			}
		}
	}
}

func (p *Primary) record(rec *EpochTrace) {
	last := *rec
	last.LinkBytes = slices.Clone(rec.LinkBytes)
	p.lastEpoch = &last // published with the next status
	if err := p.cfg.Trace.Write(rec); err != nil {
		p.log.Warn("trace", "err", err)
	}
	if p.cfg.Observe != nil {
		p.cfg.Observe(rec)
	}
	if p.cfg.Summary == nil {
		return // nobody reads the summary: keep nothing
	}
	p.summary.Add(rec)
	if time.Since(p.lastSum) >= time.Second {
		p.lastSum = time.Now()
		if line := p.summary.Line(); line != "" {
			p.cfg.Summary(line)
		}
	}
}
