package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// virtio-blk (virtio 1.x, 5.2).
const (
	blkFSegMax = 1 << 2 // VIRTIO_BLK_F_SEG_MAX
	blkFRO     = 1 << 5 // VIRTIO_BLK_F_RO
	blkFFlush  = 1 << 9 // VIRTIO_BLK_F_FLUSH

	blkTIn    = 0
	blkTOut   = 1
	blkTFlush = 4
	blkTGetID = 8

	blkSOK     = 0
	blkSIOErr  = 1
	blkSUnsupp = 2

	// SectorSize is virtio-blk's unit of addressing.
	SectorSize = 512
	// BlockQueueSize is the size of the request queue.
	BlockQueueSize = 256
	// blkIDBytes is the length of a GET_ID answer.
	blkIDBytes = 20
	// maxBlockRequest bounds the data of one request, so that a driver
	// cannot make the VMM allocate without limit. Linux sends at most a few
	// hundred KiB.
	maxBlockRequest = 4 << 20
)

// BlockBackend is the storage behind a virtio-blk device.
//
// It is the seam where high availability plugs into the disk: every guest
// write reaches storage through WriteAt, and the guest learns that a write
// or a flush is complete only when WriteAt or Flush has returned (the
// device writes the request's status and returns it on the used ring
// after that). A replicating backend can therefore forward each write to
// the backups, or hold it, or hold the flush, until the replication epoch
// that produced it is safe, and the guest never sees a write as done that
// a failover could lose. FileBackend is the plain, unreplicated backend.
type BlockBackend interface {
	io.ReaderAt
	io.WriterAt
	// Flush makes every completed write durable.
	Flush() error
	// Size is the disk size in bytes; the device exposes whole sectors.
	Size() int64
	ReadOnly() bool
	Close() error
}

// FileBackend is a BlockBackend over a regular file or block device.
type FileBackend struct {
	f    *os.File
	size int64
	ro   bool
}

// OpenFileBackend opens path as a disk, read-only if readOnly.
func OpenFileBackend(path string, readOnly bool) (*FileBackend, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-blk: open disk: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("virtio-blk: size of disk %s: %w", path, err)
	}
	if size < SectorSize {
		f.Close()
		return nil, fmt.Errorf("virtio-blk: disk %s is %d bytes, smaller than one 512-byte sector", path, size)
	}
	return &FileBackend{f: f, size: size, ro: readOnly}, nil
}

func (b *FileBackend) ReadAt(p []byte, off int64) (int, error)  { return b.f.ReadAt(p, off) }
func (b *FileBackend) WriteAt(p []byte, off int64) (int, error) { return b.f.WriteAt(p, off) }
func (b *FileBackend) Size() int64                              { return b.size }
func (b *FileBackend) ReadOnly() bool                           { return b.ro }
func (b *FileBackend) Close() error                             { return b.f.Close() }

// Flush implements BlockBackend with fdatasync.
func (b *FileBackend) Flush() error {
	if b.ro {
		return nil
	}
	return unix.Fdatasync(int(b.f.Fd()))
}

// Block is a virtio-blk device: one request queue, read-only or writable,
// with flush. Requests are served synchronously, in queue order, by the
// goroutine that delivers the notification. Its backend may be replaced
// while the VM runs (MMIO.ReplaceBlockBackend).
type Block struct {
	id string
	// readOnly is what the device offered the driver (VIRTIO_BLK_F_RO),
	// fixed at creation: a replacement backend must agree.
	readOnly bool
	// capacity is the disk size in sectors, read without mu by
	// configuration-space reads.
	capacity atomic.Uint64

	mu      sync.Mutex // serialises request processing, activation and backend replacement
	backend BlockBackend
	env     *Env
	buf     []byte
}

// NewBlock returns a virtio-blk device over backend. id is what GET_ID
// answers (the guest's /sys/block/vda/serial), cut to 20 bytes.
func NewBlock(backend BlockBackend, id string) *Block {
	d := &Block{backend: backend, id: id, readOnly: backend.ReadOnly()}
	d.capacity.Store(uint64(backend.Size()) / SectorSize)
	return d
}

func (d *Block) Type() DeviceType { return TypeBlock }

