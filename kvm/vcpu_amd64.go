package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// GetRegs issues KVM_GET_REGS.
func (c *VCPU) GetRegs(r *Regs) error {
	if _, err := ioctlRef(c.fd, kvmGetRegs, r); err != nil {
		return fmt.Errorf("kvm: KVM_GET_REGS: %w", err)
	}
	return nil
}

// SetRegs issues KVM_SET_REGS.
func (c *VCPU) SetRegs(r *Regs) error {
	if _, err := ioctlRef(c.fd, kvmSetRegs, r); err != nil {
		return fmt.Errorf("kvm: KVM_SET_REGS: %w", err)
	}
	return nil
}

// GetSregs issues KVM_GET_SREGS.
func (c *VCPU) GetSregs(s *Sregs) error {
	if _, err := ioctlRef(c.fd, kvmGetSregs, s); err != nil {
		return fmt.Errorf("kvm: KVM_GET_SREGS: %w", err)
	}
	return nil
}

// SetSregs issues KVM_SET_SREGS.
func (c *VCPU) SetSregs(s *Sregs) error {
	if _, err := ioctlRef(c.fd, kvmSetSregs, s); err != nil {
		return fmt.Errorf("kvm: KVM_SET_SREGS: %w", err)
	}
	return nil
}

// GetFPU issues KVM_GET_FPU.
func (c *VCPU) GetFPU(f *FPU) error {
	if _, err := ioctlRef(c.fd, kvmGetFPU, f); err != nil {
		return fmt.Errorf("kvm: KVM_GET_FPU: %w", err)
	}
	return nil
}

// SetFPU issues KVM_SET_FPU.
func (c *VCPU) SetFPU(f *FPU) error {
	if _, err := ioctlRef(c.fd, kvmSetFPU, f); err != nil {
		return fmt.Errorf("kvm: KVM_SET_FPU: %w", err)
	}
	return nil
}

// GetMSRs issues KVM_GET_MSRS: it fills in Data for each entry's Index. It
// returns the number of entries KVM processed; when that is less than
// len(entries), entry n is the first MSR KVM could not read, and the entries
// from n on are unchanged.
func (c *VCPU) GetMSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	r, _, err := ioctlEntries(c.fd, kvmGetMSRs, uint32(len(entries)), entries)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_MSRS: %w", err)
	}
	return int(r), nil
}

// SetMSRs issues KVM_SET_MSRS. It returns the number of entries KVM
// processed; when that is less than len(entries), entry n is the first MSR
// KVM refused, and the entries from n on were not written.
func (c *VCPU) SetMSRs(entries []MSREntry) (int, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	r, _, err := ioctlEntries(c.fd, kvmSetMSRs, uint32(len(entries)), entries)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_SET_MSRS: %w", err)
	}
	return int(r), nil
}

// SetCPUID2 issues KVM_SET_CPUID2: the CPUID the guest sees. Linux requires
// it before the first Run (later calls must repeat the same table).
func (c *VCPU) SetCPUID2(entries []CPUIDEntry) error {
	e := entries
	if len(e) == 0 {
		e = nil
	}
	if _, _, err := ioctlEntries(c.fd, kvmSetCPUID2, uint32(len(e)), e); err != nil {
		return fmt.Errorf("kvm: KVM_SET_CPUID2(%d entries): %w", len(entries), err)
	}
	return nil
}

// GetCPUID2 issues KVM_GET_CPUID2: the CPUID table last set on the vCPU.
// The buffer starts at 256 entries and doubles while the kernel answers
// E2BIG.
func (c *VCPU) GetCPUID2() ([]CPUIDEntry, error) {
	for n := cpuidEntriesStart; n <= cpuidEntriesMax; n *= 2 {
		entries := make([]CPUIDEntry, n)
		_, got, err := ioctlEntries(c.fd, kvmGetCPUID2, uint32(n), entries)
		if err == nil {
			got = min(got, uint32(n))
			return entries[:got:got], nil
		}
		if !errors.Is(err, unix.E2BIG) {
			return nil, fmt.Errorf("kvm: KVM_GET_CPUID2: %w", err)
		}
	}
	return nil, fmt.Errorf("kvm: KVM_GET_CPUID2: more than %d entries: %w", cpuidEntriesMax, unix.E2BIG)
}

// GetLAPIC issues KVM_GET_LAPIC (needs the in-kernel irqchip).
func (c *VCPU) GetLAPIC(l *LAPICState) error {
	if _, err := ioctlRef(c.fd, kvmGetLAPIC, l); err != nil {
		return fmt.Errorf("kvm: KVM_GET_LAPIC: %w", err)
	}
	return nil
}

// SetLAPIC issues KVM_SET_LAPIC (needs the in-kernel irqchip).
func (c *VCPU) SetLAPIC(l *LAPICState) error {
	if _, err := ioctlRef(c.fd, kvmSetLAPIC, l); err != nil {
		return fmt.Errorf("kvm: KVM_SET_LAPIC: %w", err)
	}
	return nil
}

