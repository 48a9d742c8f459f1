package boot

import (
	"math/bits"
	"slices"

	"github.com/tandemvm/tandem/kvm"
)

// CPUID for Linux guests.
//
// LinuxCPUID derives one vCPU's CPUID from what KVM_GET_SUPPORTED_CPUID
// reports. KVM's answer is already what KVM can virtualise, including its
// own leaves (0x40000000 "KVMKVMKVM" and 0x40000001, the paravirtual
// features Linux's KVM_GUEST support looks for), so the filter only adds
// what a VMM must decide:
//
//   - leaf 1: the hypervisor bit, the vCPU's initial APIC ID, the number
//     of logical processors, and HTT when there is more than one;
//   - topology: all vCPUs are cores of one socket, one thread each, in
//     leaf 4 (cores per package), leaf 0xB (x2APIC topology, with the
//     vCPU's x2APIC ID) and, on AMD, leaf 0x80000008 (core count);
//     leaf 0x1F, which would override 0xB, is dropped;
//   - leaf 6: thermal and power management is the host's business, so it
//     reports none (Linux otherwise reads thermal MSRs);
//   - with NoXSAVE, XSAVE and everything that needs it (AVX, AVX2,
//     AVX-512, AMX and leaf 0xD) is hidden, so the guest saves its FPU
//     state with FXSAVE. On hosts without hardware virtualization (PVM),
//     guest code runs in KVM's instruction emulator, which cannot execute
//     XSAVE/XRSTOR: a Linux guest that sees XSAVE stops at its first
//     XRSTOR, early in boot.
const (
	cpuidHypervisor = 1 << 31 // leaf 1 ECX
	cpuidHTT        = 1 << 28 // leaf 1 EDX
	x2apicLevelSMT  = 1
	x2apicLevelCore = 2

	// Leaf 1 ECX: FMA, XSAVE, OSXSAVE, AVX, F16C.
	cpuidLeaf1XSAVEDeps = 1<<12 | 1<<26 | 1<<27 | 1<<28 | 1<<29
	// Leaf 7.0 EBX: AVX2, AVX512F, DQ, IFMA, PF, ER, CD, BW, VL.
	cpuidLeaf7EBXAVX = 1<<5 | 1<<16 | 1<<17 | 1<<21 | 1<<26 | 1<<27 | 1<<28 | 1<<30 | 1<<31
	// Leaf 7.0 ECX: AVX512_VBMI, VBMI2, VAES, VPCLMULQDQ, VNNI, BITALG,
	// VPOPCNTDQ.
	cpuidLeaf7ECXAVX = 1<<1 | 1<<6 | 1<<9 | 1<<10 | 1<<11 | 1<<12 | 1<<14
	// Leaf 7.0 EDX: AVX512_4VNNIW, 4FMAPS, VP2INTERSECT, AMX_BF16,
	// AVX512_FP16, AMX_TILE, AMX_INT8.
	cpuidLeaf7EDXAVX = 1<<2 | 1<<3 | 1<<8 | 1<<22 | 1<<23 | 1<<24 | 1<<25
	// Leaf 7.1 EAX: AVX_VNNI, AVX512_BF16.
	cpuidLeaf71EAXAVX = 1<<4 | 1<<5
)

// CPUIDOptions adjusts LinuxCPUID.
type CPUIDOptions struct {
	// NoXSAVE hides XSAVE and the features that depend on it.
	NoXSAVE bool
}

