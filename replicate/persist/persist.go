// Package persist owns the on-disk form of a persistent VM (seed 004): a
// directory from which a VM continues after its host lost power, with
// every epoch whose output was released. It knows nothing of KVM or of
// links; the replication engine hands it each epoch's dirty pages and
// state, and the VMM maps the memory file it leaves after a recovery.
//
// # Directory
//
// A persisted VM's directory holds three files:
//
//	vm      what the VM is: written once, atomically (a temporary file,
//	        fsync, rename, fsync of the directory)
//	memory  guest RAM, MemBytes long, page p at offset p*4096
//	log     the epochs since the last checkpoint
//
// # The commit rule
//
// Epoch e is durable once its record is in the log and the log is
// synchronised (fdatasync): Append returns only then, so the output of
// e may be released after it. e's pages are written into the memory
// file, in place and not synchronised (the log still has them), only once
// the next record is durable too, or at a checkpoint: so the memory file
// never holds a page of the log's last record, whatever becomes of it. A
// checkpoint synchronises the memory file, which then holds every epoch
// in the log, and replaces the log (temporary file, fsync, rename, fsync
// of the directory) by one whose first record is the newest epoch's
// state without pages.
//
// Recovery (Open) replays the log's records, in order, into the memory
// file, and the newest record's epoch and state are the VM's. Each record
// is whole or ignored: its header and its body carry CRC-32C checksums,
// so a power cut in the middle of an append, which can only tear the last
// record (the one before it was synchronised before it began), leaves
// epoch e−1, whose output was the last released, or e. A damaged record
// followed by a whole one is not a tear but damage, and Open refuses the
// directory (ErrCorrupt): acknowledged epochs would be lost. Pages never
// mix epochs: the memory file only ever receives pages of durable epochs,
// and replay writes every page of every record again.
//
// # Formats (little endian)
//
// vm:
//
//	0  [8]byte "TNDMVM01"
//	8  u64 VM id         16 u64 memory bytes     24 u32 vCPUs
//	28 u16 n             30 n bytes guest name   30+n u32 CRC-32C of all before
//
// log, a header and then records:
//
//	header: [8]byte "TNDMLOG1" | u64 VM id | u32 CRC-32C of the 16 bytes before
//	record: 0  u32 magic "EPCH"   4  u32 pages n   8  u64 epoch
//	        16 u32 state bytes s  20 u32 CRC-32C of the body
//	        24 u32 CRC-32C of bytes 0..23
//	        28 body: n u64 page indices, ascending | n pages | s bytes of state
package persist

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// PageSize is the size of a page.
const PageSize = 4096

// MaxState bounds the state of one record.
const MaxState = 64 << 20

// File names in a persisted VM's directory.
const (
	vmFile     = "vm"
	memoryFile = "memory"
	logFile    = "log"
	tmpSuffix  = ".tmp"
)

var (
	vmMagic  = [8]byte{'T', 'N', 'D', 'M', 'V', 'M', '0', '1'}
	logMagic = [8]byte{'T', 'N', 'D', 'M', 'L', 'O', 'G', '1'}
)