func (d *Block) Features() uint64 {
	f := uint64(blkFSegMax | blkFFlush)
	if d.readOnly {
		f |= blkFRO
	}
	return f
}

func (d *Block) QueueSizes() []uint16 { return []uint16{BlockQueueSize} }

// Capacity is the disk size in 512-byte sectors.
func (d *Block) Capacity() uint64 { return d.capacity.Load() }

// ReadOnly reports whether the device is a read-only disk.
func (d *Block) ReadOnly() bool { return d.readOnly }

// ReplaceBlockBackend gives the virtio-blk device behind t new storage
// while the VM runs, and returns the backend it replaces, for the caller
// to close. The swap waits for the request being served, if any, to
// complete on the old backend; every later request is served from the
// new one. The capacity in configuration space becomes the new backend's,
// the configuration generation changes, and a live driver is told with a
// configuration-change interrupt (VIRTIO_MMIO_INT_CONFIG), on which Linux
// reads the new size. The new backend must be read-only if and only if
// the old one was: the driver negotiated VIRTIO_BLK_F_RO once.
func (t *MMIO) ReplaceBlockBackend(backend BlockBackend) (BlockBackend, error) {
	d, ok := t.dev.(*Block)
	switch {
	case !ok:
		return nil, fmt.Errorf("virtio-mmio@%#x: a virtio-%v device, not virtio-blk: no backend to replace", t.base, t.dev.Type())
	case d.readOnly && !backend.ReadOnly():
		return nil, fmt.Errorf("virtio-blk@%#x: the device is read-only and the replacement writable: read-only-ness cannot change while the VM runs", t.base)
	case !d.readOnly && backend.ReadOnly():
		return nil, fmt.Errorf("virtio-blk@%#x: the device is writable and the replacement read-only: read-only-ness cannot change while the VM runs", t.base)
	case backend.Size() < SectorSize:
		return nil, fmt.Errorf("virtio-blk@%#x: the replacement is %d bytes, smaller than one 512-byte sector", t.base, backend.Size())
	}
	var old BlockBackend
	t.changeConfig(func() {
		old, d.backend = d.backend, backend
		d.capacity.Store(uint64(backend.Size()) / SectorSize)
	})
	return old, nil
}

// ReadConfig implements Device: capacity (u64 at 0) and seg_max (u32 at
// 12); the rest reads as zero.
func (d *Block) ReadConfig(off uint64, p []byte) {
	var cfg [24]byte
	binary.LittleEndian.PutUint64(cfg[0:], d.Capacity())
	binary.LittleEndian.PutUint32(cfg[12:], BlockQueueSize-2)
	readConfig(cfg[:], off, p)
}

func (d *Block) WriteConfig(off uint64, p []byte) {}

// readConfig copies cfg[off:] into p, zero past the end.
func readConfig(cfg []byte, off uint64, p []byte) {
	clear(p)
	if off < uint64(len(cfg)) {
		copy(p, cfg[off:])
	}
}

func (d *Block) Activate(env *Env) error {
	if len(env.Queues) != 1 || env.Queues[0] == nil {
		return errors.New("virtio-blk: the request queue is not set up")
	}
	d.mu.Lock()
	d.env = env
	d.mu.Unlock()
	return nil
}

func (d *Block) Reset() {
	d.mu.Lock()
	d.env = nil
	d.mu.Unlock()
}

// QueueNotify serves every available request.
func (d *Block) QueueNotify(int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return
	}
	q := d.env.Queues[0]
	drain(d.env, "virtio-blk", q, func(c *Chain) uint32 { return d.serve(q, c) })
}

