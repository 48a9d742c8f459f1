package replicate

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// State holders. The leader receives every epoch's state, keeps the
// copies of the guest's disks and takes over when the primary fails. With
// a coordinator term (PrimaryConfig.Term) the primary sends the state to
// further nodes too (PrimaryConfig.Holders, seed 003 §IV.A: "broadcasting
// the VM state to all replicas, in which case the Leader can also fail"),
// and each of them can take over: the leader is only the first holder.
//
// The commit rule gains one clause: an epoch with a state commits only
// once every holder in service acknowledged that state, and, when the set
// of holders that did differs from the one last recorded at the
// coordinator, once the new set is recorded (PrimaryConfig.RecordHolders).
// A holder that fails (a send, its acknowledgement, or its connection) is
// taken out of service, and the epoch commits without it once the smaller
// set is recorded. So every node of the newest record holds the state of
// the newest committed epoch, and the coordinator refuses a takeover by
// any other node of that term: a holder that fell behind can never take
// the VM back to an epoch older than output already released.
//
// A holder out of service is dialled again in the background with a
// growing backoff (firstLeaderBackoff to maxLeaderBackoff); one that
// answers is taken back at the start of an epoch, with the guest paused
// while its disk copies are brought to the disks' content, and counts in
// the record once an epoch whose state it acknowledged commits. While no
// holder is in service nothing commits: the guest runs on with its output
// held (see "Leader loss" in primary.go).
const (
	firstLeaderBackoff = 100 * time.Millisecond
	maxLeaderBackoff   = 5 * time.Second
)

// holder is a node that receives the states: the leader, or one of
// PrimaryConfig.Holders.
type holder struct {
	addr string
	// link is nil while the holder is out of service.
	link *stateLink
	// acked is the newest epoch whose state it acknowledged.
	acked uint64
}

// holderDialled is a holder dialled again, for the run loop to install;
// err (fencing) ends the primary.
type holderDialled struct {
	h    *holder
	link *stateLink
	c    *conn
	err  error
}

// newHolders lists the leader and, with a term, the other holders.
func newHolders(cfg *PrimaryConfig) []*holder {
	hs := []*holder{{addr: cfg.Leader}}
	for _, a := range cfg.Holders {
		if !slices.ContainsFunc(hs, func(h *holder) bool { return h.addr == a }) {
			hs = append(hs, &holder{addr: a})
		}
	}
	return hs
}

// stateDialTo is how this primary reaches the holder at addr.
func (p *Primary) stateDialTo(addr string) stateDial {
	return stateDial{creds: p.cfg.Auth, addr: addr, vmID: p.cfg.VMID, gen: p.cfg.Generation, hello: p.stateHello,
		acks: p.acks, heartbeat: p.cfg.Heartbeat, redialWithin: p.cfg.AckTimeout, committed: p.committed.Load, cluster: p.cluster(), log: p.log}
}

// inService lists the holders in service.
func (p *Primary) inService() []*holder {
	var hs []*holder
	for _, h := range p.holders {
		if h.link != nil {
			hs = append(hs, h)
		}
	}
	return hs
}

// holderOf is the holder whose state link sent an acknowledgement.
func (p *Primary) holderOf(from any) *holder {
	for _, h := range p.holders {
		if h.link != nil && from == any(h.link) {
			return h
		}
	}
	return nil
}

// singleLeader reports whether the leader is the only holder (no
// coordinator): its refusal then ends the primary, since no other node
// can hold the state.
func (p *Primary) singleLeader() bool { return len(p.holders) == 1 }

// holderLost takes a holder out of service after err and dials it again
// in the background.
func (p *Primary) holderLost(h *holder, err error) {
	if h.link == nil {
		return
	}
	h.link.Close()
	h.link = nil
	left := len(p.inService())
	switch {
	case left > 0:
		p.log.Error("lost a node holding the VM state: the epochs commit without it once the coordinator has the smaller set; redialling it",
			"holder", h.addr, "err", err, "holders_left", left, "committed", p.committed.Load())
	case p.singleLeader():
		p.log.Error("lost the leader: the VM runs on with its output held until the leader is reachable again",
			"leader", h.addr, "err", err, "committed", p.committed.Load(),
			"operator", "restart `tandem replica` at that address (it resumes protection), or stop this VM; if the leader took over, this primary is fenced and stops")
	default:
		p.log.Error("lost every node holding the VM state: the VM runs on with its output held until one is reachable again",
			"holder", h.addr, "err", err, "committed", p.committed.Load())
	}
	if p.bg.Err() == nil {
		p.redialHolder(h)
	}
}

