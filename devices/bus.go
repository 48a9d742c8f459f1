package devices

import (
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
)

// PortDevice handles x86 port I/O. port is the absolute port; len(data) is
// 1, 2 or 4. A read must fill all of data.
//
// A non-nil error is a VM-level event (see [ExitError], [ErrReset]), not a
// device fault: devices handle and log their own host I/O failures.
type PortDevice interface {
	ReadPort(port uint16, data []byte) error
	WritePort(port uint16, data []byte) error
}

// MMIODevice handles memory-mapped I/O. addr is the absolute guest physical
// address; len(data) is 1, 2, 4 or 8. Errors follow the [PortDevice] rules.
type MMIODevice interface {
	ReadMMIO(addr uint64, data []byte) error
	WriteMMIO(addr uint64, data []byte) error
}

// IRQLine is an interrupt line a device drives. The VMM implements it with
// KVM_IRQ_LINE on the in-kernel irqchip.
//
// Devices call SetLevel only when the level changes, and may call it while
// holding their own locks: an implementation must be quick and must not call
// back into the device.
type IRQLine interface {
	SetLevel(high bool) error
}

// GuestMemory is how devices reach guest RAM. The VMM implements it; every
// write through it is recorded as dirty by the VMM (KVM's dirty log does not
// see VMM writes), which replication needs.
//
// The virtio devices (package devices/virtio) reach guest memory only
// through it.
type GuestMemory interface {
	ReadAt(p []byte, gpa uint64) (int, error)
	WriteAt(p []byte, gpa uint64) (int, error)
}

// Stateful devices save and restore their guest-visible state for snapshots
// and replication. SaveState and LoadState are meant to be called while the
// vCPUs are paused, so that no access is in flight.
type Stateful interface {
	// StateName is stable and unique per device kind and instance,
	// e.g. "uart@0x3f8".
	StateName() string
	// SaveState returns a versioned, deterministic encoding: the same
	// device state always encodes to the same bytes, and the first byte is
	// the format version.
	SaveState() ([]byte, error)
	// LoadState replaces the device state. It rejects an unknown version,
	// truncated input and out-of-range values with an error wrapping
	// [ErrBadState], and never panics.
	LoadState([]byte) error
}

// ErrReset is returned from a device access when the guest requests a
// system reset (the i8042 0xFE command).
var ErrReset = errors.New("devices: guest requested a system reset")

// ExitError is returned from a device access when the guest asks the VM to
// exit with a status, through the debug-exit port.
type ExitError struct {
	Code uint32
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("devices: guest exited with status %d", e.Code)
}

var (
	// ErrOverlap is wrapped by registration errors when a range overlaps
	// one already registered.
	ErrOverlap = errors.New("devices: overlapping registration")
	// ErrBadRange is wrapped by registration errors for an empty range,
	// one that wraps around the address space, or a nil device.
	ErrBadRange = errors.New("devices: invalid registration")
	// ErrAccessSize is wrapped by bus errors for an access of a width the
	// bus does not support. It indicates a VMM bug, not a guest event.
	ErrAccessSize = errors.New("devices: unsupported access size")
	// ErrBadState is wrapped by LoadState errors.
	ErrBadState = errors.New("devices: invalid device state")
	// ErrClosed is returned by writes to a closed UART or console.
	ErrClosed = errors.New("devices: closed")
)

type portRange struct {
	base uint16
	end  uint32 // exclusive; up to 0x10000
	dev  PortDevice
}

type mmioRange struct {
	base uint64
	last uint64 // inclusive, so a range may end at the top of the address space
	dev  MMIODevice
}

// busTables is an immutable snapshot of the registrations. Lookups load it
// with one atomic read; registration replaces it wholesale.
type busTables struct {
	ports   []portRange // sorted by base, disjoint
	mmio    []mmioRange // sorted by base, disjoint
	devices []any       // registration order, deduplicated
}

// maxMMIOLogged bounds how many distinct unclaimed MMIO addresses are logged,
// so a guest probing memory cannot grow the bus without limit.
const maxMMIOLogged = 256

