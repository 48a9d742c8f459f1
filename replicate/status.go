package replicate

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
)

// Status is what a primary's protection looks like now: its term, what is
// committed, and the state of the leader and of every link. It is a copy,
// safe to keep.
type Status struct {
	// VMID names the VM (at a coordinator too: 16 hex digits).
	VMID       uint64 `json:"vm_id"`
	Generation uint64 `json:"generation"`
	Committed  uint64 `json:"committed"`
	// Leader is the first holder in service (the configured leader while
	// none is); LeaderConnected is false while no holder is in service
	// (the output is held until one is back).
	Leader          string         `json:"leader"`
	LeaderConnected bool           `json:"leader_connected"`
	Holders         []HolderStatus `json:"holders"`
	Links           []LinkStatus   `json:"links"`
	// Policy and the count of live links decide Degraded: fast with fewer
	// live links than configured (the others got a full copy) or ft with
	// fewer copies than configured. Protected is false while nothing can
	// commit (no leader, or no link).
	Policy    Policy `json:"policy"`
	Degraded  bool   `json:"degraded"`
	Protected bool   `json:"protected"`
	// LastEpoch is the newest epoch's record (its pause and what it
	// sent), nil before the first.
	LastEpoch *EpochTrace `json:"last_epoch,omitempty"`
}

// HolderStatus is one state holder's state (the leader is the first).
type HolderStatus struct {
	Addr      string `json:"addr"`
	Connected bool   `json:"connected"`
	// Acked is the newest epoch whose state it acknowledged.
	Acked uint64 `json:"acked"`
}

// LinkStatus is one link's state.
type LinkStatus struct {
	Addr  string `json:"addr"`
	Alive bool   `json:"alive"`
	// Joining is an ft link in service that does not hold every page yet
	// (CaughtUp of Pages sent); it does not count for commits.
	Joining  bool   `json:"joining"`
	CaughtUp uint64 `json:"caught_up_pages"`
	Pages    uint64 `json:"pages"`
	// Acked is the newest epoch the link acknowledged.
	Acked uint64 `json:"acked"`
	// Rate is the measured rate in bytes per second (0: not measured).
	Rate float64 `json:"rate_bytes_per_s"`
	// ElementNs is what one more region costs the link beyond its bytes,
	// in nanoseconds, as the link measured (TCP) or states (RDMA) it;
	// grouping by cost merges a clean gap only when sending it is cheaper.
	ElementNs int64 `json:"element_ns"`
}

// String is a one-line summary for logs and `tandem status`.
func (s Status) String() string {
	var b strings.Builder
	state := "protected"
	switch {
	case !s.Protected:
		state = "UNPROTECTED (output held)"
	case s.Degraded:
		state = "degraded"
	}
	fmt.Fprintf(&b, "%s: generation %d, committed epoch %d, policy %v, leader %s", state, s.Generation, s.Committed, s.Policy, s.Leader)
	if !s.LeaderConnected {
		b.WriteString(" (lost)")
	}
	if len(s.Holders) > 1 {
		in := 0
		for _, h := range s.Holders {
			if h.Connected {
				in++
			}
		}
		fmt.Fprintf(&b, ", state holders %d/%d", in, len(s.Holders))
	}
	fmt.Fprintf(&b, ", vm %016x", s.VMID)
	live, joining := 0, 0
	for _, l := range s.Links {
		switch {
		case l.Joining:
			joining++
		case l.Alive:
			live++
		}
	}
	fmt.Fprintf(&b, ", links %d/%d live", live, len(s.Links))
	if joining > 0 {
		fmt.Fprintf(&b, " (%d catching up)", joining)
	}
	return b.String()
}

// statusBoard holds the newest Status; the run loop publishes, anyone
// reads, without a lock: a published Status is never changed again, so a
// reader copies it while the run loop builds the next.
type statusBoard struct{ s atomic.Pointer[Status] }

func (b *statusBoard) publish(s Status) { b.s.Store(&s) }

func (b *statusBoard) read() Status {
	p := b.s.Load()
	if p == nil {
		return Status{}
	}
	s := *p
	s.Links = slices.Clone(s.Links)
	s.Holders = slices.Clone(s.Holders)
	if s.LastEpoch != nil {
		last := *s.LastEpoch
		last.LinkBytes = slices.Clone(last.LinkBytes)
		s.LastEpoch = &last
	}
	return s
}

// Status reports the primary's protection now (see Status).
func (p *Primary) Status() Status { return p.status.read() }

// publishStatus makes the run loop's view the current Status.
func (p *Primary) publishStatus() {
	s := Status{VMID: p.cfg.VMID, Generation: p.cfg.Generation, Committed: p.committed.Load(), Leader: p.cfg.Leader, Policy: p.cfg.Policy, LastEpoch: p.lastEpoch}
	for _, h := range p.holders {
		s.Holders = append(s.Holders, HolderStatus{Addr: h.addr, Connected: h.link != nil, Acked: h.acked})
		if h.link != nil && !s.LeaderConnected {
			s.Leader, s.LeaderConnected = h.addr, true
		}
	}
	live := 0
	for i, addr := range p.cfg.Links {
		ls := LinkStatus{Addr: addr}
		if i < len(p.links) && p.links[i] != nil {
			l := p.links[i]
			ls.Alive, ls.Rate, ls.Joining, ls.Acked = l.alive, l.rate, l.alive && l.joining, l.acked
			if c, ok := l.Link.(elementCoster); ok {
				ls.ElementNs = c.elementCost().Nanoseconds()
			}
			if ls.Joining {
				ls.CaughtUp, ls.Pages = l.cursor, uint64(len(p.src.Memory()))/PageSize
			}
		}
		if ls.Alive && !ls.Joining {
			live++
		}
		s.Links = append(s.Links, ls)
	}
	s.Protected = s.LeaderConnected && live > 0
	s.Degraded = live < len(p.cfg.Links) || slices.ContainsFunc(s.Holders, func(h HolderStatus) bool { return !h.Connected })
	p.status.publish(s)
}
