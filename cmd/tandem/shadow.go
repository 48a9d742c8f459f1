package main

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

// errShadowDevices is a guest a node cannot run a shadow of: a shadow's
// disk writes would reach the node's disk copies and its frames the
// network, so only guests without either have one.
var errShadowDevices = errors.New("the shadow runs guests without disks or network interfaces only")

// newShadowVM is tandem replica --shadow's replicate.NewShadow: a
// vmm.Shadow of the guest whose first state is state. A Linux guest's
// virtio-console goes nowhere; its rng is its own.
func newShadowVM(log *slog.Logger) replicate.NewShadow {
	return func(memBytes uint64, vcpus int, state []byte) (replicate.Shadow, error) {
		st, isLinux, err := splitHAState(state)
		if err != nil {
			return nil, fmt.Errorf("shadow: %w", err)
		}
		cfg := vmm.ShadowConfig{MemBytes: memBytes, VCPUs: vcpus, Log: log}
		if isLinux {
			devs, err := devicesFromMeta(st.virtio)
			if err != nil {
				return nil, fmt.Errorf("shadow: %w", err)
			}
			if len(devs.disks) > 0 || len(devs.nets) > 0 {
				return nil, fmt.Errorf("shadow: the guest has %d disks and %d network interfaces: %w", len(devs.disks), len(devs.nets), errShadowDevices)
			}
			if devs.channel != "" {
				devs.channel = "none"
			}
			cfg.Devices = func(vm *vmm.VM) error { return devs.add(vm, &vmSpec{log: log}) }
		}
		sh, err := vmm.NewShadow(cfg)
		if err != nil {
			return nil, err
		}
		log.Info("active backup: running a shadow of the VM", "mem_MiB", memBytes>>20, "vcpus", vcpus)
		return shadowVM{sh}, nil
	}
}

// shadowVM is a vmm.Shadow fed the primary's states, which carry the
// guest's devices and disk writes beside the VM's own state.
type shadowVM struct{ *vmm.Shadow }

func (s shadowVM) Run(state []byte) error {
	st, _, err := splitHAState(state)
	if err != nil {
		return fmt.Errorf("shadow: %w", err)
	}
	return s.Shadow.Run(st.vm)
}