// serve performs one request and returns the bytes written to the chain.
func (d *Block) serve(q *Queue, c *Chain) uint32 {
	log := d.env.Log
	if c.WritableLen() < 1 {
		log.Warn("virtio-blk: request has no status byte")
		return 0
	}
	var hdr [16]byte
	if _, err := io.ReadFull(q.Reader(c), hdr[:]); err != nil {
		log.Warn("virtio-blk: request header", "err", err)
		return d.finish(q, c, 0, blkSIOErr)
	}
	typ := binary.LittleEndian.Uint32(hdr[0:])
	sector := binary.LittleEndian.Uint64(hdr[8:])
	// The status is the last writable byte; data come before it.
	dataIn := c.WritableLen() - 1
	dataOut := c.ReadableLen() - 16

	switch typ {
	case blkTIn:
		if err := d.checkRange(sector, dataIn); err != nil {
			log.Warn("virtio-blk: read", "err", err)
			return d.finish(q, c, 0, blkSIOErr)
		}
		buf := d.scratch(int(dataIn))
		if _, err := d.backend.ReadAt(buf, int64(sector*SectorSize)); err != nil && !errors.Is(err, io.EOF) {
			log.Error("virtio-blk: read from disk", "sector", sector, "err", err)
			return d.finish(q, c, 0, blkSIOErr)
		}
		w := q.Writer(c)
		if _, err := w.Write(buf); err != nil {
			log.Warn("virtio-blk: read: write to guest", "err", err)
			return d.finish(q, c, w.Written(), blkSIOErr)
		}
		return d.finish(q, c, w.Written(), blkSOK)
	case blkTOut:
		if d.readOnly {
			return d.finish(q, c, 0, blkSIOErr)
		}
		if err := d.checkRange(sector, dataOut); err != nil {
			log.Warn("virtio-blk: write", "err", err)
			return d.finish(q, c, 0, blkSIOErr)
		}
		buf := d.scratch(int(dataOut))
		r := q.Reader(c)
		if _, err := io.ReadFull(r, hdr[:]); err != nil { // skip the header again
			return d.finish(q, c, 0, blkSIOErr)
		}
		if _, err := io.ReadFull(r, buf); err != nil {
			log.Warn("virtio-blk: write: read from guest", "err", err)
			return d.finish(q, c, 0, blkSIOErr)
		}
		if _, err := d.backend.WriteAt(buf, int64(sector*SectorSize)); err != nil {
			log.Error("virtio-blk: write to disk", "sector", sector, "err", err)
			return d.finish(q, c, 0, blkSIOErr)
		}
		return d.finish(q, c, 0, blkSOK)
	case blkTFlush:
		if err := d.backend.Flush(); err != nil {
			log.Error("virtio-blk: flush", "err", err)
			return d.finish(q, c, 0, blkSIOErr)
		}
		return d.finish(q, c, 0, blkSOK)
	case blkTGetID:
		var id [blkIDBytes]byte
		copy(id[:], d.id)
		w := q.Writer(c)
		_, _ = w.Write(id[:min(uint64(blkIDBytes), dataIn)])
		return d.finish(q, c, w.Written(), blkSOK)
	}
	return d.finish(q, c, 0, blkSUnsupp)
}

// checkRange rejects a transfer that is not whole sectors, too large, or
// past the end of the disk.
func (d *Block) checkRange(sector, n uint64) error {
	switch {
	case n%SectorSize != 0:
		return fmt.Errorf("%d bytes is not a whole number of sectors", n)
	case n > maxBlockRequest:
		return fmt.Errorf("%d bytes is more than the %d a request may carry", n, maxBlockRequest)
	case sector > d.Capacity() || n/SectorSize > d.Capacity()-sector:
		return fmt.Errorf("sectors [%d, +%d) lie past the end of the %d-sector disk", sector, n/SectorSize, d.Capacity())
	}
	return nil
}

// finish writes the status byte after written bytes of data and returns
// the total written.
func (d *Block) finish(q *Queue, c *Chain, written uint32, status byte) uint32 {
	// The status byte is the last writable byte, wherever data ended.
	pos := c.WritableLen() - 1
	off := uint64(0)
	for _, b := range c.Writable {
		if pos < off+uint64(b.Len) {
			if _, err := q.mem.WriteAt([]byte{status}, b.Addr+(pos-off)); err != nil {
				d.env.Log.Warn("virtio-blk: status byte", "err", err)
				return written
			}
			break
		}
		off += uint64(b.Len)
	}
	return written + 1
}

func (d *Block) scratch(n int) []byte {
	if cap(d.buf) < n {
		d.buf = make([]byte, n)
	}
	return d.buf[:n]
}

// Close closes the backend, once the device has stopped (its transport
// reset, no replacement under way).
func (d *Block) Close() error { return d.backend.Close() }

// Pause implements Pauser: it holds queue processing until Resume.
func (d *Block) Pause() { d.mu.Lock() }

// Resume implements Pauser.
func (d *Block) Resume() { d.mu.Unlock() }
