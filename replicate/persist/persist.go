// Package persist owns the on-disk form of a persistent VM (seed 004): a
// directory from which a VM continues after its host lost power, with
// every epoch whose output was released. It knows nothing of KVM or of
// links; the replication engine hands it each epoch's dirty pages and
// state, and the VMM maps the memory file it leaves after a recovery.
//
// # Directory
//
// A persisted VM's directory holds these files:
//
//	vm      what the VM is: written once, atomically (a temporary file,
//	        fsync, rename, fsync of the directory)
//	memory  guest RAM, MemBytes long, page p at offset p*4096
//	disk-N  the guest's disk N as of the same epochs as memory (one per
//	        disk, copied from the VM's disk when the directory is made)
//	log     the epochs since the last checkpoint
//
// The VM runs on disks of its own (a disk's blocks change as the guest
// writes them, durable or not); each epoch's record carries the blocks
// the epoch wrote, as they were when it ended, and disk-N receives them
// as the memory file receives pages. A guest's flush needs nothing more:
// whatever it wrote is durable with its epoch, before any output that
// could acknowledge it.
//
// # The commit rule
//
// Epoch e is durable once its record is in the log and the log is
// synchronised (fdatasync): Append returns only then, so the output of
// e may be released after it. e's pages are written into the memory
// file, and its disk blocks into the disk files, in place and not
// synchronised (the log still has them), only once the next record is
// durable too, or at a checkpoint: so those files never hold a page or a
// block of the log's last record, whatever becomes of it. A checkpoint
// synchronises them, and the memory file then holds every epoch
// in the log, and replaces the log (temporary file, fsync, rename, fsync
// of the directory) by one whose first record is the newest epoch's
// state without pages.
//
// Recovery (Open) replays the log's records, in order, into the memory
// and disk files, and the newest record's epoch and state are the VM's. Each record
// is whole or ignored: its header and its body carry CRC-32C checksums,
// so a power cut in the middle of an append, which can only tear the last
// record (the one before it was synchronised before it began), leaves
// epoch e−1, whose output was the last released, or e. A damaged record
// followed by a whole one is not a tear but damage, and Open refuses the
// directory (ErrCorrupt): acknowledged epochs would be lost. Pages never
// mix epochs: the memory file only ever receives pages of durable epochs,
// and replay writes every page of every record again.
//
// # Persistent memory
//
// On a DAX file system the log is mapped with MAP_SYNC and a record is
// durable once copied into the mapping and its cache lines written back
// and fenced (dax.go): the same commit rule, without a system call per
// epoch. Such a log is allocated ahead, 64 MiB at a time, and its tail
// past the last record is zero, which Open neither replays nor counts as
// torn, and cuts off, so that the directory continues on any file system.
//
// # Formats (little endian)
//
// vm:
//
//	0  [8]byte "TNDMVM02"
//	8  u64 VM id         16 u64 memory bytes     24 u32 vCPUs
//	28 u16 n             30 n bytes guest name
//	30+n u16 disks k     32+n k u64 disk sizes   32+n+8k u32 CRC-32C of all before
//
// log, a header and then records:
//
//	header: [8]byte "TNDMLOG2" | u64 VM id | u32 CRC-32C of the 16 bytes before
//	record: 0  u32 magic "EPCH"   4  u32 pages n   8  u64 epoch
//	        16 u32 state bytes s  20 u32 disk bytes w
//	        24 u32 CRC-32C of the body
//	        28 u32 CRC-32C of bytes 0..27
//	        32 body: n u64 page indices, ascending | n pages
//	                 | w bytes: per disk (none for a VM without disks), the
//	                   blocks written, as replicate/disk.AppendWrites has them
//	                 | s bytes of state
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

	"github.com/tandemvm/tandem/replicate/disk"
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
	vmMagic  = [8]byte{'T', 'N', 'D', 'M', 'V', 'M', '0', '2'}
	logMagic = [8]byte{'T', 'N', 'D', 'M', 'L', 'O', 'G', '2'}
	// vmMagic1 is the first format's, which had no disks.
	vmMagic1 = [8]byte{'T', 'N', 'D', 'M', 'V', 'M', '0', '1'}
)

