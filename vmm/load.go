package vmm

import (
	"fmt"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/kvm"
)

// LoadFlat loads a flat test guest (see package boot) and sets every vCPU to
// its entry state. Call it before Run.
func (v *VM) LoadFlat(image []byte, mode boot.Mode, args []uint64) error {
	if v.mem.Size() > v.mem.slots[0].Size {
		return fmt.Errorf("vmm: flat guests address RAM as one range below 3 GiB; %d MiB is too much", v.mem.Size()>>20)
	}
	khz, err := v.vcpus[0].k.GetTSCKHz()
	if err != nil {
		khz = 0 // the guest then runs without pacing; not worth failing for
	}
	entry, err := boot.LoadFlat(v.mem.LowBytes(), boot.FlatConfig{
		Image: image, Mode: mode, VCPUs: len(v.vcpus), TSCKHz: uint64(khz), Args: args,
	})
	if err != nil {
		return err
	}
	for i, c := range v.vcpus {
		var s kvm.Sregs
		if err := c.k.GetSregs(&s); err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		entry.ApplySregs(&s)
		if err := c.k.SetSregs(&s); err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		regs := entry.Regs[i]
		if err := c.k.SetRegs(&regs); err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		// Application processors start directly at the entry point
		// instead of waiting for INIT/SIPI.
		if err := c.k.SetMPState(kvm.MPStateRunnable); err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
	}
	return nil
}
