package devices

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
)

// recorder is a fake port and MMIO device that records accesses and reads
// back a fixed byte.
type recorder struct {
	name string
	fill byte

	mu    sync.Mutex
	ports []uint16
	addrs []uint64
	wrote [][]byte
}

func (r *recorder) ReadPort(port uint16, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ports = append(r.ports, port)
	fill(data, r.fill)
	return nil
}

func (r *recorder) WritePort(port uint16, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ports = append(r.ports, port)
	r.wrote = append(r.wrote, bytes.Clone(data))
	return nil
}

func (r *recorder) ReadMMIO(addr uint64, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs = append(r.addrs, addr)
	fill(data, r.fill)
	return nil
}

func (r *recorder) WriteMMIO(addr uint64, data []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.addrs = append(r.addrs, addr)
	r.wrote = append(r.wrote, bytes.Clone(data))
	return nil
}

func TestBusRegisterPortsErrors(t *testing.T) {
	tests := []struct {
		name        string
		base, count uint16
		wantErr     error
		wantInMsg   []string
	}{
		{"same range", 0x3F8, 8, ErrOverlap, []string{"0x3f8-0x3ff", "0x3f8-0x3ff"}},
		{"overlaps start", 0x3F0, 9, ErrOverlap, []string{"0x3f0-0x3f8", "0x3f8-0x3ff"}},
		{"overlaps end", 0x3FF, 1, ErrOverlap, []string{"0x3ff-0x3ff", "0x3f8-0x3ff"}},
		{"contains", 0x300, 0x200, ErrOverlap, []string{"0x300-0x4ff", "0x3f8-0x3ff"}},
		{"empty", 0x100, 0, ErrBadRange, nil},
		{"past 0xffff", 0xFFFF, 2, ErrBadRange, nil},
		{"adjacent below", 0x3F0, 8, nil, nil},
		{"adjacent above", 0x400, 8, nil, nil},
		{"last port", 0xFFFF, 1, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBus()
			if err := b.RegisterPorts(0x3F8, 8, &recorder{}); err != nil {
				t.Fatal(err)
			}
			err := b.RegisterPorts(tt.base, tt.count, &recorder{})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("RegisterPorts(%#x, %d) = %v, want %v", tt.base, tt.count, err, tt.wantErr)
			}
			for _, s := range tt.wantInMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not name range %s", err, s)
				}
			}
		})
	}
}

func TestBusRegisterMMIOErrors(t *testing.T) {
	tests := []struct {
		name       string
		base, size uint64
		wantErr    error
	}{
		{"same", 0xD000_0000, 0x1000, ErrOverlap},
		{"overlaps start", 0xCFFF_F000, 0x1001, ErrOverlap},
		{"overlaps end", 0xD000_0FFF, 0x10, ErrOverlap},
		{"adjacent", 0xD000_1000, 0x1000, nil},
		{"empty", 0x1000, 0, ErrBadRange},
		{"wraps", ^uint64(0) - 0xF, 0x20, ErrBadRange},
		{"top of address space", ^uint64(0) - 0xF, 0x10, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b Bus // the zero value is usable
			if err := b.RegisterMMIO(0xD000_0000, 0x1000, &recorder{}); err != nil {
				t.Fatal(err)
			}
			err := b.RegisterMMIO(tt.base, tt.size, &recorder{})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("RegisterMMIO(%#x, %#x) = %v, want %v", tt.base, tt.size, err, tt.wantErr)
			}
			if tt.wantErr == ErrOverlap && !strings.Contains(err.Error(), "0xd0000000-0xd0000fff") {
				t.Errorf("error %q does not name the existing range", err)
			}
		})
	}
}

