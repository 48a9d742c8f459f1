// Package devices implements Tandem's emulated guest devices and the bus
// that routes a vCPU's port and MMIO exits to them.
//
// The package owns:
//
//   - [Bus], the address decoder from x86 I/O ports and MMIO addresses to
//     [PortDevice] and [MMIODevice] implementations;
//   - the devices themselves: a 16550A [UART], the reset-only [I8042]
//     keyboard controller and the [DebugExit] port;
//   - the host side of the serial line, [Console], opened from a --serial
//     spec with [OpenConsole];
//   - the contracts devices use to reach the rest of the VM: [IRQLine],
//     [GuestMemory] and [Stateful].
//
// Devices know nothing of KVM or replication. The VMM creates them, wires
// their interrupt lines to the in-kernel irqchip, registers them on a Bus
// and turns the VM-level events they report ([ErrReset], [*ExitError])
// into VM lifecycle decisions. Devices handle and log their own host I/O
// failures; an error from a device access is never a device fault.
package devices
