package vmm

import "github.com/tandemvm/tandem/kvm"

// ExitCount is how many times the VM's vCPUs returned from KVM_RUN for one
// reason.
type ExitCount struct {
	Reason kvm.ExitReason
	Count  uint64
}

// Exits returns the VM's exits so far by reason, summed over its vCPUs,
// reasons without an exit left out, in the order of their numbers. It
// takes no lock: each count is read atomically while the vCPUs run, so
// two counts may be a few exits apart in time.
func (v *VM) Exits() []ExitCount {
	var sum [exitReasons]uint64
	for _, c := range v.vcpus {
		for i := range c.exits {
			sum[i] += c.exits[i].Load()
		}
	}
	var out []ExitCount
	for i, n := range sum {
		if n > 0 {
			out = append(out, ExitCount{Reason: kvm.ExitReason(i), Count: n})
		}
	}
	return out
}
