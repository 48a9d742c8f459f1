package boot

import (
	"testing"

	"github.com/tandemvm/tandem/kvm"
)

func fakeSupported(amd bool) []kvm.CPUIDEntry {
	vendor := kvm.CPUIDEntry{Function: 0, EAX: 0x1F, EBX: 0x756e6547, ECX: 0x6c65746e, EDX: 0x49656e69} // GenuineIntel
	if amd {
		vendor = kvm.CPUIDEntry{Function: 0, EAX: 0x10, EBX: 0x68747541, ECX: 0x444d4163, EDX: 0x69746e65}
	}
	sig := uint32(kvm.CPUIDFlagSignificantIndex)
	return []kvm.CPUIDEntry{
		vendor,
		{Function: 1, EAX: 0x806F8, EBX: 0xFF00_0800, ECX: 1<<26 | 1<<28 | 1<<0, EDX: 1 << 28},
		{Function: 4, Index: 0, Flags: sig, EAX: 0xFC00_4121}, // L1d
		{Function: 4, Index: 3, Flags: sig, EAX: 0xFC00_4163}, // L3
		{Function: 6, EAX: 4, ECX: 1},
		{Function: 7, Index: 0, Flags: sig, EBX: 1<<5 | 1<<16 | 1<<0, ECX: 1 << 1, EDX: 1 << 4},
		{Function: 7, Index: 1, Flags: sig, EAX: 1<<4 | 1<<0},
		{Function: 0xB, Index: 0, Flags: sig, EAX: 1, EBX: 2, ECX: 0x100},
		{Function: 0xD, Index: 0, Flags: sig, EAX: 7},
		{Function: 0x1F, Index: 0, Flags: sig, EAX: 1},
		{Function: 0x40000000, EAX: 0x40000001, EBX: 0x4b4d564b},
		{Function: 0x40000001, EAX: 0x1000},
		{Function: 0x80000008, ECX: 0x7007},
	}
}

func find(entries []kvm.CPUIDEntry, fn, index uint32) (kvm.CPUIDEntry, bool) {
	for _, e := range entries {
		if e.Function == fn && e.Index == index {
			return e, true
		}
	}
	return kvm.CPUIDEntry{}, false
}

func TestLinuxCPUIDTopology(t *testing.T) {
	sup := fakeSupported(false)
	orig := append([]kvm.CPUIDEntry(nil), sup...)
	out := LinuxCPUID(sup, 2, 3, CPUIDOptions{})
	for i := range sup {
		if sup[i] != orig[i] {
			t.Fatal("LinuxCPUID modified its input")
		}
	}
	l1, _ := find(out, 1, 0)
	if l1.EBX>>24 != 2 || l1.EBX>>16&0xFF != 3 || l1.ECX&cpuidHypervisor == 0 || l1.EDX&cpuidHTT == 0 {
		t.Errorf("leaf 1 = %+v", l1)
	}
	if l1.ECX&(1<<26) == 0 {
		t.Error("XSAVE removed without NoXSAVE")
	}
	if l4, _ := find(out, 4, 0); l4.EAX>>26 != 2 || l4.EAX>>14&0xFFF != 0 {
		t.Errorf("leaf 4 L1d EAX = %#x", l4.EAX)
	}
	if l4, _ := find(out, 4, 3); l4.EAX>>26 != 2 || l4.EAX>>14&0xFFF != 2 {
		t.Errorf("leaf 4 L3 EAX = %#x", l4.EAX)
	}
	if l6, _ := find(out, 6, 0); l6.EAX != 0 || l6.ECX != 0 {
		t.Errorf("leaf 6 not cleared: %+v", l6)
	}
	for _, want := range []kvm.CPUIDEntry{
		{Function: 0xB, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0, EBX: 1, ECX: 0x100, EDX: 2},
		{Function: 0xB, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 2, EBX: 3, ECX: 0x201, EDX: 2},
		{Function: 0xB, Index: 2, Flags: kvm.CPUIDFlagSignificantIndex, EAX: 0, EBX: 0, ECX: 2, EDX: 2},
	} {
		if got, _ := find(out, 0xB, want.Index); got != want {
			t.Errorf("leaf 0xB.%d = %+v, want %+v", want.Index, got, want)
		}
	}
	if _, ok := find(out, 0x1F, 0); ok {
		t.Error("leaf 0x1F kept")
	}
	if _, ok := find(out, 0x40000001, 0); !ok {
		t.Error("KVM's paravirtual leaf dropped")
	}
	if l, _ := find(out, 0x80000008, 0); l.ECX != 0x7007 {
		t.Errorf("leaf 0x80000008 changed on Intel: %#x", l.ECX)
	}
	for i := 1; i < len(out); i++ {
		if out[i-1].Function > out[i].Function {
			t.Fatal("entries not sorted by function")
		}
	}
	one := LinuxCPUID(sup, 0, 1, CPUIDOptions{})
	if l1, _ := find(one, 1, 0); l1.EDX&cpuidHTT != 0 {
		t.Error("HTT set for a single vCPU")
	}
}

func TestLinuxCPUIDNoXSAVE(t *testing.T) {
	out := LinuxCPUID(fakeSupported(false), 0, 1, CPUIDOptions{NoXSAVE: true})
	l1, _ := find(out, 1, 0)
	if l1.ECX&(1<<26|1<<28) != 0 || l1.ECX&1 == 0 {
		t.Errorf("leaf 1 ECX = %#x: want XSAVE and AVX off, SSE3 kept", l1.ECX)
	}
	l7, _ := find(out, 7, 0)
	if l7.EBX&(1<<5|1<<16) != 0 || l7.EBX&1 == 0 || l7.ECX&(1<<1) != 0 || l7.EDX != 1<<4 {
		t.Errorf("leaf 7.0 = %+v", l7)
	}
	if l71, _ := find(out, 7, 1); l71.EAX != 1 {
		t.Errorf("leaf 7.1 EAX = %#x", l71.EAX)
	}
	if _, ok := find(out, 0xD, 0); ok {
		t.Error("leaf 0xD kept")
	}
}

func TestLinuxCPUIDAMD(t *testing.T) {
	out := LinuxCPUID(fakeSupported(true), 1, 4, CPUIDOptions{})
	if l, _ := find(out, 0x80000008, 0); l.ECX&0xFF != 3 || l.ECX>>12&0xF != 2 {
		t.Errorf("leaf 0x80000008 ECX = %#x, want 4 cores, 2 APIC ID bits", l.ECX)
	}
}
