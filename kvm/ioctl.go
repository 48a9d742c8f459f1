package kvm

import "unsafe"

// _IOC encoding of ioctl request numbers (include/uapi/asm-generic/ioctl.h):
// dir<<30 | size<<16 | type<<8 | nr.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2

	iocNRShift   = 0
	iocTypeShift = 8
	iocSizeShift = 16
	iocDirShift  = 30

	iocSizeMask = 1<<14 - 1

	// kvmio is KVMIO, the ioctl type byte of every KVM ioctl.
	kvmio = 0xAE
)

// ioc builds an ioctl request number the way the kernel's _IOC macro does.
// The constants below are spelled out as constant expressions (so the
// KVM_RUN number is a compile-time constant); ioc exists so the tests can
// check the encoding itself.
func ioc(dir, typ, nr, size uintptr) uintptr {
	return dir<<iocDirShift | (size&iocSizeMask)<<iocSizeShift | typ<<iocTypeShift | nr<<iocNRShift
}

// Shifted direction and type fields, so that each request number below
// reads dir | type | nr | size<<16.
const (
	dirNone      = iocNone << iocDirShift
	dirRead      = iocRead << iocDirShift
	dirWrite     = iocWrite << iocDirShift
	dirReadWrite = (iocRead | iocWrite) << iocDirShift
	kt           = kvmio << iocTypeShift
)

// Kernel structures that only this package builds. Field names follow the
// kernel's.
type (
	// kvmEnableCap is struct kvm_enable_cap.
	kvmEnableCap struct {
		Cap   uint32
		Flags uint32
		Args  [4]uint64
		_     [64]uint8
	}
	// kvmIRQLevel is struct kvm_irq_level.
	kvmIRQLevel struct {
		IRQ   uint32
		Level uint32
	}
	// kvmIRQFD is struct kvm_irqfd.
	kvmIRQFD struct {
		FD         uint32
		GSI        uint32
		Flags      uint32
		ResampleFD uint32
		_          [16]uint8
	}
	// kvmMPState is struct kvm_mp_state.
	kvmMPState struct {
		MPState uint32
	}
)

// System (/dev/kvm) ioctls.
const (
	kvmGetAPIVersion    = dirNone | kt | 0x00
	kvmCreateVM         = dirNone | kt | 0x01
	kvmCheckExtension   = dirNone | kt | 0x03
	kvmGetVCPUMmapSize  = dirNone | kt | 0x04
	kvmCreateVCPU       = dirNone | kt | 0x41
	kvmCreateIRQChip    = dirNone | kt | 0x60
	kvmRun              = dirNone | kt | 0x80
	kvmResetDirtyRings  = dirNone | kt | 0xc7
	kvmSetUserMemRegion = dirWrite | kt | 0x46 | unsafe.Sizeof(UserspaceMemoryRegion{})<<iocSizeShift
	kvmIRQLine          = dirWrite | kt | 0x61 | unsafe.Sizeof(kvmIRQLevel{})<<iocSizeShift
	kvmGetIRQChip       = dirReadWrite | kt | 0x62 | unsafe.Sizeof(IRQChip{})<<iocSizeShift
	// KVM_SET_IRQCHIP is _IOR in the kernel header even though it writes.
	kvmSetIRQChip       = dirRead | kt | 0x63 | unsafe.Sizeof(IRQChip{})<<iocSizeShift
	kvmIRQFDIoc         = dirWrite | kt | 0x76 | unsafe.Sizeof(kvmIRQFD{})<<iocSizeShift
	kvmIOEventFD        = dirWrite | kt | 0x79 | unsafe.Sizeof(IOEventFD{})<<iocSizeShift
	kvmSetClock         = dirWrite | kt | 0x7b | unsafe.Sizeof(ClockData{})<<iocSizeShift
	kvmGetClock         = dirRead | kt | 0x7c | unsafe.Sizeof(ClockData{})<<iocSizeShift
	kvmGetMPState       = dirRead | kt | 0x98 | unsafe.Sizeof(kvmMPState{})<<iocSizeShift
	kvmSetMPState       = dirWrite | kt | 0x99 | unsafe.Sizeof(kvmMPState{})<<iocSizeShift
	kvmEnableCapIoc     = dirWrite | kt | 0xa3 | unsafe.Sizeof(kvmEnableCap{})<<iocSizeShift
	kvmGetDirtyLog      = dirWrite | kt | 0x42 | unsafe.Sizeof(kvmDirtyLog{})<<iocSizeShift
	kvmClearDirtyLogIoc = dirReadWrite | kt | 0xc0 | unsafe.Sizeof(kvmClearDirtyLog{})<<iocSizeShift
)
