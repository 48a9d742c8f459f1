package kvm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// VCPU is a KVM vCPU file descriptor together with its kvm_run mapping, as
// returned by VM.CreateVCPU.
//
// KVM expects all ioctls of a vCPU to come from one thread: the caller should
// issue them from a goroutine locked to its OS thread
// (runtime.LockOSThread). SetImmediateExit, ID, FD and RunData may be used
// from any goroutine.
type VCPU struct {
	fd  int
	id  int
	mem []byte // the vCPU mapping: kvm_run, then the PIO data page and more
	run *Run   // &mem[0]

	// xsave2Size is VM.CheckExtension(CapXSave2) at creation (0 when
	// unsupported): the size KVM_GET_XSAVE2 writes and KVM_SET_XSAVE reads.
	xsave2Size int
}

// ID returns the vCPU id given to CreateVCPU (the initial APIC ID on x86).
func (c *VCPU) ID() int { return c.id }

// FD returns the vCPU file descriptor (-1 after Close).
func (c *VCPU) FD() int { return c.fd }

// Close unmaps kvm_run and closes the vCPU descriptor. It must not race with
// Run or any other method. Dirty ring mappings are separate (DirtyRing.Close).
// Closing twice is a no-op.
func (c *VCPU) Close() error {
	var errs []error
	if c.mem != nil {
		if err := unix.Munmap(c.mem); err != nil {
			errs = append(errs, fmt.Errorf("kvm: munmap vCPU %d: %w", c.id, err))
		}
		c.mem, c.run = nil, nil
	}
	if c.fd >= 0 {
		if err := unix.Close(c.fd); err != nil {
			errs = append(errs, fmt.Errorf("kvm: close vCPU %d: %w", c.id, err))
		}
		c.fd = -1
	}
	if len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// Run issues KVM_RUN: it runs the guest until an exit KVM hands to
// userspace, whose reason is then in RunData().ExitReason. It returns nil or
// the bare unix.Errno (never wrapped, so the exit path does not allocate):
// unix.EINTR when a signal arrived or Run().ImmediateExit was set, in which
// case the guest did not necessarily make progress, and others such as
// unix.EFAULT or unix.ENOEXEC for fatal conditions.
//
// It uses a blocking unix.Syscall, so the Go runtime can run other
// goroutines on other threads meanwhile.
func (c *VCPU) Run() error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), kvmRun, 0)
	if e != 0 {
		return e
	}
	return nil
}

// RunData returns the vCPU's mmapped kvm_run. It stays valid until Close.
func (c *VCPU) RunData() *Run { return c.run }

// IOData returns, for an ExitIO exit, the Size*Count data bytes at
// DataOffset in the vCPU mapping: what the guest wrote for ExitIOOut, where
// userspace puts the input for ExitIOIn. It returns nil when that range does
// not lie inside the mapping.
func (c *VCPU) IOData() []byte {
	if c.run == nil {
		return nil
	}
	io := c.run.IO()
	off := io.DataOffset
	n := uint64(io.Size) * uint64(io.Count)
	size := uint64(len(c.mem))
	if off > size || n > size-off {
		return nil
	}
	return c.mem[off : off+n : off+n]
}

// GetMPState issues KVM_GET_MP_STATE.
func (c *VCPU) GetMPState() (MPState, error) {
	var s kvmMPState
	if _, err := ioctlRef(c.fd, kvmGetMPState, &s); err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_MP_STATE: %w", err)
	}
	return MPState(s.MPState), nil
}

// SetMPState issues KVM_SET_MP_STATE.
func (c *VCPU) SetMPState(s MPState) error {
	st := kvmMPState{MPState: uint32(s)}
	if _, err := ioctlRef(c.fd, kvmSetMPState, &st); err != nil {
		return fmt.Errorf("kvm: KVM_SET_MP_STATE(%v): %w", s, err)
	}
	return nil
}

// dirtyLogPageOffset is KVM_DIRTY_LOG_PAGE_OFFSET: the page offset of the
// dirty ring in the vCPU mapping.
const dirtyLogPageOffset = 64

// MapDirtyRing maps the vCPU's dirty ring (CapDirtyLogRing or
// CapDirtyLogRingAcqRel, enabled on the VM with ringBytes before any vCPU
// was created) from the vCPU descriptor at offset
// KVM_DIRTY_LOG_PAGE_OFFSET*PageSize, read-write and shared. ringBytes must
// be the size given to EnableCap: a positive multiple of PageSize.
func (c *VCPU) MapDirtyRing(ringBytes int) (*DirtyRing, error) {
	if ringBytes <= 0 || ringBytes%PageSize != 0 {
		return nil, fmt.Errorf("kvm: map dirty ring of vCPU %d: size %d is not a positive multiple of %d: %w",
			c.id, ringBytes, PageSize, unix.EINVAL)
	}
	mem, err := unix.Mmap(c.fd, dirtyLogPageOffset*PageSize, ringBytes,
		unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("kvm: map dirty ring of vCPU %d (%d bytes): %w", c.id, ringBytes, err)
	}
	return newDirtyRing(mem), nil
}
