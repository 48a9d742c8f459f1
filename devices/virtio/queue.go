package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/tandemvm/tandem/devices"
)

// Split virtqueue layout (virtio 1.x, 2.7): a descriptor table of 16-byte
// entries, the driver's "available" ring and the device's "used" ring.
const (
	descSize = 16

	descFNext     = 1 // VIRTQ_DESC_F_NEXT
	descFWrite    = 2 // VIRTQ_DESC_F_WRITE: device-writable
	descFIndirect = 4 // VIRTQ_DESC_F_INDIRECT

	availFNoInterrupt = 1 // VIRTQ_AVAIL_F_NO_INTERRUPT

	// MaxQueueSize is the largest split virtqueue the spec allows.
	MaxQueueSize = 32768
	// MaxIndirectDescs bounds an indirect descriptor table: Linux never
	// builds one longer than the queue, and the bound keeps a hostile
	// driver from making the device walk megabytes of descriptors.
	MaxIndirectDescs = 1024
)

// ErrBadChain is wrapped by errors about a malformed descriptor chain: the
// driver broke the protocol for one request. The device returns the chain
// to the driver unprocessed and carries on.
var ErrBadChain = errors.New("virtio: malformed descriptor chain")

// ErrBadQueue is wrapped by errors that make a whole queue unusable (an
// available ring that claims more entries than fit, a head index out of
// range): the device stops using the queue and asks for a reset.
var ErrBadQueue = errors.New("virtio: broken virtqueue")

// Buffer is one guest buffer of a descriptor chain.
type Buffer struct {
	Addr uint64
	Len  uint32
}

// Chain is a descriptor chain popped from the available ring: the buffers
// the device may read (they come first) and those it may write.
type Chain struct {
	Head     uint16
	Readable []Buffer
	Writable []Buffer
}

// ReadableLen and WritableLen are the total sizes of the buffers.
func (c *Chain) ReadableLen() uint64 { return total(c.Readable) }
func (c *Chain) WritableLen() uint64 { return total(c.Writable) }

func total(bufs []Buffer) uint64 {
	var n uint64
	for _, b := range bufs {
		n += uint64(b.Len)
	}
	return n
}

// Queue is one split virtqueue as the driver configured it, and the
// device's position in it. A Queue is used by one goroutine at a time (its
// device serialises access).
type Queue struct {
	// Set by the driver through the transport before it is enabled.
	Size      uint16
	DescAddr  uint64
	AvailAddr uint64
	UsedAddr  uint64

	mem      devices.GuestMemory
	indirect bool // VIRTIO_RING_F_INDIRECT_DESC negotiated

	// lastAvail is the next available-ring slot the device reads; usedIdx
	// the next used-ring slot it fills. Both run free modulo 2^16.
	lastAvail uint16
	usedIdx   uint16

	// signal raises the used-buffer interrupt (set by the transport).
	signal func()
}

// NewQueue returns a queue over mem at the given addresses, for tests and
// for transports other than MMIO. indirect says whether indirect
// descriptors were negotiated; signal (may be nil) raises the interrupt.
func NewQueue(mem devices.GuestMemory, size uint16, desc, avail, used uint64, indirect bool, signal func()) *Queue {
	return &Queue{Size: size, DescAddr: desc, AvailAddr: avail, UsedAddr: used, mem: mem, indirect: indirect, signal: signal}
}

// Validate checks the driver's configuration of the queue: a power-of-two
// size no larger than max and rings aligned as the spec requires.
func (q *Queue) Validate(max uint16) error {
	switch {
	case q.Size == 0 || q.Size&(q.Size-1) != 0 || q.Size > max:
		return fmt.Errorf("%w: size %d (want a power of two up to %d)", ErrBadQueue, q.Size, max)
	case q.DescAddr%16 != 0:
		return fmt.Errorf("%w: descriptor table at %#x is not 16-byte aligned", ErrBadQueue, q.DescAddr)
	case q.AvailAddr%2 != 0:
		return fmt.Errorf("%w: available ring at %#x is not 2-byte aligned", ErrBadQueue, q.AvailAddr)
	case q.UsedAddr%4 != 0:
		return fmt.Errorf("%w: used ring at %#x is not 4-byte aligned", ErrBadQueue, q.UsedAddr)
	}
	return nil
}

// Position returns the device's ring indices (for state capture).
func (q *Queue) Position() (lastAvail, usedIdx uint16) { return q.lastAvail, q.usedIdx }

// SetPosition restores the device's ring indices.
func (q *Queue) SetPosition(lastAvail, usedIdx uint16) { q.lastAvail, q.usedIdx = lastAvail, usedIdx }

func (q *Queue) read16(gpa uint64) (uint16, error) {
	var b [2]byte
	if _, err := q.mem.ReadAt(b[:], gpa); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b[:]), nil
}

