package replicate

import (
	"fmt"
	"strings"
	"sync"
)

// Status is what a primary's protection looks like now: its term, what is
// committed, and the state of the leader and of every link. It is a copy,
// safe to keep.
type Status struct {
	Generation uint64
	Committed  uint64
	// Leader is the state connection's address; LeaderConnected is false
	// while it is lost (the output is held until it is back).
	Leader          string
	LeaderConnected bool
	Links           []LinkStatus
	// Policy and the count of live links decide Degraded: fast with fewer
	// live links than configured (the others got a full copy) or ft with
	// fewer copies than configured. Protected is false while nothing can
	// commit (no leader, or no link).
	Policy    Policy
	Degraded  bool
	Protected bool
}

// LinkStatus is one link's state.
type LinkStatus struct {
	Addr  string
	Alive bool
	// Rate is the measured rate in bytes per second (0: not measured).
	Rate float64
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
	live := 0
	for _, l := range s.Links {
		if l.Alive {
			live++
		}
	}
	fmt.Fprintf(&b, ", links %d/%d live", live, len(s.Links))
	return b.String()
}

// statusBoard holds the newest Status; the run loop publishes, anyone
// reads.
type statusBoard struct {
	mu sync.Mutex
	s  Status
}

func (b *statusBoard) publish(s Status) {
	b.mu.Lock()
	b.s = s
	b.mu.Unlock()
}

func (b *statusBoard) read() Status {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.s
	s.Links = append([]LinkStatus(nil), s.Links...)
	return s
}

// Status reports the primary's protection now (see Status).
func (p *Primary) Status() Status { return p.status.read() }

// publishStatus makes the run loop's view the current Status.
func (p *Primary) publishStatus() {
	s := Status{Generation: p.cfg.Generation, Committed: p.committed.Load(), Leader: p.cfg.Leader,
		LeaderConnected: p.leader != nil, Policy: p.cfg.Policy}
	live := 0
	for i, addr := range p.cfg.Links {
		ls := LinkStatus{Addr: addr}
		if i < len(p.links) && p.links[i] != nil {
			ls.Alive, ls.Rate = p.links[i].alive, p.links[i].rate
		}
		if ls.Alive {
			live++
		}
		s.Links = append(s.Links, ls)
	}
	s.Protected = s.LeaderConnected && live > 0
	s.Degraded = live < len(p.cfg.Links)
	p.status.publish(s)
}
