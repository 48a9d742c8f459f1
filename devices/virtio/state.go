package virtio

import (
	"encoding/binary"
	"fmt"

	"github.com/tandemvm/tandem/devices"
)

// Pauser is implemented by devices that can hold their queue processing:
// between Pause and Resume the device touches neither guest memory nor its
// queues. Every device in this package implements it.
type Pauser interface {
	Pause()
	Resume()
}

// Pause holds the device's queue processing (if it implements Pauser), so
// that guest memory and the transport state stay still: for snapshots and
// replication, together with pausing the vCPUs. Pauses nest.
func (t *MMIO) Pause() {
	t.pauseMu.Lock()
	defer t.pauseMu.Unlock()
	t.pauseDepth++
	if p, ok := t.dev.(Pauser); ok && t.pauseDepth == 1 {
		p.Pause()
	}
}

// Resume undoes one Pause.
func (t *MMIO) Resume() {
	t.pauseMu.Lock()
	defer t.pauseMu.Unlock()
	if t.pauseDepth == 0 {
		return
	}
	t.pauseDepth--
	if p, ok := t.dev.(Pauser); ok && t.pauseDepth == 0 {
		p.Resume()
	}
}

// Paused reports whether the transport is held by at least one Pause.
func (t *MMIO) Paused() bool {
	t.pauseMu.Lock()
	defer t.pauseMu.Unlock()
	return t.pauseDepth > 0
}

// StateName implements devices.Stateful: "virtio-<type>@<base>".
func (t *MMIO) StateName() string { return fmt.Sprintf("virtio-%v@%#x", t.dev.Type(), t.base) }

const (
	mmioStateVersion = 1
	mmioStateHeader  = 1 + 4 + 1 + 8 + 4 + 4 + 4 + 4 + 4 + 2
	mmioStateQueue   = 2 + 1 + 8 + 8 + 8 + 2 + 2
)

// SaveState implements devices.Stateful. The encoding (version 1, little
// endian): version u8, status u32, needs-reset u8, driver features u64,
// device and driver feature selectors u32, queue selector u32, interrupt
// status u32, config generation u32, queue count u16, then per queue:
// size u16, ready u8, descriptor, driver and device ring addresses u64,
// last available index u16, used index u16.
//
// The device's own position in its queues is read with the device paused,
// so it matches guest memory if the vCPUs are paused too.
func (t *MMIO) SaveState() ([]byte, error) {
	// Lock order: the transport, then the device (as Reset does).
	t.mu.Lock()
	defer t.mu.Unlock()
	t.Pause()
	defer t.Resume()
	b := make([]byte, 0, mmioStateHeader+len(t.queues)*mmioStateQueue)
	le := binary.LittleEndian
	b = append(b, mmioStateVersion)
	b = le.AppendUint32(b, t.status)
	b = append(b, boolByte(t.needsReset.Load()))
	b = le.AppendUint64(b, t.driverFeatures)
	b = le.AppendUint32(b, t.deviceFeatSel)
	b = le.AppendUint32(b, t.driverFeatSel)
	b = le.AppendUint32(b, t.queueSel)
	b = le.AppendUint32(b, t.interruptStatus.Load())
	b = le.AppendUint32(b, t.configGen)
	b = le.AppendUint16(b, uint16(len(t.queues)))
	for i, q := range t.queues {
		last, used := q.lastAvail, q.usedIdx
		if t.active != nil && t.active.Queues[i] != nil {
			last, used = t.active.Queues[i].Position()
		}
		b = le.AppendUint16(b, q.size)
		b = append(b, boolByte(q.ready))
		b = le.AppendUint64(b, q.desc)
		b = le.AppendUint64(b, q.avail)
		b = le.AppendUint64(b, q.used)
		b = le.AppendUint16(b, last)
		b = le.AppendUint16(b, used)
	}
	return b, nil
}

// LoadState implements devices.Stateful: it resets the device, loads the
// registers and queues, and restarts the device if the saved driver had
// set DRIVER_OK.
func (t *MMIO) LoadState(b []byte) error {
	name := t.StateName()
	if len(b) == 0 {
		return fmt.Errorf("%w: %s: empty state", devices.ErrBadState, name)
	}
	if b[0] != mmioStateVersion {
		return fmt.Errorf("%w: %s: unsupported version %d (want %d)", devices.ErrBadState, name, b[0], mmioStateVersion)
	}
	if len(b) < mmioStateHeader {
		return fmt.Errorf("%w: %s: %d bytes, shorter than the %d-byte header", devices.ErrBadState, name, len(b), mmioStateHeader)
	}
	le := binary.LittleEndian
	nq := int(le.Uint16(b[mmioStateHeader-2:]))
	if nq != len(t.dev.QueueSizes()) {
		return fmt.Errorf("%w: %s: state has %d queues, the device %d", devices.ErrBadState, name, nq, len(t.dev.QueueSizes()))
	}
	if want := mmioStateHeader + nq*mmioStateQueue; len(b) != want {
		return fmt.Errorf("%w: %s: %d bytes, want %d", devices.ErrBadState, name, len(b), want)
	}
	if b[5] > 1 {
		return fmt.Errorf("%w: %s: needs-reset flag %d", devices.ErrBadState, name, b[5])
	}
	status := le.Uint32(b[1:])
	features := le.Uint64(b[6:])
	if features&^t.features() != 0 {
		return fmt.Errorf("%w: %s: negotiated features %#x include some this device does not offer", devices.ErrBadState, name, features)
	}
	queues := make([]queueConfig, nq)
	sizes := t.dev.QueueSizes()
	for i := range queues {
		p := b[mmioStateHeader+i*mmioStateQueue:]
		q := queueConfig{
			max: sizes[i], size: le.Uint16(p[0:]), ready: p[2] == 1,
			desc: le.Uint64(p[3:]), avail: le.Uint64(p[11:]), used: le.Uint64(p[19:]),
			lastAvail: le.Uint16(p[27:]), usedIdx: le.Uint16(p[29:]),
		}
		if p[2] > 1 {
			return fmt.Errorf("%w: %s: queue %d ready flag %d", devices.ErrBadState, name, i, p[2])
		}
		if q.ready {
			cand := Queue{Size: q.size, DescAddr: q.desc, AvailAddr: q.avail, UsedAddr: q.used}
			if err := cand.Validate(q.max); err != nil {
				return fmt.Errorf("%w: %s: queue %d: %v", devices.ErrBadState, name, i, err)
			}
		}
		queues[i] = q
	}

	// A paused device holds its own lock until Resume (Pauser), and the
	// reset and restart below need it: it is lent to them. The caller has
	// the vCPUs still, so only the device's host-side threads could run
	// meanwhile, as they do on a restore into a VM that never ran; the
	// device is paused again before LoadState returns.
	t.pauseMu.Lock()
	defer t.pauseMu.Unlock()
	if p, ok := t.dev.(Pauser); ok && t.pauseDepth > 0 {
		p.Resume()
		defer p.Pause()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.deactivateLocked()
	t.resetLocked()
	t.status = status &^ StatusDeviceNeedsReset
	t.needsReset.Store(b[5] == 1)
	t.driverFeatures = features
	t.deviceFeatSel = le.Uint32(b[14:])
	t.driverFeatSel = le.Uint32(b[18:])
	t.queueSel = le.Uint32(b[22:])
	t.interruptStatus.Store(le.Uint32(b[26:]))
	t.configGen = le.Uint32(b[30:])
	t.queues = queues
	if t.status&StatusDriverOK != 0 && t.status&StatusFeaturesOK != 0 {
		t.activateLocked()
	}
	return nil
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}
