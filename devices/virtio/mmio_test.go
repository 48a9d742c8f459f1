package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/tandemvm/tandem/devices"
)

// memBackend is an in-memory BlockBackend that records writes and flushes,
// as a replicating backend would see them.
type memBackend struct {
	data    []byte
	ro      bool
	writes  []int64 // offsets
	flushes int
	failIO  bool
}

func (b *memBackend) ReadAt(p []byte, off int64) (int, error) {
	if b.failIO {
		return 0, errors.New("injected read error")
	}
	return copy(p, b.data[off:]), nil
}

func (b *memBackend) WriteAt(p []byte, off int64) (int, error) {
	if b.failIO {
		return 0, errors.New("injected write error")
	}
	b.writes = append(b.writes, off)
	return copy(b.data[off:], p), nil
}

func (b *memBackend) Flush() error   { b.flushes++; return nil }
func (b *memBackend) Size() int64    { return int64(len(b.data)) }
func (b *memBackend) ReadOnly() bool { return b.ro }
func (b *memBackend) Close() error   { return nil }

func TestMMIOIdentity(t *testing.T) {
	d, _ := newMMIODriver(t, NewBlock(&memBackend{data: make([]byte, 4096)}, "id"))
	for _, r := range []struct {
		off  uint64
		want uint32
	}{
		{RegMagic, 0x74726976},
		{RegVersion, 2},
		{RegDeviceID, uint32(TypeBlock)},
		{RegVendorID, VendorID},
	} {
		if got := d.read(r.off); got != r.want {
			t.Errorf("register %#x = %#x, want %#x", r.off, got, r.want)
		}
	}
	d.write(RegDeviceFeaturesSel, 1)
	if d.read(RegDeviceFeatures)&1 == 0 {
		t.Error("VIRTIO_F_VERSION_1 not offered")
	}
	// Config space: capacity 8 sectors.
	var b [8]byte
	if err := d.m.ReadMMIO(d.m.Base()+RegConfig, b[:]); err != nil || binary.LittleEndian.Uint64(b[:]) != 8 {
		t.Errorf("capacity = %d, %v; want 8", binary.LittleEndian.Uint64(b[:]), err)
	}
}

func TestMMIOFeatureNegotiation(t *testing.T) {
	d, _ := newMMIODriver(t, NewBlock(&memBackend{data: make([]byte, 4096)}, ""))
	try := func(features uint64) bool {
		d.write(RegStatus, 0)
		d.write(RegStatus, StatusAcknowledge|StatusDriver)
		d.write(RegDriverFeaturesSel, 0)
		d.write(RegDriverFeatures, uint32(features))
		d.write(RegDriverFeaturesSel, 1)
		d.write(RegDriverFeatures, uint32(features>>32))
		d.write(RegStatus, StatusAcknowledge|StatusDriver|StatusFeaturesOK)
		return d.read(RegStatus)&StatusFeaturesOK != 0
	}
	if !try(FeatureVersion1 | blkFFlush) {
		t.Error("a subset with VERSION_1 was refused")
	}
	if try(blkFFlush) {
		t.Error("a legacy driver (no VERSION_1) was accepted")
	}
	if try(FeatureVersion1 | 1<<40) {
		t.Error("a feature the device does not offer was accepted")
	}
	if try(FeatureVersion1 | blkFRO) {
		t.Error("VIRTIO_BLK_F_RO accepted on a writable disk")
	}
}

func TestMMIOQueueSetupRules(t *testing.T) {
	d, _ := newMMIODriver(t, NewBlock(&memBackend{data: make([]byte, 4096)}, ""))
	d.write(RegStatus, StatusAcknowledge|StatusDriver)
	d.write(RegQueueSel, 0)
	d.write(RegQueueNum, 100) // not a power of two
	d.write(RegQueueDescLow, 0x1000)
	d.write(RegQueueReady, 1)
	if d.read(RegQueueReady) != 0 {
		t.Fatal("a queue of size 100 was enabled")
	}
	d.write(RegQueueSel, 7) // no such queue
	if d.read(RegQueueNumMax) != 0 {
		t.Fatal("a queue that does not exist has a maximum size")
	}
	d.write(RegQueueReady, 1) // ignored, no panic
}

// blkRequest publishes one request and returns the head, the data buffer
// address and the status byte address.
func blkRequest(q *testDriver, typ uint32, sector uint64, out []byte, in int) (uint16, uint64, uint64) {
	hdr := make([]byte, 16)
	binary.LittleEndian.PutUint32(hdr[0:], typ)
	binary.LittleEndian.PutUint64(hdr[8:], sector)
	segs := []seg{rd(hdr)}
	if out != nil {
		segs = append(segs, rd(out))
	}
	if in > 0 {
		segs = append(segs, wr(in))
	}
	segs = append(segs, wr(1))
	head, addrs := q.chain(segs...)
	q.publish(head)
	var data uint64
	if len(addrs) == 3 {
		data = addrs[1]
	}
	return head, data, addrs[len(addrs)-1]
}

