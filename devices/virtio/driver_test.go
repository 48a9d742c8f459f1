package virtio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"testing"
)

// testMem is guest RAM for tests: a byte slice from GPA 0 that records
// every WriteAt, as the VMM's dirty tracking does.
type testMem struct {
	mu     sync.Mutex
	b      []byte
	writes []Buffer
}

func newTestMem(size int) *testMem { return &testMem{b: make([]byte, size)} }

func (m *testMem) ReadAt(p []byte, gpa uint64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gpa > uint64(len(m.b)) || uint64(len(p)) > uint64(len(m.b))-gpa {
		return 0, fmt.Errorf("guest range [%#x, +%d) is not RAM", gpa, len(p))
	}
	return copy(p, m.b[gpa:]), nil
}

func (m *testMem) WriteAt(p []byte, gpa uint64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gpa > uint64(len(m.b)) || uint64(len(p)) > uint64(len(m.b))-gpa {
		return 0, fmt.Errorf("guest range [%#x, +%d) is not RAM", gpa, len(p))
	}
	m.writes = append(m.writes, Buffer{Addr: gpa, Len: uint32(len(p))})
	return copy(m.b[gpa:], p), nil
}

// raw accesses memory directly, as the guest does (no dirty record).
func (m *testMem) put(gpa uint64, p []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[gpa:], p)
}

func (m *testMem) get(gpa uint64, n int) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.b[gpa:gpa+uint64(n)]...)
}

// wrote reports whether the device wrote [gpa, gpa+n) through WriteAt.
func (m *testMem) wrote(gpa uint64, n int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	covered := make([]bool, n)
	for _, w := range m.writes {
		for i := range covered {
			a := gpa + uint64(i)
			if a >= w.Addr && a < w.Addr+uint64(w.Len) {
				covered[i] = true
			}
		}
	}
	for _, c := range covered {
		if !c {
			return false
		}
	}
	return true
}

// Guest-physical layout of a test driver's queue.
const (
	tdDesc  = 0x1000
	tdAvail = 0x3000
	tdUsed  = 0x4000
	tdHeap  = 0x10000
)

// testDriver plays the guest's virtio driver: it builds descriptor chains
// in guest memory and publishes them on the available ring.
type testDriver struct {
	t        testing.TB
	mem      *testMem
	size     uint16
	base     uint64 // of this queue's rings (several queues share one memory)
	next     uint16 // next free descriptor
	availIdx uint16
	usedSeen uint16
	heap     uint64
}

func newTestDriver(t testing.TB, mem *testMem, size uint16, base uint64) *testDriver {
	return &testDriver{t: t, mem: mem, size: size, base: base, heap: base + tdHeap}
}

func (d *testDriver) descAddr() uint64  { return d.base + tdDesc }
func (d *testDriver) availAddr() uint64 { return d.base + tdAvail }
func (d *testDriver) usedAddr() uint64  { return d.base + tdUsed }

// queue returns the device side of this driver's queue.
func (d *testDriver) queue(indirect bool, signal func()) *Queue {
	return NewQueue(d.mem, d.size, d.descAddr(), d.availAddr(), d.usedAddr(), indirect, signal)
}

// alloc returns n bytes of guest memory, filled with data if given.
func (d *testDriver) alloc(n int, data []byte) uint64 {
	a := d.heap
	d.heap += uint64(n+15) &^ 15
	if data != nil {
		d.mem.put(a, data)
	}
	return a
}

func (d *testDriver) writeDescAt(table uint64, i uint16, addr uint64, length uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], length)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	d.mem.put(table+uint64(i)*16, b[:])
}

// seg is one buffer of a chain to build: data for a device-readable
// buffer, or n bytes for a device-writable one.
type seg struct {
	data []byte
	n    int
}

func rd(data []byte) seg { return seg{data: data} }
func wr(n int) seg       { return seg{n: n} }

// chain builds a direct chain and returns its head and buffer addresses.
func (d *testDriver) chain(segs ...seg) (uint16, []uint64) {
	head := d.next
	var addrs []uint64
	for i, s := range segs {
		idx := d.next % d.size
		d.next = (idx + 1) % d.size
		var addr uint64
		var length uint32
		var flags uint16
		if s.data != nil {
			addr, length = d.alloc(len(s.data), s.data), uint32(len(s.data))
		} else {
			addr, length, flags = d.alloc(s.n, nil), uint32(s.n), descFWrite
		}
		if i < len(segs)-1 {
			flags |= descFNext
		}
		d.writeDescAt(d.descAddr(), idx, addr, length, flags, d.next)
		addrs = append(addrs, addr)
	}
	return head, addrs
}

// indirectChain builds one direct descriptor pointing at an indirect table
// holding segs.
func (d *testDriver) indirectChain(segs ...seg) (uint16, []uint64) {
	table := d.alloc(16*len(segs), nil)
	var addrs []uint64
	for i, s := range segs {
		var addr uint64
		var length uint32
		var flags uint16
		if s.data != nil {
			addr, length = d.alloc(len(s.data), s.data), uint32(len(s.data))
		} else {
			addr, length, flags = d.alloc(s.n, nil), uint32(s.n), descFWrite
		}
		if i < len(segs)-1 {
			flags |= descFNext
		}
		d.writeDescAt(table, uint16(i), addr, length, flags, uint16(i+1))
		addrs = append(addrs, addr)
	}
	head := d.next % d.size
	d.next = (head + 1) % d.size
	d.writeDescAt(d.descAddr(), head, table, uint32(16*len(segs)), descFIndirect, 0)
	return head, addrs
}

