package kvm

import "strconv"

// ExitReason is kvm_run.exit_reason (KVM_EXIT_*).
type ExitReason uint32

// Exit reasons. The values are the kernel's.
const (
	ExitUnknown        = ExitReason(0)
	ExitException      = ExitReason(1)
	ExitIO             = ExitReason(2)
	ExitHypercall      = ExitReason(3)
	ExitDebug          = ExitReason(4)
	ExitHLT            = ExitReason(5)
	ExitMMIO           = ExitReason(6)
	ExitIRQWindowOpen  = ExitReason(7)
	ExitShutdown       = ExitReason(8)
	ExitFailEntry      = ExitReason(9)
	ExitIntr           = ExitReason(10)
	ExitSetTPR         = ExitReason(11)
	ExitTPRAccess      = ExitReason(12)
	ExitS390SIEIC      = ExitReason(13)
	ExitS390Reset      = ExitReason(14)
	ExitDCR            = ExitReason(15)
	ExitNMI            = ExitReason(16)
	ExitInternalError  = ExitReason(17)
	ExitOSI            = ExitReason(18)
	ExitPAPRHcall      = ExitReason(19)
	ExitS390UControl   = ExitReason(20)
	ExitWatchdog       = ExitReason(21)
	ExitS390TSCH       = ExitReason(22)
	ExitEPR            = ExitReason(23)
	ExitSystemEvent    = ExitReason(24)
	ExitS390STSI       = ExitReason(25)
	ExitIOAPICEOI      = ExitReason(26)
	ExitHyperV         = ExitReason(27)
	ExitARMNISV        = ExitReason(28)
	ExitX86RDMSR       = ExitReason(29)
	ExitX86WRMSR       = ExitReason(30)
	ExitDirtyRingFull  = ExitReason(31)
	ExitAPResetHold    = ExitReason(32)
	ExitX86BusLock     = ExitReason(33)
	ExitXen            = ExitReason(34)
	ExitRISCVSBI       = ExitReason(35)
	ExitRISCVCSR       = ExitReason(36)
	ExitNotify         = ExitReason(37)
	ExitLoongArchIOCSR = ExitReason(38)
	ExitMemoryFault    = ExitReason(39)
)

var exitNames = [...]string{
	ExitUnknown:        "KVM_EXIT_UNKNOWN",
	ExitException:      "KVM_EXIT_EXCEPTION",
	ExitIO:             "KVM_EXIT_IO",
	ExitHypercall:      "KVM_EXIT_HYPERCALL",
	ExitDebug:          "KVM_EXIT_DEBUG",
	ExitHLT:            "KVM_EXIT_HLT",
	ExitMMIO:           "KVM_EXIT_MMIO",
	ExitIRQWindowOpen:  "KVM_EXIT_IRQ_WINDOW_OPEN",
	ExitShutdown:       "KVM_EXIT_SHUTDOWN",
	ExitFailEntry:      "KVM_EXIT_FAIL_ENTRY",
	ExitIntr:           "KVM_EXIT_INTR",
	ExitSetTPR:         "KVM_EXIT_SET_TPR",
	ExitTPRAccess:      "KVM_EXIT_TPR_ACCESS",
	ExitS390SIEIC:      "KVM_EXIT_S390_SIEIC",
	ExitS390Reset:      "KVM_EXIT_S390_RESET",
	ExitDCR:            "KVM_EXIT_DCR",
	ExitNMI:            "KVM_EXIT_NMI",
	ExitInternalError:  "KVM_EXIT_INTERNAL_ERROR",
	ExitOSI:            "KVM_EXIT_OSI",
	ExitPAPRHcall:      "KVM_EXIT_PAPR_HCALL",
	ExitS390UControl:   "KVM_EXIT_S390_UCONTROL",
	ExitWatchdog:       "KVM_EXIT_WATCHDOG",
	ExitS390TSCH:       "KVM_EXIT_S390_TSCH",
	ExitEPR:            "KVM_EXIT_EPR",
	ExitSystemEvent:    "KVM_EXIT_SYSTEM_EVENT",
	ExitS390STSI:       "KVM_EXIT_S390_STSI",
	ExitIOAPICEOI:      "KVM_EXIT_IOAPIC_EOI",
	ExitHyperV:         "KVM_EXIT_HYPERV",
	ExitARMNISV:        "KVM_EXIT_ARM_NISV",
	ExitX86RDMSR:       "KVM_EXIT_X86_RDMSR",
	ExitX86WRMSR:       "KVM_EXIT_X86_WRMSR",
	ExitDirtyRingFull:  "KVM_EXIT_DIRTY_RING_FULL",
	ExitAPResetHold:    "KVM_EXIT_AP_RESET_HOLD",
	ExitX86BusLock:     "KVM_EXIT_X86_BUS_LOCK",
	ExitXen:            "KVM_EXIT_XEN",
	ExitRISCVSBI:       "KVM_EXIT_RISCV_SBI",
	ExitRISCVCSR:       "KVM_EXIT_RISCV_CSR",
	ExitNotify:         "KVM_EXIT_NOTIFY",
	ExitLoongArchIOCSR: "KVM_EXIT_LOONGARCH_IOCSR",
	ExitMemoryFault:    "KVM_EXIT_MEMORY_FAULT",
}

// String returns the kernel's name of the exit reason ("KVM_EXIT_IO"), or
// "KVM_EXIT(n)" for numbers this package does not name.
func (e ExitReason) String() string {
	if int(e) < len(exitNames) {
		return exitNames[e]
	}
	return "KVM_EXIT(" + strconv.FormatUint(uint64(e), 10) + ")"
}
