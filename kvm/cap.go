package kvm

import "strconv"

// Cap is a KVM capability number, as passed to KVM_CHECK_EXTENSION and
// KVM_ENABLE_CAP (KVM_CAP_* in include/uapi/linux/kvm.h).
type Cap uint32

// KVM capabilities. The values are the kernel's.
const (
	CapIRQChip                = Cap(0)   // KVM_CAP_IRQCHIP
	CapHLT                    = Cap(1)   // KVM_CAP_HLT
	CapUserMemory             = Cap(3)   // KVM_CAP_USER_MEMORY
	CapSetTSSAddr             = Cap(4)   // KVM_CAP_SET_TSS_ADDR
	CapExtCPUID               = Cap(7)   // KVM_CAP_EXT_CPUID
	CapNrVCPUs                = Cap(9)   // KVM_CAP_NR_VCPUS: recommended maximum vCPUs per VM
	CapNrMemslots             = Cap(10)  // KVM_CAP_NR_MEMSLOTS: maximum memory slots per VM
	CapPIT                    = Cap(11)  // KVM_CAP_PIT
	CapMPState                = Cap(14)  // KVM_CAP_MP_STATE
	CapCoalescedMMIO          = Cap(15)  // KVM_CAP_COALESCED_MMIO
	CapSyncMMU                = Cap(16)  // KVM_CAP_SYNC_MMU
	CapUserNMI                = Cap(22)  // KVM_CAP_USER_NMI
	CapSetGuestDebug          = Cap(23)  // KVM_CAP_SET_GUEST_DEBUG
	CapIRQRouting             = Cap(25)  // KVM_CAP_IRQ_ROUTING
	CapIRQInjectStatus        = Cap(26)  // KVM_CAP_IRQ_INJECT_STATUS
	CapMCE                    = Cap(31)  // KVM_CAP_MCE
	CapIRQFD                  = Cap(32)  // KVM_CAP_IRQFD
	CapPIT2                   = Cap(33)  // KVM_CAP_PIT2
	CapSetBootCPUID           = Cap(34)  // KVM_CAP_SET_BOOT_CPU_ID
	CapPITState2              = Cap(35)  // KVM_CAP_PIT_STATE2
	CapIOEventFD              = Cap(36)  // KVM_CAP_IOEVENTFD
	CapSetIdentityMapAddr     = Cap(37)  // KVM_CAP_SET_IDENTITY_MAP_ADDR
	CapAdjustClock            = Cap(39)  // KVM_CAP_ADJUST_CLOCK
	CapInternalErrorData      = Cap(40)  // KVM_CAP_INTERNAL_ERROR_DATA
	CapVCPUEvents             = Cap(41)  // KVM_CAP_VCPU_EVENTS
	CapDebugRegs              = Cap(50)  // KVM_CAP_DEBUGREGS
	CapXSave                  = Cap(55)  // KVM_CAP_XSAVE
	CapXCRs                   = Cap(56)  // KVM_CAP_XCRS
	CapTSCControl             = Cap(60)  // KVM_CAP_TSC_CONTROL
	CapGetTSCKHz              = Cap(61)  // KVM_CAP_GET_TSC_KHZ
	CapMaxVCPUs               = Cap(66)  // KVM_CAP_MAX_VCPUS: maximum vCPUs per VM
	CapOneReg                 = Cap(70)  // KVM_CAP_ONE_REG
	CapTSCDeadlineTimer       = Cap(72)  // KVM_CAP_TSC_DEADLINE_TIMER
	CapSyncRegs               = Cap(74)  // KVM_CAP_SYNC_REGS
	CapKVMClockCtrl           = Cap(76)  // KVM_CAP_KVMCLOCK_CTRL
	CapSignalMSI              = Cap(77)  // KVM_CAP_SIGNAL_MSI
	CapReadonlyMem            = Cap(81)  // KVM_CAP_READONLY_MEM
	CapIRQFDResample          = Cap(82)  // KVM_CAP_IRQFD_RESAMPLE
	CapMultiAddressSpace      = Cap(118) // KVM_CAP_MULTI_ADDRESS_SPACE
	CapSplitIRQChip           = Cap(121) // KVM_CAP_SPLIT_IRQCHIP
	CapIOEventFDAnyLength     = Cap(122) // KVM_CAP_IOEVENTFD_ANY_LENGTH
	CapMaxVCPUID              = Cap(128) // KVM_CAP_MAX_VCPU_ID
	CapX2APICAPI              = Cap(129) // KVM_CAP_X2APIC_API
	CapImmediateExit          = Cap(136) // KVM_CAP_IMMEDIATE_EXIT
	CapX86DisableExits        = Cap(143) // KVM_CAP_X86_DISABLE_EXITS
	CapCoalescedPIO           = Cap(162) // KVM_CAP_COALESCED_PIO
	CapExceptionPayload       = Cap(164) // KVM_CAP_EXCEPTION_PAYLOAD
	CapManualDirtyLogProtect2 = Cap(168) // KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
	CapX86UserSpaceMSR        = Cap(188) // KVM_CAP_X86_USER_SPACE_MSR
	CapX86MSRFilter           = Cap(189) // KVM_CAP_X86_MSR_FILTER
	CapDirtyLogRing           = Cap(192) // KVM_CAP_DIRTY_LOG_RING: maximum ring bytes
	CapX86BusLockExit         = Cap(193) // KVM_CAP_X86_BUS_LOCK_EXIT
	CapExitHypercall          = Cap(201) // KVM_CAP_EXIT_HYPERCALL
	CapBinaryStatsFD          = Cap(203) // KVM_CAP_BINARY_STATS_FD
	CapExitOnEmulationFailure = Cap(204) // KVM_CAP_EXIT_ON_EMULATION_FAILURE
	CapXSave2                 = Cap(208) // KVM_CAP_XSAVE2: KVM_GET_XSAVE2 buffer size
	CapVMTSCControl           = Cap(214) // KVM_CAP_VM_TSC_CONTROL
	CapX86TripleFaultEvent    = Cap(218) // KVM_CAP_X86_TRIPLE_FAULT_EVENT
	CapDirtyLogRingAcqRel     = Cap(223) // KVM_CAP_DIRTY_LOG_RING_ACQ_REL: maximum ring bytes
	CapDirtyLogRingWithBitmap = Cap(225) // KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP (Linux 6.3+)
)

