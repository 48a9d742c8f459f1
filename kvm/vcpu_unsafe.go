package kvm

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CreateVCPU issues KVM_CREATE_VCPU with the given id and maps mmapSize
// bytes (System.VCPUMmapSize) of the new descriptor, read-write and shared,
// for kvm_run and the data pages that follow it. It also asks the VM for
// CapXSave2 once, so GetXSave2/SetXSave2 can check buffer sizes.
func (vm *VM) CreateVCPU(id int, mmapSize int) (*VCPU, error) {
	if id < 0 {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU(%d): negative id: %w", id, unix.EINVAL)
	}
	if mmapSize < int(unsafe.Sizeof(Run{})) {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU(%d): mmap size %d smaller than kvm_run (%d): %w",
			id, mmapSize, unsafe.Sizeof(Run{}), unix.EINVAL)
	}
	r, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("kvm: KVM_CREATE_VCPU(%d): %w", id, err)
	}
	fd := int(r)
	mem, err := unix.Mmap(fd, 0, mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("kvm: mmap kvm_run of vCPU %d (%d bytes): %w", id, mmapSize, err)
	}
	xsave2, err := vm.CheckExtension(CapXSave2)
	if err != nil {
		xsave2 = 0
	}
	return &VCPU{
		fd:         fd,
		id:         id,
		mem:        mem,
		run:        (*Run)(unsafe.Pointer(&mem[0])),
		xsave2Size: xsave2,
	}, nil
}

// SetImmediateExit sets or clears kvm_run.immediate_exit with an atomic
// store, so it may be called from any goroutine: while it is set, KVM_RUN
// returns EINTR without entering the guest. A VMM that wants to kick a vCPU
// sets it and then signals the vCPU thread; the vCPU thread clears it after
// Run returns.
func (c *VCPU) SetImmediateExit(on bool) {
	// Go has no 8-bit atomic store, so update byte 1 (immediate_exit) within
	// the aligned 32-bit word at offset 0 of kvm_run with a CAS loop; the
	// other bytes (request_interrupt_window, padding) are preserved.
	w := (*uint32)(unsafe.Pointer(c.run))
	for {
		old := atomic.LoadUint32(w)
		v := old &^ 0xff00
		if on {
			v |= 1 << 8
		}
		if v == old || atomic.CompareAndSwapUint32(w, old, v) {
			return
		}
	}
}

// The CAS above relies on immediate_exit being byte 1 of kvm_run.
var _ [1]struct{} = [unsafe.Offsetof(Run{}.ImmediateExit)]struct{}{}
