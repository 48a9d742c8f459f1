package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/disk"
	"github.com/tandemvm/tandem/vmm"
)

// A replicated Linux guest's state, as the primary sends it every epoch,
// carries the guest's virtio devices and the epoch's disk writes ahead of
// the VM state, so that the leader can rebuild the devices before it
// restores the state that includes theirs, and apply the writes to its
// disk copies once the epoch commits:
//
//	"TNDMLNX2" | u32 length of the JSON | JSON []vmm.VirtioConfig
//	           | u32 length of the disk section | u32 disks | disk.Writes per disk
//	           | vmm state
//
// A flat guest's state is the VM state alone.
const linuxStateMagic = "TNDMLNX2"

// maxLinuxStateDevices bounds the JSON a leader accepts, far above what
// any guest has.
const maxLinuxStateDevices = 64 << 10

// maxDiskSection bounds the disk section a leader accepts: what a state
// message may hold.
const maxDiskSection = 64 << 20

// maxEpochDiskBytes bounds the disk writes one epoch's state carries, well
// inside what a state message may hold (64 MiB): an epoch that wrote more
// stops replication with the VM paused, its output held.
const maxEpochDiskBytes = 48 << 20

// linuxSource is a replication source for a Linux guest: the VM's, with
// the devices and the epoch's disk writes in front of every state.
type linuxSource struct {
	*vmm.ReplicationSource
	head  []byte // magic, length and JSON, encoded once
	disks []*virtio.TrackedBackend
	block []byte
	// diskBytes is the disk data the last state carried.
	diskBytes int
}

// DiskWriteBytes implements replicate.DiskWriteSizer.
func (s *linuxSource) DiskWriteBytes() int { return s.diskBytes }

func newLinuxSource(src *vmm.ReplicationSource, devs []vmm.VirtioConfig, disks []*virtio.TrackedBackend) (*linuxSource, error) {
	js, err := json.Marshal(devs)
	if err != nil {
		return nil, fmt.Errorf("encode the virtio devices: %w", err)
	}
	head := append([]byte(linuxStateMagic), binary.LittleEndian.AppendUint32(nil, uint32(len(js)))...)
	return &linuxSource{ReplicationSource: src, head: append(head, js...), disks: disks, block: make([]byte, virtio.DiskBlockSize)}, nil
}

// CaptureState harvests each disk's written blocks (the devices are
// paused with the VM) and reads their content now.
func (s *linuxSource) CaptureState() ([]byte, error) {
	section, err := s.diskSection()
	if err != nil {
		return nil, err
	}
	st, err := s.ReplicationSource.CaptureState()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(s.head)+4+len(section)+len(st))
	out = append(out, s.head...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(section)))
	out = append(out, section...)
	return append(out, st...), nil
}

func (s *linuxSource) diskSection() ([]byte, error) {
	writes, err := s.harvestWrites()
	if err != nil {
		return nil, err
	}
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(writes)))
	for _, w := range writes {
		b = disk.AppendWrites(b, w)
	}
	return b, nil
}

// harvestWrites takes each disk's blocks written since the last harvest,
// with their content now.
func (s *linuxSource) harvestWrites() ([]*disk.Writes, error) {
	out := make([]*disk.Writes, len(s.disks))
	total := 0
	for i, d := range s.disks {
		var w virtio.DiskWrites
		d.Harvest(&w)
		rec := &disk.Writes{Flushed: w.Flushed}
		for _, blk := range w.Blocks {
			n, err := d.ReadBlock(blk, s.block)
			if err != nil {
				return nil, fmt.Errorf("disk %d: %w", i, err)
			}
			// The record keeps the bytes until it is encoded.
			rec.Blocks = append(rec.Blocks, disk.Block{Index: blk, Data: bytes.Clone(s.block[:n])})
			if total += n; total > maxEpochDiskBytes {
				return nil, fmt.Errorf("an epoch wrote more than %d MiB to its disks, more than one epoch's state carries: use a shorter --epoch", maxEpochDiskBytes>>20)
			}
		}
		out[i] = rec
	}
	s.diskBytes = total
	return out, nil
}

var _ replicate.Source = (*linuxSource)(nil)

// haState is a replicated Linux guest's state, split.
type haState struct {
	virtio []vmm.VirtioConfig
	disks  []byte // the disk section: diskWrites parses it
	vm     []byte
}

// splitHAState separates a replicated state; a flat guest's comes back
// whole as vm, with linux false.
func splitHAState(b []byte) (st haState, linux bool, err error) {
	if !bytes.HasPrefix(b, []byte(linuxStateMagic)) {
		return haState{vm: b}, false, nil
	}
	rest := b[len(linuxStateMagic):]
	field := func(what string, limit uint32) ([]byte, error) {
		if len(rest) < 4 {
			return nil, fmt.Errorf("%w: Linux guest state of %d bytes lacks its %s", vmm.ErrSnapshot, len(b), what)
		}
		n := binary.LittleEndian.Uint32(rest)
		if n > limit || uint64(n) > uint64(len(rest)-4) {
			return nil, fmt.Errorf("%w: Linux guest state names %d bytes of %s in %d", vmm.ErrSnapshot, n, what, len(rest)-4)
		}
		f := rest[4 : 4+n]
		rest = rest[4+n:]
		return f, nil
	}
	js, err := field("devices", maxLinuxStateDevices)
	if err != nil {
		return haState{}, true, err
	}
	if err := json.Unmarshal(js, &st.virtio); err != nil {
		return haState{}, true, fmt.Errorf("%w: the Linux guest's devices: %v", vmm.ErrSnapshot, err)
	}
	if st.disks, err = field("disk writes", maxDiskSection); err != nil {
		return haState{}, true, err
	}
	st.vm = rest
	return st, true, nil
}

// diskWrites parses the disk section for disks of the given sizes.
func (s haState) diskWrites(sizes []int64) ([]*disk.Writes, error) {
	b := s.disks
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: disk section of %d bytes", disk.ErrMalformed, len(b))
	}
	if n := binary.LittleEndian.Uint32(b); int64(n) != int64(len(sizes)) {
		return nil, fmt.Errorf("the primary's state carries writes of %d disks, this leader holds %d copies", n, len(sizes))
	}
	b = b[4:]
	out := make([]*disk.Writes, len(sizes))
	for i, size := range sizes {
		var err error
		if out[i], b, err = disk.ParseWrites(b, size); err != nil {
			return nil, fmt.Errorf("disk %d: %w", i, err)
		}
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("%w: %d bytes after the disk writes", disk.ErrMalformed, len(b))
	}
	return out, nil
}
