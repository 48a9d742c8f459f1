package main

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/replicate/disk"
	"github.com/tandemvm/tandem/vmm"
)

// memDisk is an in-memory virtio.BlockBackend.
type memDisk struct{ b []byte }

func (m *memDisk) ReadAt(p []byte, off int64) (int, error)  { return copy(p, m.b[off:]), nil }
func (m *memDisk) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }
func (m *memDisk) Flush() error                             { return nil }
func (m *memDisk) Size() int64                              { return int64(len(m.b)) }
func (m *memDisk) ReadOnly() bool                           { return false }
func (m *memDisk) Close() error                             { return nil }

func TestLinuxHAStateRoundTrip(t *testing.T) {
	devs := []vmm.VirtioConfig{{Type: "blk", Path: "/a.img"}, {Type: "console", Console: "unix:/tmp/ch"}, {Type: "rng"}}
	d := virtio.NewTrackedBackend(&memDisk{b: make([]byte, 3*virtio.DiskBlockSize)})
	src, err := newLinuxSource(nil, devs, []*virtio.TrackedBackend{d})
	if err != nil {
		t.Fatal(err)
	}
	d.WriteAt([]byte("written in the epoch"), virtio.DiskBlockSize+5)
	d.Flush()
	section, err := src.diskSection()
	if err != nil {
		t.Fatal(err)
	}
	b := append(append(append([]byte(nil), src.head...), le32(len(section))...), section...)
	b = append(b, "vm state"...)
	st, linux, err := splitHAState(b)
	if err != nil || !linux || string(st.vm) != "vm state" || fmt.Sprint(st.virtio) != fmt.Sprint(devs) {
		t.Fatalf("split = %+v, %v, %v", st, linux, err)
	}
	writes, err := st.diskWrites([]int64{d.Size()})
	if err != nil {
		t.Fatal(err)
	}
	w := writes[0]
	if !w.Flushed || len(w.Blocks) != 1 || w.Blocks[0].Index != 1 || !bytes.Contains(w.Blocks[0].Data, []byte("written in the epoch")) {
		t.Fatalf("disk writes %+v", w)
	}
	if _, err := st.diskWrites(nil); err == nil {
		t.Error("writes of one disk accepted by a leader with none")
	}
	// The next epoch's section is empty: the record was harvested.
	if section, _ = src.diskSection(); len(section) != 4+5 {
		t.Errorf("second section of %d bytes, want an empty record", len(section))
	}
	// A flat guest's state passes through.
	if st, linux, err := splitHAState([]byte("flat")); err != nil || linux || string(st.vm) != "flat" {
		t.Errorf("flat state split = %+v, %v, %v", st, linux, err)
	}
	// Malformed heads are refused, never a panic.
	for _, bad := range [][]byte{
		[]byte(linuxStateMagic),
		append([]byte(linuxStateMagic), 0xff, 0xff, 0xff, 0x7f),
		append([]byte(linuxStateMagic), 3, 0, 0, 0, '{', '{', '{'),
		append([]byte(linuxStateMagic), 2, 0, 0, 0, '[', ']', 9, 0, 0, 0),
	} {
		if _, _, err := splitHAState(bad); !errors.Is(err, vmm.ErrSnapshot) {
			t.Errorf("split(%q) = %v, want ErrSnapshot", bad, err)
		}
	}
}

func le32(n int) []byte { return []byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)} }

// FuzzSplitHAState: whatever state a leader recovers or is fed, splitting
// it and parsing its disk writes never panics, and what is accepted lies on
// the disks.
func FuzzSplitHAState(f *testing.F) {
	src, _ := newLinuxSource(nil, []vmm.VirtioConfig{{Type: "net", TAP: "t0", MAC: "02:54:4e:44:4d:00"}, {Type: "rng"}}, nil)
	section, _ := src.diskSection()
	f.Add(append(append(append([]byte(nil), src.head...), le32(len(section))...), section...))
	f.Add([]byte(linuxStateMagic))
	f.Add([]byte("flat state"))
	const size = 8 * disk.BlockSize
	f.Fuzz(func(t *testing.T, b []byte) {
		st, linux, err := splitHAState(b)
		if err != nil || !linux {
			return
		}
		writes, err := st.diskWrites([]int64{size})
		if err != nil {
			return
		}
		for _, blk := range writes[0].Blocks {
			if int64(blk.Index)*disk.BlockSize+int64(len(blk.Data)) > size {
				t.Fatalf("block %d accepted past the disk", blk.Index)
			}
		}
	})
}
