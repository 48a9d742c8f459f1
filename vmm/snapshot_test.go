package vmm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm"
)

func TestSnapshotRoundTrip(t *testing.T) {
	a := newTestVM(t, Config{VCPUs: 2}, "counter", nil)
	a.start(t)
	a.out.waitFor(t, "counter: ready\n", 30*time.Second)
	counterSession(t, a, [][2]string{{"INC x", "OK x 1"}, {"INC y", "OK y 2"}, {"INC x", "OK x 3"}})

	if err := a.Pause(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "counter.snap")
	if err := a.WriteSnapshot(path, SnapshotMeta{Guest: "counter"}); err != nil {
		t.Fatal(err)
	}
	stA, err := a.CaptureState()
	if err != nil {
		t.Fatal(err)
	}
	memA := bytes.Clone(a.Memory().Bytes())
	a.Stop()

	snap, err := OpenSnapshot(path)
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Close()
	if snap.Meta.Guest != "counter" || snap.Meta.VCPUs != 2 || snap.Meta.MemBytes != 16<<20 {
		t.Errorf("metadata %+v", snap.Meta)
	}
	b := newTestVM(t, Config{VCPUs: snap.Meta.VCPUs, Memory: MemoryConfig{Bytes: snap.Meta.MemBytes}}, "", nil)
	if err := snap.Restore(b.VM); err != nil {
		t.Fatal(err)
	}
	stB, err := b.CaptureState()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range DiffStates(stA, stB) {
		t.Error(d)
	}
	if !bytes.Equal(memA, b.Memory().Bytes()) {
		t.Error("guest memory differs after restore")
	}
	b.start(t)
	counterSession(t, b, [][2]string{{"GET", "VALUE 3"}, {"INC z", "OK z 4"}})
}

func TestSnapshotRejectsDamage(t *testing.T) {
	tv := newTestVM(t, Config{}, "counter", nil)
	path := filepath.Join(t.TempDir(), "good.snap")
	if err := tv.WriteSnapshot(path, SnapshotMeta{}); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	restore := func(data []byte) error {
		p := filepath.Join(t.TempDir(), "bad.snap")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := OpenSnapshot(p)
		if err != nil {
			return err
		}
		defer s.Close()
		vm := newTestVM(t, Config{Memory: MemoryConfig{Bytes: s.Meta.MemBytes}, VCPUs: s.Meta.VCPUs}, "", nil)
		return s.Restore(vm.VM)
	}
	if err := restore(good); err != nil {
		t.Fatalf("the undamaged file does not restore: %v", err)
	}
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x40
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"not a snapshot", []byte("#!/bin/sh\necho hello\n"), "bad magic"},
		{"future version", append(append([]byte(snapshotMagic), 9, 0, 0, 0), good[12:]...), "format version 9"},
		{"truncated in state", good[:200], "truncated"},
		{"truncated in memory", good[:len(good)-5000], "truncated"},
		{"truncated before end", good[:len(good)-20], "truncated"},
		{"metadata corrupted", flip(40), "checksum mismatch"},
		{"memory corrupted", flip(len(good) - 3000), "checksum mismatch"},
		{"trailing garbage", append(bytes.Clone(good), 1, 2, 3), "trailing bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := restore(tc.data)
			if err == nil {
				t.Fatal("restore succeeded")
			}
			if !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want ErrSnapshot mentioning %q", err, tc.want)
			}
		})
	}
}

func TestStateEncodingRoundTrip(t *testing.T) {
	st := &State{
		MemBytes: 64 << 20,
		VCPUs: []VCPUState{{
			Regs:    kvm.Regs{RIP: 0x100000, RSP: 0x80000, RAX: 42},
			MSRs:    []kvm.MSREntry{{Index: 0x10, Data: 99}, {Index: 0xC0000080, Data: 0x500}},
			MPState: kvm.MPStateHalted,
			XSave:   bytes.Repeat([]byte{7}, 4096),
			CPUID:   []kvm.CPUIDEntry{{Function: 1, EAX: 0x806f8}},
		}},
		Devices: []DeviceState{{Name: "uart@0x3f8", Data: []byte{1, 2, 3}}},
	}
	st.PICMaster.ChipID = kvm.IRQChipPICMaster
	st.VCPUs[0].LAPIC.Set32(0x20, 0x01000000)
	enc, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got State
	if err := got.UnmarshalBinary(enc); err != nil {
		t.Fatal(err)
	}
	again, _ := got.MarshalBinary()
	if !bytes.Equal(enc, again) {
		t.Error("decode then encode does not give the same bytes")
	}
	if got.VCPUs[0].Regs != st.VCPUs[0].Regs || got.VCPUs[0].MSRs[1] != st.VCPUs[0].MSRs[1] || got.Devices[0].Name != "uart@0x3f8" {
		t.Errorf("decoded state differs: %+v", got.VCPUs[0].Regs)
	}
	for n := 0; n < len(enc); n += max(1, len(enc)/97) {
		if err := new(State).UnmarshalBinary(enc[:n]); err == nil {
			t.Fatalf("truncated to %d of %d bytes: decoded without error", n, len(enc))
		}
	}
}

func FuzzStateUnmarshal(f *testing.F) {
	st := &State{MemBytes: 1 << 20, VCPUs: make([]VCPUState, 1), Devices: []DeviceState{{Name: "d", Data: []byte{1}}}}
	enc, _ := st.MarshalBinary()
	f.Add(enc)
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var s State
		if s.UnmarshalBinary(data) != nil {
			return
		}
		// Whatever decodes encodes to a canonical form (padding zeroed)
		// that decodes and encodes to itself.
		out, err := s.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var s2 State
		if err := s2.UnmarshalBinary(out); err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
		if out2, _ := s2.MarshalBinary(); !bytes.Equal(out, out2) {
			t.Fatal("encoding is not stable")
		}
	})
}

func TestCanonicalXSaveIgnoresInitOptimization(t *testing.T) {
	written := make([]byte, 4096)
	binary.LittleEndian.PutUint16(written[0:], 0x037F)  // FCW in its initial value
	binary.LittleEndian.PutUint32(written[24:], 0x1F80) // MXCSR
	binary.LittleEndian.PutUint64(written[512:], 0b11)  // x87 and SSE written out
	skipped := make([]byte, 4096)                       // components left in init state
	binary.LittleEndian.PutUint32(skipped[24:], 0x1F80) // MXCSR is always saved
	if !bytes.Equal(canonicalXSave(written, nil), canonicalXSave(skipped, nil)) {
		t.Error("an initial-state SSE component differs from a cleared XSTATE_BV bit")
	}
	changed := bytes.Clone(written)
	changed[160] = 1 // XMM0 no longer zero
	if bytes.Equal(canonicalXSave(changed, nil), canonicalXSave(skipped, nil)) {
		t.Error("a live XMM register compares equal to the initial state")
	}
}
