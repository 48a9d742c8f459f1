package persist

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The log on persistent memory. Where the directory is on a DAX file
// system (ext4 or xfs mounted -o dax on a pmem device, real or emulated
// with memmap=), the log is mapped with MAP_SYNC: stores to the mapping
// reach the persistent memory itself, and the file's metadata is kept
// durable by the kernel before a page fault on it returns. A record is
// then durable once it is copied into the mapping, its cache lines are
// written back (CLWB, else CLFLUSHOPT, else CLFLUSH) and a fence orders
// them: no system call per epoch. The log file is allocated ahead
// (logChunk at a time), so the mapping never writes past its end, and
// its tail beyond the last record is zero, which Open does not count as
// a tear. The memory and disk files stay files, synchronised at a
// checkpoint: the epoch's critical path is the log. Elsewhere MAP_SYNC
// is refused and the log is written and fdatasync'd.

// logChunk is how much of the log is allocated and mapped at a time.
const logChunk = 64 << 20

// errNoDAX is a file system where the log cannot be mapped with MAP_SYNC.
var errNoDAX = errors.New("persist: not a DAX file system")

// mapWithoutSync maps the log without MAP_SYNC and makes each record
// durable with msync instead: tests use it to run the mapped path on
// file systems without DAX.
var mapWithoutSync = false

// daxLog is the log mapped from persistent memory.
type daxLog struct {
	f    *os.File
	m    []byte
	sync bool // mapped with MAP_SYNC: a flush makes stores durable
}

// mapLog maps f, whose records end at end, with room for at least need
// more bytes.
func mapLog(f *os.File, end, need int64) (*daxLog, error) {
	if flushKind == "" {
		return nil, errNoDAX
	}
	l := &daxLog{f: f, sync: !mapWithoutSync}
	if l.sync {
		// MAP_SYNC is refused at once where the file system has no DAX,
		// before anything is allocated.
		m, err := unix.Mmap(int(f.Fd()), 0, os.Getpagesize(), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED_VALIDATE|unix.MAP_SYNC)
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return nil, errNoDAX
		}
		if err != nil {
			return nil, fmt.Errorf("persist: mapping the log: %w", err)
		}
		unix.Munmap(m)
	}
	if err := l.grow(end + need); err != nil {
		return nil, err
	}
	return l, nil
}

// grow maps at least size bytes of the log, allocating the file that far.
func (l *daxLog) grow(size int64) error {
	size = (size + logChunk - 1) / logChunk * logChunk
	if int64(len(l.m)) >= size {
		return nil
	}
	fi, err := l.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < size {
		if err := unix.Fallocate(int(l.f.Fd()), 0, fi.Size(), size-fi.Size()); err != nil {
			return fmt.Errorf("persist: allocating the log: %w", err)
		}
	}
	flags := unix.MAP_SHARED_VALIDATE | unix.MAP_SYNC
	if !l.sync {
		flags = unix.MAP_SHARED
	}
	m, err := unix.Mmap(int(l.f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, flags)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		return errNoDAX
	}
	if err != nil {
		return fmt.Errorf("persist: mapping the log: %w", err)
	}
	if l.m != nil {
		unix.Munmap(l.m)
	}
	l.m = m
	return nil
}

// write stores b at offset at and makes it durable.
func (l *daxLog) write(at int64, b []byte) error {
	if err := l.grow(at + int64(len(b))); err != nil {
		return err
	}
	dst := l.m[at : at+int64(len(b))]
	copy(dst, b)
	flushCache(dst)
	if !l.sync {
		// Without MAP_SYNC the page cache holds the stores: msync the
		// pages they touched.
		page := int64(os.Getpagesize())
		from := at / page * page
		if err := unix.Msync(l.m[from:at+int64(len(b))], unix.MS_SYNC); err != nil {
			return fmt.Errorf("persist: msync: %w", err)
		}
	}
	return nil
}

func (l *daxLog) close() {
	if l != nil && l.m != nil {
		unix.Munmap(l.m)
		l.m = nil
	}
}
