package virtio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/tandemvm/tandem/devices"
)

// virtio-mmio register offsets (virtio 1.x, 4.2.2), version 2 ("modern").
const (
	RegMagic             = 0x000
	RegVersion           = 0x004
	RegDeviceID          = 0x008
	RegVendorID          = 0x00C
	RegDeviceFeatures    = 0x010
	RegDeviceFeaturesSel = 0x014
	RegDriverFeatures    = 0x020
	RegDriverFeaturesSel = 0x024
	RegQueueSel          = 0x030
	RegQueueNumMax       = 0x034
	RegQueueNum          = 0x038
	RegQueueReady        = 0x044
	RegQueueNotify       = 0x050
	RegInterruptStatus   = 0x060
	RegInterruptACK      = 0x064
	RegStatus            = 0x070
	RegQueueDescLow      = 0x080
	RegQueueDescHigh     = 0x084
	RegQueueDriverLow    = 0x090
	RegQueueDriverHigh   = 0x094
	RegQueueDeviceLow    = 0x0A0
	RegQueueDeviceHigh   = 0x0A4
	RegSHMSel            = 0x0AC
	RegSHMLenLow         = 0x0B0
	RegSHMLenHigh        = 0x0B4
	RegSHMBaseLow        = 0x0B8
	RegSHMBaseHigh       = 0x0BC
	RegConfigGeneration  = 0x0FC
	RegConfig            = 0x100

	// MMIOSize is the size of one device's register window.
	MMIOSize = 0x1000

	mmioMagic   = 0x74726976 // "virt"
	mmioVersion = 2
	// VendorID is "TNDM" as a little-endian u32.
	VendorID = 0x4D444E54
)

// Device status bits (virtio 1.x, 2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 64
	StatusFailed           = 128
)

// Interrupt status bits.
const (
	IntUsedBuffer    = 1
	IntConfigChanged = 2
)

// MMIO is the virtio-mmio transport of one device: the register window the
// guest's virtio_mmio driver programs (found through a
// virtio_mmio.device=<size>@<addr>:<irq> kernel parameter), feature
// negotiation, queue setup, and the interrupt.
//
// It implements devices.MMIODevice (register it at its base address) and
// devices.Stateful.
type MMIO struct {
	base uint64
	dev  Device
	mem  devices.GuestMemory
	irq  Interrupt
	log  *slog.Logger

	// mu guards the registers and activation. Device goroutines never
	// take it (Reset waits for them while holding it): what they touch,
	// the interrupt status and the needs-reset flag, is atomic.
	mu             sync.Mutex
	deviceFeatSel  uint32
	driverFeatSel  uint32
	driverFeatures uint64
	queueSel       uint32
	status         uint32 // without DEVICE_NEEDS_RESET, which is needsReset
	configGen      uint32
	queues         []queueConfig
	active         *Env // non-nil between DRIVER_OK and reset

	interruptStatus atomic.Uint32
	needsReset      atomic.Bool
	live            atomic.Pointer[Env] // = active, for lock-free readers

	pauseMu    sync.Mutex // see Pause
	pauseDepth int
}

// queueConfig is one queue's registers as the driver wrote them.
type queueConfig struct {
	max                uint16
	size               uint16
	ready              bool
	desc, avail, used  uint64
	lastAvail, usedIdx uint16 // saved positions (state restore)
}

// NewMMIO returns the transport of dev with its registers at base; device
// memory accesses go to mem and interrupts to irq. log may be nil.
func NewMMIO(base uint64, dev Device, mem devices.GuestMemory, irq Interrupt, log *slog.Logger) *MMIO {
	if log == nil {
		log = slog.Default()
	}
	t := &MMIO{base: base, dev: dev, mem: mem, irq: irq, log: log.With("device", fmt.Sprintf("virtio-%v@%#x", dev.Type(), base))}
	t.resetLocked()
	return t
}

// Base is the guest-physical address of the register window.
func (t *MMIO) Base() uint64 { return t.base }

// Device is the device behind the transport.
func (t *MMIO) Device() Device { return t.dev }

// features is everything offered: the device's bits plus the transport's.
func (t *MMIO) features() uint64 {
	return t.dev.Features() | FeatureVersion1 | FeatureIndirectDesc
}

func (t *MMIO) resetLocked() {
	sizes := t.dev.QueueSizes()
	t.queues = make([]queueConfig, len(sizes))
	for i, s := range sizes {
		t.queues[i] = queueConfig{max: s}
	}
	t.deviceFeatSel, t.driverFeatSel, t.driverFeatures = 0, 0, 0
	t.queueSel, t.status = 0, 0
	t.interruptStatus.Store(0)
	t.needsReset.Store(false)
}

