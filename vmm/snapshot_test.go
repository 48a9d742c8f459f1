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

// dataBytes counts the bytes of path's data extents (what is not a hole).
func dataBytes(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n int64
	for off := int64(0); ; {
		start, err := seekData(f, off)
		if err != nil {
			t.Fatal(err)
		}
		if start < 0 {
			return n
		}
		end, err := seekHole(f, start)
		if err != nil {
			t.Fatal(err)
		}
		n += end - start
		off = end
	}
}

// TestSplitSnapshotFullAndDiff: snapshots laid out as Firecracker's (state
// and memory files) restore the VM exactly; a Diff holds only the pages
// written since the snapshot before it, restores once rebased onto that
// one's memory file, and is refused before, as is a memory file of the
// wrong snapshot or none at all.
func TestSplitSnapshotFullAndDiff(t *testing.T) {
	a := newTestVM(t, Config{Dirty: DirtyBitmap}, "counter", nil)
	a.start(t)
	a.out.waitFor(t, "counter: ready\n", 30*time.Second)
	counterSession(t, a, [][2]string{{"INC x", "OK x 1"}})
	dir := t.TempDir()
	full, fullMem := filepath.Join(dir, "full.snap"), filepath.Join(dir, "full.mem")
	diff, diffMem := filepath.Join(dir, "diff.snap"), filepath.Join(dir, "diff.mem")

	c := &Controller{VM: a.VM}
	if _, _, err := c.Handle(ControlRequest{Op: "snapshot", Path: diff, MemPath: diffMem, Diff: true}); err == nil || !strings.Contains(err.Error(), "dirty log") {
		t.Errorf("a Diff without the dirty log: %v, want a refusal naming it", err)
	}
	c.DiffSnapshots = true
	if _, _, err := c.Handle(ControlRequest{Op: "snapshot", Path: diff, Diff: true}); err == nil || !strings.Contains(err.Error(), "memory file") {
		t.Errorf("a Diff without a memory file: %v, want a refusal naming it", err)
	}
	if _, _, err := c.Handle(ControlRequest{Op: "snapshot", Path: full, MemPath: fullMem}); err != nil {
		t.Fatal(err)
	}
	counterSession(t, a, [][2]string{{"INC y", "OK y 2"}})
	if _, _, err := c.Handle(ControlRequest{Op: "pause"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Handle(ControlRequest{Op: "snapshot", Path: diff, MemPath: diffMem, Diff: true}); err != nil {
		t.Fatal(err)
	}
	memA := bytes.Clone(a.Memory().Bytes())
	stA, err := a.CaptureState()
	if err != nil {
		t.Fatal(err)
	}
	a.Stop()
	a.Resume()

	if f, d := dataBytes(t, fullMem), dataBytes(t, diffMem); d == 0 || d > f/4 {
		t.Errorf("the Diff's memory file holds %d bytes of data, the Full's %d: want some, and far fewer", d, f)
	}
	restore := func(path, mem string) (*testVM, error) {
		s, err := OpenSnapshot(path)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		s.MemFile = mem
		b := newTestVM(t, Config{Memory: MemoryConfig{Bytes: s.Meta.MemBytes}, VCPUs: s.Meta.VCPUs}, "", nil)
		return b, s.Restore(b.VM)
	}
	for _, tc := range []struct{ name, snap, mem, want string }{
		{"no memory file", full, "", "separate memory file"},
		{"a Diff not rebased", diff, diffMem, "rebase"},
		{"the other snapshot's memory", diff, fullMem, "does not match"},
	} {
		if _, err := restore(tc.snap, tc.mem); !errors.Is(err, ErrSnapshot) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrSnapshot naming %q", tc.name, err, tc.want)
		}
	}
	if _, err := restore(full, fullMem); err != nil {
		t.Errorf("the Full snapshot: %v", err)
	}
	rebased := filepath.Join(dir, "rebased.mem")
	data, err := os.ReadFile(fullMem)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rebased, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := RebaseMemoryFile(rebased, diffMem); err != nil {
		t.Fatal(err)
	}
	b, err := restore(diff, rebased)
	if err != nil {
		t.Fatalf("the rebased Diff: %v", err)
	}
	if !bytes.Equal(memA, b.Memory().Bytes()) {
		t.Error("guest memory differs after restoring the rebased Diff")
	}
	stB, err := b.CaptureState()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range DiffStates(stA, stB) {
		t.Error(d)
	}
	b.start(t)
	counterSession(t, b, [][2]string{{"GET", "VALUE 2"}, {"INC z", "OK z 3"}})
}
