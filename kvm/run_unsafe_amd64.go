package kvm

import "unsafe"

// SyncRegs returns the sync regs union of kvm_run as the x86 struct
// kvm_sync_regs (see CapSyncRegs, Run.KVMValidRegs, Run.KVMDirtyRegs).
func (r *Run) SyncRegs() *SyncRegs { return (*SyncRegs)(unsafe.Pointer(&r.syncRegs)) }

var _ [2048 - unsafe.Sizeof(SyncRegs{})]byte
