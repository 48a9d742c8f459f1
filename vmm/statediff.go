package vmm

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/tandemvm/tandem/kvm"
)

// Parts of the state that change by themselves as time passes, so two
// captures of one paused VM taken at different times, or a capture and the
// restore of it, legitimately differ there.
const lapicTimerCurrentCount = 0x390 // LAPIC timer current-count register

// volatileMSRs move with time on their own.
var volatileMSRs = map[uint32]bool{
	msrTSC: true,
}

// DiffStates lists every difference between two states that time passing
// does not explain (TSC, LAPIC timer count, PIT load times, KVM clock). An
// empty list means the machines are the same: same registers, interrupt
// controllers and devices.
func DiffStates(a, b *State) []string {
	var diffs []string
	add := func(format string, args ...any) { diffs = append(diffs, fmt.Sprintf(format, args...)) }
	if a.MemBytes != b.MemBytes || len(a.VCPUs) != len(b.VCPUs) {
		add("shape: %d bytes and %d vCPUs vs %d bytes and %d vCPUs", a.MemBytes, len(a.VCPUs), b.MemBytes, len(b.VCPUs))
		return diffs
	}
	for i := range a.VCPUs {
		x, y := &a.VCPUs[i], &b.VCPUs[i]
		if x.Regs != y.Regs {
			add("vCPU %d regs: %+v vs %+v", i, x.Regs, y.Regs)
		}
		if x.Sregs != y.Sregs {
			add("vCPU %d sregs: %+v vs %+v", i, x.Sregs, y.Sregs)
		}
		if x.FPU != y.FPU {
			add("vCPU %d FPU differs", i)
		}
		if x.Events != y.Events {
			add("vCPU %d events: %+v vs %+v", i, x.Events, y.Events)
		}
		if x.MPState != y.MPState {
			add("vCPU %d MP state: %v vs %v", i, x.MPState, y.MPState)
		}
		if x.XCRs != y.XCRs {
			add("vCPU %d XCRs differ", i)
		}
		if !bytes.Equal(canonicalXSave(x.XSave, x.CPUID), canonicalXSave(y.XSave, y.CPUID)) {
			add("vCPU %d XSAVE area differs", i)
		}
		diffs = append(diffs, diffMSRs(i, x.MSRs, y.MSRs)...)
		la, lb := x.LAPIC, y.LAPIC
		la.Set32(lapicTimerCurrentCount, 0)
		lb.Set32(lapicTimerCurrentCount, 0)
		for off := 0; off < len(la.Regs); off += 16 {
			if la.Get32(off) != lb.Get32(off) {
				add("vCPU %d LAPIC register %#x: %#x vs %#x", i, off, la.Get32(off), lb.Get32(off))
			}
		}
		if len(x.CPUID) != len(y.CPUID) {
			add("vCPU %d: %d vs %d CPUID entries", i, len(x.CPUID), len(y.CPUID))
		} else {
			for k := range x.CPUID {
				if x.CPUID[k] != y.CPUID[k] {
					add("vCPU %d CPUID leaf %#x.%d: %+v vs %+v", i, x.CPUID[k].Function, x.CPUID[k].Index, x.CPUID[k], y.CPUID[k])
				}
			}
		}
	}
	if a.PICMaster != b.PICMaster {
		add("master PIC differs")
	}
	if a.PICSlave != b.PICSlave {
		add("slave PIC differs")
	}
	if a.IOAPIC != b.IOAPIC {
		add("IOAPIC differs")
	}
	for c := range a.PIT.Channels {
		x, y := a.PIT.Channels[c], b.PIT.Channels[c]
		x.CountLoadTime, y.CountLoadTime = 0, 0
		if x != y {
			add("PIT channel %d: %+v vs %+v", c, x, y)
		}
	}
	if len(a.Devices) != len(b.Devices) {
		add("%d vs %d devices", len(a.Devices), len(b.Devices))
		return diffs
	}
	for i := range a.Devices {
		if a.Devices[i].Name != b.Devices[i].Name || !bytes.Equal(a.Devices[i].Data, b.Devices[i].Data) {
			add("device %s state differs", a.Devices[i].Name)
		}
	}
	return diffs
}

// XSAVE area layout (standard format, Intel SDM vol. 1 ch. 13).
const (
	xsaveFCW       = 0
	xsaveMXCSR     = 24
	xsaveST0       = 32
	xsaveXMM0      = 160
	xsaveXMMEnd    = 416
	xsaveHeader    = 512 // XSTATE_BV, the components the area holds
	xsaveX87Bit    = 1 << 0
	xsaveSSEBit    = 1 << 1
	fpuInitFCW     = 0x037F
	cpuidXSaveLeaf = 0xD
)

// canonicalXSave rewrites an XSAVE area so that a component held in its
// initial configuration looks the same whether the CPU wrote it out or only
// cleared its XSTATE_BV bit (the init optimization): KVM may return either
// for one and the same machine state.
func canonicalXSave(area []byte, cpuid []kvm.CPUIDEntry) []byte {
	if len(area) < xsaveHeader+8 {
		return area
	}
	a := bytes.Clone(area)
	le := binary.LittleEndian
	bv := le.Uint64(a[xsaveHeader:])
	if bv&xsaveX87Bit == 0 {
		clear(a[0:xsaveMXCSR])
		clear(a[xsaveST0:xsaveXMM0])
		le.PutUint16(a[xsaveFCW:], fpuInitFCW)
	}
	if bv&xsaveSSEBit == 0 {
		clear(a[xsaveXMM0:xsaveXMMEnd])
	}
	// Extended components: CPUID leaf 0xD sub-leaf i gives size (EAX) and
	// offset (EBX) of component i; their initial configuration is zeros.
	for _, e := range cpuid {
		if e.Function != cpuidXSaveLeaf || e.Index < 2 || e.Index > 63 || bv&(1<<e.Index) != 0 {
			continue
		}
		if end := uint64(e.EBX) + uint64(e.EAX); e.EBX != 0 && end <= uint64(len(a)) {
			clear(a[e.EBX:end])
		}
	}
	le.PutUint64(a[xsaveHeader:], bv|xsaveX87Bit|xsaveSSEBit)
	return a
}

func diffMSRs(vcpu int, a, b []kvm.MSREntry) []string {
	if len(a) != len(b) {
		return []string{fmt.Sprintf("vCPU %d: %d vs %d MSRs", vcpu, len(a), len(b))}
	}
	var diffs []string
	for k := range a {
		if a[k] != b[k] && !volatileMSRs[a[k].Index] {
			diffs = append(diffs, fmt.Sprintf("vCPU %d MSR %#x: %#x vs %#x", vcpu, a[k].Index, a[k].Data, b[k].Data))
		}
	}
	return diffs
}
