package kvm

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// VM is a KVM virtual machine file descriptor, as returned by
// System.CreateVM. Its methods are safe for concurrent use, except Close.
type VM struct {
	fd int

	// slots records the size of every memory slot set through
	// SetUserMemoryRegion, so GetDirtyLog can refuse a bitmap the kernel
	// would write past. It is bookkeeping for memory safety, not policy.
	mu    sync.Mutex
	slots map[uint32]uint64
}

func newVM(fd int) *VM {
	return &VM{fd: fd, slots: make(map[uint32]uint64)}
}

// Close closes the VM descriptor. The kernel keeps the VM alive while any
// of its vCPU descriptors or other derived files are open. Closing twice is
// a no-op.
func (vm *VM) Close() error {
	if vm.fd < 0 {
		return nil
	}
	err := unix.Close(vm.fd)
	vm.fd = -1
	if err != nil {
		return fmt.Errorf("kvm: close VM: %w", err)
	}
	return nil
}

// FD returns the VM file descriptor (-1 after Close).
func (vm *VM) FD() int { return vm.fd }

// CheckExtension returns KVM_CHECK_EXTENSION for c on the VM descriptor,
// which answers for this VM (for example its maximum dirty ring size).
func (vm *VM) CheckExtension(c Cap) (int, error) {
	r, err := ioctl(vm.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_CHECK_EXTENSION(%v) on VM: %w", c, err)
	}
	return int(r), nil
}

// EnableCap issues KVM_ENABLE_CAP on the VM with up to four arguments.
func (vm *VM) EnableCap(c Cap, flags uint32, args ...uint64) error {
	var ec kvmEnableCap
	if len(args) > len(ec.Args) {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP(%v): %d arguments, at most %d: %w", c, len(args), len(ec.Args), unix.EINVAL)
	}
	ec.Cap = uint32(c)
	ec.Flags = flags
	copy(ec.Args[:], args)
	if _, err := ioctlRef(vm.fd, kvmEnableCapIoc, &ec); err != nil {
		return fmt.Errorf("kvm: KVM_ENABLE_CAP(%v): %w", c, err)
	}
	return nil
}

// UserspaceMemoryRegion is struct kvm_userspace_memory_region.
type UserspaceMemoryRegion struct {
	Slot          uint32 // bits 16-31 select the address space, bits 0-15 the slot
	Flags         uint32 // MemLogDirtyPages, MemReadonly
	GuestPhysAddr uint64
	MemorySize    uint64 // bytes, a multiple of PageSize; 0 deletes the slot
	UserspaceAddr uint64 // page-aligned host virtual address
}

// Flags of UserspaceMemoryRegion.
const (
	MemLogDirtyPages = 1 << 0 // KVM_MEM_LOG_DIRTY_PAGES
	MemReadonly      = 1 << 1 // KVM_MEM_READONLY
)

// Arguments of CapManualDirtyLogProtect2 (KVM_DIRTY_LOG_*).
const (
	// DirtyLogManualProtectEnable makes KVM_GET_DIRTY_LOG leave pages
	// writable and dirty bits set; KVM_CLEAR_DIRTY_LOG re-protects them.
	DirtyLogManualProtectEnable = 1 << 0
	// DirtyLogInitiallySet makes a newly logged slot start all-dirty.
	DirtyLogInitiallySet = 1 << 1
)

// SetUserMemoryRegion issues KVM_SET_USER_MEMORY_REGION: it creates,
// moves, changes the flags of, or (with MemorySize 0) deletes a memory slot.
// The memory at UserspaceAddr must stay mapped while the slot exists.
func (vm *VM) SetUserMemoryRegion(r UserspaceMemoryRegion) error {
	if _, err := ioctlRef(vm.fd, kvmSetUserMemRegion, &r); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION(slot %d, gpa %#x, size %#x): %w",
			r.Slot, r.GuestPhysAddr, r.MemorySize, err)
	}
	vm.mu.Lock()
	if r.MemorySize == 0 {
		delete(vm.slots, r.Slot)
	} else {
		vm.slots[r.Slot] = r.MemorySize
	}
	vm.mu.Unlock()
	return nil
}

// slotSize returns the size of a slot set through SetUserMemoryRegion.
func (vm *VM) slotSize(slot uint32) (uint64, bool) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	size, ok := vm.slots[slot]
	return size, ok
}

// CreateIRQChip issues KVM_CREATE_IRQCHIP: an in-kernel PIC pair, IOAPIC and
// a local APIC per vCPU. It must precede CreateVCPU.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// IRQLine issues KVM_IRQ_LINE: it raises or lowers an in-kernel irqchip
// input (a GSI).
func (vm *VM) IRQLine(irq uint32, level bool) error {
	l := kvmIRQLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	if _, err := ioctlRef(vm.fd, kvmIRQLine, &l); err != nil {
		return fmt.Errorf("kvm: KVM_IRQ_LINE(%d, %v): %w", irq, level, err)
	}
	return nil
}

// Flags of IRQFD (KVM_IRQFD_FLAG_*).
const (
	IRQFDDeassign = 1 << 0
	IRQFDResample = 1 << 1
)

