package replicate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"
)

// Recovered is a VM rebuilt by the leader from the replicas.
type Recovered struct {
	Epoch    uint64 // the epoch recovered
	Memory   []byte
	State    []byte // the encoded VM state of Epoch
	MemBytes uint64
	VCPUs    int
	Guest    string
	// Unreachable lists the replicas that did not answer.
	Unreachable []string
	// Took is the time from the start of recovery to a complete image.
	Took time.Duration
	// Generation is the takeover's primary term: one more than the newest
	// this leader had seen, already fencing the failed primary at every
	// replica that answered. The recovered VM replicates under it, with
	// the same VMID, from epoch Epoch+1.
	Generation uint64
	VMID       uint64
}

// ErrUnrecoverable means no epoch can be rebuilt from what survives.
var ErrUnrecoverable = errors.New("replicate: cannot recover")

// replicaView is one replica's answers during recovery.
type replicaView struct {
	addr   string
	c      *conn
	report *Report
	epochs []uint64
	err    error
	lost   bool // answered the query, then failed
}

// Recover rebuilds the VM after the primary failed: it asks every replica
// what it holds, picks the epoch E to recover (see the package
// documentation), has the replicas settle on E, and gathers for every page
// the copy with the highest epoch into a new image. Only the leader
// (ReplicaConfig.Leader) can recover. To gather the pages straight into
// the memory of the VM that will run them, without a second copy of guest
// RAM, use StartRecovery and Recovery.FetchInto.
func (r *Replica) Recover(ctx context.Context, replicas []string) (*Recovered, error) {
	rc, err := r.StartRecovery(ctx, replicas)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return rc.FetchInto(ctx, make([]byte, rc.rec.MemBytes))
}

// Recovery is a recovery under way: E is chosen and every replica still
// answering has settled on it; FetchInto gathers the pages.
type Recovery struct {
	r      *Replica
	start  time.Time
	views  []*replicaView
	states map[uint64]*StateRecord
	hello  Hello
	pages  uint64
	rec    *Recovered
}

// StartRecovery asks every replica what it holds, picks E and has the
// replicas settle on it. Info then tells what will be recovered (epoch,
// state, memory size, vCPUs, guest): enough to build the VM whose memory
// FetchInto fills. Close the Recovery when done.
func (r *Replica) StartRecovery(ctx context.Context, replicas []string) (*Recovery, error) {
	return r.StartRecoveryAs(ctx, replicas, 0)
}

// StartRecoveryAs is StartRecovery for the takeover generation gen (a
// coordinator's term: it must be newer than every generation seen here);
// zero means one more than the newest seen.
func (r *Replica) StartRecoveryAs(ctx context.Context, replicas []string, gen uint64) (*Recovery, error) {
	start := time.Now()
	if r.cfg.Auth == nil {
		return nil, errNoCredentials
	}
	r.closeShadow("the node is recovering the VM")
	r.mu.Lock()
	if !r.cfg.Leader || r.vmID == 0 || r.hello.VCPUs == 0 {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: this leader never received the primary's state", ErrUnrecoverable)
	}
	vmID, hello := r.vmID, r.hello
	// The takeover is the next primary term: its generation fences the
	// failed primary here and at every replica its hellos reach, before
	// anything is read from them.
	if gen == 0 {
		gen = r.gen + 1
	}
	if gen <= r.gen {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: takeover generation %d is not newer than generation %d, seen here", ErrUnrecoverable, gen, r.gen)
	}
	// Durable before anything of the takeover's term is read.
	if err := r.persist(true, recGen, u64s(gen)); err != nil {
		r.mu.Unlock()
		return nil, fmt.Errorf("replicate: persisting generation %d: %w", gen, err)
	}
	r.fence(gen)
	states := make(map[uint64]*StateRecord, len(r.states))
	for e, s := range r.states {
		states[e] = s
	}
	r.mu.Unlock()
	rc := &Recovery{r: r, start: start, states: states, hello: hello, pages: hello.MemBytes / PageSize,
		rec: &Recovered{MemBytes: hello.MemBytes, VCPUs: int(hello.VCPUs), Guest: hello.Guest, Generation: gen, VMID: vmID}}

	// Ask everyone what they hold.
	rc.views = make([]*replicaView, len(replicas))
	var wg sync.WaitGroup
	for i, addr := range replicas {
		rc.views[i] = &replicaView{addr: addr}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := rc.views[i]
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			v.c, v.err = dialHello(qctx, r.cfg.Auth, addr, vmID, gen, Hello{Role: RoleRecovery, MemBytes: hello.MemBytes, Policy: hello.Policy})
			if v.err == nil {
				v.c.c.SetDeadline(time.Now().Add(r.recoveryStepTimeout()))
				v.report, v.err = query(v.c)
			}
		}()
	}
	wg.Wait()
	for _, v := range rc.views {
		if v.err != nil {
			rc.rec.Unreachable = append(rc.rec.Unreachable, v.addr)
			r.log.Warn("replica unreachable at recovery", "replica", v.addr, "err", v.err)
		}
	}
	if err := rc.settle(ctx); err != nil {
		rc.Close()
		return nil, err
	}
	return rc, nil
}

