package virtio

import (
	"log/slog"

	"github.com/tandemvm/tandem/devices"
)

// DeviceType is a virtio device ID (virtio 1.x, 5).
type DeviceType uint32

// Device types Tandem implements.
const (
	TypeNet     DeviceType = 1
	TypeBlock   DeviceType = 2
	TypeConsole DeviceType = 3
	TypeRNG     DeviceType = 4
)

func (t DeviceType) String() string {
	switch t {
	case TypeNet:
		return "net"
	case TypeBlock:
		return "blk"
	case TypeConsole:
		return "console"
	case TypeRNG:
		return "rng"
	}
	return "unknown"
}

// Feature bits the transport handles for every device.
const (
	FeatureIndirectDesc = 1 << 28 // VIRTIO_RING_F_INDIRECT_DESC
	FeatureVersion1     = 1 << 32 // VIRTIO_F_VERSION_1
)

// Device is a virtio device model behind a transport. The transport owns
// the registers, feature negotiation, queue configuration and interrupts;
// the device owns what the queues carry.
//
// Concurrency: the transport calls Activate, Reset and the config methods
// from vCPU goroutines under its own lock, and QueueNotify from whichever
// goroutine learned of the notification (a vCPU on an MMIO exit, or the
// VMM's ioeventfd reader). Devices serialise their queue processing
// themselves.
type Device interface {
	Type() DeviceType
	// Features are the device-specific feature bits offered; the
	// transport adds VIRTIO_F_VERSION_1 and VIRTIO_RING_F_INDIRECT_DESC.
	Features() uint64
	// QueueSizes are the maximum sizes of the device's queues; their
	// number is the number of queues.
	QueueSizes() []uint16
	// ReadConfig fills p from the device configuration space at off;
	// bytes past its end read as zero.
	ReadConfig(off uint64, p []byte)
	// WriteConfig writes the device configuration space (most devices
	// ignore it).
	WriteConfig(off uint64, p []byte)
	// Activate starts the device when the driver sets DRIVER_OK.
	Activate(env *Env) error
	// QueueNotify says that the driver made buffers available in queue i.
	QueueNotify(i int)
	// Reset stops the device's queue processing and forgets the queues.
	// When it returns, no goroutine of the device touches guest memory.
	Reset()
}

// Env is what an activated device works with.
type Env struct {
	Mem      devices.GuestMemory
	Queues   []*Queue
	Features uint64 // negotiated
	Log      *slog.Logger
	// Broken reports that the device cannot go on (a queue is unusable):
	// the transport sets DEVICE_NEEDS_RESET and tells the driver.
	Broken func(err error)
}

// Interrupt raises a device's interrupt. The VMM implements it with an
// irqfd bound to the device's IOAPIC pin (an edge per call); tests count
// the calls.
type Interrupt interface {
	Trigger() error
}