// ReadMMIO implements devices.MMIODevice.
func (t *MMIO) ReadMMIO(addr uint64, data []byte) error {
	off := addr - t.base
	if off >= RegConfig {
		t.dev.ReadConfig(off-RegConfig, data)
		return nil
	}
	clear(data)
	if len(data) != 4 || off%4 != 0 {
		t.log.Debug("virtio-mmio: unaligned or non-32-bit register read ignored", "offset", off, "size", len(data))
		return nil
	}
	t.mu.Lock()
	v := t.readReg(off)
	t.mu.Unlock()
	binary.LittleEndian.PutUint32(data, v)
	return nil
}

func (t *MMIO) readReg(off uint64) uint32 {
	q := t.selected()
	switch off {
	case RegMagic:
		return mmioMagic
	case RegVersion:
		return mmioVersion
	case RegDeviceID:
		return uint32(t.dev.Type())
	case RegVendorID:
		return VendorID
	case RegDeviceFeatures:
		if t.deviceFeatSel < 2 {
			return uint32(t.features() >> (32 * t.deviceFeatSel))
		}
	case RegQueueNumMax:
		if q != nil {
			return uint32(q.max)
		}
	case RegQueueReady:
		if q != nil && q.ready {
			return 1
		}
	case RegInterruptStatus:
		return t.interruptStatus.Load()
	case RegStatus:
		if t.needsReset.Load() {
			return t.status | StatusDeviceNeedsReset
		}
		return t.status
	case RegSHMLenLow, RegSHMLenHigh, RegSHMBaseLow, RegSHMBaseHigh:
		return 0xFFFFFFFF // no shared memory regions
	case RegConfigGeneration:
		return t.configGen
	}
	return 0
}

// selected is the queue QueueSel names, or nil.
func (t *MMIO) selected() *queueConfig {
	if int(t.queueSel) < len(t.queues) {
		return &t.queues[t.queueSel]
	}
	return nil
}