// Pending reports how many chains the driver has made available and the
// device has not popped yet.
func (q *Queue) Pending() (uint16, error) {
	idx, err := q.read16(q.AvailAddr + 2)
	if err != nil {
		return 0, fmt.Errorf("%w: available ring index: %v", ErrBadQueue, err)
	}
	n := idx - q.lastAvail
	if n > q.Size {
		return 0, fmt.Errorf("%w: the available index moved %d entries past the device, more than the %d the ring holds", ErrBadQueue, n, q.Size)
	}
	return n, nil
}

// Pop takes the next available descriptor chain. It returns (nil, nil)
// when the ring is empty. An error wrapping ErrBadChain comes with the
// chain's head (the chain itself is unusable): return it with Push(head,
// 0) and go on. An error wrapping ErrBadQueue means the queue cannot be
// used any more.
func (q *Queue) Pop() (*Chain, error) {
	n, err := q.Pending()
	if err != nil || n == 0 {
		return nil, err
	}
	head, err := q.read16(q.AvailAddr + 4 + 2*uint64(q.lastAvail%q.Size))
	if err != nil {
		return nil, fmt.Errorf("%w: available ring entry: %v", ErrBadQueue, err)
	}
	if head >= q.Size {
		return nil, fmt.Errorf("%w: available ring names descriptor %d, the queue has %d", ErrBadQueue, head, q.Size)
	}
	q.lastAvail++
	c := &Chain{Head: head}
	if err := q.walk(c); err != nil {
		return c, err
	}
	return c, nil
}

// Unpop gives back the chain the last Pop returned, unserved and not yet
// pushed: the next Pop returns it again. It is for a device whose backend
// cannot take the chain's data now (back-pressure), so that the chain
// stays the driver's to wait on instead of being dropped.
func (q *Queue) Unpop() { q.lastAvail-- }

// walk follows the chain starting at c.Head, through at most one indirect
// table, and fills in its buffers.
func (q *Queue) walk(c *Chain) error {
	table, tableLen := q.DescAddr, uint32(q.Size)
	idx := c.Head
	indirect := false
	var raw [descSize]byte
	for steps := uint32(0); ; steps++ {
		if steps >= tableLen {
			return fmt.Errorf("%w: more than %d descriptors: the chain loops", ErrBadChain, tableLen)
		}
		if uint32(idx) >= tableLen {
			return fmt.Errorf("%w: descriptor %d is outside the %d-entry table", ErrBadChain, idx, tableLen)
		}
		if _, err := q.mem.ReadAt(raw[:], table+uint64(idx)*descSize); err != nil {
			return fmt.Errorf("%w: descriptor %d: %v", ErrBadChain, idx, err)
		}
		addr := binary.LittleEndian.Uint64(raw[0:])
		length := binary.LittleEndian.Uint32(raw[8:])
		flags := binary.LittleEndian.Uint16(raw[12:])
		next := binary.LittleEndian.Uint16(raw[14:])

		if flags&descFIndirect != 0 {
			switch {
			case !q.indirect:
				return fmt.Errorf("%w: indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated", ErrBadChain)
			case indirect:
				return fmt.Errorf("%w: indirect descriptor inside an indirect table", ErrBadChain)
			case flags&descFNext != 0:
				return fmt.Errorf("%w: indirect descriptor with the NEXT flag", ErrBadChain)
			case len(c.Readable)+len(c.Writable) > 0:
				return fmt.Errorf("%w: indirect descriptor after direct buffers", ErrBadChain)
			case length == 0 || length%descSize != 0:
				return fmt.Errorf("%w: indirect table of %d bytes (want a nonzero multiple of 16)", ErrBadChain, length)
			case length/descSize > MaxIndirectDescs:
				return fmt.Errorf("%w: indirect table of %d descriptors (at most %d)", ErrBadChain, length/descSize, MaxIndirectDescs)
			case addr+uint64(length) < addr:
				return fmt.Errorf("%w: indirect table wraps around the address space", ErrBadChain)
			}
			table, tableLen, idx, indirect, steps = addr, length/descSize, 0, true, ^uint32(0)
			continue
		}
		if addr+uint64(length) < addr {
			return fmt.Errorf("%w: buffer [%#x, +%d) wraps around the address space", ErrBadChain, addr, length)
		}
		b := Buffer{Addr: addr, Len: length}
		if flags&descFWrite != 0 {
			c.Writable = append(c.Writable, b)
		} else {
			if len(c.Writable) > 0 {
				return fmt.Errorf("%w: device-readable buffer after a device-writable one", ErrBadChain)
			}
			c.Readable = append(c.Readable, b)
		}
		if flags&descFNext == 0 {
			return nil
		}
		idx = next
	}
}

