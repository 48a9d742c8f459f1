package kvm

import "unsafe"

// IO returns the exit union as kvm_run.io (ExitIO).
func (r *Run) IO() *RunIO { return (*RunIO)(unsafe.Pointer(&r.exit)) }

// MMIO returns the exit union as kvm_run.mmio (ExitMMIO).
func (r *Run) MMIO() *RunMMIO { return (*RunMMIO)(unsafe.Pointer(&r.exit)) }

// InternalError returns the exit union as kvm_run.internal
// (ExitInternalError).
func (r *Run) InternalError() *RunInternalError {
	return (*RunInternalError)(unsafe.Pointer(&r.exit))
}

// FailEntry returns the exit union as kvm_run.fail_entry (ExitFailEntry).
func (r *Run) FailEntry() *RunFailEntry { return (*RunFailEntry)(unsafe.Pointer(&r.exit)) }

// SystemEvent returns the exit union as kvm_run.system_event
// (ExitSystemEvent).
func (r *Run) SystemEvent() *RunSystemEvent {
	return (*RunSystemEvent)(unsafe.Pointer(&r.exit))
}

// X86MSR returns the exit union as kvm_run.msr (ExitX86RDMSR,
// ExitX86WRMSR).
func (r *Run) X86MSR() *RunX86MSR { return (*RunX86MSR)(unsafe.Pointer(&r.exit)) }

// MemoryFault returns the exit union as kvm_run.memory_fault
// (ExitMemoryFault).
func (r *Run) MemoryFault() *RunMemoryFault {
	return (*RunMemoryFault)(unsafe.Pointer(&r.exit))
}

// Every view of the exit union must fit in it (a negative array length
// fails the build).
var (
	_ [256 - unsafe.Sizeof(RunIO{})]byte
	_ [256 - unsafe.Sizeof(RunMMIO{})]byte
	_ [256 - unsafe.Sizeof(RunInternalError{})]byte
	_ [256 - unsafe.Sizeof(RunFailEntry{})]byte
	_ [256 - unsafe.Sizeof(RunSystemEvent{})]byte
	_ [256 - unsafe.Sizeof(RunX86MSR{})]byte
	_ [256 - unsafe.Sizeof(RunMemoryFault{})]byte
)
