package devices

// DebugExitPort is the conventional debug-exit port (as QEMU's isa-debug-exit
// uses it).
const DebugExitPort = 0xF4

// DebugExit is a port that lets a guest, typically a test, end the VM with a
// status code. Any 1-, 2- or 4-byte write returns an [*ExitError] whose Code
// is the value written (little endian), not shifted or otherwise encoded.
// Reads return 0. It has no state.
type DebugExit struct{}

// NewDebugExit returns a debug-exit device. Register it with
// RegisterPorts(DebugExitPort, 1, d).
func NewDebugExit() *DebugExit { return &DebugExit{} }

// ReadPort implements [PortDevice].
func (*DebugExit) ReadPort(port uint16, data []byte) error {
	fill(data, 0)
	return nil
}

// WritePort implements [PortDevice].
func (*DebugExit) WritePort(port uint16, data []byte) error {
	var code uint32
	for i, b := range data[:min(len(data), 4)] {
		code |= uint32(b) << (8 * i)
	}
	return &ExitError{Code: code}
}