// WriteMMIO implements devices.MMIODevice.
func (t *MMIO) WriteMMIO(addr uint64, data []byte) error {
	off := addr - t.base
	if off >= RegConfig {
		t.dev.WriteConfig(off-RegConfig, data)
		return nil
	}
	if len(data) != 4 || off%4 != 0 {
		t.log.Debug("virtio-mmio: unaligned or non-32-bit register write ignored", "offset", off, "size", len(data))
		return nil
	}
	v := binary.LittleEndian.Uint32(data)
	if off == RegQueueNotify {
		// Without an ioeventfd the notification arrives here.
		t.Notify(int(v & 0xFFFF))
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.writeReg(off, v)
	return nil
}

func (t *MMIO) writeReg(off uint64, v uint32) {
	q := t.selected()
	// Queue registers may change only while the queue is disabled and the
	// device not yet live.
	queueWritable := q != nil && !q.ready && t.status&StatusDriverOK == 0
	switch off {
	case RegDeviceFeaturesSel:
		t.deviceFeatSel = v
	case RegDriverFeaturesSel:
		t.driverFeatSel = v
	case RegDriverFeatures:
		if t.status&(StatusFeaturesOK|StatusDriverOK) != 0 {
			return
		}
		switch t.driverFeatSel {
		case 0:
			t.driverFeatures = t.driverFeatures&^0xFFFFFFFF | uint64(v)
		case 1:
			t.driverFeatures = t.driverFeatures&0xFFFFFFFF | uint64(v)<<32
		}
	case RegQueueSel:
		t.queueSel = v
	case RegQueueNum:
		if queueWritable {
			q.size = uint16(min(v, MaxQueueSize+1))
		}
	case RegQueueReady:
		if q == nil {
			return
		}
		switch {
		case v == 0:
			q.ready = false
		case queueWritable:
			cand := Queue{Size: q.size, DescAddr: q.desc, AvailAddr: q.avail, UsedAddr: q.used}
			if err := cand.Validate(q.max); err != nil {
				t.log.Warn("virtio-mmio: driver enabled a misconfigured queue; leaving it disabled", "queue", t.queueSel, "err", err)
				return
			}
			q.ready = true
		}
	case RegInterruptACK:
		t.interruptStatus.And(^v)
	case RegStatus:
		t.writeStatus(v)
	case RegQueueDescLow:
		if queueWritable {
			setLow32(&q.desc, v)
		}
	case RegQueueDescHigh:
		if queueWritable {
			setHigh32(&q.desc, v)
		}
	case RegQueueDriverLow:
		if queueWritable {
			setLow32(&q.avail, v)
		}
	case RegQueueDriverHigh:
		if queueWritable {
			setHigh32(&q.avail, v)
		}
	case RegQueueDeviceLow:
		if queueWritable {
			setLow32(&q.used, v)
		}
	case RegQueueDeviceHigh:
		if queueWritable {
			setHigh32(&q.used, v)
		}
	case RegSHMSel:
	default:
		t.log.Debug("virtio-mmio: write to read-only or unknown register ignored", "offset", off)
	}
}

// writeStatus follows the driver through initialisation (virtio 1.x,
// 3.1.1): 0 resets; FEATURES_OK is kept only if the driver accepted a
// subset of the offered features including VERSION_1; DRIVER_OK starts the
// device.
func (t *MMIO) writeStatus(v uint32) {
	if v == 0 {
		t.deactivateLocked()
		t.resetLocked()
		return
	}
	v &^= StatusDeviceNeedsReset // the device's bit, not the driver's
	old := t.status
	if v&^old&StatusFeaturesOK != 0 {
		offered := t.features()
		switch {
		case t.driverFeatures&^offered != 0:
			t.log.Warn("virtio-mmio: driver accepted features the device does not offer", "extra", fmt.Sprintf("%#x", t.driverFeatures&^offered))
			v &^= StatusFeaturesOK
		case t.driverFeatures&FeatureVersion1 == 0:
			t.log.Warn("virtio-mmio: legacy driver (no VIRTIO_F_VERSION_1); only virtio 1.x is supported")
			v &^= StatusFeaturesOK
		}
	}
	t.status = v
	if v&^old&StatusDriverOK != 0 && v&StatusFeaturesOK != 0 && t.active == nil {
		t.activateLocked()
	}
}

func (t *MMIO) activateLocked() {
	env := &Env{Mem: t.mem, Features: t.driverFeatures, Log: t.log}
	indirect := t.driverFeatures&FeatureIndirectDesc != 0
	for i := range t.queues {
		qc := &t.queues[i]
		var q *Queue
		if qc.ready {
			q = NewQueue(t.mem, qc.size, qc.desc, qc.avail, qc.used, indirect, t.signalUsed)
			q.SetPosition(qc.lastAvail, qc.usedIdx)
		}
		env.Queues = append(env.Queues, q)
	}
	env.Broken = func(err error) { t.broken(env, err) }
	if err := t.dev.Activate(env); err != nil {
		t.log.Error("virtio-mmio: device failed to start", "err", err)
		t.needsReset.Store(true)
		t.interruptStatus.Or(IntConfigChanged)
		t.trigger()
		return
	}
	t.active = env
	t.live.Store(env)
}

func (t *MMIO) deactivateLocked() {
	if t.active != nil {
		t.live.Store(nil)
		t.dev.Reset()
		t.active = nil
	}
}

// broken is Env.Broken: the device hit an unusable queue.
func (t *MMIO) broken(env *Env, err error) {
	if t.live.Load() != env || t.needsReset.Swap(true) {
		return
	}
	t.log.Error("virtio-mmio: device needs reset", "err", err)
	t.interruptStatus.Or(IntConfigChanged)
	t.trigger()
}

// Notify delivers a queue notification (from the QueueNotify register or
// the VMM's ioeventfd) to the device if it is live. The device must ignore
// a notification that races with its reset.
func (t *MMIO) Notify(queue int) {
	env := t.live.Load()
	if env == nil || queue < 0 || queue >= len(env.Queues) || env.Queues[queue] == nil || t.needsReset.Load() {
		return
	}
	t.dev.QueueNotify(queue)
}

// signalUsed is every queue's interrupt: used buffers are available.
func (t *MMIO) signalUsed() {
	t.interruptStatus.Or(IntUsedBuffer)
	t.trigger()
}

// changeConfig runs change, which alters the device's configuration space,
// with the device's queue processing held (no request in flight, as for a
// snapshot), then moves the configuration generation on and, if the driver
// is live, raises the configuration-change interrupt. The generation moves
// under the transport's lock, as the driver reads it: a driver that read
// the generation, then the configuration, then the generation again, saw
// either all of the old configuration or all of the new.
func (t *MMIO) changeConfig(change func()) {
	// Lock order: the transport, then the device (as SaveState).
	t.mu.Lock()
	t.Pause()
	change()
	t.Resume()
	t.configGen++
	live := t.active != nil
	t.mu.Unlock()
	if live {
		t.interruptStatus.Or(IntConfigChanged)
		t.trigger()
	}
}

func (t *MMIO) trigger() {
	if t.irq == nil {
		return
	}
	if err := t.irq.Trigger(); err != nil {
		t.log.Error("virtio-mmio: raise interrupt", "err", err)
	}
}

// Close resets the device, stopping its work.
func (t *MMIO) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.deactivateLocked()
	return nil
}

// setLow32 and setHigh32 write one half of a 64-bit address that the
// driver programs through two 32-bit registers.
func setLow32(x *uint64, v uint32)  { *x = *x&^0xFFFFFFFF | uint64(v) }
func setHigh32(x *uint64, v uint32) { *x = *x&0xFFFFFFFF | uint64(v)<<32 }
