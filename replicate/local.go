package replicate

import (
	"errors"
	"fmt"
	"time"
)

// LocalPersister makes every epoch durable on the primary's own host too
// (tandem run --ha --persist, replicate/persist.Dir through an adapter):
// an epoch then commits, and its output leaves, only once it is both
// acknowledged by the replicas and durable locally, so that even the whole
// cluster losing power loses nothing acknowledged. Stage is called with the
// VM paused, once its state is captured, and must copy what it keeps; Sync
// runs while the epoch is transferred and makes the staged epoch durable.
// An error from either stops replication with the epoch's output held.
type LocalPersister interface {
	Stage(e uint64, pages []uint64, mem []byte, state []byte) error
	Sync() error
}

// errPersistSpeculate is a primary that would persist and speculate: pages
// sent ahead leave the epoch's dirty set before its pause, so its record
// would lack them.
var errPersistSpeculate = errors.New("replicate: local persistence and speculative transfer exclude each other: the pages sent ahead would be missing from the epoch's record")

// localEpoch is one epoch being made durable locally while it is
// transferred.
type localEpoch struct {
	done  chan error
	start time.Time
	took  time.Duration
}

// persistLocally stages epoch e with the local persister, if any, and
// starts making it durable; wait returns once it is.
func (p *Primary) persistLocally(e uint64, mem []byte, state []byte) (*localEpoch, error) {
	if p.cfg.Persist == nil {
		return nil, nil
	}
	if err := p.cfg.Persist.Stage(e, p.pages, mem, state); err != nil {
		return nil, fmt.Errorf("replicate: persisting epoch %d locally: %w", e, err)
	}
	l := &localEpoch{done: make(chan error, 1), start: time.Now()}
	go func() { l.done <- p.cfg.Persist.Sync() }()
	return l, nil
}

// wait returns once the epoch is durable, or why it is not (nil l: no
// local persistence). It may be called more than once.
func (l *localEpoch) wait(e uint64) error {
	if l == nil {
		return nil
	}
	if l.done != nil {
		err := <-l.done
		l.took = time.Since(l.start)
		l.done = nil
		if err != nil {
			return fmt.Errorf("replicate: persisting epoch %d locally: %w", e, err)
		}
	}
	return nil
}