const (
	recordMagic  = 0x48435045 // "EPCH"
	recordHeader = 28
	logHeader    = 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Errors.
var (
	// ErrNotPersisted is a directory that holds no persisted VM (missing,
	// empty, or someone else's files).
	ErrNotPersisted = errors.New("persist: not a persisted Tandem VM")
	// ErrCorrupt is a persisted VM's directory that cannot be trusted: a
	// damaged description, or a damaged record that is not the log's last.
	ErrCorrupt = errors.New("persist: damaged")
	// ErrExists is Create on a directory that already holds files.
	ErrExists = errors.New("persist: the directory is not empty")
)

// VM describes the persisted VM.
type VM struct {
	ID       uint64
	MemBytes uint64
	VCPUs    int
	Guest    string
}

func (m VM) marshal() []byte {
	le := binary.LittleEndian
	b := append([]byte(nil), vmMagic[:]...)
	b = le.AppendUint64(b, m.ID)
	b = le.AppendUint64(b, m.MemBytes)
	b = le.AppendUint32(b, uint32(m.VCPUs))
	b = le.AppendUint16(b, uint16(len(m.Guest)))
	b = append(b, m.Guest...)
	return le.AppendUint32(b, checksum(b))
}

func parseVM(b []byte) (VM, error) {
	le := binary.LittleEndian
	if len(b) < 8 || !bytes.Equal(b[:8], vmMagic[:]) {
		return VM{}, fmt.Errorf("%w: %s does not start with Tandem's magic", ErrNotPersisted, vmFile)
	}
	if len(b) < 34 {
		return VM{}, fmt.Errorf("%w: %s is %d bytes", ErrCorrupt, vmFile, len(b))
	}
	n := int(le.Uint16(b[28:]))
	if len(b) != 34+n {
		return VM{}, fmt.Errorf("%w: %s is %d bytes for a name of %d", ErrCorrupt, vmFile, len(b), n)
	}
	if c := le.Uint32(b[30+n:]); c != checksum(b[:30+n]) {
		return VM{}, fmt.Errorf("%w: %s fails its checksum", ErrCorrupt, vmFile)
	}
	m := VM{ID: le.Uint64(b[8:]), MemBytes: le.Uint64(b[16:]), VCPUs: int(le.Uint32(b[24:])), Guest: string(b[30 : 30+n])}
	if m.ID == 0 || m.MemBytes == 0 || m.MemBytes%PageSize != 0 || m.VCPUs < 1 {
		return VM{}, fmt.Errorf("%w: %s describes VM %#x of %d bytes and %d vCPUs", ErrCorrupt, vmFile, m.ID, m.MemBytes, m.VCPUs)
	}
	return m, nil
}

func logHeaderBytes(id uint64) []byte {
	b := binary.LittleEndian.AppendUint64(append([]byte(nil), logMagic[:]...), id)
	return binary.LittleEndian.AppendUint32(b, checksum(b))
}

// Dir is a persisted VM's directory, open for appending epochs. It is not
// safe for concurrent use.
type Dir struct {
	path  string
	vm    VM
	log   *os.File
	mem   *os.File
	epoch uint64 // the newest durable epoch (0: none)
	state []byte // its state, for the next checkpoint
	size  int64  // the log's size
	// buf is where the next record is encoded; pending is the last
	// record appended, whose pages the memory file does not have yet,
	// pendingPages how many it holds.
	buf, pending []byte
	pendingPages int
	// staged is the epoch Stage encoded into buf and Sync has not written
	// (0: none), stagedPages its pages.
	staged      uint64
	stagedPages int
	// Tear injects a power cut for tests (see Tear).
	Tear *Tear
	// WriteDelay, when set, is called after every write of n bytes to the
	// log or the memory file: it emulates memory whose writes are slower
	// than DRAM's (seed 003's NVRAM technologies), with the directory on
	// a RAM file system.
	WriteDelay func(n int)
}

// Tear is fault injection: the record of the first epoch from Epoch on
// reaches the log only up to its first Bytes bytes (synchronised), and
// Then is called, which is meant to kill the process: a power cut in the
// middle of an append.
type Tear struct {
	Epoch uint64
	Bytes int
	Then  func()
}

// Create makes a new persisted VM in path, which must not exist or be
// empty, and returns it open for appending. Nothing is durable until the
// first Append.
func Create(path string, vm VM) (*Dir, error) {
	if vm.ID == 0 || vm.MemBytes == 0 || vm.MemBytes%PageSize != 0 || vm.VCPUs < 1 || len(vm.Guest) > 1<<16-1 {
		return nil, fmt.Errorf("persist: VM %#x of %d bytes and %d vCPUs cannot be persisted", vm.ID, vm.MemBytes, vm.VCPUs)
	}
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("persist: %w", err)
	}
	if ents, err := os.ReadDir(path); err != nil {
		return nil, fmt.Errorf("persist: %w", err)
	} else if len(ents) > 0 {
		return nil, fmt.Errorf("%w: %s holds %s", ErrExists, path, ents[0].Name())
	}
	mem, err := os.OpenFile(filepath.Join(path, memoryFile), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("persist: %w", err)
	}
	d := &Dir{path: path, vm: vm, mem: mem}
	if err := mem.Truncate(int64(vm.MemBytes)); err != nil {
		d.Close()
		return nil, fmt.Errorf("persist: %w", err)
	}
	if err := d.replaceLog(nil); err != nil {
		d.Close()
		return nil, err
	}
	if err := writeAtomic(path, vmFile, vm.marshal()); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// writeAtomic writes name in dir as data: a temporary file, synchronised,
// renamed over name, and the directory synchronised.
func writeAtomic(dir, name string, data []byte) error {
	tmp := filepath.Join(dir, name+tmpSuffix)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("persist: writing %s: %w", name, err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// replaceLog replaces the log, atomically, by one holding only first (a
// record, or nothing), and opens it for appending.
func (d *Dir) replaceLog(first []byte) error {
	if err := writeAtomic(d.path, logFile, append(logHeaderBytes(d.vm.ID), first...)); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(d.path, logFile), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	if d.log != nil {
		d.log.Close()
	}
	d.log, d.size = f, int64(logHeader+len(first))
	return nil
}

// VM describes the persisted VM.
func (d *Dir) VM() VM { return d.vm }

// Epoch is the newest durable epoch (0: none yet).
func (d *Dir) Epoch() uint64 { return d.epoch }

// LogBytes is the log's size: a caller checkpoints when it grows.
func (d *Dir) LogBytes() int64 { return d.size }

// appendRecord encodes epoch e's record into d.buf.
func (d *Dir) appendRecord(e uint64, pages []uint64, page func(p uint64) []byte, state []byte) []byte {
	le := binary.LittleEndian
	b := d.buf[:0]
	b = slices.Grow(b, recordHeader+len(pages)*(8+PageSize)+len(state))
	b = b[:recordHeader]
	for _, p := range pages {
		b = le.AppendUint64(b, p)
	}
	for _, p := range pages {
		b = append(b, page(p)...)
	}
	b = append(b, state...)
	le.PutUint32(b[0:], recordMagic)
	le.PutUint32(b[4:], uint32(len(pages)))
	le.PutUint64(b[8:], e)
	le.PutUint32(b[16:], uint32(len(state)))
	le.PutUint32(b[20:], checksum(b[recordHeader:]))
	le.PutUint32(b[24:], checksum(b[:24]))
	d.buf = b
	return b
}

// Append makes epoch e durable: its dirty pages (ascending, read from
// mem, guest RAM) and its state. It returns once the record is
// synchronised. e must be newer than the last epoch appended. It is Stage
// and then Sync.
func (d *Dir) Append(e uint64, pages []uint64, mem []byte, state []byte) error {
	if err := d.Stage(e, pages, mem, state); err != nil {
		return err
	}
	return d.Sync()
}

// Stage encodes epoch e's record, copying its pages out of mem: the VM
// may run on once it returns, and Sync makes the epoch durable. A staged
// record not synchronised is replaced by the next Stage.
func (d *Dir) Stage(e uint64, pages []uint64, mem []byte, state []byte) error {
	switch {
	case e <= d.epoch:
		return fmt.Errorf("persist: epoch %d after epoch %d", e, d.epoch)
	case len(state) > MaxState:
		return fmt.Errorf("persist: a state of %d bytes, at most %d", len(state), MaxState)
	case uint64(len(mem)) != d.vm.MemBytes:
		return fmt.Errorf("persist: %d bytes of memory for a VM of %d", len(mem), d.vm.MemBytes)
	case !slices.IsSorted(pages) || len(pages) > 0 && pages[len(pages)-1] >= d.vm.MemBytes/PageSize:
		return errors.New("persist: pages out of order or beyond memory")
	}
	page := func(p uint64) []byte { return mem[p*PageSize : (p+1)*PageSize] }
	d.appendRecord(e, pages, page, state)
	d.staged, d.stagedPages = e, len(pages)
	return nil
}

// Sync writes the staged record to the log and synchronises it: the
// epoch is durable when Sync returns nil. Nothing staged: nothing to do.
func (d *Dir) Sync() error {
	if d.staged == 0 {
		return nil
	}
	e, rec := d.staged, d.buf
	d.staged = 0
	if t := d.Tear; t != nil && e >= t.Epoch {
		d.log.Write(rec[:min(t.Bytes, len(rec))])
		unix.Fdatasync(int(d.log.Fd()))
		t.Then()
		return fmt.Errorf("persist: epoch %d torn by fault injection", e)
	}
	if _, err := d.log.Write(rec); err != nil {
		return fmt.Errorf("persist: epoch %d: %w", e, err)
	}
	if d.WriteDelay != nil {
		d.WriteDelay(len(rec))
	}
	if err := unix.Fdatasync(int(d.log.Fd())); err != nil {
		return fmt.Errorf("persist: epoch %d: fdatasync: %w", e, err)
	}
	d.size += int64(len(rec))
	d.epoch = e
	d.state = append(d.state[:0], rec[len(rec)-int(binary.LittleEndian.Uint32(rec[16:])):]...)
	// The record before is no longer the last: the memory file may take
	// its pages (the log has them until the next checkpoint).
	err := d.applyPending()
	d.buf, d.pending, d.pendingPages = d.pending, rec, d.stagedPages
	return err
}

// applyPending writes the pending record's pages into the memory file.
func (d *Dir) applyPending() error {
	if len(d.pending) == 0 {
		return nil
	}
	err := d.writePages(d.pending[recordHeader:], d.pendingPages)
	d.pending, d.pendingPages = d.pending[:0], 0
	return err
}

// writePages writes a record body's n pages into the memory file.
func (d *Dir) writePages(body []byte, n int) error {
	idx, data := body[:8*n], body[8*n:]
	for i := 0; i < n; {
		p := binary.LittleEndian.Uint64(idx[8*i:])
		j := i + 1 // a run of consecutive pages goes in one write
		for j < n && binary.LittleEndian.Uint64(idx[8*j:]) == p+uint64(j-i) {
			j++
		}
		if _, err := d.mem.WriteAt(data[i*PageSize:j*PageSize], int64(p*PageSize)); err != nil {
			return fmt.Errorf("persist: memory file: %w", err)
		}
		if d.WriteDelay != nil {
			d.WriteDelay((j - i) * PageSize)
		}
		i = j
	}
	return nil
}

// Checkpoint synchronises the memory file, which then holds every epoch
// appended, and starts a new log holding the newest epoch's state.
func (d *Dir) Checkpoint() error {
	if d.staged != 0 {
		return fmt.Errorf("persist: checkpoint with epoch %d staged and not synchronised", d.staged)
	}
	if d.epoch == 0 {
		return nil
	}
	if err := d.applyPending(); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(d.mem.Fd())); err != nil {
		return fmt.Errorf("persist: checkpoint: memory file: %w", err)
	}
	return d.replaceLog(slices.Clone(d.appendRecord(d.epoch, nil, nil, d.state)))
}

// Close closes the directory; what Append returned for is durable (the
// last record's pages reach the memory file at the next Open).
func (d *Dir) Close() error {
	var errs []error
	for _, f := range []*os.File{d.log, d.mem} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	d.log, d.mem = nil, nil
	return errors.Join(errs...)
}

// Recovered is what Open found: the newest durable epoch and its state;
// the memory file holds that epoch's memory.
type Recovered struct {
	VM     VM
	Epoch  uint64
	State  []byte
	Memory string // the memory file's path, for the VM to map
	// Records counts the log's records replayed; TornBytes the bytes of
	// a torn last record left out (a power cut during its append).
	Records   int
	TornBytes int64
}

// Open recovers the persisted VM in path: it replays the log into the
// memory file, synchronises it, and returns the newest durable epoch, and
// the directory open for appending the next ones (the torn tail, if any,
// cut off). A missing directory, or one that holds no persisted VM, is
// ErrNotPersisted; a damaged one ErrCorrupt.
func Open(path string) (*Dir, *Recovered, error) {
	b, err := os.ReadFile(filepath.Join(path, vmFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w: %s has no %s file", ErrNotPersisted, path, vmFile)
	} else if err != nil {
		return nil, nil, fmt.Errorf("persist: %w", err)
	}
	vm, err := parseVM(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	mem, err := os.OpenFile(filepath.Join(path, memoryFile), os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	d := &Dir{path: path, vm: vm, mem: mem}
	fail := func(err error) (*Dir, *Recovered, error) {
		d.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if fi, err := mem.Stat(); err != nil || fi.Size() != int64(vm.MemBytes) {
		return fail(fmt.Errorf("%w: the memory file is not %d bytes", ErrCorrupt, vm.MemBytes))
	}
	os.Remove(filepath.Join(path, logFile+tmpSuffix)) // a checkpoint cut short
	lf, err := os.Open(filepath.Join(path, logFile))
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrCorrupt, err))
	}
	rec, end, err := d.replay(lf)
	lf.Close()
	if err != nil {
		return fail(err)
	}
	if err := unix.Fdatasync(int(mem.Fd())); err != nil {
		return fail(fmt.Errorf("persist: memory file: %w", err))
	}
	if rec.TornBytes > 0 {
		if err := os.Truncate(filepath.Join(path, logFile), end); err != nil {
			return fail(fmt.Errorf("persist: cutting the torn record: %w", err))
		}
	}
	if d.log, err = os.OpenFile(filepath.Join(path, logFile), os.O_WRONLY|os.O_APPEND, 0); err != nil {
		return fail(fmt.Errorf("persist: %w", err))
	}
	d.size, d.epoch, d.state = end, rec.Epoch, slices.Clone(rec.State)
	rec.VM, rec.Memory = vm, filepath.Join(path, memoryFile)
	return d, rec, nil
}

// replay reads the log and writes its records' pages into the memory
// file, and returns what it recovered and where the whole records end.
func (d *Dir) replay(lf *os.File) (*Recovered, int64, error) {
	fi, err := lf.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("persist: %w", err)
	}
	size := fi.Size()
	hdr := make([]byte, logHeader)
	if _, err := io.ReadFull(lf, hdr); err != nil || !bytes.Equal(hdr, logHeaderBytes(d.vm.ID)) {
		return nil, 0, fmt.Errorf("%w: the log's header is not this VM's", ErrCorrupt)
	}
	rec := &Recovered{}
	off := int64(logHeader)
	for off < size {
		body, n, e, state, bad := readRecord(lf, off, size, d.vm.MemBytes/PageSize)
		if bad != "" {
			// A torn last record, or damage: damage if a whole record
			// follows anywhere after it.
			if wholeAfter(lf, off+1, size, d.vm.MemBytes/PageSize) {
				return nil, 0, fmt.Errorf("%w: the record at byte %d of the log (%s) is followed by more: acknowledged epochs would be lost", ErrCorrupt, off, bad)
			}
			rec.TornBytes = size - off
			break
		}
		if e <= rec.Epoch {
			return nil, 0, fmt.Errorf("%w: the log's epoch %d follows epoch %d", ErrCorrupt, e, rec.Epoch)
		}
		np := (len(body) - len(state)) / (8 + PageSize)
		if err := d.writePages(body, np); err != nil {
			return nil, 0, err
		}
		rec.Epoch, rec.State = e, state
		rec.Records++
		off += recordHeader + n
	}
	if rec.Epoch == 0 {
		return nil, 0, fmt.Errorf("%w: the log holds no whole epoch", ErrNotPersisted)
	}
	return rec, off, nil
}

// readRecord reads the record at off: its body, the body's length n (-1
// if the header itself is unusable), its epoch and state, or why it is
// not whole.
func readRecord(lf *os.File, off, size int64, memPages uint64) (body []byte, n int64, e uint64, state []byte, bad string) {
	le := binary.LittleEndian
	h := make([]byte, recordHeader)
	if size-off < recordHeader {
		return nil, -1, 0, nil, "short header"
	}
	if _, err := lf.ReadAt(h, off); err != nil {
		return nil, -1, 0, nil, err.Error()
	}
	if le.Uint32(h) != recordMagic || le.Uint32(h[24:]) != checksum(h[:24]) {
		return nil, -1, 0, nil, "header checksum"
	}
	pages, s := uint64(le.Uint32(h[4:])), uint64(le.Uint32(h[16:]))
	if pages > memPages || s > MaxState {
		return nil, -1, 0, nil, fmt.Sprintf("%d pages and %d bytes of state", pages, s)
	}
	n = int64(pages*(8+PageSize) + s)
	if size-off-recordHeader < n {
		return nil, n, 0, nil, "short body"
	}
	body = make([]byte, n)
	if _, err := lf.ReadAt(body, off+recordHeader); err != nil {
		return nil, n, 0, nil, err.Error()
	}
	if le.Uint32(h[20:]) != checksum(body) {
		return nil, n, 0, nil, "body checksum"
	}
	idx := body[:8*pages]
	for i := range pages {
		p := le.Uint64(idx[8*i:])
		if p >= memPages || i > 0 && p <= le.Uint64(idx[8*(i-1):]) {
			return nil, n, 0, nil, fmt.Sprintf("page %d out of order or beyond memory", p)
		}
	}
	return body, n, le.Uint64(h[8:]), body[n-int64(s):], ""
}

// wholeAfter reports whether a whole record starts anywhere from off on:
// it looks for the records' magic and reads a record at each (only after
// a record that is not whole, to tell a tear from damage).
func wholeAfter(lf *os.File, off, size int64, memPages uint64) bool {
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], recordMagic)
	chunk := make([]byte, 1<<20)
	for off < size {
		n, err := lf.ReadAt(chunk, off)
		if n == 0 && err != nil {
			return false
		}
		for i := 0; ; {
			j := bytes.Index(chunk[i:n], magic[:])
			if j < 0 {
				break
			}
			if _, _, _, _, bad := readRecord(lf, off+int64(i+j), size, memPages); bad == "" {
				return true
			}
			i += j + 1
		}
		if int64(n) < int64(len(chunk)) {
			return false
		}
		off += int64(n) - int64(len(magic)-1) // a magic across two chunks
	}
	return false
}