const (
	recordMagic  = 0x48435045 // "EPCH"
	recordHeader = 32
	// MaxDisks bounds a VM's disks.
	MaxDisks  = 64
	logHeader = 20
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
	// Disks are the sizes of the guest's disks, in bytes, in its order.
	Disks []int64
}

// Equal reports whether m and o describe the same VM.
func (m VM) Equal(o VM) bool {
	return m.ID == o.ID && m.MemBytes == o.MemBytes && m.VCPUs == o.VCPUs && m.Guest == o.Guest && slices.Equal(m.Disks, o.Disks)
}

func (m VM) check() error {
	if m.ID == 0 || m.MemBytes == 0 || m.MemBytes%PageSize != 0 || m.VCPUs < 1 || len(m.Guest) > 1<<16-1 || len(m.Disks) > MaxDisks ||
		slices.ContainsFunc(m.Disks, func(n int64) bool { return n <= 0 }) {
		return fmt.Errorf("VM %#x of %d bytes, %d vCPUs and disks %v", m.ID, m.MemBytes, m.VCPUs, m.Disks)
	}
	return nil
}

func (m VM) marshal() []byte {
	le := binary.LittleEndian
	b := append([]byte(nil), vmMagic[:]...)
	b = le.AppendUint64(b, m.ID)
	b = le.AppendUint64(b, m.MemBytes)
	b = le.AppendUint32(b, uint32(m.VCPUs))
	b = le.AppendUint16(b, uint16(len(m.Guest)))
	b = append(b, m.Guest...)
	b = le.AppendUint16(b, uint16(len(m.Disks)))
	for _, n := range m.Disks {
		b = le.AppendUint64(b, uint64(n))
	}
	return le.AppendUint32(b, checksum(b))
}