func TestBlockRequests(t *testing.T) {
	disk := make([]byte, 64*SectorSize)
	for i := range disk {
		disk[i] = byte(i / SectorSize)
	}
	be := &memBackend{data: disk}
	d, irq := newMMIODriver(t, NewBlock(be, "tandem-disk-0"))
	d.setup(^uint64(0), 16)
	q := d.qs[0]

	// Read sectors 3 and 4.
	head, data, status := blkRequest(q, blkTIn, 3, nil, 2*SectorSize)
	d.write(RegQueueNotify, 0)
	u := q.used()
	if len(u) != 1 || u[0].head != head || u[0].len != 2*SectorSize+1 {
		t.Fatalf("read: used = %+v", u)
	}
	if got := d.mem.get(status, 1)[0]; got != blkSOK {
		t.Fatalf("read: status %d", got)
	}
	if got := d.mem.get(data, 2*SectorSize); !bytes.Equal(got, disk[3*SectorSize:5*SectorSize]) {
		t.Fatal("read: wrong data")
	}
	if !d.mem.wrote(data, 2*SectorSize) || !d.mem.wrote(status, 1) {
		t.Fatal("read: data or status not written through GuestMemory.WriteAt")
	}
	if irq.count() != 1 || d.read(RegInterruptStatus)&IntUsedBuffer == 0 {
		t.Fatalf("read: %d interrupts, status %#x", irq.count(), d.read(RegInterruptStatus))
	}
	d.write(RegInterruptACK, IntUsedBuffer)
	if d.read(RegInterruptStatus) != 0 {
		t.Fatal("interrupt not acknowledged")
	}

	// Write sector 10, then flush.
	payload := bytes.Repeat([]byte{0xAB}, SectorSize)
	_, _, status = blkRequest(q, blkTOut, 10, payload, 0)
	_, _, fstatus := blkRequest(q, blkTFlush, 0, nil, 0)
	d.write(RegQueueNotify, 0)
	if u := q.used(); len(u) != 2 || u[0].len != 1 || u[1].len != 1 {
		t.Fatalf("write+flush: used = %+v", u)
	}
	if d.mem.get(status, 1)[0] != blkSOK || d.mem.get(fstatus, 1)[0] != blkSOK {
		t.Fatal("write or flush failed")
	}
	if !bytes.Equal(disk[10*SectorSize:11*SectorSize], payload) || len(be.writes) != 1 || be.writes[0] != 10*SectorSize || be.flushes != 1 {
		t.Fatalf("backend saw writes %v, flushes %d", be.writes, be.flushes)
	}

	// GET_ID.
	_, data, status = blkRequest(q, blkTGetID, 0, nil, 20)
	d.write(RegQueueNotify, 0)
	if got := string(bytes.TrimRight(d.mem.get(data, 20), "\x00")); got != "tandem-disk-0" || d.mem.get(status, 1)[0] != blkSOK {
		t.Fatalf("GET_ID = %q", got)
	}
	if u := q.used(); len(u) != 1 || u[0].len != 21 {
		t.Fatalf("GET_ID: used = %+v", u)
	}

	// Errors: past the end, partial sector, unknown type, backend failure.
	for _, r := range []struct {
		name   string
		typ    uint32
		sector uint64
		out    []byte
		in     int
		fail   bool
		want   byte
	}{
		{"read past the end", blkTIn, 63, nil, 2 * SectorSize, false, blkSIOErr},
		{"write past the end", blkTOut, 64, payload, 0, false, blkSIOErr},
		{"huge sector", blkTIn, ^uint64(0) / 2, nil, SectorSize, false, blkSIOErr},
		{"partial sector", blkTIn, 0, nil, 100, false, blkSIOErr},
		{"unsupported type", 99, 0, nil, 0, false, blkSUnsupp},
		{"disk error", blkTIn, 0, nil, SectorSize, true, blkSIOErr},
	} {
		be.failIO = r.fail
		_, _, status := blkRequest(q, r.typ, r.sector, r.out, r.in)
		d.write(RegQueueNotify, 0)
		be.failIO = false
		if got := d.mem.get(status, 1)[0]; got != r.want {
			t.Errorf("%s: status %d, want %d", r.name, got, r.want)
		}
		if u := q.used(); len(u) != 1 {
			t.Errorf("%s: used = %+v", r.name, u)
		}
	}
}