// Push returns a chain to the driver through the used ring, with the
// number of bytes the device wrote into its writable buffers. The ring
// entry and index are written through the queue's GuestMemory, so they are
// recorded as dirty. It does not raise the interrupt: see Notify.
func (q *Queue) Push(head uint16, written uint32) error {
	var e [8]byte
	binary.LittleEndian.PutUint32(e[0:], uint32(head))
	binary.LittleEndian.PutUint32(e[4:], written)
	if _, err := q.mem.WriteAt(e[:], q.UsedAddr+4+8*uint64(q.usedIdx%q.Size)); err != nil {
		return fmt.Errorf("%w: used ring entry: %v", ErrBadQueue, err)
	}
	q.usedIdx++
	var idx [2]byte
	binary.LittleEndian.PutUint16(idx[:], q.usedIdx)
	if _, err := q.mem.WriteAt(idx[:], q.UsedAddr+2); err != nil {
		return fmt.Errorf("%w: used ring index: %v", ErrBadQueue, err)
	}
	return nil
}

// Notify raises the used-buffer interrupt unless the driver suppressed it
// (VIRTQ_AVAIL_F_NO_INTERRUPT). Call it after pushing a batch of chains.
func (q *Queue) Notify() {
	if q.signal == nil {
		return
	}
	if flags, err := q.read16(q.AvailAddr); err == nil && flags&availFNoInterrupt != 0 {
		return
	}
	q.signal()
}

// Reader returns an io.Reader over the chain's readable buffers.
func (q *Queue) Reader(c *Chain) *ChainReader {
	return &ChainReader{mem: q.mem, bufs: c.Readable}
}

// Writer returns an io.Writer into the chain's writable buffers; writes go
// through GuestMemory.WriteAt and are therefore recorded as dirty.
func (q *Queue) Writer(c *Chain) *ChainWriter {
	return &ChainWriter{mem: q.mem, bufs: c.Writable}
}

// ChainReader reads a chain's device-readable buffers in order.
type ChainReader struct {
	mem  devices.GuestMemory
	bufs []Buffer
	off  uint32 // into bufs[0]
}

// Read implements io.Reader. Guest addresses outside RAM are an error.
func (r *ChainReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && len(r.bufs) > 0 {
		b := r.bufs[0]
		chunk := min(uint64(len(p)-n), uint64(b.Len-r.off))
		if chunk > 0 {
			if _, err := r.mem.ReadAt(p[n:n+int(chunk)], b.Addr+uint64(r.off)); err != nil {
				return n, fmt.Errorf("%w: read buffer [%#x, +%d): %v", ErrBadChain, b.Addr, b.Len, err)
			}
		}
		n += int(chunk)
		r.off += uint32(chunk)
		if r.off == b.Len {
			r.bufs, r.off = r.bufs[1:], 0
		}
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// ChainWriter writes a chain's device-writable buffers in order.
type ChainWriter struct {
	mem     devices.GuestMemory
	bufs    []Buffer
	off     uint32
	written uint32
}

// ErrChainFull is returned by ChainWriter.Write when the writable buffers
// are full.
var ErrChainFull = errors.New("virtio: descriptor chain has no room left")

// Write implements io.Writer.
func (w *ChainWriter) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(w.bufs) == 0 {
			return n, ErrChainFull
		}
		b := w.bufs[0]
		chunk := min(uint64(len(p)-n), uint64(b.Len-w.off))
		if chunk > 0 {
			if _, err := w.mem.WriteAt(p[n:n+int(chunk)], b.Addr+uint64(w.off)); err != nil {
				return n, fmt.Errorf("%w: write buffer [%#x, +%d): %v", ErrBadChain, b.Addr, b.Len, err)
			}
		}
		n += int(chunk)
		w.off += uint32(chunk)
		w.written += uint32(chunk)
		if w.off == b.Len {
			w.bufs, w.off = w.bufs[1:], 0
		}
	}
	return n, nil
}

// Written is the number of bytes written so far: the used length to Push.
func (w *ChainWriter) Written() uint32 { return w.written }

// drain pops every available chain of q, passes each well-formed one to
// serve, returns each to the driver with the length serve reports (0 for a
// malformed chain), and raises the interrupt once if it returned any. A
// broken queue is reported through env.Broken. name prefixes log lines.
func drain(env *Env, name string, q *Queue, serve func(c *Chain) uint32) {
	drainWhile(env, name, q, func(c *Chain) (uint32, bool) { return serve(c), true })
}

// drainWhile is drain for a device that may have to stop: when serve
// reports false, the chain goes back to the ring unserved (Unpop) and
// draining stops, leaving it and the chains after it for a later call.
func drainWhile(env *Env, name string, q *Queue, serve func(c *Chain) (uint32, bool)) {
	served := false
	defer func() {
		if served {
			q.Notify()
		}
	}()
	for {
		c, err := q.Pop()
		if err != nil && errors.Is(err, ErrBadQueue) {
			env.Broken(err)
			return
		}
		if c == nil {
			return
		}
		var n uint32
		if err != nil {
			env.Log.Warn(name+": malformed descriptor chain returned unprocessed", "err", err)
		} else {
			var ok bool
			if n, ok = serve(c); !ok {
				q.Unpop()
				return
			}
		}
		if err := q.Push(c.Head, n); err != nil {
			env.Broken(err)
			return
		}
		served = true
	}
}
