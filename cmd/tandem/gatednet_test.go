package main

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/replicate"
)

// countingNet is a NetBackend that records the frames it sends.
type countingNet struct {
	mu     sync.Mutex
	frames [][]byte
	closed chan struct{}
}

func (c *countingNet) ReadFrame(p []byte) (int, error) { <-c.closed; return 0, errors.New("closed") }
func (c *countingNet) Close() error                    { close(c.closed); return nil }
func (c *countingNet) WriteFrame(p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frames = append(c.frames, bytes.Clone(p))
	return nil
}

func (c *countingNet) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.frames)
}

func TestGatedNetSpeaksBothPackages(t *testing.T) {
	tap := &countingNet{closed: make(chan struct{})}
	n := newGatedNet(tap, 4)
	var _ virtio.WritableNotifier = n
	if err := n.WriteFrame([]byte("first")); err != nil {
		t.Fatal(err)
	}
	err := n.WriteFrame([]byte("second"))
	if !errors.Is(err, virtio.ErrBackpressure) || !errors.Is(err, replicate.ErrGateFull) {
		t.Fatalf("a full gate answered %v, want virtio's back-pressure", err)
	}
	if tap.count() != 0 {
		t.Fatal("a frame reached the TAP before its epoch committed")
	}
	n.gate.Seal(1)
	n.gate.Release(1)
	if tap.count() != 1 {
		t.Fatalf("%d frames on the TAP after the commit, want 1", tap.count())
	}
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.WriteFrame([]byte("late")); !errors.Is(err, replicate.ErrGateClosed) {
		t.Errorf("write after Close: %v", err)
	}
}