// redialHolder dials h again, in the background, until it answers, the
// primary closes, or a newer term fences this one. Call it from the run
// loop (or before Run).
func (p *Primary) redialHolder(h *holder) {
	go p.redialHolderWith(h, p.stateDialTo(h.addr))
}

func (p *Primary) redialHolderWith(h *holder, d stateDial) {
	p.retry(firstLeaderBackoff, maxLeaderBackoff, func(ctx context.Context) error {
		s, c, err := d.connect(ctx)
		if err != nil && !errors.Is(err, ErrFenced) {
			p.log.Debug("state holder still unreachable", "holder", h.addr, "err", err)
			return err
		}
		select {
		case p.holderBack <- holderDialled{h: h, link: s, c: c, err: err}:
		case <-p.bg.Done():
			if c != nil {
				c.c.Close()
			}
		}
		return nil
	})
}

// installHolders takes the holders dialled again into service, each with
// the guest paused while its disk copies are brought to the disks. An
// error ends the primary: fenced, or the VM cannot be paused.
func (p *Primary) installHolders() error {
	for {
		var d holderDialled
		select {
		case d = <-p.holderBack:
		default:
			return nil
		}
		if d.err != nil {
			return d.err
		}
		if err := p.pauseSource(); err != nil {
			d.c.c.Close()
			return err
		}
		hashes, err := hashDisks(p.cfg.Disks)
		if err == nil {
			err = d.link.start(d.c, p.cfg.Disks, hashes)
		} else {
			d.c.c.Close()
		}
		p.resumeSource()
		if err != nil {
			p.log.Warn("a state holder answered but could not be brought up to date; redialling it", "holder", d.h.addr, "err", err)
			p.redialHolder(d.h)
			continue
		}
		d.h.link, d.h.acked = d.link, 0
		p.log.Warn("a state holder is reachable again: it gets the next epoch's state", "holder", d.h.addr, "committed", p.committed.Load())
	}
}

// recordHolders records, before epoch e commits, the holders that
// acknowledged its state if they are not the set recorded last. An error
// keeps e from committing.
func (p *Primary) recordHolders(e uint64) error {
	if p.cfg.RecordHolders == nil {
		return nil
	}
	var set []string
	for _, h := range p.holders {
		if h.link != nil && h.acked >= e {
			set = append(set, h.addr)
		}
	}
	if p.recorded != nil && slices.Equal(set, p.recorded) {
		return nil
	}
	if err := p.cfg.RecordHolders(set); err != nil {
		return fmt.Errorf("recording the nodes that hold the state (%v) at the coordinator: %w", set, err)
	}
	if p.recorded == nil {
		p.log.Info("the coordinator knows which nodes hold the VM state", "holders", set, "epoch", e)
	} else {
		p.log.Warn("the nodes holding the VM state changed; the coordinator knows", "holders", set, "was", p.recorded, "epoch", e)
	}
	p.recorded = set
	return nil
}

// holderAck handles a holder's acknowledgement (or failure) while epoch
// e's acknowledgements are awaited. An error ends the primary: another
// term began, or the only leader refuses its states.
func (p *Primary) holderAck(a Ack, e uint64, waiting map[int]bool) error {
	h := p.holderOf(a.from)
	i := slices.Index(p.holders, h)
	switch {
	case a.Err != nil && errors.Is(a.Err, ErrFenced):
		return a.Err
	case a.Err != nil && errors.Is(a.Err, ErrLeaderRefused) && p.singleLeader():
		return a.Err
	case a.Err != nil:
		p.holderLost(h, a.Err)
		delete(waiting, -1-i)
	case a.Epoch == e:
		h.acked = max(h.acked, e)
		delete(waiting, -1-i)
	}
	return nil
}
