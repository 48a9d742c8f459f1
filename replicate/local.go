package replicate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
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
	go func() {
		err := p.cfg.Persist.Sync()
		l.took = time.Since(l.start) // read after done: when it was durable, not when waited for
		l.done <- err
	}()
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
		l.done = nil
		if err != nil {
			return fmt.Errorf("replicate: persisting epoch %d locally: %w", e, err)
		}
	}
	return nil
}

// LocalConfig configures a Local.
type LocalConfig struct {
	// Epoch is how long the VM runs between two durable epochs.
	Epoch time.Duration
	// Persist makes each epoch durable.
	Persist LocalPersister
	// FirstEpoch is the first epoch's number (0: 1).
	FirstEpoch uint64
	Trace      *TraceWriter
	Log        *slog.Logger
	// Summary, when set, receives a one-line summary about every second.
	Summary func(line string)
}

// Local protects a VM by local persistence alone (tandem run --persist
// without --ha): every epoch it pauses the VM, harvests its dirty pages,
// captures its state and seals its output, stages the epoch with the
// persister, resumes the VM, and releases the output once the epoch is
// durable: replication's output commit, with the persister as the only
// replica. Run it like a Primary; Finish makes the last epoch of a VM that
// stopped durable.
type Local struct {
	cfg       LocalConfig
	src       Source
	gate      Gate
	log       *slog.Logger
	epoch     uint64 // the last epoch staged
	committed atomic.Uint64
	pages     []uint64
	summary   localSummary
	lastSum   time.Time
}

// NewLocal prepares a Local; Run starts it.
func NewLocal(cfg LocalConfig, src Source, gate Gate) (*Local, error) {
	switch {
	case cfg.Epoch <= 0:
		return nil, fmt.Errorf("replicate: epoch interval %v must be positive", cfg.Epoch)
	case cfg.Persist == nil:
		return nil, errors.New("replicate: local protection needs a persister")
	}
	if cfg.FirstEpoch == 0 {
		cfg.FirstEpoch = 1
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Local{cfg: cfg, src: src, gate: gate, log: cfg.Log, epoch: cfg.FirstEpoch - 1, lastSum: time.Now()}, nil
}

// Run makes an epoch durable every interval until ctx ends (it returns
// nil then) or an epoch fails (the VM is left paused if it was, its
// output held). A VM that can no longer be paused (it stopped) ends Run
// with an error wrapping the source's; Finish then makes its last epoch
// durable.
func (l *Local) Run(ctx context.Context) error {
	tick := time.NewTicker(l.cfg.Epoch)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := l.runEpoch(true); err != nil {
				return err
			}
		}
	}
}

// Finish makes the last epoch of a VM that stopped durable and releases
// its output. Call it once Run has returned.
func (l *Local) Finish() error { return l.runEpoch(false) }

// runEpoch makes the next epoch durable: pausing the VM first, or, for a
// VM that stopped, as it is.
func (l *Local) runEpoch(pause bool) error {
	e := l.epoch + 1
	rec := &EpochTrace{Epoch: e, Time: time.Now(), Mode: "local"}
	t0 := rec.Time
	if pause {
		l.gate.BeginPause()
		if err := l.src.Pause(); err != nil {
			l.gate.EndPause()
			return fmt.Errorf("%w: %w", errSourcePause, err)
		}
	}
	var err error
	l.pages, err = l.src.HarvestDirty(l.pages[:0])
	var state []byte
	if err == nil {
		state, err = l.src.CaptureState()
	}
	if err != nil {
		return fmt.Errorf("replicate: epoch %d: %w", e, err) // paused: nothing may leave
	}
	l.gate.Seal(e)
	if err := l.cfg.Persist.Stage(e, l.pages, l.src.Memory(), state); err != nil {
		return fmt.Errorf("replicate: persisting epoch %d: %w", e, err)
	}
	l.epoch = e
	if pause {
		l.src.Resume()
		l.gate.EndPause()
	}
	rec.Pause.Harvest = time.Since(t0)
	rec.Pause.Total = rec.Pause.Harvest
	// The record carries the dirty pages themselves: nothing is grouped.
	rec.DirtyPages, rec.TransferredPages, rec.StateBytes = len(l.pages), uint64(len(l.pages)), len(state)
	if ds, ok := l.src.(DiskWriteSizer); ok {
		rec.DiskBytes = ds.DiskWriteBytes()
	}
	if err := l.cfg.Persist.Sync(); err != nil {
		return fmt.Errorf("replicate: persisting epoch %d: %w", e, err) // its output held
	}
	rec.Durable = time.Since(t0)
	l.committed.Store(e)
	if err := l.gate.Release(e); err != nil {
		l.log.Warn("guest output", "err", err)
	}
	if err := l.cfg.Trace.Write(rec); err != nil {
		l.log.Warn("trace", "err", err)
	}
	if l.cfg.Summary != nil {
		l.summary.add(rec)
		if time.Since(l.lastSum) >= time.Second || !pause {
			l.lastSum = time.Now()
			if line := l.summary.line(); line != "" {
				l.cfg.Summary(line)
			}
		}
	}
	return nil
}

// Committed is the last epoch made durable, its output released.
func (l *Local) Committed() uint64 { return l.committed.Load() }

// localSummary sums up a second of durable epochs in a line: the dirty
// pages, the VM's pause and the time until the epoch was durable (its
// output released), from the pause's start.
type localSummary struct {
	epochs, pages   int
	paused, durable []time.Duration
}

func (s *localSummary) add(rec *EpochTrace) {
	s.epochs++
	s.pages += rec.DirtyPages
	s.paused = append(s.paused, rec.Pause.Total)
	s.durable = append(s.durable, rec.Durable)
}

func (s *localSummary) line() string {
	if s.epochs == 0 {
		return ""
	}
	pct := func(d []time.Duration, p int) time.Duration {
		slices.Sort(d)
		return d[min(len(d)-1, max(0, (p*len(d)+99)/100-1))].Round(10 * time.Microsecond)
	}
	line := fmt.Sprintf("persisted epochs %d | dirty %d pg/epoch | pause p50 %v p99 %v | durable p50 %v p99 %v",
		s.epochs, s.pages/s.epochs, pct(s.paused, 50), pct(s.paused, 99), pct(s.durable, 50), pct(s.durable, 99))
	*s = localSummary{paused: s.paused[:0], durable: s.durable[:0]}
	return line
}
