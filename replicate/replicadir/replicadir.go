// Package replicadir owns the on-disk form of a replica's store
// (tandem replica --persist DIR): a log of checksummed records, which the
// replica appends and synchronises before it acknowledges what they hold,
// and a snapshot that a checkpoint writes so that the log can start again.
// What the records and the snapshot mean is the replica's business
// (replicate/replica_persist.go); this package makes them durable and
// gives them back, whole or not at all, after a power cut.
//
// # Directory
//
//	lock      held (flock) by the process that has the directory open
//	current   which checkpoint is current: written atomically (a
//	          temporary file, fsync, rename, fsync of the directory)
//	snap-K    the snapshot of checkpoint K (none for K = 0)
//	log-K     the records appended since checkpoint K
//
// A checkpoint K+1 writes snap-K+1 and an empty log-K+1, synchronises
// both, and only then makes current name K+1; the files of K are removed
// after. A power cut at any point leaves current naming a checkpoint whose
// files are whole.
//
// # The commit rule
//
// A record is durable once Sync returns after it. Open gives back every
// record of the current log in order. A power cut in the middle of an
// append can only tear the log's last records (everything before them was
// synchronised first): a record whose header or body fails its checksum,
// or that the log ends inside, is cut off with everything after it, and
// Open reports the bytes it cut (TornBytes). A damaged record followed by
// a whole one is damage, not a tear, and Open refuses the directory
// (ErrCorrupt): what follows it was durable.
//
// # Formats (little endian)
//
//	current: [8]byte "TNDMRCU1" | u64 K | u32 CRC-32C of the 16 bytes before
//	snap-K:  [8]byte "TNDMRSN1" | u64 K | u64 n | n bytes | u32 CRC-32C of the n bytes
//	log-K:   [8]byte "TNDMRLG1" | u64 K | u32 CRC-32C of the 16 bytes before
//	         then records:
//	         0 u32 magic "RREC"  4 u32 kind  8 u32 body bytes n
//	         12 u32 CRC-32C of the body  16 u32 CRC-32C of bytes 0..15
//	         20 n bytes of body
package replicadir

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrCorrupt is a directory whose files are damaged beyond a torn tail.
var ErrCorrupt = errors.New("replicadir: damaged replica directory")

// ErrForeign is a directory that is not a replica's: something else is in
// it.
var ErrForeign = errors.New("replicadir: not a Tandem replica directory")

// ErrLocked is a directory another process has open.
var ErrLocked = errors.New("replicadir: another process has the replica directory open")