// publish makes heads available to the device.
func (d *testDriver) publish(heads ...uint16) {
	for _, h := range heads {
		var b [2]byte
		binary.LittleEndian.PutUint16(b[:], h)
		d.mem.put(d.availAddr()+4+2*uint64(d.availIdx%d.size), b[:])
		d.availIdx++
	}
	var idx [2]byte
	binary.LittleEndian.PutUint16(idx[:], d.availIdx)
	d.mem.put(d.availAddr()+2, idx[:])
}

func (d *testDriver) setAvailFlags(f uint16) {
	var b [2]byte
	binary.LittleEndian.PutUint16(b[:], f)
	d.mem.put(d.availAddr(), b[:])
}

type usedElem struct {
	head uint16
	len  uint32
}

// used returns the used-ring entries the driver has not seen yet.
func (d *testDriver) used() []usedElem {
	idx := binary.LittleEndian.Uint16(d.mem.get(d.usedAddr()+2, 2))
	var out []usedElem
	for ; d.usedSeen != idx; d.usedSeen++ {
		e := d.mem.get(d.usedAddr()+4+8*uint64(d.usedSeen%d.size), 8)
		out = append(out, usedElem{head: uint16(binary.LittleEndian.Uint32(e)), len: binary.LittleEndian.Uint32(e[4:])})
	}
	return out
}

// mmioDriver drives a device through its MMIO registers, as Linux's
// virtio_mmio driver does.
type mmioDriver struct {
	t   testing.TB
	m   *MMIO
	mem *testMem
	qs  []*testDriver
}

func (d *mmioDriver) read(off uint64) uint32 {
	var b [4]byte
	if err := d.m.ReadMMIO(d.m.Base()+off, b[:]); err != nil {
		d.t.Fatalf("read register %#x: %v", off, err)
	}
	return binary.LittleEndian.Uint32(b[:])
}

func (d *mmioDriver) write(off uint64, v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	if err := d.m.WriteMMIO(d.m.Base()+off, b[:]); err != nil {
		d.t.Fatalf("write register %#x: %v", off, err)
	}
}

// setup runs the whole initialisation: reset, ACKNOWLEDGE, DRIVER, accept
// features (all offered, masked by accept), FEATURES_OK, queues of the
// given size, DRIVER_OK. It fails the test if the device refuses.
func (d *mmioDriver) setup(accept uint64, qsize uint16) {
	d.t.Helper()
	d.write(RegStatus, 0)
	d.write(RegStatus, StatusAcknowledge)
	d.write(RegStatus, StatusAcknowledge|StatusDriver)
	var offered uint64
	for sel := uint32(0); sel < 2; sel++ {
		d.write(RegDeviceFeaturesSel, sel)
		offered |= uint64(d.read(RegDeviceFeatures)) << (32 * sel)
	}
	f := offered & accept
	d.write(RegDriverFeaturesSel, 0)
	d.write(RegDriverFeatures, uint32(f))
	d.write(RegDriverFeaturesSel, 1)
	d.write(RegDriverFeatures, uint32(f>>32))
	d.write(RegStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
	if d.read(RegStatus)&StatusFeaturesOK == 0 {
		d.t.Fatalf("device refused features %#x", f)
	}
	n := len(d.m.dev.QueueSizes())
	d.qs = nil
	for i := 0; i < n; i++ {
		q := newTestDriver(d.t, d.mem, qsize, uint64(i)*0x100000)
		d.qs = append(d.qs, q)
		d.write(RegQueueSel, uint32(i))
		if max := d.read(RegQueueNumMax); max < uint32(qsize) {
			d.t.Fatalf("queue %d: max size %d < %d", i, max, qsize)
		}
		d.write(RegQueueNum, uint32(qsize))
		d.write(RegQueueDescLow, uint32(q.descAddr()))
		d.write(RegQueueDescHigh, uint32(q.descAddr()>>32))
		d.write(RegQueueDriverLow, uint32(q.availAddr()))
		d.write(RegQueueDriverHigh, 0)
		d.write(RegQueueDeviceLow, uint32(q.usedAddr()))
		d.write(RegQueueDeviceHigh, 0)
		d.write(RegQueueReady, 1)
		if d.read(RegQueueReady) != 1 {
			d.t.Fatalf("queue %d not ready", i)
		}
	}
	d.write(RegStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK|StatusDriverOK)
}

// countIRQ counts interrupts.
type countIRQ struct {
	mu sync.Mutex
	n  int
	c  chan struct{}
}

func newCountIRQ() *countIRQ { return &countIRQ{c: make(chan struct{}, 1024)} }

func (c *countIRQ) Trigger() error {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	select {
	case c.c <- struct{}{}:
	default:
	}
	return nil
}

func (c *countIRQ) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// newMMIODriver puts dev behind a transport over fresh test memory.
func newMMIODriver(t testing.TB, dev Device) (*mmioDriver, *countIRQ) {
	irq := newCountIRQ()
	mem := newTestMem(8 << 20)
	m := NewMMIO(0xD0000000, dev, mem, irq, quietLog)
	t.Cleanup(func() { m.Close() })
	return &mmioDriver{t: t, m: m, mem: mem}, irq
}

// quietLog drops the warnings tests provoke on purpose.
var quietLog = slog.New(slog.DiscardHandler)