// Info is what the recovery will produce, without the memory: the epoch
// chosen, its state, the memory size, vCPUs and guest. FetchInto may still
// choose an older epoch (a replica lost while sending pages, with ft):
// use what it returns.
func (rc *Recovery) Info() Recovered {
	i := *rc.rec
	i.Memory = nil
	return i
}

// Close closes the recovery's connections to the replicas.
func (rc *Recovery) Close() {
	for _, v := range rc.views {
		if v.c != nil {
			v.c.c.Close()
		}
	}
}

// FetchInto gathers every page's newest copy into mem, which must be
// MemBytes long and zero (fresh guest memory is): pages never written stay
// as they are. If a replica fails while sending pages and the policy allows
// going on without it (ft), E is chosen again and the pages gathered again.
// The Recovered it returns has Memory = mem.
func (rc *Recovery) FetchInto(ctx context.Context, mem []byte) (*Recovered, error) {
	if uint64(len(mem)) != rc.hello.MemBytes {
		return nil, fmt.Errorf("replicate: recovery into %d bytes of memory for a guest of %d", len(mem), rc.hello.MemBytes)
	}
	// A replica that goes silent must not hold recovery up: every step has
	// a deadline, and cancelling ctx closes every connection.
	stop := context.AfterFunc(ctx, rc.Close)
	defer stop()
	for dirty := false; ; dirty = true {
		if dirty {
			clear(mem) // an earlier attempt wrote pages of another epoch
		}
		err := rc.gather(ctx, mem)
		if err == nil {
			// The disk copies take every write up to the recovered epoch
			// and none after it: disk and memory are of one epoch.
			if err := rc.r.deliverCommitted(rc.rec.Epoch); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrUnrecoverable, err)
			}
			rc.rec.Memory = mem
			rc.rec.Took = time.Since(rc.start)
			return rc.rec, nil
		}
		if err != errRetry {
			return nil, err
		}
		if err := rc.settle(ctx); err != nil {
			return nil, err
		}
	}
}

// lost handles replicas that failed after answering the query: their
// newest copies of some pages are unknown or unreadable. With fast, those
// pages have no other copy: recovery stops and names them. With ft every
// link carried every page: E is chosen again without them.
func (rc *Recovery) lost(ctx context.Context, step string, failed []*replicaView) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnrecoverable, err)
	}
	var names []string
	for _, v := range failed {
		names = append(names, fmt.Sprintf("%s (%v)", v.addr, v.err))
		rc.rec.Unreachable = append(rc.rec.Unreachable, v.addr)
		rc.r.log.Warn("replica failed during recovery", "replica", v.addr, "step", step, "err", v.err)
	}
	if rc.hello.Policy == PolicyFast {
		return fmt.Errorf("%w: replica %s failed while %s; with policy fast the pages it holds have no other copy", ErrUnrecoverable, strings.Join(names, ", "), step)
	}
	return nil
}

// settle chooses E among the replicas still answering and settles them on
// it, again as long as replicas are lost and the policy allows it.
func (rc *Recovery) settle(ctx context.Context) error {
	stop := context.AfterFunc(ctx, rc.Close)
	defer stop()
	for {
		if err := rc.settleOnce(ctx); err != errRetry {
			return err
		}
	}
}

// errRetry makes recovery choose E again after replicas were lost (ft).
var errRetry = errors.New("replicate: recovery retry")