func TestBlockReadOnly(t *testing.T) {
	be := &memBackend{data: make([]byte, 8*SectorSize), ro: true}
	dev := NewBlock(be, "")
	if dev.Features()&blkFRO == 0 {
		t.Fatal("read-only disk does not offer VIRTIO_BLK_F_RO")
	}
	d, _ := newMMIODriver(t, dev)
	d.setup(^uint64(0), 16)
	_, _, status := blkRequest(d.qs[0], blkTOut, 0, make([]byte, SectorSize), 0)
	d.write(RegQueueNotify, 0)
	if got := d.mem.get(status, 1)[0]; got != blkSIOErr || len(be.writes) != 0 {
		t.Fatalf("write to a read-only disk: status %d, backend writes %v", got, be.writes)
	}
}

// TestBlockMalformedChains sends requests a broken driver could send; each
// must be answered or returned, and the device must keep working.
func TestBlockMalformedChains(t *testing.T) {
	be := &memBackend{data: make([]byte, 8*SectorSize)}
	d, _ := newMMIODriver(t, NewBlock(be, ""))
	d.setup(^uint64(0), 16)
	q := d.qs[0]

	// No status byte at all.
	h1, _ := q.chain(rd(make([]byte, 16)))
	// A header shorter than 16 bytes.
	h2, _ := q.chain(rd(make([]byte, 5)), wr(1))
	// A loop.
	q.writeDescAt(q.descAddr(), 10, q.alloc(16, nil), 16, descFNext, 11)
	q.writeDescAt(q.descAddr(), 11, q.alloc(16, nil), 16, descFNext, 10)
	q.next = 12
	// Data buffer outside guest RAM.
	hdr := make([]byte, 16)
	q.writeDescAt(q.descAddr(), 12, q.alloc(16, hdr), 16, descFNext, 13)
	q.writeDescAt(q.descAddr(), 13, 1<<40, SectorSize, descFWrite|descFNext, 14)
	q.writeDescAt(q.descAddr(), 14, q.alloc(1, nil), 1, descFWrite, 0)
	q.next = 15
	q.publish(h1, h2, 10, 12)
	d.write(RegQueueNotify, 0)
	if u := q.used(); len(u) != 4 {
		t.Fatalf("used = %+v, want all 4 requests returned", u)
	}
	// Still works.
	_, _, status := blkRequest(q, blkTIn, 0, nil, SectorSize)
	d.write(RegQueueNotify, 0)
	if q.used()[0].len != SectorSize+1 || d.mem.get(status, 1)[0] != blkSOK {
		t.Fatal("device stopped working after malformed requests")
	}
	if d.read(RegStatus)&StatusDeviceNeedsReset != 0 {
		t.Fatal("malformed chains set DEVICE_NEEDS_RESET")
	}
}

func TestBrokenQueueNeedsReset(t *testing.T) {
	d, irq := newMMIODriver(t, NewBlock(&memBackend{data: make([]byte, 4096)}, ""))
	d.setup(^uint64(0), 16)
	q := d.qs[0]
	q.publish(200) // head out of range
	d.write(RegQueueNotify, 0)
	if d.read(RegStatus)&StatusDeviceNeedsReset == 0 || d.read(RegInterruptStatus)&IntConfigChanged == 0 || irq.count() == 0 {
		t.Fatalf("status %#x, interrupt status %#x, %d interrupts", d.read(RegStatus), d.read(RegInterruptStatus), irq.count())
	}
	// A reset and a new setup bring the device back.
	d.setup(^uint64(0), 16)
	if d.read(RegStatus)&StatusDeviceNeedsReset != 0 {
		t.Fatal("DEVICE_NEEDS_RESET survived a reset")
	}
	_, _, status := blkRequest(d.qs[0], blkTIn, 0, nil, SectorSize)
	d.write(RegQueueNotify, 0)
	if d.mem.get(status, 1)[0] != blkSOK {
		t.Fatal("device did not work after reset")
	}
}

