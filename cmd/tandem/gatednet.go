package main

import (
	"errors"
	"fmt"

	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/replicate"
)

// gatedNet is a virtio-net backend whose transmitted frames wait in a
// replicate.FrameGate for their epoch to commit, while received frames come
// straight from the TAP. A full gate is back-pressure on the device.
type gatedNet struct {
	virtio.NetBackend // reads and Close
	gate              *replicate.FrameGate
}

// newGatedNet puts the transmit side of be behind a gate holding at most
// limit bytes; the gate sends committed frames to be.
func newGatedNet(be virtio.NetBackend, limit int) *gatedNet {
	return &gatedNet{NetBackend: be, gate: replicate.NewFrameGate(be.WriteFrame, limit)}
}

func (n *gatedNet) WriteFrame(p []byte) error {
	err := n.gate.WriteFrame(p)
	if errors.Is(err, replicate.ErrGateFull) {
		return fmt.Errorf("%w: %w", virtio.ErrBackpressure, err)
	}
	return err
}

func (n *gatedNet) NotifyWritable(fn func()) { n.gate.NotifyWritable(fn) }

func (n *gatedNet) Close() error {
	n.gate.Close()
	return n.NetBackend.Close()
}
