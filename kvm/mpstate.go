package kvm

import "strconv"

// MPState is struct kvm_mp_state's mp_state (KVM_MP_STATE_*).
type MPState uint32

// MP states (the x86 ones and the generic ones).
const (
	MPStateRunnable      = MPState(0)
	MPStateUninitialized = MPState(1)
	MPStateInitReceived  = MPState(2)
	MPStateHalted        = MPState(3)
	MPStateSIPIReceived  = MPState(4)
	MPStateAPResetHold   = MPState(9)
	MPStateSuspended     = MPState(10)
)

var mpStateNames = [...]string{
	MPStateRunnable:      "KVM_MP_STATE_RUNNABLE",
	MPStateUninitialized: "KVM_MP_STATE_UNINITIALIZED",
	MPStateInitReceived:  "KVM_MP_STATE_INIT_RECEIVED",
	MPStateHalted:        "KVM_MP_STATE_HALTED",
	MPStateSIPIReceived:  "KVM_MP_STATE_SIPI_RECEIVED",
	MPStateAPResetHold:   "KVM_MP_STATE_AP_RESET_HOLD",
	MPStateSuspended:     "KVM_MP_STATE_SUSPENDED",
}

// String returns the kernel's name of the state.
func (s MPState) String() string {
	if int(s) < len(mpStateNames) && mpStateNames[s] != "" {
		return mpStateNames[s]
	}
	return "KVM_MP_STATE(" + strconv.FormatUint(uint64(s), 10) + ")"
}
