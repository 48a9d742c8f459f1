package vmm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/kvm"
)

// VCPUState is one vCPU's architectural state as KVM exposes it.
type VCPUState struct {
	Regs    kvm.Regs
	Sregs   kvm.Sregs
	FPU     kvm.FPU
	MSRs    []kvm.MSREntry
	LAPIC   kvm.LAPICState
	Events  kvm.VCPUEvents
	MPState kvm.MPState
	XCRs    kvm.XCRs
	// XSave is the KVM_GET_XSAVE2 (or KVM_GET_XSAVE) area; empty when KVM
	// has no XSAVE support.
	XSave []byte
	CPUID []kvm.CPUIDEntry
}

// DeviceState is one device's saved state, keyed by its StateName.
type DeviceState struct {
	Name string
	Data []byte
}

// State is everything about a VM but its memory: vCPUs, in-kernel interrupt
// controllers and timer, the KVM clock, and the devices.
type State struct {
	MemBytes  uint64
	VCPUs     []VCPUState
	PICMaster kvm.IRQChip
	PICSlave  kvm.IRQChip
	IOAPIC    kvm.IRQChip
	PIT       kvm.PITState2
	Clock     kvm.ClockData
	Devices   []DeviceState
}

// msrTSCDeadline is restored last: KVM drops a deadline written before the
// TSC and the LAPIC timer mode it depends on.
const (
	msrTSC         = 0x10
	msrTSCDeadline = 0x6E0
)

// stateMSRs returns the MSRs that capture saves: those of KVM's index list
// that this vCPU model can read, with the TSC deadline last.
func (v *VM) stateMSRs() ([]uint32, error) {
	if v.msrIndices != nil {
		return v.msrIndices, nil
	}
	all, err := v.sys.MSRIndexList()
	if err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	var keep []uint32
	probe := make([]kvm.MSREntry, 1)
	for _, idx := range all {
		probe[0] = kvm.MSREntry{Index: idx}
		if n, err := v.vcpus[0].k.GetMSRs(probe); err == nil && n == 1 {
			keep = append(keep, idx)
		}
	}
	if i := slices.Index(keep, msrTSCDeadline); i >= 0 {
		keep = append(slices.Delete(keep, i, i+1), msrTSCDeadline)
	}
	v.msrIndices = keep
	return keep, nil
}

func (v *VM) xsaveBytes() int {
	if v.xsaveSize == 0 {
		if n, err := v.vm.CheckExtension(kvm.CapXSave2); err == nil && n > 0 {
			v.xsaveSize = n
		} else if n, err := v.sys.CheckExtension(kvm.CapXSave); err == nil && n > 0 {
			v.xsaveSize = 4096
		} else {
			v.xsaveSize = -1
		}
	}
	return v.xsaveSize
}

// CaptureState reads the whole machine state but memory. The VM must be
// paused or not yet running.
func (v *VM) CaptureState() (*State, error) {
	if !v.still() {
		return nil, ErrNotPaused
	}
	msrs, err := v.stateMSRs()
	if err != nil {
		return nil, err
	}
	st := &State{MemBytes: v.mem.Size(), VCPUs: make([]VCPUState, len(v.vcpus))}
	for i, c := range v.vcpus {
		if err := v.captureVCPU(c, msrs, &st.VCPUs[i]); err != nil {
			return nil, fmt.Errorf("vmm: capture vCPU %d: %w", i, err)
		}
	}
	st.PICMaster.ChipID = kvm.IRQChipPICMaster
	st.PICSlave.ChipID = kvm.IRQChipPICSlave
	st.IOAPIC.ChipID = kvm.IRQChipIOAPIC
	for _, c := range []*kvm.IRQChip{&st.PICMaster, &st.PICSlave, &st.IOAPIC} {
		if err := v.vm.GetIRQChip(c); err != nil {
			return nil, fmt.Errorf("vmm: capture: %w", err)
		}
	}
	if err := v.vm.GetPIT2(&st.PIT); err != nil {
		return nil, fmt.Errorf("vmm: capture: %w", err)
	}
	if err := v.vm.GetClock(&st.Clock); err != nil {
		return nil, fmt.Errorf("vmm: capture: %w", err)
	}
	for _, d := range v.bus.Devices() {
		s, ok := d.(devices.Stateful)
		if !ok {
			continue
		}
		data, err := s.SaveState()
		if err != nil {
			return nil, fmt.Errorf("vmm: capture device %s: %w", s.StateName(), err)
		}
		st.Devices = append(st.Devices, DeviceState{Name: s.StateName(), Data: data})
	}
	return st, nil
}