// Deadlines of the recovery steps (ReplicaConfig.RecoveryStepTimeout):
// answering a query or settling is small work; a fetch moves data, and
// each fetchChunk of it gets a step of its own, so a slow link is given
// the time its bytes need while a silent replica fails within a step.
const (
	defaultRecoveryStepTimeout = 10 * time.Second
	fetchChunk                 = 1 << 20
)

func (r *Replica) recoveryStepTimeout() time.Duration {
	if r.cfg.RecoveryStepTimeout > 0 {
		return r.cfg.RecoveryStepTimeout
	}
	return defaultRecoveryStepTimeout
}

// settleOnce chooses E among the replicas still answering and settles
// them on it. It returns errRetry when replicas were lost and lost allowed
// going on without them.
func (rc *Recovery) settleOnce(ctx context.Context) error {
	rec, views := rc.rec, rc.views
	links := map[uint32]Staged{}
	for _, v := range views {
		if v.err != nil {
			continue
		}
		for _, s := range v.report.Staged {
			links[s.Link] = s
		}
	}

	// E: the newest epoch whose state the leader holds and whose data
	// survives: on every link that carried it (fast), or on one (ft).
	var candidates []uint64
	for e := range rc.states {
		candidates = append(candidates, e)
	}
	slices.Sort(candidates)
	slices.Reverse(candidates)
	var why []string
	rec.Epoch = 0
	for _, e := range candidates {
		done, missing := 0, 0
		for _, l := range rc.states[e].Links {
			if s, ok := links[l]; ok && s.Completed(e) {
				done++
			} else {
				missing++
			}
		}
		if (rc.hello.Policy == PolicyFT && done > 0) || (rc.hello.Policy == PolicyFast && missing == 0) {
			rec.Epoch = e
			break
		}
		why = append(why, fmt.Sprintf("epoch %d: %d of %d links complete", e, done, done+missing))
	}
	if rec.Epoch == 0 {
		return fmt.Errorf("%w: no epoch is complete on the surviving replicas (%v; unreachable: %v)", ErrUnrecoverable, why, rec.Unreachable)
	}
	// A replica that applied a newer epoch than E proves this leader's
	// states stale: another node led after it (a primary that moved to
	// another leader, or a later term). An image from here would mix
	// epochs; refuse.
	for _, v := range views {
		if v.err == nil && v.report.Applied > rec.Epoch {
			return fmt.Errorf("%w: replica %s applied epoch %d, newer than epoch %d, the newest this node holds a usable state of: its states are stale (another node led after it)", ErrUnrecoverable, v.addr, v.report.Applied, rec.Epoch)
		}
	}
	rec.State = rc.states[rec.Epoch].Blob

	// Settle every replica on E and read its page epochs.
	var wg sync.WaitGroup
	for _, v := range views {
		if v.err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.c.c.SetDeadline(time.Now().Add(rc.r.recoveryStepTimeout()))
			v.epochs, v.err = resolve(v.c, rec.Epoch, rc.pages)
		}()
	}
	wg.Wait()
	if failed := failedViews(views); len(failed) > 0 {
		if err := rc.lost(ctx, "settling on epoch "+fmt.Sprint(rec.Epoch), failed); err != nil {
			return err
		}
		return errRetry
	}
	return nil
}

// gather reads every page from the replica holding its newest copy into
// mem; every replica still in views has answered for all its pages. It
// returns errRetry when replicas were lost and lost allowed going on
// without them (E must then be chosen again).
func (rc *Recovery) gather(ctx context.Context, mem []byte) error {
	views, pages := rc.views, rc.pages
	owner := make([]int, pages)
	best := make([]uint64, pages)
	for i, v := range views {
		if v.err != nil {
			continue
		}
		for p, e := range v.epochs {
			if e > best[p] {
				best[p], owner[p] = e, i
			}
		}
	}
	fetch := make([][]Region, len(views))
	for p := uint64(0); p < pages; p++ {
		if best[p] == 0 {
			continue // never written: zero
		}
		o := owner[p]
		if n := len(fetch[o]); n > 0 && fetch[o][n-1].End() == p && fetch[o][n-1].Pages < maxFetch/PageSize {
			fetch[o][n-1].Pages++
		} else {
			fetch[o] = append(fetch[o], Region{First: p, Pages: 1})
		}
	}
	var wg sync.WaitGroup
	for i, v := range views {
		if len(fetch[i]) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.err = fetchPages(v.c, fetch[i], mem, rc.r.recoveryStepTimeout())
		}()
	}
	wg.Wait()
	if failed := failedViews(views); len(failed) > 0 {
		if err := rc.lost(ctx, "sending pages", failed); err != nil {
			return err
		}
		return errRetry
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrUnrecoverable, err)
	}
	return nil
}

