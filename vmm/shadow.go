package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

// ErrShadowExited is wrapped by the errors of a Shadow whose guest stopped
// on its own (it shut down, wrote to the debug-exit port, reset or failed):
// the shadow cannot run again and should be closed.
var ErrShadowExited = errors.New("vmm: the shadow VM stopped on its own")

// ErrShadowClosed is returned by a Shadow's Run and Stop after Close.
var ErrShadowClosed = errors.New("vmm: the shadow VM is closed")

// ShadowConfig describes a Shadow to create.
type ShadowConfig struct {
	// MemBytes is the size of the shadow's guest RAM: that of the VM it
	// copies.
	MemBytes uint64
	// VCPUs is the number of vCPUs, that of the VM it copies.
	VCPUs int
	// Log receives the shadow VM's diagnostics; nil means slog.Default().
	Log *slog.Logger
	// Devices, when set, is called once after the VM is created and before
	// the first state is restored, to add the devices the states name (such
	// as virtio devices). Flat guests need none.
	Devices func(*VM) error
}

// Shadow is a copy of a VM that a replication node runs itself, from the
// states and memory of committed epochs, while the primary runs on
// (replicate.Shadow). It owns a VM with dirty-page tracking, the goroutine
// that runs it, and the set the pages it writes are harvested into. Its
// guest memory is written by the caller only while it is stopped; its
// serial output is discarded. The methods may be called from several
// goroutines.
type Shadow struct {
	vm  *VM
	set *DirtySet

	// mu serialises Run, Stop and Close and guards what follows.
	mu sync.Mutex
	// started: VM.Run is running in its goroutine (or has returned).
	started bool
	// running: the guest runs (Run resumed it and Stop has not paused it).
	running bool
	closed  bool
	cancel  context.CancelFunc
	// done is closed when VM.Run has returned, with res and runErr set.
	done   chan struct{}
	res    Result
	runErr error
}

// NewShadow creates a stopped shadow VM as cfg describes: anonymous guest
// RAM of cfg.MemBytes, tracked with the dirty bitmap, and cfg.VCPUs vCPUs.
// Nothing runs until Run.
func NewShadow(cfg ShadowConfig) (*Shadow, error) {
	vm, err := New(Config{
		Memory: MemoryConfig{Bytes: cfg.MemBytes},
		VCPUs:  cfg.VCPUs,
		Dirty:  DirtyBitmap,
		Logger: cfg.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("vmm: shadow: %w", err)
	}
	if cfg.Devices != nil {
		if err := cfg.Devices(vm); err != nil {
			vm.Close()
			return nil, fmt.Errorf("vmm: shadow devices: %w", err)
		}
	}
	return &Shadow{vm: vm, set: NewDirtySet(vm.mem.Pages()), done: make(chan struct{})}, nil
}

// Memory is the shadow's guest RAM. The caller may write it only while the
// shadow is stopped, and not after Close.
func (s *Shadow) Memory() []byte { return s.vm.mem.Bytes() }

// Run loads state, a State as MarshalBinary encodes it (what
// ReplicationSource.CaptureState returns), into the stopped shadow and runs
// the guest from it, with the memory the caller left in Memory. Pages
// written before Run are not reported by the next Stop. A state that cannot
// be decoded or loaded leaves the shadow stopped.
func (s *Shadow) Run(state []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return err
	}
	if s.running {
		return errors.New("vmm: shadow: Run on a running shadow (Stop it first)")
	}
	var st State
	if err := st.UnmarshalBinary(state); err != nil {
		return fmt.Errorf("vmm: shadow: %w", err)
	}
	if err := s.vm.RestoreState(&st); err != nil {
		return fmt.Errorf("vmm: shadow: %w", err)
	}
	// Forget what was written before this run: the caller's copies do not
	// reach KVM's log, but device models' writes and anything left from
	// the previous run would.
	if err := s.vm.HarvestDirty(s.set); err != nil {
		return fmt.Errorf("vmm: shadow: %w", err)
	}
	s.set.Reset()
	if !s.started {
		ctx, cancel := context.WithCancel(context.Background())
		s.cancel = cancel
		s.started = true
		go func() {
			defer close(s.done)
			s.res, s.runErr = s.vm.Run(ctx)
		}()
	} else {
		s.vm.Resume()
	}
	s.running = true
	return nil
}

// Stop pauses the shadow and appends to dst the pages (page indices into
// Memory, of PageSize bytes) the guest wrote since Run, in ascending order.
// On a stopped shadow it appends nothing.
func (s *Shadow) Stop(dst []uint64) ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return dst, err
	}
	if !s.running {
		return dst, nil
	}
	if err := s.vm.Pause(); err != nil {
		if errors.Is(err, ErrNotRunning) {
			return dst, s.exitedLocked()
		}
		return dst, fmt.Errorf("vmm: shadow: %w", err)
	}
	s.running = false
	if s.vmStopping() {
		// The guest stopped on its own while the pause took hold.
		return dst, s.exitedLocked()
	}
	s.set.Reset()
	if err := s.vm.HarvestDirty(s.set); err != nil {
		return dst, fmt.Errorf("vmm: shadow: %w", err)
	}
	return s.set.AppendPages(dst), nil
}

// Close stops the shadow for good and releases its VM. It is safe to call
// more than once.
func (s *Shadow) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.running = false
	s.vm.Stop()
	if s.started {
		s.cancel()
		<-s.done
	}
	return s.vm.Close()
}

// usable reports why the shadow cannot run or stop: it was closed, or its
// guest stopped on its own. s.mu is held.
func (s *Shadow) usable() error {
	if s.closed {
		return ErrShadowClosed
	}
	if !s.started {
		return nil
	}
	select {
	case <-s.done:
		return s.exitedLocked()
	default:
		return nil
	}
}

// vmStopping reports whether the VM's run is ending. Only the guest can end
// it while the shadow is open: Close is what stops it otherwise.
func (s *Shadow) vmStopping() bool {
	s.vm.ctl.mu.Lock()
	defer s.vm.ctl.mu.Unlock()
	return s.vm.ctl.stopping
}

// exitedLocked waits for VM.Run to return (it is returning: the guest
// stopped) and says how it ended, wrapping ErrShadowExited. s.mu is held.
func (s *Shadow) exitedLocked() error {
	<-s.done
	s.running = false
	switch {
	case s.runErr != nil:
		return fmt.Errorf("%w: %w", ErrShadowExited, s.runErr)
	case s.res.Kind == ExitGuest:
		return fmt.Errorf("%w: %v with status %d", ErrShadowExited, s.res.Kind, s.res.Code)
	default:
		return fmt.Errorf("%w: %v", ErrShadowExited, s.res.Kind)
	}
}