const (
	currentMagic = "TNDMRCU1"
	snapMagic    = "TNDMRSN1"
	logMagic     = "TNDMRLG1"
	recordMagic  = 0x43455252 // "RREC"
	fileHeader   = 8 + 8 + 4
	recordHeader = 20
	// MaxRecord bounds one record's body: a link's epoch may carry many
	// pages, but not more than a data message carries in all.
	MaxRecord = 1 << 31
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// Record is one record of the log.
type Record struct {
	Kind uint32
	Body []byte
}

// Contents is what a directory held when it was opened.
type Contents struct {
	// Snapshot is the current checkpoint's snapshot (checksum verified),
	// nil if there is none: read it before the first Checkpoint.
	Snapshot io.Reader
	// SnapshotBytes is its length.
	SnapshotBytes int64
	// Records are the log's whole records, in order.
	Records []Record
	// TornBytes is what Open cut off the log's end.
	TornBytes int64
}

// Empty reports whether the directory held nothing.
func (c *Contents) Empty() bool { return c.Snapshot == nil && len(c.Records) == 0 }

// Dir is an open replica directory.
type Dir struct {
	path string
	lock *os.File
	k    uint64
	log  *os.File
	size int64
	snap *os.File // the snapshot Open verified, until the next checkpoint
	buf  []byte
}

// Open opens the replica directory at path, creating it (and its first,
// empty log) if it is missing or empty, and returns what it holds.
func Open(path string) (*Dir, *Contents, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, nil, fmt.Errorf("replicadir: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(path, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("replicadir: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, nil, fmt.Errorf("replicadir: lock %s: %w", path, err)
	}
	d := &Dir{path: path, lock: lock}
	c, err := d.open()
	if err != nil {
		d.Close()
		return nil, nil, err
	}
	return d, c, nil
}

func (d *Dir) open() (*Contents, error) {
	cur, err := os.ReadFile(filepath.Join(d.path, "current"))
	if errors.Is(err, os.ErrNotExist) {
		entries, err := os.ReadDir(d.path)
		if err != nil {
			return nil, fmt.Errorf("replicadir: %w", err)
		}
		for _, e := range entries {
			if e.Name() != "lock" {
				return nil, fmt.Errorf("%w: %s holds %s and no current checkpoint", ErrForeign, d.path, e.Name())
			}
		}
		return &Contents{}, d.start(0)
	}
	if err != nil {
		return nil, fmt.Errorf("replicadir: %w", err)
	}
	if len(cur) != fileHeader || string(cur[:8]) != currentMagic {
		return nil, fmt.Errorf("%w: %s/current", ErrForeign, d.path)
	}
	if checksum(cur[:16]) != binary.LittleEndian.Uint32(cur[16:]) {
		return nil, fmt.Errorf("%w: %s/current fails its checksum", ErrCorrupt, d.path)
	}
	d.k = binary.LittleEndian.Uint64(cur[8:])
	c := &Contents{}
	if d.k > 0 {
		if c.Snapshot, c.SnapshotBytes, err = d.openSnapshot(); err != nil {
			return nil, err
		}
	}
	if err := d.readLog(c); err != nil {
		return nil, err
	}
	return c, nil
}

func (d *Dir) name(kind string, k uint64) string {
	return filepath.Join(d.path, kind+"-"+strconv.FormatUint(k, 10))
}

// openSnapshot checks snap-K whole and returns a reader of its bytes.
func (d *Dir) openSnapshot() (io.Reader, int64, error) {
	f, err := os.Open(d.name("snap", d.k))
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	fail := func(format string, args ...any) (io.Reader, int64, error) {
		f.Close()
		return nil, 0, fmt.Errorf("%w: %s: %s", ErrCorrupt, f.Name(), fmt.Sprintf(format, args...))
	}
	var h [24]byte
	if _, err := io.ReadFull(f, h[:]); err != nil || string(h[:8]) != snapMagic || binary.LittleEndian.Uint64(h[8:]) != d.k {
		return fail("not the snapshot of checkpoint %d", d.k)
	}
	n := int64(binary.LittleEndian.Uint64(h[16:]))
	fi, err := f.Stat()
	if err != nil || fi.Size() != 24+n+4 {
		return fail("%d bytes where its header says %d", fi.Size(), 24+n+4)
	}
	sum := crc32.New(castagnoli)
	if _, err := io.Copy(sum, io.NewSectionReader(f, 24, n)); err != nil {
		return fail("%v", err)
	}
	var tail [4]byte
	if _, err := f.ReadAt(tail[:], 24+n); err != nil || binary.LittleEndian.Uint32(tail[:]) != sum.Sum32() {
		return fail("fails its checksum")
	}
	d.snap = f
	return bufio.NewReaderSize(io.NewSectionReader(f, 24, n), 1<<20), n, nil
}

// readLog reads log-K's whole records into c and opens it for appending
// after them.
func (d *Dir) readLog(c *Contents) error {
	f, err := os.OpenFile(d.name("log", d.k), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("replicadir: %w", err)
	}
	if len(b) < fileHeader || string(b[:8]) != logMagic || binary.LittleEndian.Uint64(b[8:]) != d.k || checksum(b[:16]) != binary.LittleEndian.Uint32(b[16:]) {
		f.Close()
		return fmt.Errorf("%w: %s has no valid header", ErrCorrupt, f.Name())
	}
	off := fileHeader
	for off < len(b) {
		body, ok := parseRecord(b[off:])
		if !ok {
			// A tear only if nothing whole follows.
			if at, found := wholeRecordAfter(b, off+1); found {
				f.Close()
				return fmt.Errorf("%w: %s: a damaged record at byte %d before a whole one at %d", ErrCorrupt, f.Name(), off, at)
			}
			c.TornBytes = int64(len(b) - off)
			break
		}
		c.Records = append(c.Records, Record{Kind: binary.LittleEndian.Uint32(b[off+4:]), Body: body})
		off += recordHeader + len(body)
	}
	if err := f.Truncate(int64(off)); err != nil {
		f.Close()
		return fmt.Errorf("replicadir: cutting the torn tail: %w", err)
	}
	if _, err := f.Seek(int64(off), io.SeekStart); err != nil {
		f.Close()
		return fmt.Errorf("replicadir: %w", err)
	}
	d.log, d.size = f, int64(off)
	return nil
}

// wholeRecordAfter finds a whole record starting at or after from.
func wholeRecordAfter(b []byte, from int) (int, bool) {
	magic := binary.LittleEndian.AppendUint32(nil, recordMagic)
	for at := from; at < len(b); at++ {
		i := bytes.Index(b[at:], magic)
		if i < 0 {
			return 0, false
		}
		at += i
		if _, ok := parseRecord(b[at:]); ok {
			return at, true
		}
	}
	return 0, false
}

// parseRecord returns the body of the whole record at the start of b.
func parseRecord(b []byte) ([]byte, bool) {
	le := binary.LittleEndian
	if len(b) < recordHeader || le.Uint32(b) != recordMagic || checksum(b[:16]) != le.Uint32(b[16:]) {
		return nil, false
	}
	n := uint64(le.Uint32(b[8:]))
	if n > uint64(len(b)-recordHeader) || checksum(b[recordHeader:recordHeader+n]) != le.Uint32(b[12:]) {
		return nil, false
	}
	return b[recordHeader : recordHeader+n], true
}

// start makes checkpoint k's empty log the one appended to.
func (d *Dir) start(k uint64) error {
	f, err := os.OpenFile(d.name("log", k), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("replicadir: %w", err)
	}
	if _, err := f.Write(fileHeaderOf(logMagic, k)); err != nil {
		f.Close()
		return fmt.Errorf("replicadir: %w", err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return fmt.Errorf("replicadir: %w", err)
	}
	if err := d.writeCurrent(k); err != nil {
		f.Close()
		return err
	}
	if d.log != nil {
		d.log.Close()
	}
	d.log, d.size, d.k = f, fileHeader, k
	return nil
}

func fileHeaderOf(magic string, k uint64) []byte {
	b := binary.LittleEndian.AppendUint64([]byte(magic), k)
	return binary.LittleEndian.AppendUint32(b, checksum(b))
}

// writeCurrent makes current name checkpoint k, atomically.
func (d *Dir) writeCurrent(k uint64) error {
	tmp := filepath.Join(d.path, "current.tmp")
	if err := writeSynced(tmp, fileHeaderOf(currentMagic, k)); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(d.path, "current")); err != nil {
		return fmt.Errorf("replicadir: %w", err)
	}
	return syncDir(d.path)
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("replicadir: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("replicadir: %w", err)
	}
	return nil
}

func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("replicadir: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("replicadir: fsync of %s: %w", path, err)
	}
	return nil
}