var capNames = map[Cap]string{
	CapIRQChip:                "KVM_CAP_IRQCHIP",
	CapHLT:                    "KVM_CAP_HLT",
	CapUserMemory:             "KVM_CAP_USER_MEMORY",
	CapSetTSSAddr:             "KVM_CAP_SET_TSS_ADDR",
	CapExtCPUID:               "KVM_CAP_EXT_CPUID",
	CapNrVCPUs:                "KVM_CAP_NR_VCPUS",
	CapNrMemslots:             "KVM_CAP_NR_MEMSLOTS",
	CapPIT:                    "KVM_CAP_PIT",
	CapMPState:                "KVM_CAP_MP_STATE",
	CapCoalescedMMIO:          "KVM_CAP_COALESCED_MMIO",
	CapSyncMMU:                "KVM_CAP_SYNC_MMU",
	CapUserNMI:                "KVM_CAP_USER_NMI",
	CapSetGuestDebug:          "KVM_CAP_SET_GUEST_DEBUG",
	CapIRQRouting:             "KVM_CAP_IRQ_ROUTING",
	CapIRQInjectStatus:        "KVM_CAP_IRQ_INJECT_STATUS",
	CapMCE:                    "KVM_CAP_MCE",
	CapIRQFD:                  "KVM_CAP_IRQFD",
	CapPIT2:                   "KVM_CAP_PIT2",
	CapSetBootCPUID:           "KVM_CAP_SET_BOOT_CPU_ID",
	CapPITState2:              "KVM_CAP_PIT_STATE2",
	CapIOEventFD:              "KVM_CAP_IOEVENTFD",
	CapSetIdentityMapAddr:     "KVM_CAP_SET_IDENTITY_MAP_ADDR",
	CapAdjustClock:            "KVM_CAP_ADJUST_CLOCK",
	CapInternalErrorData:      "KVM_CAP_INTERNAL_ERROR_DATA",
	CapVCPUEvents:             "KVM_CAP_VCPU_EVENTS",
	CapDebugRegs:              "KVM_CAP_DEBUGREGS",
	CapXSave:                  "KVM_CAP_XSAVE",
	CapXCRs:                   "KVM_CAP_XCRS",
	CapTSCControl:             "KVM_CAP_TSC_CONTROL",
	CapGetTSCKHz:              "KVM_CAP_GET_TSC_KHZ",
	CapMaxVCPUs:               "KVM_CAP_MAX_VCPUS",
	CapOneReg:                 "KVM_CAP_ONE_REG",
	CapTSCDeadlineTimer:       "KVM_CAP_TSC_DEADLINE_TIMER",
	CapSyncRegs:               "KVM_CAP_SYNC_REGS",
	CapKVMClockCtrl:           "KVM_CAP_KVMCLOCK_CTRL",
	CapSignalMSI:              "KVM_CAP_SIGNAL_MSI",
	CapReadonlyMem:            "KVM_CAP_READONLY_MEM",
	CapIRQFDResample:          "KVM_CAP_IRQFD_RESAMPLE",
	CapMultiAddressSpace:      "KVM_CAP_MULTI_ADDRESS_SPACE",
	CapSplitIRQChip:           "KVM_CAP_SPLIT_IRQCHIP",
	CapIOEventFDAnyLength:     "KVM_CAP_IOEVENTFD_ANY_LENGTH",
	CapMaxVCPUID:              "KVM_CAP_MAX_VCPU_ID",
	CapX2APICAPI:              "KVM_CAP_X2APIC_API",
	CapImmediateExit:          "KVM_CAP_IMMEDIATE_EXIT",
	CapX86DisableExits:        "KVM_CAP_X86_DISABLE_EXITS",
	CapCoalescedPIO:           "KVM_CAP_COALESCED_PIO",
	CapExceptionPayload:       "KVM_CAP_EXCEPTION_PAYLOAD",
	CapManualDirtyLogProtect2: "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
	CapX86UserSpaceMSR:        "KVM_CAP_X86_USER_SPACE_MSR",
	CapX86MSRFilter:           "KVM_CAP_X86_MSR_FILTER",
	CapDirtyLogRing:           "KVM_CAP_DIRTY_LOG_RING",
	CapX86BusLockExit:         "KVM_CAP_X86_BUS_LOCK_EXIT",
	CapExitHypercall:          "KVM_CAP_EXIT_HYPERCALL",
	CapBinaryStatsFD:          "KVM_CAP_BINARY_STATS_FD",
	CapExitOnEmulationFailure: "KVM_CAP_EXIT_ON_EMULATION_FAILURE",
	CapXSave2:                 "KVM_CAP_XSAVE2",
	CapVMTSCControl:           "KVM_CAP_VM_TSC_CONTROL",
	CapX86TripleFaultEvent:    "KVM_CAP_X86_TRIPLE_FAULT_EVENT",
	CapDirtyLogRingAcqRel:     "KVM_CAP_DIRTY_LOG_RING_ACQ_REL",
	CapDirtyLogRingWithBitmap: "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP",
}

// String returns the kernel's name of the capability ("KVM_CAP_IRQCHIP"),
// or "KVM_CAP(n)" for numbers this package does not name.
func (c Cap) String() string {
	if s, ok := capNames[c]; ok {
		return s
	}
	return "KVM_CAP(" + strconv.FormatUint(uint64(c), 10) + ")"
}