func parseVM(b []byte) (VM, error) {
	le := binary.LittleEndian
	if len(b) >= 8 && bytes.Equal(b[:8], vmMagic1[:]) {
		return VM{}, fmt.Errorf("%w: %s is in the format of an older Tandem (1), this build reads 2", ErrNotPersisted, vmFile)
	}
	if len(b) < 8 || !bytes.Equal(b[:8], vmMagic[:]) {
		return VM{}, fmt.Errorf("%w: %s does not start with Tandem's magic", ErrNotPersisted, vmFile)
	}
	if len(b) < 36 {
		return VM{}, fmt.Errorf("%w: %s is %d bytes", ErrCorrupt, vmFile, len(b))
	}
	n := int(le.Uint16(b[28:]))
	if len(b) < 36+n {
		return VM{}, fmt.Errorf("%w: %s is %d bytes for a name of %d", ErrCorrupt, vmFile, len(b), n)
	}
	k := int(le.Uint16(b[30+n:]))
	end := 32 + n + 8*k
	if len(b) != end+4 {
		return VM{}, fmt.Errorf("%w: %s is %d bytes for a name of %d and %d disks", ErrCorrupt, vmFile, len(b), n, k)
	}
	if c := le.Uint32(b[end:]); c != checksum(b[:end]) {
		return VM{}, fmt.Errorf("%w: %s fails its checksum", ErrCorrupt, vmFile)
	}
	m := VM{ID: le.Uint64(b[8:]), MemBytes: le.Uint64(b[16:]), VCPUs: int(le.Uint32(b[24:])), Guest: string(b[30 : 30+n])}
	for i := range k {
		m.Disks = append(m.Disks, int64(le.Uint64(b[32+n+8*i:])))
	}
	if err := m.check(); err != nil {
		return VM{}, fmt.Errorf("%w: %s describes %v", ErrCorrupt, vmFile, err)
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
	dax   *daxLog // the log mapped from persistent memory (dax.go), or nil
	mem   *os.File
	disks []*os.File // disk-N
	epoch uint64     // the newest durable epoch (0: none)
	state []byte     // its state, for the next checkpoint
	size  int64      // the log's size
	// buf is where the next record is encoded; pending is the last
	// record appended, whose pages and blocks the memory and disk files
	// do not have yet.
	buf, pending []byte
	// staged is the epoch Stage encoded into buf and Sync has not written
	// (0: none).
	staged uint64
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
// empty, and returns it open for appending. disks are the guest's disks
// as they are before its first epoch, one per vm.Disks, of those sizes:
// Create copies them into the directory. Nothing is durable until the
// first Append.
func Create(path string, vm VM, disks ...*os.File) (*Dir, error) {
	if err := vm.check(); err != nil {
		return nil, fmt.Errorf("persist: %v cannot be persisted", err)
	}
	if len(disks) != len(vm.Disks) {
		return nil, fmt.Errorf("persist: %d disks for a VM of %d", len(disks), len(vm.Disks))
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
	for i, src := range disks {
		f, err := os.OpenFile(diskPath(path, i), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			d.disks = append(d.disks, f)
			err = CopyFile(f, src, vm.Disks[i])
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			d.Close()
			return nil, fmt.Errorf("persist: disk %d: %w", i, err)
		}
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
	return d.openLog(int64(logHeader + len(first)))
}

// openLog opens the log, whose records end at end, for appending: mapped
// from persistent memory where the file system allows it (dax.go),
// written and synchronised elsewhere.
func (d *Dir) openLog(end int64) error {
	d.dax.close()
	d.dax = nil
	if d.log != nil {
		d.log.Close()
		d.log = nil
	}
	path := filepath.Join(d.path, logFile)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	l, err := mapLog(f, end, recordHeader)
	switch {
	case err == nil:
		d.log, d.dax, d.size = f, l, end
		return nil
	case !errors.Is(err, errNoDAX):
		f.Close()
		return err
	}
	f.Close()
	if f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0); err != nil {
		return fmt.Errorf("persist: %w", err)
	}
	d.log, d.size = f, end
	return nil
}

// DAX names how the log reaches persistent memory: "MAP_SYNC, clwb" (or
// clflushopt, clflush) when it is mapped from a DAX file system, "" when
// it is written and fdatasync'd.
func (d *Dir) DAX() string {
	switch {
	case d.dax == nil:
		return ""
	case !d.dax.sync:
		return "mapped without MAP_SYNC (tests), " + flushKind
	}
	return "MAP_SYNC, " + flushKind
}

// diskPath is where disk i of the VM in dir is kept.
func diskPath(dir string, i int) string { return filepath.Join(dir, fmt.Sprintf("disk-%d", i)) }

// CopyFile makes dst the first size bytes of src (both from offset 0),
// in the kernel where it can (copy_file_range: a clone on file systems
// that share extents); dst is truncated to size.
func CopyFile(dst, src *os.File, size int64) error {
	if err := dst.Truncate(size); err != nil {
		return err
	}
	var off int64
	for off < size {
		in, out := off, off
		n, err := unix.CopyFileRange(int(src.Fd()), &in, int(dst.Fd()), &out, int(min(size-off, 1<<30)), 0)
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			_, err := io.Copy(io.NewOffsetWriter(dst, off), io.NewSectionReader(src, off, size-off))
			return err
		}
		if err != nil {
			return fmt.Errorf("copy_file_range: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("%s ends at byte %d, short of %d", src.Name(), off, size)
		}
		off += int64(n)
	}
	return nil
}

// VM describes the persisted VM.
func (d *Dir) VM() VM { return d.vm }

// Epoch is the newest durable epoch (0: none yet).
func (d *Dir) Epoch() uint64 { return d.epoch }

// LogBytes is the log's size: a caller checkpoints when it grows.
func (d *Dir) LogBytes() int64 { return d.size }

// appendRecord encodes epoch e's record into d.buf; disks holds one
// disk's writes per disk of the VM, or is empty for none.
func (d *Dir) appendRecord(e uint64, pages []uint64, page func(p uint64) []byte, disks []*disk.Writes, state []byte) []byte {
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
	start := len(b)
	if len(d.vm.Disks) > 0 {
		for i := range d.vm.Disks {
			w := &disk.Writes{}
			if len(disks) > 0 {
				w = disks[i]
			}
			b = disk.AppendWrites(b, w)
		}
	}
	w := len(b) - start
	b = append(b, state...)
	le.PutUint32(b[0:], recordMagic)
	le.PutUint32(b[4:], uint32(len(pages)))
	le.PutUint64(b[8:], e)
	le.PutUint32(b[16:], uint32(len(state)))
	le.PutUint32(b[20:], uint32(w))
	le.PutUint32(b[24:], checksum(b[recordHeader:]))
	le.PutUint32(b[28:], checksum(b[:28]))
	d.buf = b
	return b
}

// Append makes epoch e durable: its dirty pages (ascending, read from
// mem, guest RAM), the blocks it wrote to the VM's disks (one Writes per
// disk, or none) and its state. It returns once the record is
// synchronised. e must be newer than the last epoch appended. It is Stage
// and then Sync.
func (d *Dir) Append(e uint64, pages []uint64, mem []byte, state []byte, disks ...*disk.Writes) error {
	if err := d.Stage(e, pages, mem, state, disks...); err != nil {
		return err
	}
	return d.Sync()
}

// Stage encodes epoch e's record, copying its pages out of mem and its
// disk blocks out of disks (one per disk of the VM, or none: nothing
// written): the VM may run on once it returns, and Sync makes the epoch
// durable. A staged record not synchronised is replaced by the next
// Stage.
func (d *Dir) Stage(e uint64, pages []uint64, mem []byte, state []byte, disks ...*disk.Writes) error {
	switch {
	case e <= d.epoch:
		return fmt.Errorf("persist: epoch %d after epoch %d", e, d.epoch)
	case len(state) > MaxState:
		return fmt.Errorf("persist: a state of %d bytes, at most %d", len(state), MaxState)
	case uint64(len(mem)) != d.vm.MemBytes:
		return fmt.Errorf("persist: %d bytes of memory for a VM of %d", len(mem), d.vm.MemBytes)
	case !slices.IsSorted(pages) || len(pages) > 0 && pages[len(pages)-1] >= d.vm.MemBytes/PageSize:
		return errors.New("persist: pages out of order or beyond memory")
	case len(disks) != 0 && len(disks) != len(d.vm.Disks):
		return fmt.Errorf("persist: writes of %d disks for a VM of %d", len(disks), len(d.vm.Disks))
	}
	total := 0
	for i, w := range disks {
		if err := checkWrites(w, d.vm.Disks[i]); err != nil {
			return fmt.Errorf("persist: disk %d: %w", i, err)
		}
		total += w.Bytes()
	}
	if total > MaxDiskWrites {
		return fmt.Errorf("persist: an epoch wrote %d bytes to its disks, at most %d", total, MaxDiskWrites)
	}
	page := func(p uint64) []byte { return mem[p*PageSize : (p+1)*PageSize] }
	d.appendRecord(e, pages, page, disks, state)
	d.staged = e
	return nil
}

// MaxDiskWrites bounds the disk blocks one record carries.
const MaxDiskWrites = 1 << 30

// checkWrites checks that w's blocks lie on a disk of size bytes, in
// order, each as long as its block: what ParseWrites will accept.
func checkWrites(w *disk.Writes, size int64) error {
	for i, b := range w.Blocks {
		if int64(b.Index) >= (size+disk.BlockSize-1)/disk.BlockSize || i > 0 && b.Index <= w.Blocks[i-1].Index ||
			int64(len(b.Data)) != min(disk.BlockSize, size-int64(b.Index)*disk.BlockSize) {
			return fmt.Errorf("block %d of %d bytes out of order or off a disk of %d", b.Index, len(b.Data), size)
		}
	}
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
		d.writeLog(rec[:min(t.Bytes, len(rec))])
		t.Then()
		return fmt.Errorf("persist: epoch %d torn by fault injection", e)
	}
	if err := d.writeLog(rec); err != nil {
		return fmt.Errorf("persist: epoch %d: %w", e, err)
	}
	d.size += int64(len(rec))
	d.epoch = e
	d.state = append(d.state[:0], rec[len(rec)-int(binary.LittleEndian.Uint32(rec[16:])):]...)
	// The record before is no longer the last: the memory and disk files
	// may take its pages and blocks (the log has them until the next
	// checkpoint).
	err := d.applyPending()
	d.buf, d.pending = d.pending, rec
	return err
}

// writeLog appends b to the log and makes it durable: through the mapping
// and cache-line flushes on persistent memory, else write and fdatasync.
func (d *Dir) writeLog(b []byte) error {
	if d.dax != nil {
		if err := d.dax.write(d.size, b); err != nil {
			return err
		}
	} else if _, err := d.log.Write(b); err != nil {
		return err
	}
	if d.WriteDelay != nil {
		d.WriteDelay(len(b))
	}
	if d.dax == nil {
		if err := unix.Fdatasync(int(d.log.Fd())); err != nil {
			return fmt.Errorf("fdatasync: %w", err)
		}
	}
	return nil
}

// applyPending writes the pending record's pages and blocks into the
// memory and disk files.
func (d *Dir) applyPending() error {
	if len(d.pending) == 0 {
		return nil
	}
	err := d.apply(d.pending)
	d.pending = d.pending[:0]
	return err
}

// apply writes a whole record's pages and disk blocks into the memory and
// disk files.
func (d *Dir) apply(rec []byte) error {
	le := binary.LittleEndian
	n, w := int(le.Uint32(rec[4:])), int(le.Uint32(rec[20:]))
	body := rec[recordHeader:]
	if err := d.writePages(body, n); err != nil {
		return err
	}
	if w == 0 {
		return nil
	}
	b := body[n*(8+PageSize) : n*(8+PageSize)+w]
	for i, size := range d.vm.Disks {
		wr, rest, err := disk.ParseWrites(b, size)
		if err != nil {
			return fmt.Errorf("%w: epoch %d, disk %d: %v", ErrCorrupt, le.Uint64(rec[8:]), i, err)
		}
		if err := disk.Apply(d.disks[i], wr); err != nil {
			return fmt.Errorf("persist: disk %d: %w", i, err)
		}
		if d.WriteDelay != nil {
			d.WriteDelay(wr.Bytes())
		}
		b = rest
	}
	if len(b) != 0 {
		return fmt.Errorf("%w: epoch %d carries %d bytes after its disks' writes", ErrCorrupt, le.Uint64(rec[8:]), len(b))
	}
	return nil
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
	if err := d.syncFiles(); err != nil {
		return fmt.Errorf("persist: checkpoint: %w", err)
	}
	return d.replaceLog(slices.Clone(d.appendRecord(d.epoch, nil, nil, nil, d.state)))
}

// syncFiles synchronises the memory and disk files.
func (d *Dir) syncFiles() error {
	if err := unix.Fdatasync(int(d.mem.Fd())); err != nil {
		return fmt.Errorf("memory file: %w", err)
	}
	for i, f := range d.disks {
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return fmt.Errorf("disk %d: %w", i, err)
		}
	}
	return nil
}

// Close closes the directory; what Append returned for is durable (the
// last record's pages reach the memory file at the next Open).
func (d *Dir) Close() error {
	var errs []error
	d.dax.close()
	d.dax = nil
	for _, f := range append([]*os.File{d.log, d.mem}, d.disks...) {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	d.log, d.mem, d.disks = nil, nil, nil
	return errors.Join(errs...)
}

// Recovered is what Open found: the newest durable epoch and its state;
// the memory file holds that epoch's memory.
type Recovered struct {
	VM     VM
	Epoch  uint64
	State  []byte
	Memory string // the memory file's path, for the VM to map
	// Disks are the disk files' paths, as of that epoch.
	Disks []string
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
	var diskPaths []string
	for i, size := range vm.Disks {
		f, err := os.OpenFile(diskPath(path, i), os.O_RDWR, 0)
		if err != nil {
			return fail(fmt.Errorf("%w: disk %d: %v", ErrCorrupt, i, err))
		}
		d.disks = append(d.disks, f)
		if fi, err := f.Stat(); err != nil || fi.Size() != size {
			return fail(fmt.Errorf("%w: disk %d is not %d bytes", ErrCorrupt, i, size))
		}
		diskPaths = append(diskPaths, f.Name())
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
	if err := d.syncFiles(); err != nil {
		return fail(fmt.Errorf("persist: %w", err))
	}
	// A torn record, or the zero tail of a log allocated ahead on
	// persistent memory, is cut off: appends start at the end.
	if fi, err := os.Stat(filepath.Join(path, logFile)); err == nil && fi.Size() > end {
		if err := os.Truncate(filepath.Join(path, logFile), end); err != nil {
			return fail(fmt.Errorf("persist: cutting the log's tail: %w", err))
		}
	}
	if err := d.openLog(end); err != nil {
		return fail(err)
	}
	d.epoch, d.state = rec.Epoch, slices.Clone(rec.State)
	rec.VM, rec.Memory, rec.Disks = vm, filepath.Join(path, memoryFile), diskPaths
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
		whole, n, e, state, bad := readRecord(lf, off, size, d.vm.MemBytes/PageSize)
		if bad != "" {
			end := size
			if size%logChunk == 0 {
				end = dataEnd(lf, off, size) // allocated ahead (dax.go)
			}
			if end == off {
				break // the log's allocated tail (dax.go): nothing torn
			}
			// A torn last record, or damage: damage if a whole record
			// follows anywhere after it.
			if wholeAfter(lf, off+1, end, d.vm.MemBytes/PageSize) {
				return nil, 0, fmt.Errorf("%w: the record at byte %d of the log (%s) is followed by more: acknowledged epochs would be lost", ErrCorrupt, off, bad)
			}
			rec.TornBytes = end - off
			break
		}
		if e <= rec.Epoch {
			return nil, 0, fmt.Errorf("%w: the log's epoch %d follows epoch %d", ErrCorrupt, e, rec.Epoch)
		}
		if err := d.apply(whole); err != nil {
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

// readRecord reads the record at off: the whole record, the body's
// length n (-1 if the header itself is unusable), its epoch and state, or
// why it is not whole.
func readRecord(lf *os.File, off, size int64, memPages uint64) (rec []byte, n int64, e uint64, state []byte, bad string) {
	le := binary.LittleEndian
	h := make([]byte, recordHeader)
	if size-off < recordHeader {
		return nil, -1, 0, nil, "short header"
	}
	if _, err := lf.ReadAt(h, off); err != nil {
		return nil, -1, 0, nil, err.Error()
	}
	if le.Uint32(h) != recordMagic || le.Uint32(h[28:]) != checksum(h[:28]) {
		return nil, -1, 0, nil, "header checksum"
	}
	pages, s, w := uint64(le.Uint32(h[4:])), uint64(le.Uint32(h[16:])), uint64(le.Uint32(h[20:]))
	if pages > memPages || s > MaxState || w > MaxDiskWrites+MaxDisks*(5+12*(MaxDiskWrites/disk.BlockSize)) {
		return nil, -1, 0, nil, fmt.Sprintf("%d pages, %d bytes of disk writes and %d of state", pages, w, s)
	}
	n = int64(pages*(8+PageSize) + w + s)
	if size-off-recordHeader < n {
		return nil, n, 0, nil, "short body"
	}
	rec = make([]byte, recordHeader+n)
	if _, err := lf.ReadAt(rec, off); err != nil {
		return nil, n, 0, nil, err.Error()
	}
	body := rec[recordHeader:]
	if le.Uint32(h[24:]) != checksum(body) {
		return nil, n, 0, nil, "body checksum"
	}
	idx := body[:8*pages]
	for i := range pages {
		p := le.Uint64(idx[8*i:])
		if p >= memPages || i > 0 && p <= le.Uint64(idx[8*(i-1):]) {
			return nil, n, 0, nil, fmt.Sprintf("page %d out of order or beyond memory", p)
		}
	}
	return rec, n, le.Uint64(h[8:]), body[n-int64(s):], ""
}

// dataEnd is where the log's last non-zero byte from off on ends (off if
// none): a log allocated ahead on persistent memory (dax.go, its size a
// multiple of logChunk) has a zero tail, which is neither a record nor a
// tear; the torn bytes it reports are those up to the last non-zero one.
func dataEnd(lf *os.File, off, size int64) int64 {
	chunk := make([]byte, 1<<20)
	for end := size; end > off; {
		from := max(off, end-int64(len(chunk)))
		n, err := lf.ReadAt(chunk[:end-from], from)
		if n < int(end-from) && err != nil {
			return end // unreadable: count it
		}
		for i := n - 1; i >= 0; i-- {
			if chunk[i] != 0 {
				return from + int64(i) + 1
			}
		}
		end = from
	}
	return off
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
