package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

// A replicated Linux guest's state, as the primary sends it every epoch,
// carries the guest's virtio devices ahead of the VM state, so that the
// leader can rebuild them before it restores the state that includes
// theirs:
//
//	"TNDMLNX1" | u32 length of the JSON | JSON []vmm.VirtioConfig | vmm state
//
// A flat guest's state is the VM state alone.
const linuxStateMagic = "TNDMLNX1"

// maxLinuxStateDevices bounds the JSON a leader accepts, far above what
// any guest has.
const maxLinuxStateDevices = 64 << 10

// linuxSource is a replication source for a Linux guest: the VM's, with
// the devices in front of every state it captures.
type linuxSource struct {
	*vmm.ReplicationSource
	head []byte // magic, length and JSON, encoded once
}

func newLinuxSource(src *vmm.ReplicationSource, virtio []vmm.VirtioConfig) (*linuxSource, error) {
	js, err := json.Marshal(virtio)
	if err != nil {
		return nil, fmt.Errorf("encode the virtio devices: %w", err)
	}
	head := append([]byte(linuxStateMagic), binary.LittleEndian.AppendUint32(nil, uint32(len(js)))...)
	return &linuxSource{ReplicationSource: src, head: append(head, js...)}, nil
}

func (s *linuxSource) CaptureState() ([]byte, error) {
	st, err := s.ReplicationSource.CaptureState()
	if err != nil {
		return nil, err
	}
	return append(append(make([]byte, 0, len(s.head)+len(st)), s.head...), st...), nil
}

var _ replicate.Source = (*linuxSource)(nil)

// splitHAState separates a recovered state into the Linux guest's devices
// and the VM state; a flat guest's state comes back whole, with no
// devices and linux false.
func splitHAState(b []byte) (virtio []vmm.VirtioConfig, state []byte, linux bool, err error) {
	if !bytes.HasPrefix(b, []byte(linuxStateMagic)) {
		return nil, b, false, nil
	}
	rest := b[len(linuxStateMagic):]
	if len(rest) < 4 {
		return nil, nil, true, fmt.Errorf("%w: Linux guest state of %d bytes", vmm.ErrSnapshot, len(b))
	}
	n := binary.LittleEndian.Uint32(rest)
	if n > maxLinuxStateDevices || uint64(n) > uint64(len(rest)-4) {
		return nil, nil, true, fmt.Errorf("%w: Linux guest state names %d bytes of devices in %d", vmm.ErrSnapshot, n, len(rest)-4)
	}
	if err := json.Unmarshal(rest[4:4+n], &virtio); err != nil {
		return nil, nil, true, fmt.Errorf("%w: the Linux guest's devices: %v", vmm.ErrSnapshot, err)
	}
	return virtio, rest[4+n:], true, nil
}
