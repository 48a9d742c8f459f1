package kvm

import "fmt"

// Chip IDs of IRQChip (KVM_IRQCHIP_*).
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// SetTSSAddr issues KVM_SET_TSS_ADDR: three pages of guest physical address
// space, outside any memory slot, that Intel VMX uses to run real mode.
func (vm *VM) SetTSSAddr(addr uint64) error {
	if _, err := ioctl(vm.fd, kvmSetTSSAddr, uintptr(addr)); err != nil {
		return fmt.Errorf("kvm: KVM_SET_TSS_ADDR(%#x): %w", addr, err)
	}
	return nil
}

// SetIdentityMapAddr issues KVM_SET_IDENTITY_MAP_ADDR: one page of guest
// physical address space, outside any memory slot, for the identity page
// table Intel VMX uses to run real mode.
func (vm *VM) SetIdentityMapAddr(addr uint64) error {
	if _, err := ioctlRef(vm.fd, kvmSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("kvm: KVM_SET_IDENTITY_MAP_ADDR(%#x): %w", addr, err)
	}
	return nil
}

// PITSpeakerDummy is the CreatePIT2 flag that also emulates a dummy PC
// speaker port (KVM_PIT_SPEAKER_DUMMY).
const PITSpeakerDummy = 1

// CreatePIT2 issues KVM_CREATE_PIT2: an in-kernel i8254 PIT. It needs the
// in-kernel irqchip.
func (vm *VM) CreatePIT2(flags uint32) error {
	cfg := kvmPITConfig{Flags: flags}
	if _, err := ioctlRef(vm.fd, kvmCreatePIT2, &cfg); err != nil {
		return fmt.Errorf("kvm: KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// PITChannelState is struct kvm_pit_channel_state.
type PITChannelState struct {
	Count         uint32
	LatchedCount  uint16
	CountLatched  uint8
	StatusLatched uint8
	Status        uint8
	ReadState     uint8
	WriteState    uint8
	WriteLatch    uint8
	RWMode        uint8
	Mode          uint8
	BCD           uint8
	Gate          uint8
	CountLoadTime int64
}

// PITState2 is struct kvm_pit_state2.
type PITState2 struct {
	Channels [3]PITChannelState
	Flags    uint32 // PITFlagsHPETLegacy, PITFlagsSpeakerDataOn
	_        [9]uint32
}

// Flags of PITState2 (KVM_PIT_FLAGS_*).
const (
	PITFlagsHPETLegacy    = 1 << 0
	PITFlagsSpeakerDataOn = 1 << 1
)

// GetPIT2 issues KVM_GET_PIT2.
func (vm *VM) GetPIT2(p *PITState2) error {
	if _, err := ioctlRef(vm.fd, kvmGetPIT2, p); err != nil {
		return fmt.Errorf("kvm: KVM_GET_PIT2: %w", err)
	}
	return nil
}

// SetPIT2 issues KVM_SET_PIT2.
func (vm *VM) SetPIT2(p *PITState2) error {
	if _, err := ioctlRef(vm.fd, kvmSetPIT2, p); err != nil {
		return fmt.Errorf("kvm: KVM_SET_PIT2: %w", err)
	}
	return nil
}