// failedViews returns the views whose step just failed and marks them
// lost for good (their epochs are cleared so a retry does not count them).
func failedViews(views []*replicaView) []*replicaView {
	var out []*replicaView
	for _, v := range views {
		if v.report == nil || v.lost || v.err == nil {
			continue // unreachable from the start, lost earlier, or fine
		}
		v.lost = true
		v.epochs = nil
		out = append(out, v)
	}
	return out
}

func query(c *conn) (*Report, error) {
	if err := c.send(MsgQuery, 0, nil); err != nil {
		return nil, c.errorf("query: %w", err)
	}
	h, err := c.readHeader()
	if err == nil && h.Type != MsgReport {
		err = fmt.Errorf("%w: answer to query is %v", ErrProtocol, h.Type)
	}
	if err != nil {
		return nil, c.errorf("query: %w", noEOF(err))
	}
	p, err := readPayload(c.r, h)
	if err != nil {
		return nil, c.errorf("query: %w", err)
	}
	rep, err := parseReport(p)
	if err != nil {
		return nil, c.errorf("query: %w", err)
	}
	return rep, nil
}

func resolve(c *conn, e, pages uint64) ([]uint64, error) {
	if err := c.send(MsgResolve, e, nil); err != nil {
		return nil, c.errorf("resolve: %w", err)
	}
	h, err := c.readHeader()
	if err == nil && (h.Type != MsgEpochs || uint64(h.Length) != 8*pages) {
		err = fmt.Errorf("%w: answer to resolve is %v of %d bytes for %d pages", ErrProtocol, h.Type, h.Length, pages)
	}
	if err != nil {
		return nil, c.errorf("resolve: %w", noEOF(err))
	}
	p, err := readPayload(c.r, h)
	if err != nil {
		return nil, c.errorf("resolve: %w", err)
	}
	epochs := make([]uint64, pages)
	for i := range epochs {
		epochs[i] = binary.LittleEndian.Uint64(p[8*i:])
		if epochs[i] > e {
			return nil, c.errorf("resolve: %w: page %d holds epoch %d after settling on %d", ErrProtocol, i, epochs[i], e)
		}
	}
	return epochs, nil
}

// maxFetch bounds the bytes one fetch request asks for.
const maxFetch = 64 << 20

// fetchPages reads the given regions from a replica into mem.
func fetchPages(c *conn, regions []Region, mem []byte, step time.Duration) error {
	for len(regions) > 0 {
		var batch []Region
		var n uint64
		for len(regions) > 0 && (len(batch) == 0 || n+regions[0].Pages*PageSize <= maxFetch) {
			n += regions[0].Pages * PageSize
			batch = append(batch, regions[0])
			regions = regions[1:]
		}
		c.c.SetDeadline(time.Now().Add(step))
		if err := c.send(MsgFetch, 0, appendRegions(nil, batch)); err != nil {
			return c.errorf("fetch: %w", err)
		}
		h, err := c.readHeader()
		if err == nil && (h.Type != MsgData || uint64(h.Length) != n) {
			err = fmt.Errorf("%w: answer to fetch is %v of %d bytes, want %d", ErrProtocol, h.Type, h.Length, n)
		}
		if err != nil {
			return c.errorf("fetch: %w", noEOF(err))
		}
		for _, g := range batch {
			for b := mem[g.First*PageSize : g.End()*PageSize]; len(b) > 0; {
				k := min(len(b), fetchChunk)
				c.c.SetReadDeadline(time.Now().Add(step))
				if _, err := io.ReadFull(c.r, b[:k]); err != nil {
					return c.errorf("fetch: %w", noEOF(err))
				}
				b = b[k:]
			}
		}
	}
	return nil
}
