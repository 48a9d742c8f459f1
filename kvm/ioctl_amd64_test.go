package kvm

import (
	"testing"
	"unsafe"
)

func TestIOCEncoding(t *testing.T) {
	// _IOWR(KVMIO, 0x91, struct kvm_cpuid2) from <linux/kvm.h>.
	if got := ioc(iocRead|iocWrite, kvmio, 0x91, 8); got != 0xc008ae91 {
		t.Errorf("ioc(_IOWR, 0xAE, 0x91, 8) = %#x, want 0xc008ae91", got)
	}
	if got := ioc(iocNone, kvmio, 0x80, 0); got != kvmRun {
		t.Errorf("ioc(_IO, 0xAE, 0x80, 0) = %#x, want KVM_RUN %#x", got, uintptr(kvmRun))
	}
	if got := ioc(iocRead, kvmio, 0x81, unsafe.Sizeof(Regs{})); got != kvmGetRegs {
		t.Errorf("ioc(_IOR, 0xAE, 0x81, sizeof(Regs)) = %#x, want %#x", got, uintptr(kvmGetRegs))
	}
}

// TestIoctlNumbers checks every ioctl number against the value the kernel
// headers give (printed by a C program including <linux/kvm.h>, x86-64,
// Linux 6.1 uapi headers). The comment names the macro's definition.
func TestIoctlNumbers(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"KVM_GET_API_VERSION", kvmGetAPIVersion, 0x0000ae00},            // _IO(KVMIO, 0x00)
		{"KVM_CREATE_VM", kvmCreateVM, 0x0000ae01},                       // _IO(KVMIO, 0x01)
		{"KVM_GET_MSR_INDEX_LIST", kvmGetMSRIndexList, 0xc004ae02},       // _IOWR(KVMIO, 0x02, struct kvm_msr_list)
		{"KVM_CHECK_EXTENSION", kvmCheckExtension, 0x0000ae03},           // _IO(KVMIO, 0x03)
		{"KVM_GET_VCPU_MMAP_SIZE", kvmGetVCPUMmapSize, 0x0000ae04},       // _IO(KVMIO, 0x04)
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID, 0xc008ae05},    // _IOWR(KVMIO, 0x05, struct kvm_cpuid2)
		{"KVM_CREATE_VCPU", kvmCreateVCPU, 0x0000ae41},                   // _IO(KVMIO, 0x41)
		{"KVM_GET_DIRTY_LOG", kvmGetDirtyLog, 0x4010ae42},                // _IOW(KVMIO, 0x42, struct kvm_dirty_log)
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemRegion, 0x4020ae46},  // _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)
		{"KVM_SET_TSS_ADDR", kvmSetTSSAddr, 0x0000ae47},                  // _IO(KVMIO, 0x47)
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr, 0x4008ae48}, // _IOW(KVMIO, 0x48, __u64)
		{"KVM_CREATE_IRQCHIP", kvmCreateIRQChip, 0x0000ae60},             // _IO(KVMIO, 0x60)
		{"KVM_IRQ_LINE", kvmIRQLine, 0x4008ae61},                         // _IOW(KVMIO, 0x61, struct kvm_irq_level)
		{"KVM_GET_IRQCHIP", kvmGetIRQChip, 0xc208ae62},                   // _IOWR(KVMIO, 0x62, struct kvm_irqchip)
		{"KVM_SET_IRQCHIP", kvmSetIRQChip, 0x8208ae63},                   // _IOR(KVMIO, 0x63, struct kvm_irqchip)
		{"KVM_IRQFD", kvmIRQFDIoc, 0x4020ae76},                           // _IOW(KVMIO, 0x76, struct kvm_irqfd)
		{"KVM_CREATE_PIT2", kvmCreatePIT2, 0x4040ae77},                   // _IOW(KVMIO, 0x77, struct kvm_pit_config)
		{"KVM_IOEVENTFD", kvmIOEventFD, 0x4040ae79},                      // _IOW(KVMIO, 0x79, struct kvm_ioeventfd)
		{"KVM_SET_CLOCK", kvmSetClock, 0x4030ae7b},                       // _IOW(KVMIO, 0x7b, struct kvm_clock_data)
		{"KVM_GET_CLOCK", kvmGetClock, 0x8030ae7c},                       // _IOR(KVMIO, 0x7c, struct kvm_clock_data)
		{"KVM_GET_PIT2", kvmGetPIT2, 0x8070ae9f},                         // _IOR(KVMIO, 0x9f, struct kvm_pit_state2)
		{"KVM_SET_PIT2", kvmSetPIT2, 0x4070aea0},                         // _IOW(KVMIO, 0xa0, struct kvm_pit_state2)
		{"KVM_ENABLE_CAP", kvmEnableCapIoc, 0x4068aea3},                  // _IOW(KVMIO, 0xa3, struct kvm_enable_cap)
		{"KVM_CLEAR_DIRTY_LOG", kvmClearDirtyLogIoc, 0xc018aec0},         // _IOWR(KVMIO, 0xc0, struct kvm_clear_dirty_log)
		{"KVM_RESET_DIRTY_RINGS", kvmResetDirtyRings, 0x0000aec7},        // _IO(KVMIO, 0xc7)
		{"KVM_RUN", kvmRun, 0x0000ae80},                                  // _IO(KVMIO, 0x80)
		{"KVM_GET_REGS", kvmGetRegs, 0x8090ae81},                         // _IOR(KVMIO, 0x81, struct kvm_regs)
		{"KVM_SET_REGS", kvmSetRegs, 0x4090ae82},                         // _IOW(KVMIO, 0x82, struct kvm_regs)
		{"KVM_GET_SREGS", kvmGetSregs, 0x8138ae83},                       // _IOR(KVMIO, 0x83, struct kvm_sregs)
		{"KVM_SET_SREGS", kvmSetSregs, 0x4138ae84},                       // _IOW(KVMIO, 0x84, struct kvm_sregs)
		{"KVM_GET_MSRS", kvmGetMSRs, 0xc008ae88},                         // _IOWR(KVMIO, 0x88, struct kvm_msrs)
		{"KVM_SET_MSRS", kvmSetMSRs, 0x4008ae89},                         // _IOW(KVMIO, 0x89, struct kvm_msrs)
		{"KVM_GET_FPU", kvmGetFPU, 0x81a0ae8c},                           // _IOR(KVMIO, 0x8c, struct kvm_fpu)
		{"KVM_SET_FPU", kvmSetFPU, 0x41a0ae8d},                           // _IOW(KVMIO, 0x8d, struct kvm_fpu)
		{"KVM_GET_LAPIC", kvmGetLAPIC, 0x8400ae8e},                       // _IOR(KVMIO, 0x8e, struct kvm_lapic_state)
		{"KVM_SET_LAPIC", kvmSetLAPIC, 0x4400ae8f},                       // _IOW(KVMIO, 0x8f, struct kvm_lapic_state)
		{"KVM_SET_CPUID2", kvmSetCPUID2, 0x4008ae90},                     // _IOW(KVMIO, 0x90, struct kvm_cpuid2)
		{"KVM_GET_CPUID2", kvmGetCPUID2, 0xc008ae91},                     // _IOWR(KVMIO, 0x91, struct kvm_cpuid2)
		{"KVM_GET_MP_STATE", kvmGetMPState, 0x8004ae98},                  // _IOR(KVMIO, 0x98, struct kvm_mp_state)
		{"KVM_SET_MP_STATE", kvmSetMPState, 0x4004ae99},                  // _IOW(KVMIO, 0x99, struct kvm_mp_state)
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents, 0x8040ae9f},            // _IOR(KVMIO, 0x9f, struct kvm_vcpu_events)
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents, 0x4040aea0},            // _IOW(KVMIO, 0xa0, struct kvm_vcpu_events)
		{"KVM_GET_TSC_KHZ", kvmGetTSCKHz, 0x0000aea3},                    // _IO(KVMIO, 0xa3)
		{"KVM_GET_XSAVE", kvmGetXSave, 0x9000aea4},                       // _IOR(KVMIO, 0xa4, struct kvm_xsave)
		{"KVM_SET_XSAVE", kvmSetXSave, 0x5000aea5},                       // _IOW(KVMIO, 0xa5, struct kvm_xsave)
		{"KVM_GET_XCRS", kvmGetXCRs, 0x8188aea6},                         // _IOR(KVMIO, 0xa6, struct kvm_xcrs)
		{"KVM_SET_XCRS", kvmSetXCRs, 0x4188aea7},                         // _IOW(KVMIO, 0xa7, struct kvm_xcrs)
		{"KVM_GET_XSAVE2", kvmGetXSave2, 0x9000aecf},                     // _IOR(KVMIO, 0xcf, struct kvm_xsave)
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %#08x, want %#08x", tt.name, tt.got, tt.want)
		}
	}
}