// Append writes a record of kind whose body is parts, one after the
// other; it is durable once Sync returns.
func (d *Dir) Append(kind uint32, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxRecord {
		return fmt.Errorf("replicadir: a record of %d bytes, at most %d", n, MaxRecord)
	}
	le := binary.LittleEndian
	b := d.buf[:0]
	b = le.AppendUint32(b, recordMagic)
	b = le.AppendUint32(b, kind)
	b = le.AppendUint32(b, uint32(n))
	b = append(b, make([]byte, 8)...)
	sum := crc32.New(castagnoli)
	for _, p := range parts {
		sum.Write(p)
	}
	le.PutUint32(b[12:], sum.Sum32())
	le.PutUint32(b[16:], checksum(b[:16]))
	d.buf = b
	bufs := append([][]byte{b}, parts...)
	written, err := unix.Writev(int(d.log.Fd()), bufs)
	if err == nil && written != recordHeader+n {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("replicadir: appending a record: %w", err)
	}
	d.size += int64(written)
	return nil
}

// Sync makes every record appended durable.
func (d *Dir) Sync() error {
	if err := unix.Fdatasync(int(d.log.Fd())); err != nil {
		return fmt.Errorf("replicadir: fdatasync: %w", err)
	}
	return nil
}

// LogBytes is the current log's size.
func (d *Dir) LogBytes() int64 { return d.size }

// Checkpoint writes a snapshot with write, of n bytes exactly, and starts
// an empty log after it; Open then gives the snapshot and the records
// appended from now on. The snapshot must hold everything the log did.
func (d *Dir) Checkpoint(n int64, write func(w io.Writer) error) error {
	k := d.k + 1
	path := d.name("snap", k)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("replicadir: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("replicadir: checkpoint: %w", err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	w.Write(fileHeaderOf(snapMagic, k)[:16])
	w.Write(binary.LittleEndian.AppendUint64(nil, uint64(n)))
	sum := crc32.New(castagnoli)
	counted := &countingWriter{w: io.MultiWriter(w, sum)}
	if err := write(counted); err != nil {
		return fail(err)
	}
	if counted.n != n {
		return fail(fmt.Errorf("the snapshot wrote %d bytes, not %d", counted.n, n))
	}
	w.Write(binary.LittleEndian.AppendUint32(nil, sum.Sum32()))
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	old := d.k
	if err := d.start(k); err != nil {
		os.Remove(path)
		return err
	}
	if d.snap != nil {
		d.snap.Close()
		d.snap = nil
	}
	os.Remove(d.name("log", old))
	os.Remove(d.name("snap", old))
	return nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// Close closes the directory and releases its lock.
func (d *Dir) Close() error {
	if d.snap != nil {
		d.snap.Close()
	}
	var err error
	if d.log != nil {
		err = d.log.Close()
	}
	d.lock.Close()
	return err
}
