package kvm

import "encoding/binary"

// Regs is struct kvm_regs: the general-purpose registers.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment is struct kvm_segment: a segment register with its hidden part.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable: a descriptor table register (GDTR, IDTR).
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs: segment, descriptor-table and control
// registers, EFER, the APIC base, and the bitmap of pending external
// interrupts (at most one bit set).
type Sregs struct {
	CS, DS, ES, FS, GS, SS Segment
	TR, LDT                Segment
	GDT, IDT               DTable
	CR0, CR2, CR3, CR4     uint64
	CR8                    uint64
	EFER                   uint64
	APICBase               uint64
	InterruptBitmap        [4]uint64
}

// FPU is struct kvm_fpu: the legacy x87/SSE state (FXSAVE subset).
//
// Linux's KVM_GET_FPU does not fill in MXCSR (the field keeps what the
// caller passed); MXCSR is reliably saved and restored through the XSAVE
// area (XSave.Region[6]).
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8 // abridged tag word, as in FXSAVE
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// CPUIDEntry is struct kvm_cpuid_entry2: one CPUID leaf (Function) and
// subleaf (Index) with its output registers.
type CPUIDEntry struct {
	Function uint32
	Index    uint32
	Flags    uint32 // CPUIDFlagSignificantIndex
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// CPUIDFlagSignificantIndex marks a CPUIDEntry whose Index (ECX input)
// selects a subleaf (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).
const CPUIDFlagSignificantIndex = 1 << 0

// XCR is struct kvm_xcr: one extended control register.
type XCR struct {
	XCR   uint32 // register number (0 for XCR0)
	_     uint32
	Value uint64
}

// XCRs is struct kvm_xcrs.
type XCRs struct {
	NrXCRs uint32
	Flags  uint32
	XCRs   [16]XCR
	_      [16]uint64
}

// VCPUEventsException is the exception member of struct kvm_vcpu_events.
type VCPUEventsException struct {
	Injected     uint8
	Nr           uint8
	HasErrorCode uint8
	Pending      uint8
	ErrorCode    uint32
}

// VCPUEventsInterrupt is the interrupt member of struct kvm_vcpu_events.
type VCPUEventsInterrupt struct {
	Injected uint8
	Nr       uint8
	Soft     uint8
	Shadow   uint8
}

// VCPUEventsNMI is the nmi member of struct kvm_vcpu_events.
type VCPUEventsNMI struct {
	Injected uint8
	Pending  uint8
	Masked   uint8
	_        uint8
}

// VCPUEventsSMI is the smi member of struct kvm_vcpu_events.
type VCPUEventsSMI struct {
	SMM          uint8
	Pending      uint8
	SMMInsideNMI uint8
	LatchedInit  uint8
}

// VCPUEventsTripleFault is the triple_fault member of struct
// kvm_vcpu_events.
type VCPUEventsTripleFault struct {
	Pending uint8
}

// VCPUEvents is struct kvm_vcpu_events: pending and injected exceptions,
// interrupts, NMIs and SMIs, and the interrupt shadow.
type VCPUEvents struct {
	Exception           VCPUEventsException
	Interrupt           VCPUEventsInterrupt
	NMI                 VCPUEventsNMI
	SIPIVector          uint32
	Flags               uint32 // VCPUEventValid*
	SMI                 VCPUEventsSMI
	TripleFault         VCPUEventsTripleFault
	Reserved            [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// Flags of VCPUEvents (KVM_VCPUEVENT_VALID_*).
const (
	VCPUEventValidNMIPending  = 1 << 0
	VCPUEventValidSIPIVector  = 1 << 1
	VCPUEventValidShadow      = 1 << 2
	VCPUEventValidSMM         = 1 << 3
	VCPUEventValidPayload     = 1 << 4
	VCPUEventValidTripleFault = 1 << 5
)

// LAPICState is struct kvm_lapic_state: the local APIC register page
// (1 KiB; register at offset off is Regs[off:off+4], little endian).
type LAPICState struct {
	Regs [1024]byte
}

// Get32 returns the 32-bit APIC register at byte offset off (for example
// 0x20 for the APIC ID, 0x350 for LVT LINT0).
func (l *LAPICState) Get32(off int) uint32 {
	return binary.LittleEndian.Uint32(l.Regs[off : off+4])
}

// Set32 sets the 32-bit APIC register at byte offset off.
func (l *LAPICState) Set32(off int, v uint32) {
	binary.LittleEndian.PutUint32(l.Regs[off:off+4], v)
}

// XSave is struct kvm_xsave: the legacy 4 KiB XSAVE area. When
// CheckExtension(CapXSave2) reports more than 4096 bytes, use
// VCPU.GetXSave2/SetXSave2 instead.
type XSave struct {
	Region [1024]uint32
}

// SyncRegs is struct kvm_sync_regs: the registers KVM copies into and out
// of kvm_run when CapSyncRegs is in use (KVMValidRegs / KVMDirtyRegs, bits
// SyncX86Regs, SyncX86Sregs, SyncX86Events).
type SyncRegs struct {
	Regs   Regs
	Sregs  Sregs
	Events VCPUEvents
}

// Bits of Run.KVMValidRegs and Run.KVMDirtyRegs (KVM_SYNC_X86_*).
const (
	SyncX86Regs   = 1 << 0
	SyncX86Sregs  = 1 << 1
	SyncX86Events = 1 << 2
)