// Bus routes port and MMIO accesses to the registered devices.
//
// Registration is meant to happen before the VM runs. Lookups take no lock:
// they may run concurrently from any number of vCPU goroutines. Registration
// is serialised internally and publishes a new routing table atomically, so
// registering while vCPUs run is safe, though an access racing with the
// registration may still see the old table.
//
// The zero value is an empty bus ready to use.
type Bus struct {
	mu     sync.Mutex // serialises registration
	tables atomic.Pointer[busTables]

	// Unclaimed accesses are logged once per port / address.
	portLogged [1 << 16 / 64]atomic.Uint64
	mmioLogged sync.Map // uint64 → struct{}
	mmioCount  atomic.Int32
}

// NewBus returns an empty bus.
func NewBus() *Bus { return &Bus{} }

func (b *Bus) load() *busTables {
	if t := b.tables.Load(); t != nil {
		return t
	}
	return &busTables{}
}

// RegisterPorts routes ports [base, base+count) to d. It fails if the range
// is empty, runs past port 0xFFFF, or overlaps a registered range; the error
// names both ranges.
func (b *Bus) RegisterPorts(base, count uint16, d PortDevice) error {
	end := uint32(base) + uint32(count)
	if count == 0 || end > 1<<16 || d == nil {
		return fmt.Errorf("%w: ports %#x+%d for %T", ErrBadRange, base, count, d)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.load()
	for _, r := range old.ports {
		if uint32(base) < r.end && uint32(r.base) < end {
			return fmt.Errorf("%w: ports %#x-%#x (%T) overlap ports %#x-%#x (%T)",
				ErrOverlap, base, end-1, d, r.base, r.end-1, r.dev)
		}
	}
	t := *old
	t.ports = slices.Clone(old.ports)
	i, _ := slices.BinarySearchFunc(t.ports, base, func(r portRange, p uint16) int {
		return int(r.base) - int(p)
	})
	t.ports = slices.Insert(t.ports, i, portRange{base: base, end: end, dev: d})
	t.devices = appendDevice(old.devices, d)
	b.tables.Store(&t)
	return nil
}

// RegisterMMIO routes guest physical addresses [base, base+size) to d. It
// fails if the range is empty, wraps past the top of the address space, or
// overlaps a registered range; the error names both ranges.
func (b *Bus) RegisterMMIO(base, size uint64, d MMIODevice) error {
	if size == 0 || base+(size-1) < base || d == nil {
		return fmt.Errorf("%w: MMIO %#x+%#x for %T", ErrBadRange, base, size, d)
	}
	last := base + (size - 1)
	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.load()
	for _, r := range old.mmio {
		if base <= r.last && r.base <= last {
			return fmt.Errorf("%w: MMIO %#x-%#x (%T) overlaps MMIO %#x-%#x (%T)",
				ErrOverlap, base, last, d, r.base, r.last, r.dev)
		}
	}
	t := *old
	t.mmio = slices.Clone(old.mmio)
	i, _ := slices.BinarySearchFunc(t.mmio, base, func(r mmioRange, a uint64) int {
		switch {
		case r.base < a:
			return -1
		case r.base > a:
			return 1
		}
		return 0
	})
	t.mmio = slices.Insert(t.mmio, i, mmioRange{base: base, last: last, dev: d})
	t.devices = appendDevice(old.devices, d)
	b.tables.Store(&t)
	return nil
}

// appendDevice returns a copy of devs with d appended unless d is already
// there (a device registered for several ranges is listed once).
func appendDevice(devs []any, d any) []any {
	if reflect.TypeOf(d).Comparable() {
		for _, e := range devs {
			if reflect.TypeOf(e).Comparable() && e == d {
				return devs
			}
		}
	}
	return append(slices.Clip(devs), d)
}

// Devices lists the registered devices in registration order, each once,
// for state save and load. The slice is the caller's.
func (b *Bus) Devices() []any {
	return slices.Clone(b.load().devices)
}

func (b *Bus) port(port uint16) PortDevice {
	ports := b.load().ports
	// Last range whose base is <= port.
	i, found := slices.BinarySearchFunc(ports, port, func(r portRange, p uint16) int {
		return int(r.base) - int(p)
	})
	if !found {
		if i == 0 {
			return nil
		}
		i--
	}
	if r := ports[i]; uint32(port) < r.end {
		return r.dev
	}
	return nil
}

func (b *Bus) mmioDev(addr uint64) MMIODevice {
	mmio := b.load().mmio
	i, found := slices.BinarySearchFunc(mmio, addr, func(r mmioRange, a uint64) int {
		switch {
		case r.base < a:
			return -1
		case r.base > a:
			return 1
		}
		return 0
	})
	if !found {
		if i == 0 {
			return nil
		}
		i--
	}
	if r := mmio[i]; addr <= r.last {
		return r.dev
	}
	return nil
}

func checkPortSize(port uint16, data []byte) error {
	switch len(data) {
	case 1, 2, 4:
		return nil
	}
	return fmt.Errorf("%w: %d-byte access to port %#x", ErrAccessSize, len(data), port)
}

func checkMMIOSize(addr uint64, data []byte) error {
	switch len(data) {
	case 1, 2, 4, 8:
		return nil
	}
	return fmt.Errorf("%w: %d-byte access to MMIO %#x", ErrAccessSize, len(data), addr)
}

// ReadPort dispatches a port read to the device owning port. A read of an
// unclaimed port fills data with 0xFF, like a floating ISA bus, and
// succeeds.
func (b *Bus) ReadPort(port uint16, data []byte) error {
	if err := checkPortSize(port, data); err != nil {
		return err
	}
	if d := b.port(port); d != nil {
		return d.ReadPort(port, data)
	}
	fill(data, 0xFF)
	b.logUnclaimedPort("read", port, len(data))
	return nil
}

// WritePort dispatches a port write to the device owning port. Writes to
// unclaimed ports are ignored.
func (b *Bus) WritePort(port uint16, data []byte) error {
	if err := checkPortSize(port, data); err != nil {
		return err
	}
	if d := b.port(port); d != nil {
		return d.WritePort(port, data)
	}
	b.logUnclaimedPort("write", port, len(data))
	return nil
}

// ReadMMIO dispatches an MMIO read to the device owning addr. A read of an
// unclaimed address fills data with 0xFF and succeeds.
func (b *Bus) ReadMMIO(addr uint64, data []byte) error {
	if err := checkMMIOSize(addr, data); err != nil {
		return err
	}
	if d := b.mmioDev(addr); d != nil {
		return d.ReadMMIO(addr, data)
	}
	fill(data, 0xFF)
	b.logUnclaimedMMIO("read", addr, len(data))
	return nil
}

// WriteMMIO dispatches an MMIO write to the device owning addr. Writes to
// unclaimed addresses are ignored.
func (b *Bus) WriteMMIO(addr uint64, data []byte) error {
	if err := checkMMIOSize(addr, data); err != nil {
		return err
	}
	if d := b.mmioDev(addr); d != nil {
		return d.WriteMMIO(addr, data)
	}
	b.logUnclaimedMMIO("write", addr, len(data))
	return nil
}

func (b *Bus) logUnclaimedPort(op string, port uint16, size int) {
	w, bit := &b.portLogged[port/64], uint64(1)<<(port%64)
	if w.Load()&bit != 0 || w.Or(bit)&bit != 0 {
		return
	}
	slog.Debug("devices: unclaimed port access", "op", op, "port", fmt.Sprintf("%#x", port), "size", size)
}

func (b *Bus) logUnclaimedMMIO(op string, addr uint64, size int) {
	if b.mmioCount.Load() > maxMMIOLogged {
		return
	}
	if _, seen := b.mmioLogged.Load(addr); seen {
		return
	}
	if _, seen := b.mmioLogged.LoadOrStore(addr, struct{}{}); seen {
		return
	}
	switch n := b.mmioCount.Add(1); {
	case n <= maxMMIOLogged:
		slog.Debug("devices: unclaimed MMIO access", "op", op, "addr", fmt.Sprintf("%#x", addr), "size", size)
	case n == maxMMIOLogged+1:
		slog.Debug("devices: too many unclaimed MMIO addresses; no longer logging them")
	}
}

func fill(p []byte, v byte) {
	for i := range p {
		p[i] = v
	}
}
