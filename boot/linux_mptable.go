package boot

import "fmt"

// The Intel MultiProcessor Specification 1.4 tables through which a Linux
// guest without ACPI finds its processors, its IOAPIC and how ISA
// interrupts reach it (arch/x86/kernel/mpparse.c reads them). Linux scans
// 0xF0000-0xFFFFF for the floating pointer, where Tandem puts it.
//
// Tandem's table: one processor entry per vCPU (APIC ID = vCPU index,
// vCPU 0 the bootstrap processor), one ISA bus, the in-kernel IOAPIC
// (ID = number of vCPUs) at IOAPICAddr with IRQs 0-23 wired to its pins
// 0-23, and the local APICs' LINT0 as ExtINT (the 8259) and LINT1 as NMI,
// matching how the VMM programs them.

// Addresses of KVM's in-kernel interrupt controllers.
const (
	LAPICAddr  = 0xFEE00000
	IOAPICAddr = 0xFEC00000
	// IOAPICPins is the number of pins of KVM's IOAPIC.
	IOAPICPins = 24
)

const (
	mpfSize       = 16
	mpcHeaderSize = 44
	mpcCPUSize    = 20
	mpcEntrySize  = 8 // bus, IOAPIC, interrupt source, local interrupt source

	mpSpecRev      = 4
	apicVersion    = 0x14 // KVM's local APIC
	ioapicVersion  = 0x11 // KVM's IOAPIC
	mpCPUEnabled   = 1 << 0
	mpCPUBootstrap = 1 << 1

	mpEntryProcessor = 0
	mpEntryBus       = 1
	mpEntryIOAPIC    = 2
	mpEntryIntSrc    = 3
	mpEntryLIntSrc   = 4

	mpIntINT    = 0
	mpIntNMI    = 1
	mpIntExtINT = 3
)

// MPTableSize is the size of the floating pointer plus configuration table
// for vcpus processors.
func MPTableSize(vcpus int) int {
	return mpfSize + mpcHeaderSize + vcpus*mpcCPUSize + (1+1+IOAPICPins+2)*mpcEntrySize
}

// writeMPTable writes the MP floating pointer at addr and the configuration
// table right after it.
func writeMPTable(mem []byte, addr int, vcpus int) error {
	size := MPTableSize(vcpus)
	if addr+size > HighMemStart || addr+size > len(mem) {
		return fmt.Errorf("boot: the MP table for %d vCPUs does not fit below 1 MiB", vcpus)
	}
	t := mem[addr : addr+size]
	clear(t)

	// Configuration table entries.
	cfg := t[mpfSize:]
	e := cfg[mpcHeaderSize:]
	n := 0
	for i := 0; i < vcpus; i++ {
		flags := byte(mpCPUEnabled)
		if i == 0 {
			flags |= mpCPUBootstrap
		}
		e[0], e[1], e[2], e[3] = mpEntryProcessor, byte(i), apicVersion, flags
		put32(e[4:], 0x600)     // CPU signature: family 6
		put32(e[8:], 1<<0|1<<9) // features: FPU, APIC
		e = e[mpcCPUSize:]
		n++
	}
	e[0], e[1] = mpEntryBus, 0
	copy(e[2:8], "ISA   ")
	e = e[mpcEntrySize:]
	ioapicID := byte(vcpus)
	e[0], e[1], e[2], e[3] = mpEntryIOAPIC, ioapicID, ioapicVersion, 1
	put32(e[4:], IOAPICAddr)
	e = e[mpcEntrySize:]
	for irq := 0; irq < IOAPICPins; irq++ {
		// Interrupt type INT, polarity and trigger conforming to the
		// (ISA: active high, edge) bus, from bus 0 IRQ irq to pin irq.
		e[0], e[1] = mpEntryIntSrc, mpIntINT
		put16(e[2:], 0)
		e[4], e[5], e[6], e[7] = 0, byte(irq), ioapicID, byte(irq)
		e = e[mpcEntrySize:]
	}
	for lint, typ := range []byte{mpIntExtINT, mpIntNMI} {
		e[0], e[1] = mpEntryLIntSrc, typ
		put16(e[2:], 0)
		e[4], e[5], e[6], e[7] = 0, 0, 0xFF, byte(lint) // to every local APIC
		e = e[mpcEntrySize:]
	}
	entries := n + 1 + 1 + IOAPICPins + 2

	// Configuration table header.
	copy(cfg[0:4], "PCMP")
	put16(cfg[4:], uint16(size-mpfSize))
	cfg[6] = mpSpecRev
	copy(cfg[8:16], "TANDEM  ")
	copy(cfg[16:28], "MICROVM     ")
	put16(cfg[34:], uint16(entries))
	put32(cfg[36:], LAPICAddr)
	cfg[7] = checksum(cfg[:size-mpfSize])

	// Floating pointer.
	copy(t[0:4], "_MP_")
	put32(t[4:], uint32(addr+mpfSize))
	t[8] = 1 // length in 16-byte units
	t[9] = mpSpecRev
	t[10] = checksum(t[:mpfSize])
	return nil
}

// checksum returns the byte that makes the sum of b's bytes zero; b's
// checksum byte must be zero when it is computed.
func checksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