func (v *VM) captureVCPU(c *vcpu, msrs []uint32, s *VCPUState) error {
	k := c.k
	var err error
	if err = k.GetRegs(&s.Regs); err != nil {
		return err
	}
	if err = k.GetSregs(&s.Sregs); err != nil {
		return err
	}
	if err = k.GetFPU(&s.FPU); err != nil {
		return err
	}
	s.MSRs = make([]kvm.MSREntry, len(msrs))
	for i, idx := range msrs {
		s.MSRs[i].Index = idx
	}
	if n, err := k.GetMSRs(s.MSRs); err != nil {
		return err
	} else if n != len(s.MSRs) {
		return fmt.Errorf("KVM read %d of %d MSRs; MSR %#x failed", n, len(s.MSRs), s.MSRs[n].Index)
	}
	if err = k.GetLAPIC(&s.LAPIC); err != nil {
		return err
	}
	if err = k.GetVCPUEvents(&s.Events); err != nil {
		return err
	}
	if s.MPState, err = k.GetMPState(); err != nil {
		return err
	}
	if err = k.GetXCRs(&s.XCRs); err != nil {
		return err
	}
	switch n := v.xsaveBytes(); {
	case n > 4096:
		s.XSave = make([]byte, n)
		if err = k.GetXSave2(s.XSave); err != nil {
			return err
		}
	case n == 4096:
		var x kvm.XSave
		if err = k.GetXSave(&x); err != nil {
			return err
		}
		s.XSave = xsaveBytesOf(&x)
	}
	if s.CPUID, err = k.GetCPUID2(); err != nil {
		return err
	}
	return nil
}

// RestoreState loads a captured state into this VM, which must have the same
// memory size and vCPU count and must not be running.
func (v *VM) RestoreState(st *State) error {
	if !v.still() {
		return ErrNotPaused
	}
	if st.MemBytes != v.mem.Size() {
		return fmt.Errorf("vmm: restore: state is for %d MiB of RAM, VM has %d MiB", st.MemBytes>>20, v.mem.Size()>>20)
	}
	if len(st.VCPUs) != len(v.vcpus) {
		return fmt.Errorf("vmm: restore: state has %d vCPUs, VM has %d", len(st.VCPUs), len(v.vcpus))
	}
	for _, c := range []*kvm.IRQChip{&st.PICMaster, &st.PICSlave, &st.IOAPIC} {
		if err := v.vm.SetIRQChip(c); err != nil {
			return fmt.Errorf("vmm: restore: %w", err)
		}
	}
	if err := v.vm.SetPIT2(&st.PIT); err != nil {
		return fmt.Errorf("vmm: restore: %w", err)
	}
	// Only the clock value is restored; host-specific fields (realtime,
	// host TSC) and their flags do not carry over to another host or time.
	if err := v.vm.SetClock(&kvm.ClockData{Clock: st.Clock.Clock}); err != nil {
		return fmt.Errorf("vmm: restore: %w", err)
	}
	for i, c := range v.vcpus {
		if err := v.restoreVCPU(c, &st.VCPUs[i]); err != nil {
			return fmt.Errorf("vmm: restore vCPU %d: %w", i, err)
		}
	}
	byName := map[string]devices.Stateful{}
	for _, d := range v.bus.Devices() {
		if s, ok := d.(devices.Stateful); ok {
			byName[s.StateName()] = s
		}
	}
	for _, ds := range st.Devices {
		s, ok := byName[ds.Name]
		if !ok {
			return fmt.Errorf("vmm: restore: state has device %q, which this VM lacks", ds.Name)
		}
		if err := s.LoadState(ds.Data); err != nil {
			return fmt.Errorf("vmm: restore device %s: %w", ds.Name, err)
		}
		delete(byName, ds.Name)
	}
	for name := range byName {
		return fmt.Errorf("vmm: restore: state lacks device %q", name)
	}
	return nil
}

