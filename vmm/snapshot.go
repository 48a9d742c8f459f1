package vmm

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"time"
)

// Snapshot file format, version 2 (all integers little endian):
//
//	header   "TANDEMSN" | u32 format version | u32 flags (0)
//	section  u32 kind | u32 flags (0) | u64 payload length | payload | u32 CRC-32C
//	         (the CRC covers the section's 16 header bytes and its payload)
//
// Sections appear in this order: meta (JSON), state (State.MarshalBinary),
// memory, end (empty). The memory payload is a list of runs of non-zero
// pages, each "u64 first page | u64 page count | count*4096 bytes"; pages in
// no run are zero. A reader rejects unknown versions, sections out of order,
// checksum mismatches and files that stop before the end section.
//
// Version 2 adds meta's memory_file: when it is present the memory section
// is empty and guest memory is in a file of its own, byte for byte as the
// guest sees it (Firecracker's layout, pages never written are holes),
// whose CRC-32C the metadata holds. Version 1 files are read as before;
// a version 1 reader refuses version 2 instead of restoring zeros.
const (
	snapshotMagic   = "TANDEMSN"
	snapshotVersion = 2

	sectionMeta   = 1
	sectionState  = 2
	sectionMemory = 3
	sectionEnd    = 0xFFFF

	maxMetaBytes  = 1 << 20
	maxStateBytes = 64 << 20
)

// ErrSnapshot reports a snapshot file that cannot be restored.
var ErrSnapshot = errors.New("vmm: bad snapshot")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// SnapshotMeta describes a snapshot in words a person can read.
type SnapshotMeta struct {
	Tandem   string    `json:"tandem"`
	Created  time.Time `json:"created"`
	MemBytes uint64    `json:"mem_bytes"`
	VCPUs    int       `json:"vcpus"`
	Guest    string    `json:"guest,omitempty"`
	// Virtio lists the VM's virtio devices in the order they were added
	// (which fixes their addresses and IRQs), with the host resources they
	// were opened on, so that a restore can open them again.
	Virtio []VirtioConfig `json:"virtio,omitempty"`
	// MemoryFile, when set, says guest memory is in a file of its own
	// (WriteSnapshotSplit) rather than in the snapshot.
	MemoryFile *MemoryFile `json:"memory_file,omitempty"`
	// Config is the configuration of the front end that made the VM (the
	// Firecracker API's), kept for it as is: package vmm does not read it.
	Config json.RawMessage `json:"config,omitempty"`
}

// MemoryFile describes a snapshot's separate memory file.
type MemoryFile struct {
	// Diff says the file holds only the pages written since the previous
	// snapshot (the rest are holes): it restores only once rebased onto
	// the previous snapshot's memory file (tandem rebase-snap).
	Diff bool `json:"diff,omitempty"`
	// CRC32C is the Castagnoli CRC of all guest memory at the snapshot:
	// a restore refuses a memory file that does not match it (another
	// snapshot's, a Diff not rebased, a damaged copy).
	CRC32C uint32 `json:"crc32c"`
}

// VirtioConfig says which virtio device a VM had and what it was opened
// on: the device's state is in the snapshot's state section, its host
// side is named here.
type VirtioConfig struct {
	Type     string `json:"type"`                // "blk", "net", "console" or "rng"
	Path     string `json:"path,omitempty"`      // blk: the disk image
	ReadOnly bool   `json:"read_only,omitempty"` // blk
	TAP      string `json:"tap,omitempty"`       // net: the TAP device's name
	MAC      string `json:"mac,omitempty"`       // net
	Console  string `json:"console,omitempty"`   // console: unix:PATH, tcp:ADDR or file:PATH
}

// WriteSnapshot captures the paused VM and writes it to path, atomically: the
// file appears complete or not at all.
func (v *VM) WriteSnapshot(path string, meta SnapshotMeta) error {
	st, err := v.CaptureState()
	if err != nil {
		return err
	}
	meta.MemoryFile = nil
	return v.writeSnapshotFile(path, meta, st, v.mem.Bytes())
}

