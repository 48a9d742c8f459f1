package kvm

import (
	"testing"
	"unsafe"
)

// The expected sizes and offsets below were read from the x86-64 kernel
// headers (Debian 12 linux-libc-dev 6.1: /usr/include/linux/kvm.h and
// /usr/include/x86_64-linux-gnu/asm/kvm.h) with sizeof/offsetof in a C
// program; the comment on each row names the C struct or field.

func TestStructSizes(t *testing.T) {
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_run", unsafe.Sizeof(Run{}), 2352},
		{"kvm_regs", unsafe.Sizeof(Regs{}), 144},
		{"kvm_sregs", unsafe.Sizeof(Sregs{}), 312},
		{"kvm_fpu", unsafe.Sizeof(FPU{}), 416},
		{"kvm_segment", unsafe.Sizeof(Segment{}), 24},
		{"kvm_dtable", unsafe.Sizeof(DTable{}), 16},
		{"kvm_msr_entry", unsafe.Sizeof(MSREntry{}), 16},
		{"kvm_msrs (header)", unsafe.Sizeof(kvmMSRsHeader{}), 8},
		{"kvm_msr_list (header)", unsafe.Sizeof(kvmMSRListHeader{}), 4},
		{"kvm_cpuid_entry2", unsafe.Sizeof(CPUIDEntry{}), 40},
		{"kvm_cpuid2 (header)", unsafe.Sizeof(kvmCPUID2Header{}), 8},
		{"kvm_lapic_state", unsafe.Sizeof(LAPICState{}), 1024},
		{"kvm_vcpu_events", unsafe.Sizeof(VCPUEvents{}), 64},
		{"kvm_xcr", unsafe.Sizeof(XCR{}), 16},
		{"kvm_xcrs", unsafe.Sizeof(XCRs{}), 392},
		{"kvm_xsave", unsafe.Sizeof(XSave{}), 4096},
		{"kvm_irqchip", unsafe.Sizeof(IRQChip{}), 520},
		{"kvm_pit_channel_state", unsafe.Sizeof(PITChannelState{}), 24},
		{"kvm_pit_state2", unsafe.Sizeof(PITState2{}), 112},
		{"kvm_pit_config", unsafe.Sizeof(kvmPITConfig{}), 64},
		{"kvm_clock_data", unsafe.Sizeof(ClockData{}), 48},
		{"kvm_userspace_memory_region", unsafe.Sizeof(UserspaceMemoryRegion{}), 32},
		{"kvm_dirty_log", unsafe.Sizeof(kvmDirtyLog{}), 16},
		{"kvm_clear_dirty_log", unsafe.Sizeof(kvmClearDirtyLog{}), 24},
		{"kvm_enable_cap", unsafe.Sizeof(kvmEnableCap{}), 104},
		{"kvm_irq_level", unsafe.Sizeof(kvmIRQLevel{}), 8},
		{"kvm_irqfd", unsafe.Sizeof(kvmIRQFD{}), 32},
		{"kvm_ioeventfd", unsafe.Sizeof(IOEventFD{}), 64},
		{"kvm_dirty_gfn", unsafe.Sizeof(DirtyGFN{}), 16},
		{"kvm_mp_state", unsafe.Sizeof(kvmMPState{}), 4},
		{"kvm_sync_regs", unsafe.Sizeof(SyncRegs{}), 520},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("sizeof(struct %s) = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestStructOffsets(t *testing.T) {
	var (
		run   Run
		exit  = unsafe.Offsetof(run.exit) // offset of the kvm_run union
		io    RunIO
		mmio  RunMMIO
		ie    RunInternalError
		fe    RunFailEntry
		se    RunSystemEvent
		msr   RunX86MSR
		mf    RunMemoryFault
		sync  SyncRegs
		sr    Sregs
		seg   Segment
		dt    DTable
		fpu   FPU
		me    MSREntry
		ce    CPUIDEntry
		ev    VCPUEvents
		xcrs  XCRs
		xcr   XCR
		chip  IRQChip
		pcs   PITChannelState
		pit   PITState2
		clk   ClockData
		umr   UserspaceMemoryRegion
		dl    kvmDirtyLog
		cdl   kvmClearDirtyLog
		ecap  kvmEnableCap
		irql  kvmIRQLevel
		irqfd kvmIRQFD
		iofd  IOEventFD
		gfn   DirtyGFN
	)
	tests := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"kvm_run.request_interrupt_window", unsafe.Offsetof(run.RequestInterruptWindow), 0},
		{"kvm_run.immediate_exit", unsafe.Offsetof(run.ImmediateExit), 1},
		{"kvm_run.exit_reason", unsafe.Offsetof(run.ExitReason), 8},
		{"kvm_run.ready_for_interrupt_injection", unsafe.Offsetof(run.ReadyForInterruptInjection), 12},
		{"kvm_run.if_flag", unsafe.Offsetof(run.IFFlag), 13},
		{"kvm_run.flags", unsafe.Offsetof(run.Flags), 14},
		{"kvm_run.cr8", unsafe.Offsetof(run.CR8), 16},
		{"kvm_run.apic_base", unsafe.Offsetof(run.APICBase), 24},
		{"kvm_run (union)", exit, 32},
		{"kvm_run.kvm_valid_regs", unsafe.Offsetof(run.KVMValidRegs), 288},
		{"kvm_run.kvm_dirty_regs", unsafe.Offsetof(run.KVMDirtyRegs), 296},
		{"kvm_run.s.regs", unsafe.Offsetof(run.syncRegs), 304},

		{"kvm_run.io.direction", exit + unsafe.Offsetof(io.Direction), 32},
		{"kvm_run.io.size", exit + unsafe.Offsetof(io.Size), 33},
		{"kvm_run.io.port", exit + unsafe.Offsetof(io.Port), 34},
		{"kvm_run.io.count", exit + unsafe.Offsetof(io.Count), 36},
		{"kvm_run.io.data_offset", exit + unsafe.Offsetof(io.DataOffset), 40},
		{"kvm_run.mmio.phys_addr", exit + unsafe.Offsetof(mmio.PhysAddr), 32},
		{"kvm_run.mmio.data", exit + unsafe.Offsetof(mmio.Data), 40},
		{"kvm_run.mmio.len", exit + unsafe.Offsetof(mmio.Len), 48},
		{"kvm_run.mmio.is_write", exit + unsafe.Offsetof(mmio.IsWrite), 52},
		{"kvm_run.internal.suberror", exit + unsafe.Offsetof(ie.Suberror), 32},
		{"kvm_run.internal.ndata", exit + unsafe.Offsetof(ie.NData), 36},
		{"kvm_run.internal.data", exit + unsafe.Offsetof(ie.Data), 40},
		{"kvm_run.fail_entry.hardware_entry_failure_reason", exit + unsafe.Offsetof(fe.HardwareEntryFailureReason), 32},
		{"kvm_run.fail_entry.cpu", exit + unsafe.Offsetof(fe.CPU), 40},
		{"kvm_run.system_event.type", exit + unsafe.Offsetof(se.Type), 32},
		{"kvm_run.system_event.ndata", exit + unsafe.Offsetof(se.NData), 36},
		{"kvm_run.system_event.data", exit + unsafe.Offsetof(se.Data), 40},
		{"kvm_run.msr.error", exit + unsafe.Offsetof(msr.Error), 32},
		{"kvm_run.msr.reason", exit + unsafe.Offsetof(msr.Reason), 40},
		{"kvm_run.msr.index", exit + unsafe.Offsetof(msr.Index), 44},
		{"kvm_run.msr.data", exit + unsafe.Offsetof(msr.Data), 48},
		// kvm_run.memory_fault is newer than the 6.1 header; Linux 6.8+
		// declares it as { __u64 flags; __u64 gpa; __u64 size; }.
		{"kvm_run.memory_fault.flags", exit + unsafe.Offsetof(mf.Flags), 32},
		{"kvm_run.memory_fault.gpa", exit + unsafe.Offsetof(mf.GPA), 40},
		{"kvm_run.memory_fault.size", exit + unsafe.Offsetof(mf.Size), 48},
		{"kvm_run.s.regs.regs", unsafe.Offsetof(run.syncRegs) + unsafe.Offsetof(sync.Regs), 304},
		{"kvm_run.s.regs.sregs", unsafe.Offsetof(run.syncRegs) + unsafe.Offsetof(sync.Sregs), 448},
		{"kvm_run.s.regs.events", unsafe.Offsetof(run.syncRegs) + unsafe.Offsetof(sync.Events), 760},

		{"kvm_sregs.cs", unsafe.Offsetof(sr.CS), 0},
		{"kvm_sregs.ldt", unsafe.Offsetof(sr.LDT), 168},
		{"kvm_sregs.gdt", unsafe.Offsetof(sr.GDT), 192},
		{"kvm_sregs.idt", unsafe.Offsetof(sr.IDT), 208},
		{"kvm_sregs.cr0", unsafe.Offsetof(sr.CR0), 224},
		{"kvm_sregs.efer", unsafe.Offsetof(sr.EFER), 264},
		{"kvm_sregs.apic_base", unsafe.Offsetof(sr.APICBase), 272},
		{"kvm_sregs.interrupt_bitmap", unsafe.Offsetof(sr.InterruptBitmap), 280},
		{"kvm_segment.limit", unsafe.Offsetof(seg.Limit), 8},
		{"kvm_segment.selector", unsafe.Offsetof(seg.Selector), 12},
		{"kvm_segment.type", unsafe.Offsetof(seg.Type), 14},
		{"kvm_segment.unusable", unsafe.Offsetof(seg.Unusable), 22},
		{"kvm_dtable.limit", unsafe.Offsetof(dt.Limit), 8},
		{"kvm_fpu.fcw", unsafe.Offsetof(fpu.FCW), 128},
		{"kvm_fpu.fsw", unsafe.Offsetof(fpu.FSW), 130},
		{"kvm_fpu.ftwx", unsafe.Offsetof(fpu.FTWX), 132},
		{"kvm_fpu.last_opcode", unsafe.Offsetof(fpu.LastOpcode), 134},
		{"kvm_fpu.last_ip", unsafe.Offsetof(fpu.LastIP), 136},
		{"kvm_fpu.last_dp", unsafe.Offsetof(fpu.LastDP), 144},
		{"kvm_fpu.xmm", unsafe.Offsetof(fpu.XMM), 152},
		{"kvm_fpu.mxcsr", unsafe.Offsetof(fpu.MXCSR), 408},
		{"kvm_msr_entry.data", unsafe.Offsetof(me.Data), 8},
		{"kvm_cpuid_entry2.index", unsafe.Offsetof(ce.Index), 4},
		{"kvm_cpuid_entry2.flags", unsafe.Offsetof(ce.Flags), 8},
		{"kvm_cpuid_entry2.eax", unsafe.Offsetof(ce.EAX), 12},
		{"kvm_cpuid_entry2.edx", unsafe.Offsetof(ce.EDX), 24},
		{"kvm_vcpu_events.exception", unsafe.Offsetof(ev.Exception), 0},
		{"kvm_vcpu_events.exception.error_code", unsafe.Offsetof(ev.Exception) + unsafe.Offsetof(ev.Exception.ErrorCode), 4},
		{"kvm_vcpu_events.interrupt", unsafe.Offsetof(ev.Interrupt), 8},
		{"kvm_vcpu_events.nmi", unsafe.Offsetof(ev.NMI), 12},
		{"kvm_vcpu_events.sipi_vector", unsafe.Offsetof(ev.SIPIVector), 16},
		{"kvm_vcpu_events.flags", unsafe.Offsetof(ev.Flags), 20},
		{"kvm_vcpu_events.smi", unsafe.Offsetof(ev.SMI), 24},
		{"kvm_vcpu_events.triple_fault", unsafe.Offsetof(ev.TripleFault), 28},
		{"kvm_vcpu_events.reserved", unsafe.Offsetof(ev.Reserved), 29},
		{"kvm_vcpu_events.exception_has_payload", unsafe.Offsetof(ev.ExceptionHasPayload), 55},
		{"kvm_vcpu_events.exception_payload", unsafe.Offsetof(ev.ExceptionPayload), 56},
		{"kvm_xcrs.flags", unsafe.Offsetof(xcrs.Flags), 4},
		{"kvm_xcrs.xcrs", unsafe.Offsetof(xcrs.XCRs), 8},
		{"kvm_xcr.value", unsafe.Offsetof(xcr.Value), 8},
		{"kvm_irqchip.chip", unsafe.Offsetof(chip.Chip), 8},
		{"kvm_pit_channel_state.latched_count", unsafe.Offsetof(pcs.LatchedCount), 4},
		{"kvm_pit_channel_state.count_latched", unsafe.Offsetof(pcs.CountLatched), 6},
		{"kvm_pit_channel_state.status", unsafe.Offsetof(pcs.Status), 8},
		{"kvm_pit_channel_state.rw_mode", unsafe.Offsetof(pcs.RWMode), 12},
		{"kvm_pit_channel_state.gate", unsafe.Offsetof(pcs.Gate), 15},
		{"kvm_pit_channel_state.count_load_time", unsafe.Offsetof(pcs.CountLoadTime), 16},
		{"kvm_pit_state2.flags", unsafe.Offsetof(pit.Flags), 72},
		{"kvm_clock_data.flags", unsafe.Offsetof(clk.Flags), 8},
		{"kvm_clock_data.realtime", unsafe.Offsetof(clk.Realtime), 16},
		{"kvm_clock_data.host_tsc", unsafe.Offsetof(clk.HostTSC), 24},
		{"kvm_userspace_memory_region.flags", unsafe.Offsetof(umr.Flags), 4},
		{"kvm_userspace_memory_region.guest_phys_addr", unsafe.Offsetof(umr.GuestPhysAddr), 8},
		{"kvm_userspace_memory_region.memory_size", unsafe.Offsetof(umr.MemorySize), 16},
		{"kvm_userspace_memory_region.userspace_addr", unsafe.Offsetof(umr.UserspaceAddr), 24},
		{"kvm_dirty_log.dirty_bitmap", unsafe.Offsetof(dl.Bitmap), 8},
		{"kvm_clear_dirty_log.num_pages", unsafe.Offsetof(cdl.NumPages), 4},
		{"kvm_clear_dirty_log.first_page", unsafe.Offsetof(cdl.FirstPage), 8},
		{"kvm_clear_dirty_log.dirty_bitmap", unsafe.Offsetof(cdl.Bitmap), 16},
		{"kvm_enable_cap.flags", unsafe.Offsetof(ecap.Flags), 4},
		{"kvm_enable_cap.args", unsafe.Offsetof(ecap.Args), 8},
		{"kvm_irq_level.level", unsafe.Offsetof(irql.Level), 4},
		{"kvm_irqfd.gsi", unsafe.Offsetof(irqfd.GSI), 4},
		{"kvm_irqfd.flags", unsafe.Offsetof(irqfd.Flags), 8},
		{"kvm_irqfd.resamplefd", unsafe.Offsetof(irqfd.ResampleFD), 12},
		{"kvm_ioeventfd.addr", unsafe.Offsetof(iofd.Addr), 8},
		{"kvm_ioeventfd.len", unsafe.Offsetof(iofd.Len), 16},
		{"kvm_ioeventfd.fd", unsafe.Offsetof(iofd.FD), 20},
		{"kvm_ioeventfd.flags", unsafe.Offsetof(iofd.Flags), 24},
		{"kvm_dirty_gfn.slot", unsafe.Offsetof(gfn.Slot), 4},
		{"kvm_dirty_gfn.offset", unsafe.Offsetof(gfn.Offset), 8},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("offsetof(%s) = %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

// TestRunAccessors checks that the union accessors point at offset 32 of
// kvm_run and the sync regs accessor at offset 304.
func TestRunAccessors(t *testing.T) {
	var r Run
	base := uintptr(unsafe.Pointer(&r))
	ptrs := []struct {
		name string
		p    unsafe.Pointer
		want uintptr
	}{
		{"IO", unsafe.Pointer(r.IO()), 32},
		{"MMIO", unsafe.Pointer(r.MMIO()), 32},
		{"InternalError", unsafe.Pointer(r.InternalError()), 32},
		{"FailEntry", unsafe.Pointer(r.FailEntry()), 32},
		{"SystemEvent", unsafe.Pointer(r.SystemEvent()), 32},
		{"X86MSR", unsafe.Pointer(r.X86MSR()), 32},
		{"MemoryFault", unsafe.Pointer(r.MemoryFault()), 32},
		{"SyncRegs", unsafe.Pointer(r.SyncRegs()), 304},
	}
	for _, p := range ptrs {
		if got := uintptr(p.p) - base; got != p.want {
			t.Errorf("Run.%s() at offset %d, want %d", p.name, got, p.want)
		}
	}
	// A port write as KVM reports it: out of 1 byte to port 0x10.
	b := (*[64]byte)(unsafe.Pointer(&r))
	b[32], b[33], b[34], b[35] = ExitIOOut, 1, 0x10, 0
	b[36] = 1
	b[40], b[41] = 0x00, 0x10
	if io := r.IO(); io.Direction != ExitIOOut || io.Size != 1 || io.Port != 0x10 || io.Count != 1 || io.DataOffset != 0x1000 {
		t.Errorf("IO() = %+v", *io)
	}
}

func TestLAPICState32(t *testing.T) {
	var l LAPICState
	l.Set32(0x20, 0x05000000)
	if l.Regs[0x23] != 0x05 || l.Regs[0x20] != 0 {
		t.Errorf("Set32 is not little endian: % x", l.Regs[0x20:0x24])
	}
	if got := l.Get32(0x20); got != 0x05000000 {
		t.Errorf("Get32(0x20) = %#x", got)
	}
}
