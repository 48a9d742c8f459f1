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
// the copy with the highest epoch. Only the leader (ReplicaConfig.Leader)
// can recover.
func (r *Replica) Recover(ctx context.Context, replicas []string) (*Recovered, error) {
	start := time.Now()
	if r.cfg.Auth == nil {
		return nil, errNoCredentials
	}
	r.mu.Lock()
	if !r.cfg.Leader || r.vmID == 0 || r.hello.VCPUs == 0 {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: this leader never received the primary's state", ErrUnrecoverable)
	}
	vmID, hello := r.vmID, r.hello
	states := make(map[uint64]*StateRecord, len(r.states))
	for e, s := range r.states {
		states[e] = s
	}
	r.mu.Unlock()
	pages := hello.MemBytes / PageSize

	// Ask everyone what they hold.
	views := make([]*replicaView, len(replicas))
	var wg sync.WaitGroup
	for i, addr := range replicas {
		views[i] = &replicaView{addr: addr}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := views[i]
			qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			v.c, v.err = dialHello(qctx, r.cfg.Auth, addr, vmID, Hello{Role: RoleRecovery, MemBytes: hello.MemBytes, Policy: hello.Policy})
			if v.err == nil {
				v.c.c.SetDeadline(time.Now().Add(r.recoveryStepTimeout()))
				v.report, v.err = query(v.c)
			}
		}()
	}
	wg.Wait()
	defer func() {
		for _, v := range views {
			if v.c != nil {
				v.c.c.Close()
			}
		}
	}()
	// A replica that goes silent must not hold recovery up: every step has
	// a deadline, and cancelling ctx closes every connection.
	stopClosing := context.AfterFunc(ctx, func() {
		for _, v := range views {
			if v.c != nil {
				v.c.c.Close()
			}
		}
	})
	defer stopClosing()

	rec := &Recovered{MemBytes: hello.MemBytes, VCPUs: int(hello.VCPUs), Guest: hello.Guest}
	for _, v := range views {
		if v.err != nil {
			rec.Unreachable = append(rec.Unreachable, v.addr)
			r.log.Warn("replica unreachable at recovery", "replica", v.addr, "err", v.err)
		}
	}
	// lost handles replicas that failed after answering the query: their
	// newest copies of some pages are unknown or unreadable. With fast,
	// those pages have no other copy: recovery stops and names them. With
	// ft every link carried every page: E is chosen again without them.
	lost := func(step string, failed []*replicaView) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%w: %w", ErrUnrecoverable, err)
		}
		var names []string
		for _, v := range failed {
			names = append(names, fmt.Sprintf("%s (%v)", v.addr, v.err))
			rec.Unreachable = append(rec.Unreachable, v.addr)
			r.log.Warn("replica failed during recovery", "replica", v.addr, "step", step, "err", v.err)
		}
		if hello.Policy == PolicyFast {
			return fmt.Errorf("%w: replica %s failed while %s; with policy fast the pages it holds have no other copy", ErrUnrecoverable, strings.Join(names, ", "), step)
		}
		return nil
	}
	for {
		if err := r.recoverOnce(ctx, rec, views, states, hello, pages, lost); err != errRetry {
			if err != nil {
				return nil, err
			}
			// The disk copies take every write up to the recovered epoch
			// and none after it: disk and memory are of one epoch.
			if err := r.deliverCommitted(rec.Epoch); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrUnrecoverable, err)
			}
			rec.Took = time.Since(start)
			return rec, nil
		}
	}
}

// errRetry makes Recover choose E again after replicas were lost (ft).
var errRetry = errors.New("replicate: recovery retry")

// Deadlines of the recovery steps (ReplicaConfig.RecoveryStepTimeout):
// answering a query or settling is small work; a fetch moves data, at no
// less than recoveryMinRate.
const (
	defaultRecoveryStepTimeout = 10 * time.Second
	recoveryMinRate            = 10 << 20 // bytes per second
)

func (r *Replica) recoveryStepTimeout() time.Duration {
	if r.cfg.RecoveryStepTimeout > 0 {
		return r.cfg.RecoveryStepTimeout
	}
	return defaultRecoveryStepTimeout
}

// recoverOnce chooses E among the replicas still answering, settles them
// on it and gathers the pages. It returns errRetry when replicas were lost
// and lost allowed going on without them.
func (r *Replica) recoverOnce(ctx context.Context, rec *Recovered, views []*replicaView, states map[uint64]*StateRecord, hello Hello, pages uint64, lost func(string, []*replicaView) error) error {
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
	for e := range states {
		candidates = append(candidates, e)
	}
	slices.Sort(candidates)
	slices.Reverse(candidates)
	var why []string
	rec.Epoch = 0
	for _, e := range candidates {
		done, missing := 0, 0
		for _, l := range states[e].Links {
			if s, ok := links[l]; ok && s.Completed(e) {
				done++
			} else {
				missing++
			}
		}
		if (hello.Policy == PolicyFT && done > 0) || (hello.Policy == PolicyFast && missing == 0) {
			rec.Epoch = e
			break
		}
		why = append(why, fmt.Sprintf("epoch %d: %d of %d links complete", e, done, done+missing))
	}
	if rec.Epoch == 0 {
		return fmt.Errorf("%w: no epoch is complete on the surviving replicas (%v; unreachable: %v)", ErrUnrecoverable, why, rec.Unreachable)
	}
	rec.State = states[rec.Epoch].Blob

	// Settle every replica on E and read its page epochs.
	var wg sync.WaitGroup
	for _, v := range views {
		if v.err != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.c.c.SetDeadline(time.Now().Add(r.recoveryStepTimeout()))
			v.epochs, v.err = resolve(v.c, rec.Epoch, pages)
		}()
	}
	wg.Wait()
	if failed := failedViews(views); len(failed) > 0 {
		if err := lost("settling on epoch "+fmt.Sprint(rec.Epoch), failed); err != nil {
			return err
		}
		return errRetry
	}

	// Each page comes from the replica holding its newest copy; every
	// replica still in views has answered for all its pages.
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
	if rec.Memory == nil {
		rec.Memory = make([]byte, hello.MemBytes)
	} else {
		clear(rec.Memory)
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
	for i, v := range views {
		if len(fetch[i]) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.err = fetchPages(v.c, fetch[i], rec.Memory, r.recoveryStepTimeout())
		}()
	}
	wg.Wait()
	if failed := failedViews(views); len(failed) > 0 {
		if err := lost("sending pages", failed); err != nil {
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
	h, err := readHeader(c.r, c.vmID)
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
	h, err := readHeader(c.r, c.vmID)
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
		c.c.SetDeadline(time.Now().Add(step + time.Duration(n)*time.Second/recoveryMinRate))
		if err := c.send(MsgFetch, 0, appendRegions(nil, batch)); err != nil {
			return c.errorf("fetch: %w", err)
		}
		h, err := readHeader(c.r, c.vmID)
		if err == nil && (h.Type != MsgData || uint64(h.Length) != n) {
			err = fmt.Errorf("%w: answer to fetch is %v of %d bytes, want %d", ErrProtocol, h.Type, h.Length, n)
		}
		if err != nil {
			return c.errorf("fetch: %w", noEOF(err))
		}
		for _, g := range batch {
			if _, err := io.ReadFull(c.r, mem[g.First*PageSize:g.End()*PageSize]); err != nil {
				return c.errorf("fetch: %w", noEOF(err))
			}
		}
	}
	return nil
}