func TestBusPortDispatch(t *testing.T) {
	b := NewBus()
	a, c := &recorder{name: "a", fill: 0xAA}, &recorder{name: "c", fill: 0xCC}
	mustRegisterPorts(t, b, 0x60, 1, a)
	mustRegisterPorts(t, b, 0x64, 1, a)
	mustRegisterPorts(t, b, 0x3F8, 8, c)

	tests := []struct {
		port uint16
		size int
		want byte
		dev  *recorder
	}{
		{0x60, 1, 0xAA, a},
		{0x64, 1, 0xAA, a},
		{0x3F8, 1, 0xCC, c},
		{0x3FF, 1, 0xCC, c},
		{0x3FC, 4, 0xCC, c},
		{0x0, 1, 0xFF, nil},
		{0x61, 2, 0xFF, nil},
		{0x3F7, 4, 0xFF, nil}, // dispatched by its first port
		{0x400, 1, 0xFF, nil},
		{0xFFFF, 1, 0xFF, nil},
	}
	for _, tt := range tests {
		data := bytes.Repeat([]byte{0x11}, tt.size)
		if err := b.ReadPort(tt.port, data); err != nil {
			t.Fatalf("ReadPort(%#x): %v", tt.port, err)
		}
		if want := bytes.Repeat([]byte{tt.want}, tt.size); !bytes.Equal(data, want) {
			t.Errorf("ReadPort(%#x, %d bytes) = % x, want % x", tt.port, tt.size, data, want)
		}
		if tt.dev != nil {
			if got := tt.dev.ports[len(tt.dev.ports)-1]; got != tt.port {
				t.Errorf("device %s saw port %#x, want the absolute port %#x", tt.dev.name, got, tt.port)
			}
		}
	}

	if err := b.WritePort(0x3F9, []byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := b.WritePort(0x1234, []byte{1}); err != nil { // unclaimed: ignored
		t.Fatal(err)
	}
	if got := c.wrote; len(got) != 1 || !bytes.Equal(got[0], []byte{1, 2}) {
		t.Errorf("device c got writes %v, want [[1 2]]", got)
	}
	if got := a.wrote; len(got) != 0 {
		t.Errorf("device a got writes %v, want none", got)
	}
}

func TestBusMMIODispatch(t *testing.T) {
	b := NewBus()
	d := &recorder{fill: 0x5A}
	if err := b.RegisterMMIO(0xFEC0_0000, 0x1000, d); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		addr uint64
		want byte
	}{
		{0xFEC0_0000, 0x5A},
		{0xFEC0_0FF8, 0x5A},
		{0xFEBF_FFFF, 0xFF},
		{0xFEC0_1000, 0xFF},
		{0, 0xFF},
	}
	for _, tt := range tests {
		data := make([]byte, 8)
		if err := b.ReadMMIO(tt.addr, data); err != nil {
			t.Fatal(err)
		}
		if want := bytes.Repeat([]byte{tt.want}, 8); !bytes.Equal(data, want) {
			t.Errorf("ReadMMIO(%#x) = % x, want % x", tt.addr, data, want)
		}
	}
	if err := b.WriteMMIO(0xFEC0_0010, []byte{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	if err := b.WriteMMIO(0x1000, []byte{1}); err != nil {
		t.Fatal(err)
	}
	if len(d.wrote) != 1 || d.addrs[len(d.addrs)-1] != 0xFEC0_0010 {
		t.Errorf("writes %v at %#x, want one write at 0xfec00010", d.wrote, d.addrs)
	}
}

func TestBusAccessSize(t *testing.T) {
	b := NewBus()
	for _, n := range []int{0, 3, 8} {
		if err := b.ReadPort(0x80, make([]byte, n)); !errors.Is(err, ErrAccessSize) {
			t.Errorf("ReadPort with %d bytes = %v, want ErrAccessSize", n, err)
		}
	}
	for _, n := range []int{0, 3, 16} {
		if err := b.WriteMMIO(0x1000, make([]byte, n)); !errors.Is(err, ErrAccessSize) {
			t.Errorf("WriteMMIO with %d bytes = %v, want ErrAccessSize", n, err)
		}
	}
}

func TestBusDevicesOrder(t *testing.T) {
	b := NewBus()
	u, k, x := NewUART(COM1Base, nil, nil), NewI8042(), NewDebugExit()
	mustRegisterPorts(t, b, COM1Base, UARTPortCount, u)
	mustRegisterPorts(t, b, I8042DataPort, 1, k)
	mustRegisterPorts(t, b, I8042CommandPort, 1, k)
	mustRegisterPorts(t, b, DebugExitPort, 1, x)
	got := b.Devices()
	want := []any{u, k, x}
	if len(got) != len(want) {
		t.Fatalf("Devices() = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("Devices()[%d] = %T, want %T", i, got[i], want[i])
		}
	}
}

func TestBusConcurrentLookups(t *testing.T) {
	b := NewBus()
	mustRegisterPorts(t, b, 0x3F8, 8, &recorder{fill: 1})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			data := make([]byte, 1)
			for p := range 0x10000 {
				if err := b.ReadPort(uint16(p), data); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	// Registration while lookups run is allowed.
	mustRegisterPorts(t, b, 0x2F8, 8, &recorder{fill: 2})
	wg.Wait()
}

func mustRegisterPorts(t *testing.T, b *Bus, base, count uint16, d PortDevice) {
	t.Helper()
	if err := b.RegisterPorts(base, count, d); err != nil {
		t.Fatal(err)
	}
}
