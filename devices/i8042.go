package devices

import (
	"fmt"
	"sync"
)

// i8042 ports.
const (
	I8042DataPort    = 0x60
	I8042CommandPort = 0x64

	i8042CmdResetCPU = 0xFE // pulse the CPU reset line
)

// I8042 is just enough of the PS/2 controller for the guest to reset the
// machine. It has no keyboard or mouse: status reads return 0 (no data,
// input buffer empty), data reads return 0 and writes are ignored, except
// command 0xFE ("pulse reset line") written to port 0x64, which returns
// [ErrReset].
//
// Register it on both of its ports:
//
//	bus.RegisterPorts(devices.I8042DataPort, 1, kbd)
//	bus.RegisterPorts(devices.I8042CommandPort, 1, kbd)
type I8042 struct {
	mu  sync.Mutex
	cmd byte // last command written to the command port
}

// NewI8042 returns a controller in its power-on state.
func NewI8042() *I8042 { return &I8042{} }

// ReadPort implements [PortDevice].
func (k *I8042) ReadPort(port uint16, data []byte) error {
	fill(data, 0)
	return nil
}

// WritePort implements [PortDevice].
func (k *I8042) WritePort(port uint16, data []byte) error {
	if port != I8042CommandPort || len(data) == 0 {
		return nil
	}
	k.mu.Lock()
	k.cmd = data[0]
	k.mu.Unlock()
	if data[0] == i8042CmdResetCPU {
		return ErrReset
	}
	return nil
}

// StateName implements [Stateful].
func (k *I8042) StateName() string { return "i8042" }

const i8042StateVersion = 1

// SaveState implements [Stateful]. The encoding (version 1) is
// [0] version, [1] last command byte.
func (k *I8042) SaveState() ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return []byte{i8042StateVersion, k.cmd}, nil
}

// LoadState implements [Stateful].
func (k *I8042) LoadState(b []byte) error {
	switch {
	case len(b) == 0:
		return fmt.Errorf("%w: i8042: empty state", ErrBadState)
	case b[0] != i8042StateVersion:
		return fmt.Errorf("%w: i8042: unsupported version %d (want %d)", ErrBadState, b[0], i8042StateVersion)
	case len(b) != 2:
		return fmt.Errorf("%w: i8042: length %d, want 2", ErrBadState, len(b))
	}
	k.mu.Lock()
	k.cmd = b[1]
	k.mu.Unlock()
	return nil
}
