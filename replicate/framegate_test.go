package replicate

import (
	"errors"
	"slices"
	"sync"
	"testing"
)

// frameSink records the frames a gate sends.
type frameSink struct {
	mu     sync.Mutex
	frames []string
	fail   error
}

func (s *frameSink) send(f []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.frames = append(s.frames, string(f))
	return s.fail
}

func (s *frameSink) got() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.frames)
}

// TestFrameGateHoldsUntilCommit checks the output commit rule for frames,
// step by step: a frame leaves only once its epoch is released, epochs go
// out in order, releasing an epoch releases the earlier ones, and a Seal
// that does not advance the epoch releases nothing early.
func TestFrameGateHoldsUntilCommit(t *testing.T) {
	sink := &frameSink{}
	g := NewFrameGate(sink.send, 0)
	step := func(what string, want ...string) {
		t.Helper()
		if got := sink.got(); !slices.Equal(got, want) {
			t.Fatalf("%s: sent %q, want %q", what, got, want)
		}
	}
	g.WriteFrame([]byte("a1"))
	g.WriteFrame([]byte("a2"))
	step("before any seal")
	g.Seal(1)
	g.WriteFrame([]byte("b1"))
	step("epoch 1 sealed, not committed")
	g.Release(0)
	step("an older epoch released")
	g.Seal(1) // not an advance: b1 stays open
	g.Release(1)
	step("epoch 1 committed", "a1", "a2")
	g.Seal(2)
	g.WriteFrame([]byte("c1"))
	g.Seal(3)
	g.Release(3)
	step("epoch 3 committed, releasing 2 with it", "a1", "a2", "b1", "c1")
	if g.Held() != 0 {
		t.Errorf("held %d bytes after everything was released", g.Held())
	}
	// After Close, writes fail and held frames still go out.
	g.WriteFrame([]byte("d1"))
	g.Seal(4)
	g.Close()
	if err := g.WriteFrame([]byte("x")); !errors.Is(err, ErrGateClosed) {
		t.Errorf("write after Close: %v", err)
	}
	g.Release(4)
	step("released after Close", "a1", "a2", "b1", "c1", "d1")
}

// TestFrameGateBackpressure checks that a full gate refuses frames without
// blocking, takes them again after a release has made room, and says so
// once per refusal.
func TestFrameGateBackpressure(t *testing.T) {
	sink := &frameSink{}
	g := NewFrameGate(sink.send, 10)
	notified := 0
	g.NotifyWritable(func() { notified++ })
	if err := g.WriteFrame(make([]byte, 20)); err != nil {
		t.Fatalf("an empty gate refused a frame over its limit: %v", err)
	}
	if err := g.WriteFrame([]byte("x")); !errors.Is(err, ErrGateFull) {
		t.Fatalf("a full gate took a frame: %v", err)
	}
	g.Seal(1)
	if err := g.WriteFrame([]byte("x")); !errors.Is(err, ErrGateFull) {
		t.Fatalf("sealing made room: %v", err)
	}
	g.Release(1)
	if notified != 1 {
		t.Fatalf("writable notified %d times after the release, want 1", notified)
	}
	if err := g.WriteFrame([]byte("0123456789")); err != nil {
		t.Fatalf("after the release: %v", err)
	}
	g.Seal(2)
	g.Release(2)
	if notified != 1 {
		t.Errorf("writable notified %d times without a refusal in between, want still 1", notified)
	}
	if got := sink.got(); len(got) != 2 {
		t.Errorf("sent %d frames, want the two taken", len(got))
	}
}

// A send error is reported, the frames after it still go out, and the
// gate is not left holding them.
func TestFrameGateSendErrors(t *testing.T) {
	sink := &frameSink{fail: errors.New("tap down")}
	g := NewFrameGate(sink.send, 0)
	g.WriteFrame([]byte("a"))
	g.WriteFrame([]byte("b"))
	g.Seal(1)
	if err := g.Release(1); err == nil {
		t.Error("the send error was lost")
	}
	if got := sink.got(); len(got) != 2 || g.Held() != 0 {
		t.Errorf("sent %q, held %d", got, g.Held())
	}
}

// Gates drives every gate it holds.
func TestGatesDriveEachGate(t *testing.T) {
	var console syncBuffer
	out := NewOutputGate(&console, 0)
	sink := &frameSink{}
	frames := NewFrameGate(sink.send, 0)
	gs := Gates{out, frames}
	out.Write([]byte("serial"))
	frames.WriteFrame([]byte("frame"))
	gs.BeginPause()
	gs.Seal(1)
	gs.EndPause()
	if err := gs.Release(1); err != nil {
		t.Fatal(err)
	}
	if console.String() != "serial" || !slices.Equal(sink.got(), []string{"frame"}) {
		t.Errorf("console %q, frames %q", console.String(), sink.got())
	}
}