func TestMMIOStateRoundTrip(t *testing.T) {
	be := &memBackend{data: make([]byte, 8*SectorSize)}
	d, _ := newMMIODriver(t, NewBlock(be, ""))
	d.setup(^uint64(0), 16)
	blkRequest(d.qs[0], blkTIn, 0, nil, SectorSize)
	d.write(RegQueueNotify, 0)
	d.qs[0].used()
	st, err := d.m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := d.m.SaveState(); !bytes.Equal(st, again) {
		t.Fatal("SaveState is not deterministic")
	}

	// A fresh transport over the same memory continues where it was.
	irq := newCountIRQ()
	m2 := NewMMIO(d.m.Base(), NewBlock(be, ""), d.mem, irq, quietLog)
	defer m2.Close()
	var _ devices.Stateful = m2
	if err := m2.LoadState(st); err != nil {
		t.Fatal(err)
	}
	d2 := &mmioDriver{t: t, m: m2, mem: d.mem, qs: d.qs}
	if d2.read(RegStatus)&StatusDriverOK == 0 {
		t.Fatal("restored device is not live")
	}
	_, _, status := blkRequest(d.qs[0], blkTIn, 1, nil, SectorSize)
	d2.write(RegQueueNotify, 0)
	if u := d.qs[0].used(); len(u) != 1 || d.mem.get(status, 1)[0] != blkSOK {
		t.Fatalf("restored device: used %+v", u)
	}

	// Bad states are refused with ErrBadState.
	for name, b := range map[string][]byte{
		"empty":       nil,
		"version":     append([]byte{9}, st[1:]...),
		"truncated":   st[:len(st)-1],
		"long":        append(append([]byte(nil), st...), 0),
		"ready flag":  func() []byte { c := append([]byte(nil), st...); c[mmioStateHeader+2] = 7; return c }(),
		"queue count": func() []byte { c := append([]byte(nil), st...); c[mmioStateHeader-2] = 3; return c }(),
	} {
		if err := m2.LoadState(b); !errors.Is(err, devices.ErrBadState) {
			t.Errorf("%s: LoadState = %v, want ErrBadState", name, err)
		}
	}
}

// TestLoadStateWhilePaused: a state loads into a paused transport (a
// replication node's shadow restores every epoch into a paused VM), and the
// device is still paused afterwards (its lock held until Resume), then
// serves its queue.
func TestLoadStateWhilePaused(t *testing.T) {
	be := &memBackend{data: make([]byte, 8*SectorSize)}
	blk := NewBlock(be, "")
	d, _ := newMMIODriver(t, blk)
	d.setup(^uint64(0), 16)
	st, err := d.m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	d.m.Pause()
	loaded := make(chan error, 1)
	go func() { loaded <- d.m.LoadState(st) }()
	select {
	case err := <-loaded:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("LoadState into a paused transport did not return")
	}
	if blk.mu.TryLock() {
		t.Fatal("the device is no longer paused after LoadState")
	}
	d.m.Resume()
	_, _, status := blkRequest(d.qs[0], blkTIn, 0, nil, SectorSize)
	d.write(RegQueueNotify, 0)
	if d.mem.get(status, 1)[0] != blkSOK {
		t.Fatal("the device did not serve the request after Resume")
	}
}

func FuzzMMIOLoadState(f *testing.F) {
	be := &memBackend{data: make([]byte, 8*SectorSize)}
	d, _ := newMMIODriver(f, NewBlock(be, ""))
	d.setup(^uint64(0), 16)
	st, _ := d.m.SaveState()
	f.Add(st)
	f.Fuzz(func(t *testing.T, b []byte) {
		m := NewMMIO(0xD0000000, NewBlock(be, ""), newTestMem(1<<20), newCountIRQ(), quietLog)
		defer m.Close()
		if err := m.LoadState(b); err != nil && !errors.Is(err, devices.ErrBadState) {
			t.Fatalf("LoadState error %v does not wrap ErrBadState", err)
		}
	})
}

// FuzzBlockRequests lets arbitrary guest memory stand for the descriptor
// table, available ring and request buffers of a live virtio-blk device:
// serving them must never panic, and the device must stay usable or ask
// for a reset.
func FuzzBlockRequests(f *testing.F) {
	seed := newTestMem(1 << 20)
	q := newTestDriver(f, seed, 16, 0)
	hdr := make([]byte, 16)
	h, _ := q.chain(rd(hdr), wr(SectorSize), wr(1))
	q.publish(h)
	f.Add(seed.get(tdDesc, 16*16), seed.get(tdAvail, 4+2*16), seed.get(tdHeap, 1024))
	be := &memBackend{data: make([]byte, 16*SectorSize)}
	f.Fuzz(func(t *testing.T, desc, avail, heap []byte) {
		d, _ := newMMIODriver(t, NewBlock(be, "fuzz"))
		d.setup(^uint64(0), 16)
		d.mem.put(tdDesc, desc[:min(len(desc), 16*16)])
		d.mem.put(tdAvail, avail[:min(len(avail), 4+2*16)])
		d.mem.put(tdHeap, heap[:min(len(heap), 0x4000)])
		d.write(RegQueueNotify, 0)
		d.write(RegQueueNotify, 0)
	})
}