// restoreVCPU sets state in the order KVM's dependencies need: CPUID first
// (it decides which MSRs and CR bits are valid), special registers before
// the LAPIC (APIC base), the LAPIC before MSRs (TSC deadline), events last.
func (v *VM) restoreVCPU(c *vcpu, s *VCPUState) error {
	k := c.k
	if len(s.CPUID) > 0 {
		if err := v.restoreCPUID(c, s.CPUID); err != nil {
			return err
		}
	}
	if err := k.SetMPState(s.MPState); err != nil {
		return err
	}
	if err := k.SetRegs(&s.Regs); err != nil {
		return err
	}
	if err := k.SetSregs(&s.Sregs); err != nil {
		return err
	}
	if err := k.SetFPU(&s.FPU); err != nil {
		return err
	}
	switch {
	case len(s.XSave) > 4096:
		if err := k.SetXSave2(s.XSave); err != nil {
			return err
		}
	case len(s.XSave) == 4096:
		var x kvm.XSave
		xsaveFromBytes(&x, s.XSave)
		if err := k.SetXSave(&x); err != nil {
			return err
		}
	}
	if s.XCRs.NrXCRs > 0 {
		if err := k.SetXCRs(&s.XCRs); err != nil {
			return err
		}
	}
	if err := k.SetLAPIC(&s.LAPIC); err != nil {
		return err
	}
	if n, err := k.SetMSRs(s.MSRs); err != nil {
		return err
	} else if n != len(s.MSRs) {
		return fmt.Errorf("KVM set %d of %d MSRs; MSR %#x was refused", n, len(s.MSRs), s.MSRs[n].Index)
	}
	if err := k.SetVCPUEvents(&s.Events); err != nil {
		return err
	}
	return nil
}

// restoreCPUID sets vCPU c's CPUID table. Once a vCPU has run, KVM accepts
// KVM_SET_CPUID2 only with the table it already holds (and some kernels
// refuse the call outright), so a vCPU that has been started keeps its table
// when it equals cpuid; otherwise KVM judges the new table (it ignores the
// bits it derives from guest state, such as OSXSAVE), and a refusal is
// reported as a CPUID change. A vCPU counts as started once its thread got
// past the start barrier (see runControl), which may be before it ran.
func (v *VM) restoreCPUID(c *vcpu, cpuid []kvm.CPUIDEntry) error {
	v.ctl.mu.Lock()
	started := v.ctl.state[c.index] != vcpuIdle
	v.ctl.mu.Unlock()
	if !started {
		return c.k.SetCPUID2(cpuid)
	}
	cur, err := c.k.GetCPUID2()
	if err != nil {
		return err
	}
	if slices.Equal(cur, cpuid) {
		return nil
	}
	if err := c.k.SetCPUID2(cpuid); err != nil {
		return fmt.Errorf("CPUID cannot change once a vCPU ran (%s): %w", cpuidDifference(cur, cpuid), err)
	}
	return nil
}

// cpuidDifference describes the first difference between CPUID tables a and b.
func cpuidDifference(a, b []kvm.CPUIDEntry) string {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			x, y := a[i], b[i]
			return fmt.Sprintf("entry %d: leaf %#x.%d eax %#x ebx %#x ecx %#x edx %#x, state has leaf %#x.%d eax %#x ebx %#x ecx %#x edx %#x",
				i, x.Function, x.Index, x.EAX, x.EBX, x.ECX, x.EDX, y.Function, y.Index, y.EAX, y.EBX, y.ECX, y.EDX)
		}
	}
	return fmt.Sprintf("the vCPU has %d entries, the state %d", len(a), len(b))
}

var errStateFormat = errors.New("vmm: malformed state")
