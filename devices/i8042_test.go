package devices

import (
	"bytes"
	"errors"
	"testing"
)

func TestI8042(t *testing.T) {
	b := NewBus()
	k := NewI8042()
	mustRegisterPorts(t, b, I8042DataPort, 1, k)
	mustRegisterPorts(t, b, I8042CommandPort, 1, k)

	tests := []struct {
		name    string
		port    uint16
		data    byte
		wantErr error
	}{
		{"reset command", I8042CommandPort, 0xFE, ErrReset},
		{"other command", I8042CommandPort, 0xAA, nil},
		{"read CTR command", I8042CommandPort, 0x20, nil},
		{"0xFE to the data port", I8042DataPort, 0xFE, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := b.WritePort(tt.port, []byte{tt.data}); !errors.Is(err, tt.wantErr) {
				t.Errorf("WritePort(%#x, %#x) = %v, want %v", tt.port, tt.data, err, tt.wantErr)
			}
		})
	}
	for _, port := range []uint16{I8042DataPort, I8042CommandPort} {
		data := []byte{0xAA}
		if err := b.ReadPort(port, data); err != nil || data[0] != 0 {
			t.Errorf("ReadPort(%#x) = %#x, %v; want 0, nil", port, data[0], err)
		}
	}
}

func TestI8042State(t *testing.T) {
	k := NewI8042()
	k.WritePort(I8042CommandPort, []byte{0xD1})
	state, err := k.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	k2 := NewI8042()
	if err := k2.LoadState(state); err != nil {
		t.Fatal(err)
	}
	if again, _ := k2.SaveState(); !bytes.Equal(again, state) {
		t.Errorf("round trip % x, want % x", again, state)
	}
	for _, bad := range [][]byte{nil, {2, 0}, {1}, {1, 0, 0}} {
		if err := k2.LoadState(bad); !errors.Is(err, ErrBadState) {
			t.Errorf("LoadState(% x) = %v, want ErrBadState", bad, err)
		}
	}
}

func TestDebugExit(t *testing.T) {
	b := NewBus()
	mustRegisterPorts(t, b, DebugExitPort, 1, NewDebugExit())
	tests := []struct {
		data []byte
		want uint32
	}{
		{[]byte{0x00}, 0},
		{[]byte{0x2A}, 42},
		{[]byte{0x34, 0x12}, 0x1234},
		{[]byte{0x78, 0x56, 0x34, 0x12}, 0x12345678},
		{[]byte{0xFF, 0xFF, 0xFF, 0xFF}, 0xFFFFFFFF},
	}
	for _, tt := range tests {
		err := b.WritePort(DebugExitPort, tt.data)
		var exit *ExitError
		if !errors.As(err, &exit) {
			t.Fatalf("WritePort(% x) = %v, want *ExitError", tt.data, err)
		}
		if exit.Code != tt.want {
			t.Errorf("WritePort(% x): code %#x, want %#x", tt.data, exit.Code, tt.want)
		}
	}
	data := []byte{0xAA, 0xAA}
	if err := b.ReadPort(DebugExitPort, data); err != nil || !bytes.Equal(data, []byte{0, 0}) {
		t.Errorf("ReadPort = % x, %v; want 00 00, nil", data, err)
	}
	if got := (&ExitError{Code: 3}).Error(); got != "devices: guest exited with status 3" {
		t.Errorf("Error() = %q", got)
	}
}