// LinuxCPUID returns vCPU index's CPUID entries for a guest of count vCPUs.
// supported is not modified.
func LinuxCPUID(supported []kvm.CPUIDEntry, index, count int, opt CPUIDOptions) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, 0, len(supported)+3)
	amd := isAMD(supported)
	coreBits := uint32(bits.Len(uint(count - 1))) // bits of APIC ID per core
	for _, e := range supported {
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x0000FFFF | uint32(count&0xFF)<<16 | uint32(index&0xFF)<<24
			e.ECX |= cpuidHypervisor
			if count > 1 {
				e.EDX |= cpuidHTT
			} else {
				e.EDX &^= cpuidHTT
			}
			if opt.NoXSAVE {
				e.ECX &^= cpuidLeaf1XSAVEDeps
			}
		case 7:
			if opt.NoXSAVE {
				switch e.Index {
				case 0:
					e.EBX &^= cpuidLeaf7EBXAVX
					e.ECX &^= cpuidLeaf7ECXAVX
					e.EDX &^= cpuidLeaf7EDXAVX
				case 1:
					e.EAX &^= cpuidLeaf71EAXAVX
				}
			}
		case 0xD:
			if opt.NoXSAVE {
				continue
			}
		case 4:
			// EAX[31:26]: cores per package - 1; EAX[25:14]: logical
			// processors sharing this cache - 1 (one thread per core; the
			// last level is shared by all).
			e.EAX &= 0x3FFF
			e.EAX |= uint32(count-1) << 26
			if level := (e.EAX >> 5) & 7; level >= 3 {
				e.EAX |= uint32(count-1) << 14
			}
		case 6:
			e.EAX, e.EBX, e.ECX, e.EDX = 0, 0, 0, 0
		case 0xB, 0x1F:
			continue // rebuilt below
		case 0x80000008:
			if amd {
				e.ECX = e.ECX&^0xF0FF | uint32(count-1) | coreBits<<12
			}
		}
		out = append(out, e)
	}
	if maxBasic(supported) >= 0xB {
		id := uint32(index)
		sig := uint32(kvm.CPUIDFlagSignificantIndex)
		out = append(out,
			kvm.CPUIDEntry{Function: 0xB, Index: 0, Flags: sig, EAX: 0, EBX: 1, ECX: x2apicLevelSMT << 8, EDX: id},
			kvm.CPUIDEntry{Function: 0xB, Index: 1, Flags: sig, EAX: coreBits, EBX: uint32(count), ECX: x2apicLevelCore<<8 | 1, EDX: id},
			kvm.CPUIDEntry{Function: 0xB, Index: 2, Flags: sig, EAX: 0, EBX: 0, ECX: 2, EDX: id},
		)
	}
	slices.SortStableFunc(out, func(a, b kvm.CPUIDEntry) int {
		if a.Function != b.Function {
			if a.Function < b.Function {
				return -1
			}
			return 1
		}
		return int(a.Index) - int(b.Index)
	})
	return out
}

func maxBasic(entries []kvm.CPUIDEntry) uint32 {
	for _, e := range entries {
		if e.Function == 0 {
			return e.EAX
		}
	}
	return 0
}

// isAMD reports whether leaf 0's vendor is AuthenticAMD or HygonGenuine.
func isAMD(entries []kvm.CPUIDEntry) bool {
	for _, e := range entries {
		if e.Function == 0 {
			// "Auth" "enti" "cAMD" in EBX, EDX, ECX.
			return e.EBX == 0x68747541 && e.ECX == 0x444d4163 ||
				e.EBX == 0x6f677948 && e.ECX == 0x656e6975
		}
	}
	return false
}

// LinuxBootMSRs are the MSR values a Linux guest expects at reset, as
// firmware would leave them: fast strings enabled, MTRRs enabled with
// write-back as the default memory type, and the syscall and sysenter MSRs
// cleared.
func LinuxBootMSRs() []kvm.MSREntry {
	return []kvm.MSREntry{
		{Index: 0x174, Data: 0},         // IA32_SYSENTER_CS
		{Index: 0x175, Data: 0},         // IA32_SYSENTER_ESP
		{Index: 0x176, Data: 0},         // IA32_SYSENTER_EIP
		{Index: 0xC0000081, Data: 0},    // STAR
		{Index: 0xC0000082, Data: 0},    // LSTAR
		{Index: 0xC0000083, Data: 0},    // CSTAR
		{Index: 0xC0000084, Data: 0},    // SYSCALL_MASK
		{Index: 0xC0000102, Data: 0},    // KERNEL_GS_BASE
		{Index: 0x1A0, Data: 1},         // IA32_MISC_ENABLE: fast strings
		{Index: 0x2FF, Data: 1<<11 | 6}, // IA32_MTRR_DEF_TYPE: enabled, write-back
	}
}