// GetVCPUEvents issues KVM_GET_VCPU_EVENTS.
func (c *VCPU) GetVCPUEvents(e *VCPUEvents) error {
	if _, err := ioctlRef(c.fd, kvmGetVCPUEvents, e); err != nil {
		return fmt.Errorf("kvm: KVM_GET_VCPU_EVENTS: %w", err)
	}
	return nil
}

// SetVCPUEvents issues KVM_SET_VCPU_EVENTS.
func (c *VCPU) SetVCPUEvents(e *VCPUEvents) error {
	if _, err := ioctlRef(c.fd, kvmSetVCPUEvents, e); err != nil {
		return fmt.Errorf("kvm: KVM_SET_VCPU_EVENTS: %w", err)
	}
	return nil
}

// GetXCRs issues KVM_GET_XCRS.
func (c *VCPU) GetXCRs(x *XCRs) error {
	if _, err := ioctlRef(c.fd, kvmGetXCRs, x); err != nil {
		return fmt.Errorf("kvm: KVM_GET_XCRS: %w", err)
	}
	return nil
}

// SetXCRs issues KVM_SET_XCRS.
func (c *VCPU) SetXCRs(x *XCRs) error {
	if _, err := ioctlRef(c.fd, kvmSetXCRs, x); err != nil {
		return fmt.Errorf("kvm: KVM_SET_XCRS: %w", err)
	}
	return nil
}

// GetXSave issues KVM_GET_XSAVE: the first 4096 bytes of the guest's XSAVE
// state.
func (c *VCPU) GetXSave(x *XSave) error {
	if _, err := ioctlRef(c.fd, kvmGetXSave, x); err != nil {
		return fmt.Errorf("kvm: KVM_GET_XSAVE: %w", err)
	}
	return nil
}

// SetXSave issues KVM_SET_XSAVE with a 4096-byte area. KVM reads as many
// bytes as XSave2Size reports; when that exceeds 4096 (dynamically enabled
// features such as AMX), use SetXSave2 instead.
func (c *VCPU) SetXSave(x *XSave) error {
	if c.xsave2Size > len(x.Region)*4 {
		return fmt.Errorf("kvm: KVM_SET_XSAVE: KVM reads %d bytes, use SetXSave2: %w", c.xsave2Size, unix.EINVAL)
	}
	if _, err := ioctlRef(c.fd, kvmSetXSave, x); err != nil {
		return fmt.Errorf("kvm: KVM_SET_XSAVE: %w", err)
	}
	return nil
}

// XSave2Size returns the XSAVE area size of this vCPU's VM, as
// VM.CheckExtension(CapXSave2) reported when the vCPU was created (0 when
// KVM_GET_XSAVE2 is not supported).
func (c *VCPU) XSave2Size() int { return c.xsave2Size }

// GetXSave2 issues KVM_GET_XSAVE2: the guest's whole XSAVE area, which KVM
// writes at the size CheckExtension(CapXSave2) reports (XSave2Size). buf
// must be at least that long (EINVAL otherwise; ENOTSUP when the kernel has
// no KVM_GET_XSAVE2).
func (c *VCPU) GetXSave2(buf []byte) error {
	if c.xsave2Size == 0 {
		return fmt.Errorf("kvm: KVM_GET_XSAVE2: %v not supported: %w", CapXSave2, unix.ENOTSUP)
	}
	if len(buf) < c.xsave2Size {
		return fmt.Errorf("kvm: KVM_GET_XSAVE2: buffer of %d bytes, need %d: %w", len(buf), c.xsave2Size, unix.EINVAL)
	}
	if _, err := ioctlSlice(c.fd, kvmGetXSave2, buf); err != nil {
		return fmt.Errorf("kvm: KVM_GET_XSAVE2: %w", err)
	}
	return nil
}

// SetXSave2 issues KVM_SET_XSAVE with an area of XSave2Size bytes (as
// GetXSave2 returned it); KVM reads that many bytes, so buf must be at least
// that long, and at least 4096 (EINVAL otherwise).
func (c *VCPU) SetXSave2(buf []byte) error {
	need := max(c.xsave2Size, 4096)
	if len(buf) < need {
		return fmt.Errorf("kvm: KVM_SET_XSAVE: buffer of %d bytes, need %d: %w", len(buf), need, unix.EINVAL)
	}
	if _, err := ioctlSlice(c.fd, kvmSetXSave, buf); err != nil {
		return fmt.Errorf("kvm: KVM_SET_XSAVE: %w", err)
	}
	return nil
}

// GetTSCKHz issues KVM_GET_TSC_KHZ: the guest TSC frequency in kHz.
func (c *VCPU) GetTSCKHz() (uint32, error) {
	r, err := ioctl(c.fd, kvmGetTSCKHz, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_TSC_KHZ: %w", err)
	}
	return uint32(r), nil
}