// WriteSnapshotSplit captures the paused VM as Firecracker lays a snapshot
// out: its state to path and its memory, byte for byte, to memPath. With
// dirty nil the memory file is full; otherwise it holds only the pages in
// dirty (a Diff snapshot, whose other pages are holes). Each file is
// written atomically, the memory file first, so a snapshot file exists
// only with its memory file complete.
func (v *VM) WriteSnapshotSplit(path, memPath string, dirty *DirtySet, meta SnapshotMeta) error {
	st, err := v.CaptureState()
	if err != nil {
		return err
	}
	mem := v.mem.Bytes()
	var runs []pageRun
	if dirty == nil {
		runs = nonZeroRuns(mem)
	} else {
		runs = dirtyRuns(dirty, uint64(len(mem))/PageSize)
	}
	if err := writeFileAtomic(memPath, func(f *os.File) error {
		if err := f.Truncate(int64(len(mem))); err != nil {
			return err
		}
		for _, r := range runs {
			if _, err := f.WriteAt(mem[r.first*PageSize:(r.first+r.count)*PageSize], int64(r.first*PageSize)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("vmm: snapshot memory %s: %w", memPath, err)
	}
	meta.MemoryFile = &MemoryFile{Diff: dirty != nil, CRC32C: crc32.Checksum(mem, castagnoli)}
	return v.writeSnapshotFile(path, meta, st, nil)
}

// dirtyRuns lists the maximal runs of pages in d, below pages.
func dirtyRuns(d *DirtySet, pages uint64) []pageRun {
	var runs []pageRun
	for _, pg := range d.AppendPages(nil) {
		if pg >= pages {
			break
		}
		if n := len(runs); n > 0 && runs[n-1].first+runs[n-1].count == pg {
			runs[n-1].count++
		} else {
			runs = append(runs, pageRun{pg, 1})
		}
	}
	return runs
}

// writeSnapshotFile writes a snapshot of state st and memory mem (nil: the
// memory is in meta.MemoryFile's file) to path.
func (v *VM) writeSnapshotFile(path string, meta SnapshotMeta, st *State, mem []byte) error {
	meta.MemBytes, meta.VCPUs = v.mem.Size(), len(v.vcpus)
	if meta.Created.IsZero() {
		meta.Created = time.Now().UTC()
	}
	err := writeFileAtomic(path, func(f *os.File) error {
		bw := bufio.NewWriterSize(f, 1<<20)
		if err := writeSnapshot(bw, meta, st, mem); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("vmm: snapshot %s: %w", path, err)
	}
	return nil
}

// writeFileAtomic writes path through fill: into a temporary file beside
// it, synced and renamed over path, so path is complete or unchanged.
func writeFileAtomic(path string, fill func(*os.File) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func writeSnapshot(w io.Writer, meta SnapshotMeta, st *State, mem []byte) error {
	var hdr [16]byte
	copy(hdr[:], snapshotMagic)
	binary.LittleEndian.PutUint32(hdr[8:], snapshotVersion)
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return err
	}
	stateBin, err := st.MarshalBinary()
	if err != nil {
		return err
	}
	if err := writeSection(w, sectionMeta, uint64(len(metaJSON)), func(w io.Writer) error {
		_, err := w.Write(metaJSON)
		return err
	}); err != nil {
		return err
	}
	if err := writeSection(w, sectionState, uint64(len(stateBin)), func(w io.Writer) error {
		_, err := w.Write(stateBin)
		return err
	}); err != nil {
		return err
	}
	runs := nonZeroRuns(mem)
	var memLen uint64
	for _, r := range runs {
		memLen += 16 + r.count*PageSize
	}
	if err := writeSection(w, sectionMemory, memLen, func(w io.Writer) error {
		var rh [16]byte
		for _, r := range runs {
			binary.LittleEndian.PutUint64(rh[0:], r.first)
			binary.LittleEndian.PutUint64(rh[8:], r.count)
			if _, err := w.Write(rh[:]); err != nil {
				return err
			}
			if _, err := w.Write(mem[r.first*PageSize : (r.first+r.count)*PageSize]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return writeSection(w, sectionEnd, 0, func(io.Writer) error { return nil })
}

// writeSection frames a payload of exactly n bytes produced by body.
func writeSection(w io.Writer, kind uint32, n uint64, body func(io.Writer) error) error {
	var hdr [16]byte
	binary.LittleEndian.PutUint32(hdr[0:], kind)
	binary.LittleEndian.PutUint64(hdr[8:], n)
	crc := crc32.New(castagnoli)
	crc.Write(hdr[:])
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	cw := &countingWriter{w: io.MultiWriter(w, crc)}
	if err := body(cw); err != nil {
		return err
	}
	if cw.n != n {
		return fmt.Errorf("section %d: wrote %d bytes, framed %d", kind, cw.n, n)
	}
	var sum [4]byte
	binary.LittleEndian.PutUint32(sum[:], crc.Sum32())
	_, err := w.Write(sum[:])
	return err
}

type countingWriter struct {
	w io.Writer
	n uint64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += uint64(n)
	return n, err
}

type pageRun struct{ first, count uint64 }

// nonZeroRuns lists the maximal runs of pages that hold a non-zero byte.
func nonZeroRuns(mem []byte) []pageRun {
	var runs []pageRun
	pages := uint64(len(mem)) / PageSize
	for pg := uint64(0); pg < pages; pg++ {
		if isZeroPage(mem[pg*PageSize : (pg+1)*PageSize]) {
			continue
		}
		if n := len(runs); n > 0 && runs[n-1].first+runs[n-1].count == pg {
			runs[n-1].count++
		} else {
			runs = append(runs, pageRun{pg, 1})
		}
	}
	return runs
}

func isZeroPage(p []byte) bool {
	for i := 0; i < len(p); i += 8 {
		if binary.NativeEndian.Uint64(p[i:]) != 0 {
			return false
		}
	}
	return true
}

// Snapshot is an open snapshot file whose metadata and state have been read
// and checked; its memory is read by Restore.
type Snapshot struct {
	Meta  SnapshotMeta
	State *State
	// MemFile is the memory file of a snapshot whose Meta.MemoryFile is
	// set, for Restore and ReadMemory to read guest memory from.
	MemFile string
	path    string
	f       *os.File
	r       *bufio.Reader
	off     int64 // file offset of r's next byte, for error messages
}

// OpenSnapshot reads and verifies a snapshot's header, metadata and state.
func OpenSnapshot(path string) (*Snapshot, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("vmm: snapshot: %w", err)
	}
	s := &Snapshot{path: path, f: f, r: bufio.NewReaderSize(f, 1<<20)}
	if err := s.readHead(); err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// Close releases the file.
func (s *Snapshot) Close() error { return s.f.Close() }

func (s *Snapshot) errorf(format string, args ...any) error {
	return fmt.Errorf("%w %s: %s", ErrSnapshot, s.path, fmt.Sprintf(format, args...))
}

func (s *Snapshot) readFull(b []byte, what string) error {
	n, err := io.ReadFull(s.r, b)
	s.off += int64(n)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return s.errorf("truncated at byte %d while reading %s", s.off, what)
		}
		return s.errorf("%v", err)
	}
	return nil
}

func (s *Snapshot) readHead() error {
	var hdr [16]byte
	if err := s.readFull(hdr[:], "the header"); err != nil {
		return err
	}
	if string(hdr[:8]) != snapshotMagic {
		return s.errorf("not a Tandem snapshot (bad magic)")
	}
	if v := binary.LittleEndian.Uint32(hdr[8:]); v != snapshotVersion && v != 1 {
		return s.errorf("format version %d, this build reads versions 1 and %d", v, snapshotVersion)
	}
	meta, err := s.readSmallSection(sectionMeta, "metadata", maxMetaBytes)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(meta, &s.Meta); err != nil {
		return s.errorf("metadata: %v", err)
	}
	stateBin, err := s.readSmallSection(sectionState, "state", maxStateBytes)
	if err != nil {
		return err
	}
	s.State = new(State)
	if err := s.State.UnmarshalBinary(stateBin); err != nil {
		return s.errorf("state: %v", err)
	}
	if s.State.MemBytes != s.Meta.MemBytes || len(s.State.VCPUs) != s.Meta.VCPUs {
		return s.errorf("metadata (%d bytes, %d vCPUs) disagrees with state (%d bytes, %d vCPUs)",
			s.Meta.MemBytes, s.Meta.VCPUs, s.State.MemBytes, len(s.State.VCPUs))
	}
	return nil
}

// sectionHeader reads a section header, checks its kind, and returns its
// length with a CRC already fed the header.
func (s *Snapshot) sectionHeader(kind uint32, what string) (uint64, hash.Hash32, error) {
	var hdr [16]byte
	if err := s.readFull(hdr[:], what+" section header"); err != nil {
		return 0, nil, err
	}
	if k := binary.LittleEndian.Uint32(hdr[0:]); k != kind {
		return 0, nil, s.errorf("expected the %s section (kind %d) at byte %d, found kind %d", what, kind, s.off-16, k)
	}
	crc := crc32.New(castagnoli)
	crc.Write(hdr[:])
	return binary.LittleEndian.Uint64(hdr[8:]), crc, nil
}

func (s *Snapshot) checkCRC(crc hash.Hash32, what string) error {
	var sum [4]byte
	if err := s.readFull(sum[:], what+" checksum"); err != nil {
		return err
	}
	if binary.LittleEndian.Uint32(sum[:]) != crc.Sum32() {
		return s.errorf("%s section checksum mismatch: the file is corrupted", what)
	}
	return nil
}

func (s *Snapshot) readSmallSection(kind uint32, what string, limit uint64) ([]byte, error) {
	n, crc, err := s.sectionHeader(kind, what)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, s.errorf("%s section of %d bytes exceeds the %d-byte limit", what, n, limit)
	}
	b := make([]byte, n)
	if err := s.readFull(b, what); err != nil {
		return nil, err
	}
	crc.Write(b)
	return b, s.checkCRC(crc, what)
}

// Restore loads the snapshot's memory and state into vm, which must have
// been created with the snapshot's memory size and vCPU count and not run.
func (s *Snapshot) Restore(vm *VM) error {
	if err := s.ReadMemory(vm.Memory().Bytes()); err != nil {
		return err
	}
	return vm.RestoreState(s.State)
}

// ReadMemory reads the snapshot's guest memory into mem, which must be the
// snapshot's memory size, and checks the rest of the file. It can be called
// once, after OpenSnapshot.
func (s *Snapshot) ReadMemory(mem []byte) error {
	if uint64(len(mem)) != s.Meta.MemBytes {
		return fmt.Errorf("vmm: restore %s: VM has %d bytes of RAM, snapshot %d", s.path, len(mem), s.Meta.MemBytes)
	}
	switch {
	case s.Meta.MemoryFile != nil && s.MemFile == "":
		return s.errorf("guest memory is in a separate memory file: give it")
	case s.Meta.MemoryFile == nil && s.MemFile != "":
		return s.errorf("guest memory is in the snapshot itself: a memory file (%s) does not apply", s.MemFile)
	case s.MemFile != "":
		if err := s.readMemoryFile(mem); err != nil {
			return err
		}
	default:
		clear(mem)
	}
	n, crc, err := s.sectionHeader(sectionMemory, "memory")
	if err != nil {
		return err
	}
	if s.Meta.MemoryFile != nil && n != 0 {
		return s.errorf("memory section of %d bytes beside a memory file", n)
	}
	pages := uint64(len(mem)) / PageSize
	var rh [16]byte
	for n > 0 {
		if n < 16 {
			return s.errorf("memory section: %d stray bytes", n)
		}
		if err := s.readFull(rh[:], "memory run header"); err != nil {
			return err
		}
		crc.Write(rh[:])
		first := binary.LittleEndian.Uint64(rh[0:])
		count := binary.LittleEndian.Uint64(rh[8:])
		if count == 0 || first >= pages || count > pages-first || count*PageSize > n-16 {
			return s.errorf("memory run of %d pages at page %d does not fit the guest or the section", count, first)
		}
		dst := mem[first*PageSize : (first+count)*PageSize]
		if err := s.readFull(dst, "memory pages"); err != nil {
			return err
		}
		crc.Write(dst)
		n -= 16 + count*PageSize
	}
	if err := s.checkCRC(crc, "memory"); err != nil {
		return err
	}
	if end, crc, err := s.sectionHeader(sectionEnd, "end"); err != nil {
		return err
	} else if end != 0 {
		return s.errorf("end section has %d bytes, want 0", end)
	} else if err := s.checkCRC(crc, "end"); err != nil {
		return err
	}
	var extra [1]byte
	if k, _ := s.r.Read(extra[:]); k != 0 {
		return s.errorf("trailing bytes after the end section")
	}
	return nil
}

// readMemoryFile reads guest memory from s.MemFile into mem and checks it
// against the snapshot's CRC.
func (s *Snapshot) readMemoryFile(mem []byte) error {
	f, err := os.Open(s.MemFile)
	if err != nil {
		return fmt.Errorf("vmm: restore %s: %w", s.path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("vmm: restore %s: %w", s.path, err)
	}
	if !fi.Mode().IsRegular() || fi.Size() != int64(len(mem)) {
		return fmt.Errorf("%w %s: memory file %s is %d bytes (%v), want a regular file of %d", ErrSnapshot, s.path, s.MemFile, fi.Size(), fi.Mode().Type(), len(mem))
	}
	if _, err := io.ReadFull(f, mem); err != nil {
		return fmt.Errorf("vmm: restore %s: memory file %s: %w", s.path, s.MemFile, err)
	}
	if got := crc32.Checksum(mem, castagnoli); got != s.Meta.MemoryFile.CRC32C {
		hint := ""
		if s.Meta.MemoryFile.Diff {
			hint = " (a Diff snapshot's memory file restores only once rebased onto its base: tandem rebase-snap)"
		}
		return fmt.Errorf("%w %s: memory file %s does not match the snapshot: CRC-32C %08x, want %08x%s", ErrSnapshot, s.path, s.MemFile, got, s.Meta.MemoryFile.CRC32C, hint)
	}
	return nil
}

// RebaseMemoryFile writes the pages a Diff snapshot's memory file holds
// onto base, the memory file of the snapshot before it, which then
// restores with the Diff snapshot's state (Firecracker's rebase-snap).
// The pages are the diff file's data extents (SEEK_DATA and SEEK_HOLE), so
// the diff must be on a file system that keeps holes; a restore checks the
// result against the snapshot's CRC either way.
func RebaseMemoryFile(base, diff string) error {
	d, err := os.Open(diff)
	if err != nil {
		return fmt.Errorf("vmm: rebase: %w", err)
	}
	defer d.Close()
	b, err := os.OpenFile(base, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("vmm: rebase: %w", err)
	}
	defer b.Close()
	di, err := d.Stat()
	if err != nil {
		return fmt.Errorf("vmm: rebase: %w", err)
	}
	bi, err := b.Stat()
	if err != nil {
		return fmt.Errorf("vmm: rebase: %w", err)
	}
	if !di.Mode().IsRegular() || !bi.Mode().IsRegular() || di.Size() != bi.Size() {
		return fmt.Errorf("vmm: rebase: %s (%d bytes) and %s (%d bytes) are not memory files of one guest", base, bi.Size(), diff, di.Size())
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < di.Size(); {
		start, err := seekData(d, off)
		if err != nil {
			return fmt.Errorf("vmm: rebase %s: %w", diff, err)
		}
		if start < 0 {
			break // no data after off
		}
		end, err := seekHole(d, start)
		if err != nil {
			return fmt.Errorf("vmm: rebase %s: %w", diff, err)
		}
		for start < end {
			n := int(min(int64(len(buf)), end-start))
			if _, err := d.ReadAt(buf[:n], start); err != nil {
				return fmt.Errorf("vmm: rebase %s: %w", diff, err)
			}
			if _, err := b.WriteAt(buf[:n], start); err != nil {
				return fmt.Errorf("vmm: rebase %s: %w", base, err)
			}
			start += int64(n)
		}
		off = end
	}
	if err := b.Sync(); err != nil {
		return fmt.Errorf("vmm: rebase %s: %w", base, err)
	}
	return b.Close()
}
