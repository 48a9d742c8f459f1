package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

const (
	// cpuidEntriesStart is the first buffer size SupportedCPUID and
	// GetCPUID2 try (KVM_MAX_CPUID_ENTRIES in current kernels).
	cpuidEntriesStart = 256
	// cpuidEntriesMax bounds the buffer growth on E2BIG.
	cpuidEntriesMax = 1 << 14
	// msrListMax bounds how many indices MSRIndexList accepts.
	msrListMax = 1 << 16
)

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: the CPUID leaves KVM can
// expose to a guest, with the features it supports. The buffer starts at 256
// entries and doubles while the kernel answers E2BIG.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	for n := cpuidEntriesStart; n <= cpuidEntriesMax; n *= 2 {
		entries := make([]CPUIDEntry, n)
		_, got, err := ioctlEntries(s.fd, kvmGetSupportedCPUID, uint32(n), entries)
		if err == nil {
			if int(got) > n {
				got = uint32(n)
			}
			return entries[:got:got], nil
		}
		if !errors.Is(err, unix.E2BIG) {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: %w", err)
		}
	}
	return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: more than %d entries: %w", cpuidEntriesMax, unix.E2BIG)
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and
// restores for a vCPU. It asks with an empty list first and retries with the
// count KVM reports while the kernel answers E2BIG.
func (s *System) MSRIndexList() ([]uint32, error) {
	n := uint32(0)
	for tries := 0; tries < 8; tries++ {
		// struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; }.
		buf := make([]uint32, 1+int(n))
		buf[0] = n
		_, err := ioctlSlice(s.fd, kvmGetMSRIndexList, buf)
		if err == nil {
			got := min(buf[0], n)
			return append([]uint32(nil), buf[1:1+got]...), nil
		}
		if !errors.Is(err, unix.E2BIG) || buf[0] <= n || buf[0] > msrListMax {
			return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: %w", err)
		}
		n = buf[0]
	}
	return nil, fmt.Errorf("kvm: KVM_GET_MSR_INDEX_LIST: count keeps growing: %w", unix.E2BIG)
}