// TestConstants checks capability, exit and flag numbers against the
// kernel headers (linux/kvm.h 6.1; the ones marked "newer" are from later
// upstream headers).
func TestConstants(t *testing.T) {
	tests := []struct {
		name      string
		got, want uint64
	}{
		{"KVM_CAP_IRQCHIP", uint64(CapIRQChip), 0},
		{"KVM_CAP_HLT", uint64(CapHLT), 1},
		{"KVM_CAP_USER_MEMORY", uint64(CapUserMemory), 3},
		{"KVM_CAP_SET_TSS_ADDR", uint64(CapSetTSSAddr), 4},
		{"KVM_CAP_EXT_CPUID", uint64(CapExtCPUID), 7},
		{"KVM_CAP_NR_VCPUS", uint64(CapNrVCPUs), 9},
		{"KVM_CAP_NR_MEMSLOTS", uint64(CapNrMemslots), 10},
		{"KVM_CAP_PIT", uint64(CapPIT), 11},
		{"KVM_CAP_MP_STATE", uint64(CapMPState), 14},
		{"KVM_CAP_COALESCED_MMIO", uint64(CapCoalescedMMIO), 15},
		{"KVM_CAP_SYNC_MMU", uint64(CapSyncMMU), 16},
		{"KVM_CAP_USER_NMI", uint64(CapUserNMI), 22},
		{"KVM_CAP_SET_GUEST_DEBUG", uint64(CapSetGuestDebug), 23},
		{"KVM_CAP_IRQ_ROUTING", uint64(CapIRQRouting), 25},
		{"KVM_CAP_IRQ_INJECT_STATUS", uint64(CapIRQInjectStatus), 26},
		{"KVM_CAP_MCE", uint64(CapMCE), 31},
		{"KVM_CAP_IRQFD", uint64(CapIRQFD), 32},
		{"KVM_CAP_PIT2", uint64(CapPIT2), 33},
		{"KVM_CAP_SET_BOOT_CPU_ID", uint64(CapSetBootCPUID), 34},
		{"KVM_CAP_PIT_STATE2", uint64(CapPITState2), 35},
		{"KVM_CAP_IOEVENTFD", uint64(CapIOEventFD), 36},
		{"KVM_CAP_SET_IDENTITY_MAP_ADDR", uint64(CapSetIdentityMapAddr), 37},
		{"KVM_CAP_ADJUST_CLOCK", uint64(CapAdjustClock), 39},
		{"KVM_CAP_INTERNAL_ERROR_DATA", uint64(CapInternalErrorData), 40},
		{"KVM_CAP_VCPU_EVENTS", uint64(CapVCPUEvents), 41},
		{"KVM_CAP_DEBUGREGS", uint64(CapDebugRegs), 50},
		{"KVM_CAP_XSAVE", uint64(CapXSave), 55},
		{"KVM_CAP_XCRS", uint64(CapXCRs), 56},
		{"KVM_CAP_TSC_CONTROL", uint64(CapTSCControl), 60},
		{"KVM_CAP_GET_TSC_KHZ", uint64(CapGetTSCKHz), 61},
		{"KVM_CAP_MAX_VCPUS", uint64(CapMaxVCPUs), 66},
		{"KVM_CAP_ONE_REG", uint64(CapOneReg), 70},
		{"KVM_CAP_TSC_DEADLINE_TIMER", uint64(CapTSCDeadlineTimer), 72},
		{"KVM_CAP_SYNC_REGS", uint64(CapSyncRegs), 74},
		{"KVM_CAP_KVMCLOCK_CTRL", uint64(CapKVMClockCtrl), 76},
		{"KVM_CAP_SIGNAL_MSI", uint64(CapSignalMSI), 77},
		{"KVM_CAP_READONLY_MEM", uint64(CapReadonlyMem), 81},
		{"KVM_CAP_IRQFD_RESAMPLE", uint64(CapIRQFDResample), 82},
		{"KVM_CAP_MULTI_ADDRESS_SPACE", uint64(CapMultiAddressSpace), 118},
		{"KVM_CAP_SPLIT_IRQCHIP", uint64(CapSplitIRQChip), 121},
		{"KVM_CAP_IOEVENTFD_ANY_LENGTH", uint64(CapIOEventFDAnyLength), 122},
		{"KVM_CAP_MAX_VCPU_ID", uint64(CapMaxVCPUID), 128},
		{"KVM_CAP_X2APIC_API", uint64(CapX2APICAPI), 129},
		{"KVM_CAP_IMMEDIATE_EXIT", uint64(CapImmediateExit), 136},
		{"KVM_CAP_X86_DISABLE_EXITS", uint64(CapX86DisableExits), 143},
		{"KVM_CAP_COALESCED_PIO", uint64(CapCoalescedPIO), 162},
		{"KVM_CAP_EXCEPTION_PAYLOAD", uint64(CapExceptionPayload), 164},
		{"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", uint64(CapManualDirtyLogProtect2), 168},
		{"KVM_CAP_X86_USER_SPACE_MSR", uint64(CapX86UserSpaceMSR), 188},
		{"KVM_CAP_X86_MSR_FILTER", uint64(CapX86MSRFilter), 189},
		{"KVM_CAP_DIRTY_LOG_RING", uint64(CapDirtyLogRing), 192},
		{"KVM_CAP_X86_BUS_LOCK_EXIT", uint64(CapX86BusLockExit), 193},
		{"KVM_CAP_EXIT_HYPERCALL", uint64(CapExitHypercall), 201},
		{"KVM_CAP_BINARY_STATS_FD", uint64(CapBinaryStatsFD), 203},
		{"KVM_CAP_EXIT_ON_EMULATION_FAILURE", uint64(CapExitOnEmulationFailure), 204},
		{"KVM_CAP_XSAVE2", uint64(CapXSave2), 208},
		{"KVM_CAP_VM_TSC_CONTROL", uint64(CapVMTSCControl), 214},
		{"KVM_CAP_X86_TRIPLE_FAULT_EVENT", uint64(CapX86TripleFaultEvent), 218},
		{"KVM_CAP_DIRTY_LOG_RING_ACQ_REL", uint64(CapDirtyLogRingAcqRel), 223},
		{"KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP (newer: 6.3)", uint64(CapDirtyLogRingWithBitmap), 225},

		{"KVM_EXIT_IO", uint64(ExitIO), 2},
		{"KVM_EXIT_HLT", uint64(ExitHLT), 5},
		{"KVM_EXIT_MMIO", uint64(ExitMMIO), 6},
		{"KVM_EXIT_SHUTDOWN", uint64(ExitShutdown), 8},
		{"KVM_EXIT_FAIL_ENTRY", uint64(ExitFailEntry), 9},
		{"KVM_EXIT_INTR", uint64(ExitIntr), 10},
		{"KVM_EXIT_NMI", uint64(ExitNMI), 16},
		{"KVM_EXIT_INTERNAL_ERROR", uint64(ExitInternalError), 17},
		{"KVM_EXIT_SYSTEM_EVENT", uint64(ExitSystemEvent), 24},
		{"KVM_EXIT_X86_RDMSR", uint64(ExitX86RDMSR), 29},
		{"KVM_EXIT_X86_WRMSR", uint64(ExitX86WRMSR), 30},
		{"KVM_EXIT_DIRTY_RING_FULL", uint64(ExitDirtyRingFull), 31},
		{"KVM_EXIT_NOTIFY", uint64(ExitNotify), 37},
		{"KVM_EXIT_LOONGARCH_IOCSR (newer: 6.8)", uint64(ExitLoongArchIOCSR), 38},
		{"KVM_EXIT_MEMORY_FAULT (newer: 6.8)", uint64(ExitMemoryFault), 39},

		{"KVM_INTERNAL_ERROR_EMULATION", uint64(InternalErrorEmulation), 1},
		{"KVM_INTERNAL_ERROR_SIMUL_EX", uint64(InternalErrorSimulEx), 2},
		{"KVM_INTERNAL_ERROR_DELIVERY_EV", uint64(InternalErrorDeliveryEv), 3},
		{"KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON", uint64(InternalErrorUnexpectedExitReason), 4},
		{"KVM_SYSTEM_EVENT_SHUTDOWN", SystemEventShutdown, 1},
		{"KVM_SYSTEM_EVENT_RESET", SystemEventReset, 2},
		{"KVM_SYSTEM_EVENT_CRASH", SystemEventCrash, 3},
		{"KVM_MP_STATE_RUNNABLE", uint64(MPStateRunnable), 0},
		{"KVM_MP_STATE_UNINITIALIZED", uint64(MPStateUninitialized), 1},
		{"KVM_MP_STATE_INIT_RECEIVED", uint64(MPStateInitReceived), 2},
		{"KVM_MP_STATE_HALTED", uint64(MPStateHalted), 3},
		{"KVM_MP_STATE_SIPI_RECEIVED", uint64(MPStateSIPIReceived), 4},
		{"KVM_MP_STATE_AP_RESET_HOLD", uint64(MPStateAPResetHold), 9},
		{"KVM_MP_STATE_SUSPENDED", uint64(MPStateSuspended), 10},

		{"KVM_MEM_LOG_DIRTY_PAGES", MemLogDirtyPages, 1},
		{"KVM_MEM_READONLY", MemReadonly, 2},
		{"KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE", DirtyLogManualProtectEnable, 1},
		{"KVM_DIRTY_LOG_INITIALLY_SET", DirtyLogInitiallySet, 2},
		{"KVM_PIT_SPEAKER_DUMMY", PITSpeakerDummy, 1},
		{"KVM_IRQFD_FLAG_DEASSIGN", IRQFDDeassign, 1},
		{"KVM_IRQFD_FLAG_RESAMPLE", IRQFDResample, 2},
		{"KVM_IOEVENTFD_FLAG_DATAMATCH", IOEventFDDatamatch, 1},
		{"KVM_IOEVENTFD_FLAG_PIO", IOEventFDPIO, 2},
		{"KVM_IOEVENTFD_FLAG_DEASSIGN", IOEventFDDeassign, 4},
		{"KVM_IRQCHIP_PIC_MASTER", IRQChipPICMaster, 0},
		{"KVM_IRQCHIP_PIC_SLAVE", IRQChipPICSlave, 1},
		{"KVM_IRQCHIP_IOAPIC", IRQChipIOAPIC, 2},
		{"KVM_CPUID_FLAG_SIGNIFCANT_INDEX", CPUIDFlagSignificantIndex, 1},
		{"KVM_DIRTY_GFN_F_DIRTY", DirtyGFNFlagDirty, 1},
		{"KVM_DIRTY_GFN_F_RESET", DirtyGFNFlagReset, 2},
		{"KVM_DIRTY_LOG_PAGE_OFFSET", dirtyLogPageOffset, 64},
		{"KVM_EXIT_IO_IN", ExitIOIn, 0},
		{"KVM_EXIT_IO_OUT", ExitIOOut, 1},
		{"KVM_VCPUEVENT_VALID_NMI_PENDING", VCPUEventValidNMIPending, 1},
		{"KVM_VCPUEVENT_VALID_SIPI_VECTOR", VCPUEventValidSIPIVector, 2},
		{"KVM_VCPUEVENT_VALID_SHADOW", VCPUEventValidShadow, 4},
		{"KVM_VCPUEVENT_VALID_SMM", VCPUEventValidSMM, 8},
		{"KVM_VCPUEVENT_VALID_PAYLOAD", VCPUEventValidPayload, 16},
		{"KVM_VCPUEVENT_VALID_TRIPLE_FAULT", VCPUEventValidTripleFault, 32},
		{"KVM_CLOCK_TSC_STABLE", ClockTSCStable, 2},
		{"KVM_CLOCK_REALTIME", ClockRealtime, 4},
		{"KVM_CLOCK_HOST_TSC", ClockHostTSC, 8},
		{"KVM_SYNC_X86_REGS", SyncX86Regs, 1},
		{"KVM_SYNC_X86_SREGS", SyncX86Sregs, 2},
		{"KVM_SYNC_X86_EVENTS", SyncX86Events, 4},
		{"KVM_PIT_FLAGS_HPET_LEGACY", PITFlagsHPETLegacy, 1},
		{"KVM_PIT_FLAGS_SPEAKER_DATA_ON", PITFlagsSpeakerDataOn, 2},
		{"KVM_MSR_EXIT_REASON_INVAL", MSRExitReasonInval, 1},
		{"KVM_MSR_EXIT_REASON_UNKNOWN", MSRExitReasonUnknown, 2},
		{"KVM_MSR_EXIT_REASON_FILTER", MSRExitReasonFilter, 4},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestStrings(t *testing.T) {
	tests := []struct{ got, want string }{
		{ExitIO.String(), "KVM_EXIT_IO"},
		{ExitHLT.String(), "KVM_EXIT_HLT"},
		{ExitInternalError.String(), "KVM_EXIT_INTERNAL_ERROR"},
		{ExitMemoryFault.String(), "KVM_EXIT_MEMORY_FAULT"},
		{ExitReason(1000).String(), "KVM_EXIT(1000)"},
		{CapIRQChip.String(), "KVM_CAP_IRQCHIP"},
		{CapDirtyLogRingAcqRel.String(), "KVM_CAP_DIRTY_LOG_RING_ACQ_REL"},
		{Cap(9999).String(), "KVM_CAP(9999)"},
		{InternalErrorEmulation.String(), "KVM_INTERNAL_ERROR_EMULATION"},
		{InternalErrorSuberror(0).String(), "KVM_INTERNAL_ERROR(0)"},
		{MPStateHalted.String(), "KVM_MP_STATE_HALTED"},
		{MPState(7).String(), "KVM_MP_STATE(7)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("String() = %q, want %q", tt.got, tt.want)
		}
	}
	for e := ExitUnknown; e <= ExitMemoryFault; e++ {
		if s := e.String(); s == "" || s[:9] != "KVM_EXIT_" {
			t.Errorf("ExitReason(%d).String() = %q", e, s)
		}
	}
}
