package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/tandemvm/tandem/kvm"
)

// stateVersion is the version of State's binary encoding. Bump it when the
// layout changes; decoders reject versions they do not know.
const stateVersion = 1

// Limits a decoder enforces, so a corrupt or hostile blob cannot make it
// allocate without bound.
const (
	maxStateVCPUs   = 1024
	maxStateMSRs    = 4096
	maxStateCPUID   = 1024
	maxStateXSave   = 1 << 20
	maxStateDevices = 256
	maxDeviceName   = 256
	maxDeviceState  = 16 << 20
)

// MarshalBinary encodes the state. The encoding is little endian, versioned,
// and deterministic: equal states give equal bytes.
func (st *State) MarshalBinary() ([]byte, error) {
	var b bytes.Buffer
	w := func(v any) { binary.Write(&b, binary.LittleEndian, v) } // bytes.Buffer writes cannot fail
	w(uint32(stateVersion))
	w(st.MemBytes)
	w(uint32(len(st.VCPUs)))
	for i := range st.VCPUs {
		c := &st.VCPUs[i]
		w(&c.Regs)
		w(&c.Sregs)
		w(&c.FPU)
		w(uint32(len(c.MSRs)))
		w(c.MSRs)
		w(&c.LAPIC)
		w(&c.Events)
		w(uint32(c.MPState))
		w(&c.XCRs)
		w(uint32(len(c.XSave)))
		b.Write(c.XSave)
		w(uint32(len(c.CPUID)))
		w(c.CPUID)
	}
	w(&st.PICMaster)
	w(&st.PICSlave)
	w(&st.IOAPIC)
	w(&st.PIT)
	w(&st.Clock)
	w(uint32(len(st.Devices)))
	for _, d := range st.Devices {
		if len(d.Name) > maxDeviceName || len(d.Data) > maxDeviceState {
			return nil, fmt.Errorf("vmm: device %q state too large to encode", d.Name)
		}
		w(uint16(len(d.Name)))
		b.WriteString(d.Name)
		w(uint32(len(d.Data)))
		b.Write(d.Data)
	}
	return b.Bytes(), nil
}

// UnmarshalBinary decodes a state encoded by MarshalBinary. It rejects
// unknown versions, truncated input, trailing bytes and out-of-range counts.
func (st *State) UnmarshalBinary(data []byte) error {
	d := stateDecoder{r: bytes.NewReader(data)}
	if v := d.u32(); d.err == nil && v != stateVersion {
		return fmt.Errorf("%w: version %d, this build reads version %d", errStateFormat, v, stateVersion)
	}
	*st = State{}
	st.MemBytes = d.u64()
	st.VCPUs = make([]VCPUState, d.count("vCPUs", maxStateVCPUs))
	for i := range st.VCPUs {
		c := &st.VCPUs[i]
		d.read(&c.Regs)
		d.read(&c.Sregs)
		d.read(&c.FPU)
		c.MSRs = make([]kvm.MSREntry, d.count("MSRs", maxStateMSRs))
		d.read(c.MSRs)
		d.read(&c.LAPIC)
		d.read(&c.Events)
		c.MPState = kvm.MPState(d.u32())
		d.read(&c.XCRs)
		c.XSave = d.bytes(d.count("XSAVE bytes", maxStateXSave))
		c.CPUID = make([]kvm.CPUIDEntry, d.count("CPUID entries", maxStateCPUID))
		d.read(c.CPUID)
	}
	d.read(&st.PICMaster)
	d.read(&st.PICSlave)
	d.read(&st.IOAPIC)
	d.read(&st.PIT)
	d.read(&st.Clock)
	n := d.count("devices", maxStateDevices)
	for i := 0; i < n && d.err == nil; i++ {
		name := string(d.bytes(d.count16("device name bytes", maxDeviceName)))
		data := d.bytes(d.count("device state bytes", maxDeviceState))
		st.Devices = append(st.Devices, DeviceState{Name: name, Data: data})
	}
	if d.err == nil && d.r.Len() != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", errStateFormat, d.r.Len())
	}
	return d.err
}

// stateDecoder reads little-endian fields and keeps the first error, so the
// decoding code reads straight through.
type stateDecoder struct {
	r   *bytes.Reader
	err error
}

func (d *stateDecoder) read(v any) {
	if d.err != nil {
		return
	}
	if err := binary.Read(d.r, binary.LittleEndian, v); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%w: truncated", errStateFormat)
		}
		d.err = err
	}
}

func (d *stateDecoder) u32() uint32 {
	var v uint32
	d.read(&v)
	return v
}

func (d *stateDecoder) u64() uint64 {
	var v uint64
	d.read(&v)
	return v
}

func (d *stateDecoder) count(what string, limit int) int {
	n := d.u32()
	if d.err == nil && int64(n) > int64(limit) {
		d.err = fmt.Errorf("%w: %d %s, at most %d allowed", errStateFormat, n, what, limit)
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *stateDecoder) count16(what string, limit int) int {
	var n uint16
	d.read(&n)
	if d.err == nil && int(n) > limit {
		d.err = fmt.Errorf("%w: %d %s, at most %d allowed", errStateFormat, n, what, limit)
	}
	if d.err != nil {
		return 0
	}
	return int(n)
}

func (d *stateDecoder) bytes(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > d.r.Len() {
		d.err = fmt.Errorf("%w: truncated", errStateFormat)
		return nil
	}
	b := make([]byte, n)
	io.ReadFull(d.r, b)
	return b
}

func xsaveBytesOf(x *kvm.XSave) []byte {
	b := make([]byte, 4*len(x.Region))
	for i, w := range x.Region {
		binary.LittleEndian.PutUint32(b[4*i:], w)
	}
	return b
}

func xsaveFromBytes(x *kvm.XSave, b []byte) {
	for i := range x.Region {
		x.Region[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
}
