package kvm

import "strconv"

// Run is struct kvm_run, the structure KVM shares with userspace through
// the vCPU mapping (VCPU.RunData). KVM writes the exit information into it
// when KVM_RUN returns; userspace writes the results of emulated accesses
// (port input data, MMIO read data) before the next KVM_RUN.
//
// The per-exit union is reached through the accessors (IO, MMIO, ...), which
// interpret it for the corresponding ExitReason; calling one for another exit
// reason returns garbage, not an error.
type Run struct {
	RequestInterruptWindow     uint8 // in: exit with ExitIRQWindowOpen when the guest can take an interrupt
	ImmediateExit              uint8 // in: make KVM_RUN return EINTR at once (see VCPU.SetImmediateExit)
	_                          [6]uint8
	ExitReason                 ExitReason // out
	ReadyForInterruptInjection uint8      // out
	IFFlag                     uint8      // out: guest RFLAGS.IF
	Flags                      uint16     // out: KVM_RUN_X86_* flags
	CR8                        uint64     // in/out
	APICBase                   uint64     // in/out
	exit                       [256]byte  // the exit union
	KVMValidRegs               uint64     // out: which sync regs KVM filled in (CapSyncRegs)
	KVMDirtyRegs               uint64     // in: which sync regs userspace changed
	syncRegs                   [2048]byte // the sync regs union (see Run.SyncRegs)
}

// Directions of RunIO (KVM_EXIT_IO_*).
const (
	ExitIOIn  = 0
	ExitIOOut = 1
)

// RunIO is the kvm_run.io member, valid for ExitIO. The Size*Count data
// bytes are in the vCPU mapping at DataOffset (see VCPU.IOData): written by
// the guest for ExitIOOut, to be filled in by userspace for ExitIOIn.
type RunIO struct {
	Direction  uint8 // ExitIOIn, ExitIOOut
	Size       uint8 // bytes per access: 1, 2 or 4
	Port       uint16
	Count      uint32 // number of accesses (rep ins/outs)
	DataOffset uint64 // offset of the data from the start of the vCPU mapping
}

// RunMMIO is the kvm_run.mmio member, valid for ExitMMIO. For a read,
// userspace fills Data[:Len] before the next KVM_RUN.
type RunMMIO struct {
	PhysAddr uint64
	Data     [8]uint8
	Len      uint32
	IsWrite  uint8
}

// InternalErrorSuberror is kvm_run.internal.suberror (KVM_INTERNAL_ERROR_*).
type InternalErrorSuberror uint32

// Suberrors of ExitInternalError.
const (
	InternalErrorEmulation            = InternalErrorSuberror(1) // instruction emulation failed
	InternalErrorSimulEx              = InternalErrorSuberror(2) // exception while delivering an exception
	InternalErrorDeliveryEv           = InternalErrorSuberror(3) // exit while delivering an event
	InternalErrorUnexpectedExitReason = InternalErrorSuberror(4) // hardware exit reason KVM does not handle
)

// InternalErrorFlagInstructionBytes is set in Data[0] of an
// InternalErrorEmulation exit when Data[1] holds the instruction length and
// Data[2:] its bytes (KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES).
const InternalErrorFlagInstructionBytes = 1 << 0

var suberrorNames = [...]string{
	InternalErrorEmulation:            "KVM_INTERNAL_ERROR_EMULATION",
	InternalErrorSimulEx:              "KVM_INTERNAL_ERROR_SIMUL_EX",
	InternalErrorDeliveryEv:           "KVM_INTERNAL_ERROR_DELIVERY_EV",
	InternalErrorUnexpectedExitReason: "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
}

// String returns the kernel's name of the suberror.
func (s InternalErrorSuberror) String() string {
	if int(s) < len(suberrorNames) && suberrorNames[s] != "" {
		return suberrorNames[s]
	}
	return "KVM_INTERNAL_ERROR(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// RunInternalError is the kvm_run.internal member, valid for
// ExitInternalError. Data[:NData] carries suberror-specific details.
type RunInternalError struct {
	Suberror InternalErrorSuberror
	NData    uint32
	Data     [16]uint64
}

// RunFailEntry is the kvm_run.fail_entry member, valid for ExitFailEntry.
type RunFailEntry struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
}

// Types of RunSystemEvent (KVM_SYSTEM_EVENT_*).
const (
	SystemEventShutdown = 1
	SystemEventReset    = 2
	SystemEventCrash    = 3
	SystemEventWakeup   = 4
	SystemEventSuspend  = 5
	SystemEventSEVTerm  = 6
)

// RunSystemEvent is the kvm_run.system_event member, valid for
// ExitSystemEvent.
type RunSystemEvent struct {
	Type  uint32
	NData uint32
	Data  [16]uint64
}

// Reasons of RunX86MSR (KVM_MSR_EXIT_REASON_*).
const (
	MSRExitReasonInval   = 1 << 0
	MSRExitReasonUnknown = 1 << 1
	MSRExitReasonFilter  = 1 << 2
)

// RunX86MSR is the kvm_run.msr member, valid for ExitX86RDMSR and
// ExitX86WRMSR. For a read, userspace sets Data (or Error to inject #GP).
type RunX86MSR struct {
	Error  uint8
	_      [7]uint8
	Reason uint32
	Index  uint32
	Data   uint64
}

// RunMemoryFault is the kvm_run.memory_fault member, valid for
// ExitMemoryFault (Linux 6.8+).
type RunMemoryFault struct {
	Flags uint64
	GPA   uint64
	Size  uint64
}
