package kvm

import "unsafe"

// Kernel structures with a flexible array member: only their fixed headers
// are declared; the entries follow them in one buffer (see ioctlEntries).
type (
	// kvmMSRListHeader is struct kvm_msr_list without indices[].
	kvmMSRListHeader struct {
		NMSRs uint32
	}
	// kvmMSRsHeader is struct kvm_msrs without entries[].
	kvmMSRsHeader struct {
		NMSRs uint32
		_     uint32
	}
	// kvmCPUID2Header is struct kvm_cpuid2 without entries[].
	kvmCPUID2Header struct {
		Nent uint32
		_    uint32
	}
	// kvmPITConfig is struct kvm_pit_config.
	kvmPITConfig struct {
		Flags uint32
		_     [15]uint32
	}
)

// x86 ioctls (system, VM and vCPU).
const (
	kvmGetMSRIndexList    = dirReadWrite | kt | 0x02 | unsafe.Sizeof(kvmMSRListHeader{})<<iocSizeShift
	kvmGetSupportedCPUID  = dirReadWrite | kt | 0x05 | unsafe.Sizeof(kvmCPUID2Header{})<<iocSizeShift
	kvmSetTSSAddr         = dirNone | kt | 0x47
	kvmSetIdentityMapAddr = dirWrite | kt | 0x48 | unsafe.Sizeof(uint64(0))<<iocSizeShift
	kvmCreatePIT2         = dirWrite | kt | 0x77 | unsafe.Sizeof(kvmPITConfig{})<<iocSizeShift
	kvmGetPIT2            = dirRead | kt | 0x9f | unsafe.Sizeof(PITState2{})<<iocSizeShift
	kvmSetPIT2            = dirWrite | kt | 0xa0 | unsafe.Sizeof(PITState2{})<<iocSizeShift

	kvmGetRegs       = dirRead | kt | 0x81 | unsafe.Sizeof(Regs{})<<iocSizeShift
	kvmSetRegs       = dirWrite | kt | 0x82 | unsafe.Sizeof(Regs{})<<iocSizeShift
	kvmGetSregs      = dirRead | kt | 0x83 | unsafe.Sizeof(Sregs{})<<iocSizeShift
	kvmSetSregs      = dirWrite | kt | 0x84 | unsafe.Sizeof(Sregs{})<<iocSizeShift
	kvmGetMSRs       = dirReadWrite | kt | 0x88 | unsafe.Sizeof(kvmMSRsHeader{})<<iocSizeShift
	kvmSetMSRs       = dirWrite | kt | 0x89 | unsafe.Sizeof(kvmMSRsHeader{})<<iocSizeShift
	kvmGetFPU        = dirRead | kt | 0x8c | unsafe.Sizeof(FPU{})<<iocSizeShift
	kvmSetFPU        = dirWrite | kt | 0x8d | unsafe.Sizeof(FPU{})<<iocSizeShift
	kvmGetLAPIC      = dirRead | kt | 0x8e | unsafe.Sizeof(LAPICState{})<<iocSizeShift
	kvmSetLAPIC      = dirWrite | kt | 0x8f | unsafe.Sizeof(LAPICState{})<<iocSizeShift
	kvmSetCPUID2     = dirWrite | kt | 0x90 | unsafe.Sizeof(kvmCPUID2Header{})<<iocSizeShift
	kvmGetCPUID2     = dirReadWrite | kt | 0x91 | unsafe.Sizeof(kvmCPUID2Header{})<<iocSizeShift
	kvmGetVCPUEvents = dirRead | kt | 0x9f | unsafe.Sizeof(VCPUEvents{})<<iocSizeShift
	kvmSetVCPUEvents = dirWrite | kt | 0xa0 | unsafe.Sizeof(VCPUEvents{})<<iocSizeShift
	kvmGetTSCKHz     = dirNone | kt | 0xa3
	kvmGetXSave      = dirRead | kt | 0xa4 | unsafe.Sizeof(XSave{})<<iocSizeShift
	kvmSetXSave      = dirWrite | kt | 0xa5 | unsafe.Sizeof(XSave{})<<iocSizeShift
	kvmGetXCRs       = dirRead | kt | 0xa6 | unsafe.Sizeof(XCRs{})<<iocSizeShift
	kvmSetXCRs       = dirWrite | kt | 0xa7 | unsafe.Sizeof(XCRs{})<<iocSizeShift
	kvmGetXSave2     = dirRead | kt | 0xcf | unsafe.Sizeof(XSave{})<<iocSizeShift
)