// IRQFD issues KVM_IRQFD: writes to the eventfd fd inject gsi (or, with
// IRQFDDeassign, stop doing so). For IRQFDResample, use IRQFDResampling,
// which also passes the resample eventfd.
func (vm *VM) IRQFD(fd int, gsi uint32, flags uint32) error {
	return vm.irqfd(fd, -1, gsi, flags)
}

// IRQFDResampling issues KVM_IRQFD with IRQFDResample: fd asserts the
// level-triggered gsi, and KVM signals resampleFD when the guest EOIs it.
func (vm *VM) IRQFDResampling(fd, resampleFD int, gsi uint32) error {
	return vm.irqfd(fd, resampleFD, gsi, IRQFDResample)
}

func (vm *VM) irqfd(fd, resampleFD int, gsi, flags uint32) error {
	a := kvmIRQFD{FD: uint32(fd), GSI: gsi, Flags: flags}
	if resampleFD >= 0 {
		a.ResampleFD = uint32(resampleFD)
	}
	if _, err := ioctlRef(vm.fd, kvmIRQFDIoc, &a); err != nil {
		return fmt.Errorf("kvm: KVM_IRQFD(fd %d, gsi %d, flags %#x): %w", fd, gsi, flags, err)
	}
	return nil
}

// IOEventFD is struct kvm_ioeventfd.
type IOEventFD struct {
	Datamatch uint64 // value to match when IOEventFDDatamatch is set
	Addr      uint64 // guest physical (MMIO) address or port number
	Len       uint32 // access size: 0 (any, if supported), 1, 2, 4 or 8
	FD        int32  // the eventfd
	Flags     uint32 // IOEventFDDatamatch, IOEventFDPIO, IOEventFDDeassign
	_         [36]uint8
}

// Flags of IOEventFD (KVM_IOEVENTFD_FLAG_*).
const (
	IOEventFDDatamatch = 1 << 0
	IOEventFDPIO       = 1 << 1
	IOEventFDDeassign  = 1 << 2
)

// IOEventFD issues KVM_IOEVENTFD: guest writes matching e signal e.FD
// without exiting to userspace (or, with IOEventFDDeassign, stop doing so).
func (vm *VM) IOEventFD(e IOEventFD) error {
	if _, err := ioctlRef(vm.fd, kvmIOEventFD, &e); err != nil {
		return fmt.Errorf("kvm: KVM_IOEVENTFD(addr %#x, len %d, flags %#x): %w", e.Addr, e.Len, e.Flags, err)
	}
	return nil
}

// ResetDirtyRings issues KVM_RESET_DIRTY_RINGS: KVM re-protects the pages
// whose dirty ring entries userspace has marked as harvested and frees those
// entries. It returns the number of entries reset.
func (vm *VM) ResetDirtyRings() (int, error) {
	r, err := ioctl(vm.fd, kvmResetDirtyRings, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_RESET_DIRTY_RINGS: %w", err)
	}
	return int(r), nil
}

// IRQChip is struct kvm_irqchip. ChipID selects the chip (IRQChipPICMaster,
// IRQChipPICSlave, IRQChipIOAPIC); Chip holds the kernel's kvm_pic_state or
// kvm_ioapic_state for it.
type IRQChip struct {
	ChipID uint32
	_      uint32
	Chip   [512]byte
}

// GetIRQChip issues KVM_GET_IRQCHIP for the chip c.ChipID.
func (vm *VM) GetIRQChip(c *IRQChip) error {
	if _, err := ioctlRef(vm.fd, kvmGetIRQChip, c); err != nil {
		return fmt.Errorf("kvm: KVM_GET_IRQCHIP(%d): %w", c.ChipID, err)
	}
	return nil
}

// SetIRQChip issues KVM_SET_IRQCHIP for the chip c.ChipID.
func (vm *VM) SetIRQChip(c *IRQChip) error {
	if _, err := ioctlRef(vm.fd, kvmSetIRQChip, c); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IRQCHIP(%d): %w", c.ChipID, err)
	}
	return nil
}

// ClockData is struct kvm_clock_data.
type ClockData struct {
	Clock    uint64 // kvmclock nanoseconds
	Flags    uint32 // ClockTSCStable, ClockRealtime, ClockHostTSC
	_        uint32
	Realtime uint64 // CLOCK_REALTIME nanoseconds, valid with ClockRealtime
	HostTSC  uint64 // host TSC, valid with ClockHostTSC
	_        [4]uint32
}

// Flags of ClockData (KVM_CLOCK_*).
const (
	ClockTSCStable = 1 << 1
	ClockRealtime  = 1 << 2
	ClockHostTSC   = 1 << 3
)

// GetClock issues KVM_GET_CLOCK.
func (vm *VM) GetClock(c *ClockData) error {
	if _, err := ioctlRef(vm.fd, kvmGetClock, c); err != nil {
		return fmt.Errorf("kvm: KVM_GET_CLOCK: %w", err)
	}
	return nil
}

// SetClock issues KVM_SET_CLOCK.
func (vm *VM) SetClock(c *ClockData) error {
	if _, err := ioctlRef(vm.fd, kvmSetClock, c); err != nil {
		return fmt.Errorf("kvm: KVM_SET_CLOCK: %w", err)
	}
	return nil
}
