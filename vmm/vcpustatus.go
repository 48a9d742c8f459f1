package vmm

import (
	"fmt"
	"strings"

	"github.com/tandemvm/tandem/kvm"
)

// VCPUStatus is what a person diagnosing a stuck guest wants to know
// about one vCPU: where it is, whether it can take interrupts, and what
// KVM holds pending for it.
type VCPUStatus struct {
	Index   int
	RIP     uint64
	RSP     uint64
	CS      uint16
	RFLAGS  uint64
	CR3     uint64
	MPState kvm.MPState
	// Events are the pending and injected exceptions, interrupts and NMIs.
	Events kvm.VCPUEvents
}

// InterruptsEnabled reports RFLAGS.IF.
func (s VCPUStatus) InterruptsEnabled() bool { return s.RFLAGS&(1<<9) != 0 }

func (s VCPUStatus) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "vCPU %d: %v RIP %#x RSP %#x CS %#x RFLAGS %#x (IF=%d) CR3 %#x", s.Index, s.MPState, s.RIP, s.RSP, s.CS, s.RFLAGS, (s.RFLAGS>>9)&1, s.CR3)
	if e := s.Events.Exception; e.Injected != 0 || e.Pending != 0 {
		fmt.Fprintf(&b, " exception %d (injected %d, pending %d)", e.Nr, e.Injected, e.Pending)
	}
	if i := s.Events.Interrupt; i.Injected != 0 {
		fmt.Fprintf(&b, " interrupt %#x injected", i.Nr)
	}
	if n := s.Events.NMI; n.Pending != 0 || n.Injected != 0 {
		fmt.Fprintf(&b, " NMI (pending %d, injected %d)", n.Pending, n.Injected)
	}
	return b.String()
}

// VCPUStatuses pauses the VM, reads every vCPU's status and resumes it:
// the report for a guest that stopped making progress. A VM that is no
// longer running gives ErrNotRunning.
func (v *VM) VCPUStatuses() ([]VCPUStatus, error) {
	if err := v.Pause(); err != nil {
		return nil, err
	}
	defer v.Resume()
	out := make([]VCPUStatus, len(v.vcpus))
	for i, c := range v.vcpus {
		var regs kvm.Regs
		var sregs kvm.Sregs
		if err := c.k.GetRegs(&regs); err != nil {
			return nil, fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		if err := c.k.GetSregs(&sregs); err != nil {
			return nil, fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		mp, err := c.k.GetMPState()
		if err != nil {
			return nil, fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		s := VCPUStatus{Index: i, RIP: regs.RIP, RSP: regs.RSP, CS: sregs.CS.Selector, RFLAGS: regs.RFLAGS, CR3: sregs.CR3, MPState: mp}
		if err := c.k.GetVCPUEvents(&s.Events); err != nil {
			return nil, fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		out[i] = s
	}
	return out, nil
}
