package virtio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func TestPopEmpty(t *testing.T) {
	d := newTestDriver(t, newTestMem(1<<20), 8, 0)
	q := d.queue(true, nil)
	if c, err := q.Pop(); c != nil || err != nil {
		t.Fatalf("Pop on an empty ring = %v, %v; want nil, nil", c, err)
	}
}

func TestPopValidChain(t *testing.T) {
	d := newTestDriver(t, newTestMem(1<<20), 8, 0)
	head, addrs := d.chain(rd([]byte("request")), wr(64))
	d.publish(head)
	q := d.queue(false, nil)
	c, err := q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	if c.Head != head || len(c.Readable) != 1 || len(c.Writable) != 1 {
		t.Fatalf("chain = %+v", c)
	}
	if c.Readable[0] != (Buffer{addrs[0], 7}) || c.Writable[0] != (Buffer{addrs[1], 64}) {
		t.Fatalf("buffers = %+v", c)
	}
	if c, err := q.Pop(); c != nil || err != nil {
		t.Fatalf("second Pop = %v, %v; want empty", c, err)
	}
}

func TestPopChainedAcrossBuffers(t *testing.T) {
	mem := newTestMem(1 << 20)
	d := newTestDriver(t, mem, 16, 0)
	head, addrs := d.chain(rd([]byte("hea")), rd([]byte("der+")), rd([]byte("payload")), wr(3), wr(5), wr(1))
	d.publish(head)
	q := d.queue(false, nil)
	c, err := q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Readable) != 3 || len(c.Writable) != 3 || c.ReadableLen() != 14 || c.WritableLen() != 9 {
		t.Fatalf("chain = %+v", c)
	}
	got, err := io.ReadAll(q.Reader(c))
	if err != nil || string(got) != "header+payload" {
		t.Fatalf("read chain = %q, %v", got, err)
	}
	w := q.Writer(c)
	if n, err := w.Write([]byte("abcdefgh")); n != 8 || err != nil {
		t.Fatalf("write 8 = %d, %v", n, err)
	}
	if _, err := w.Write([]byte("yz")); !errors.Is(err, ErrChainFull) {
		t.Fatalf("write past the end: %v, want ErrChainFull", err)
	}
	if w.Written() != 9 {
		t.Fatalf("Written = %d, want 9", w.Written())
	}
	if s := string(mem.get(addrs[3], 3)) + string(mem.get(addrs[4], 5)) + string(mem.get(addrs[5], 1)); s != "abcdefghy" {
		t.Fatalf("guest buffers hold %q", s)
	}
	for i := 3; i < 6; i++ {
		if !mem.wrote(addrs[i], int(c.Writable[i-3].Len)) {
			t.Errorf("buffer %d was not written through GuestMemory.WriteAt (not dirty-tracked)", i)
		}
	}
}

func TestPopIndirect(t *testing.T) {
	d := newTestDriver(t, newTestMem(1<<20), 8, 0)
	head, addrs := d.indirectChain(rd([]byte("hdr")), rd([]byte("data")), wr(16), wr(1))
	d.publish(head)
	q := d.queue(true, nil)
	c, err := q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	want := &Chain{Head: head,
		Readable: []Buffer{{addrs[0], 3}, {addrs[1], 4}},
		Writable: []Buffer{{addrs[2], 16}, {addrs[3], 1}}}
	if c.Head != want.Head || !equalBufs(c.Readable, want.Readable) || !equalBufs(c.Writable, want.Writable) {
		t.Fatalf("chain = %+v, want %+v", c, want)
	}
}

func equalBufs(a, b []Buffer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPopMalformed builds chains a buggy or hostile driver could make and
// checks that each is refused with the right class of error, and that a
// refused chain does not stop the queue.
func TestPopMalformed(t *testing.T) {
	const size = 8
	tests := []struct {
		name     string
		indirect bool
		build    func(d *testDriver) uint16 // returns the head to publish
		want     error
	}{
		{"loop", false, func(d *testDriver) uint16 {
			a := d.alloc(8, nil)
			d.writeDescAt(d.descAddr(), 0, a, 8, descFNext, 1)
			d.writeDescAt(d.descAddr(), 1, a, 8, descFNext, 0)
			return 0
		}, ErrBadChain},
		{"self loop", false, func(d *testDriver) uint16 {
			d.writeDescAt(d.descAddr(), 2, d.alloc(8, nil), 8, descFNext, 2)
			return 2
		}, ErrBadChain},
		{"next out of range", false, func(d *testDriver) uint16 {
			d.writeDescAt(d.descAddr(), 0, d.alloc(8, nil), 8, descFNext, size)
			return 0
		}, ErrBadChain},
		{"readable after writable", false, func(d *testDriver) uint16 {
			h, _ := d.chain(wr(8), rd([]byte("x")))
			return h
		}, ErrBadChain},
		{"buffer wraps the address space", false, func(d *testDriver) uint16 {
			d.writeDescAt(d.descAddr(), 0, ^uint64(0)-4, 64, 0, 0)
			return 0
		}, ErrBadChain},
		{"indirect not negotiated", false, func(d *testDriver) uint16 {
			h, _ := d.indirectChain(rd([]byte("x")))
			return h
		}, ErrBadChain},
		{"indirect with NEXT", true, func(d *testDriver) uint16 {
			tbl := d.alloc(16, nil)
			d.writeDescAt(tbl, 0, d.alloc(8, nil), 8, 0, 0)
			d.writeDescAt(d.descAddr(), 0, tbl, 16, descFIndirect|descFNext, 1)
			d.writeDescAt(d.descAddr(), 1, d.alloc(8, nil), 8, 0, 0)
			return 0
		}, ErrBadChain},
		{"nested indirect", true, func(d *testDriver) uint16 {
			inner := d.alloc(16, nil)
			d.writeDescAt(inner, 0, d.alloc(8, nil), 8, 0, 0)
			outer := d.alloc(16, nil)
			d.writeDescAt(outer, 0, inner, 16, descFIndirect, 0)
			d.writeDescAt(d.descAddr(), 0, outer, 16, descFIndirect, 0)
			return 0
		}, ErrBadChain},
		{"indirect table of odd length", true, func(d *testDriver) uint16 {
			d.writeDescAt(d.descAddr(), 0, d.alloc(32, nil), 20, descFIndirect, 0)
			return 0
		}, ErrBadChain},
		{"indirect table of zero length", true, func(d *testDriver) uint16 {
			d.writeDescAt(d.descAddr(), 0, d.alloc(32, nil), 0, descFIndirect, 0)
			return 0
		}, ErrBadChain},
		{"indirect table too long", true, func(d *testDriver) uint16 {
			d.writeDescAt(d.descAddr(), 0, d.alloc(16, nil), 16*(MaxIndirectDescs+1), descFIndirect, 0)
			return 0
		}, ErrBadChain},
		{"indirect table outside RAM", true, func(d *testDriver) uint16 {
			d.writeDescAt(d.descAddr(), 0, 1<<40, 32, descFIndirect, 0)
			return 0
		}, ErrBadChain},
		{"loop inside an indirect table", true, func(d *testDriver) uint16 {
			tbl := d.alloc(32, nil)
			a := d.alloc(8, nil)
			d.writeDescAt(tbl, 0, a, 8, descFNext, 1)
			d.writeDescAt(tbl, 1, a, 8, descFNext, 0)
			d.writeDescAt(d.descAddr(), 0, tbl, 32, descFIndirect, 0)
			return 0
		}, ErrBadChain},
		{"indirect next out of its table", true, func(d *testDriver) uint16 {
			tbl := d.alloc(16, nil)
			d.writeDescAt(tbl, 0, d.alloc(8, nil), 8, descFNext, 1)
			d.writeDescAt(d.descAddr(), 0, tbl, 16, descFIndirect, 0)
			return 0
		}, ErrBadChain},
		{"head out of range", false, func(d *testDriver) uint16 {
			return size + 3
		}, ErrBadQueue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := newTestMem(1 << 20)
			d := newTestDriver(t, mem, size, 0)
			head := tc.build(d)
			d.next = 4 // a good chain after the bad one, in free descriptors
			good, _ := d.chain(rd([]byte("ok")))
			d.publish(head, good)
			q := d.queue(tc.indirect, nil)
			c, err := q.Pop()
			if !errors.Is(err, tc.want) {
				t.Fatalf("Pop error = %v, want %v", err, tc.want)
			}
			if tc.want == ErrBadQueue {
				if c != nil {
					t.Fatalf("a broken queue returned chain %+v", c)
				}
				return
			}
			if c == nil || c.Head != head {
				t.Fatalf("malformed chain came back as %+v, want head %d for Push", c, head)
			}
			if err := q.Push(c.Head, 0); err != nil {
				t.Fatal(err)
			}
			c, err = q.Pop()
			if err != nil || c == nil || c.Head != good {
				t.Fatalf("after a malformed chain, Pop = %+v, %v; want the good chain %d", c, err, good)
			}
		})
	}
}

func TestAvailIndexRunningAhead(t *testing.T) {
	d := newTestDriver(t, newTestMem(1<<20), 8, 0)
	var idx [2]byte
	binary.LittleEndian.PutUint16(idx[:], 9) // 9 entries in an 8-entry ring
	d.mem.put(d.availAddr()+2, idx[:])
	if _, err := d.queue(false, nil).Pop(); !errors.Is(err, ErrBadQueue) {
		t.Fatalf("Pop = %v, want ErrBadQueue", err)
	}
}

func TestRingsOutsideRAM(t *testing.T) {
	mem := newTestMem(1 << 20)
	q := NewQueue(mem, 8, 1<<30, 1<<30, 1<<30, false, nil)
	if _, err := q.Pop(); !errors.Is(err, ErrBadQueue) {
		t.Fatalf("Pop = %v, want ErrBadQueue", err)
	}
	if err := q.Push(0, 0); !errors.Is(err, ErrBadQueue) {
		t.Fatalf("Push = %v, want ErrBadQueue", err)
	}
}

func TestBufferOutsideRAM(t *testing.T) {
	d := newTestDriver(t, newTestMem(1<<20), 8, 0)
	d.writeDescAt(d.descAddr(), 0, 1<<30, 16, 0, 0) // readable, not RAM
	d.writeDescAt(d.descAddr(), 1, 1<<30, 16, descFWrite, 0)
	d.publish(0, 1)
	q := d.queue(false, nil)
	c, err := q.Pop()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(q.Reader(c)); !errors.Is(err, ErrBadChain) {
		t.Fatalf("read of a buffer outside RAM: %v, want ErrBadChain", err)
	}
	c, _ = q.Pop()
	if _, err := q.Writer(c).Write([]byte("x")); !errors.Is(err, ErrBadChain) {
		t.Fatalf("write to a buffer outside RAM: %v, want ErrBadChain", err)
	}
}

func TestPushAndNotify(t *testing.T) {
	mem := newTestMem(1 << 20)
	d := newTestDriver(t, mem, 4, 0)
	signals := 0
	q := d.queue(false, func() { signals++ })
	for round := 0; round < 3; round++ { // wraps the 4-entry ring
		var heads []uint16
		for i := 0; i < 2; i++ {
			d.next = uint16(2 * i)
			h, _ := d.chain(wr(8))
			heads = append(heads, h)
		}
		d.publish(heads...)
		for i, h := range heads {
			c, err := q.Pop()
			if err != nil || c.Head != h {
				t.Fatalf("round %d: Pop = %+v, %v", round, c, err)
			}
			if err := q.Push(c.Head, uint32(10*round+i)); err != nil {
				t.Fatal(err)
			}
		}
		q.Notify()
		got := d.used()
		if len(got) != 2 || got[0] != (usedElem{heads[0], uint32(10 * round)}) || got[1] != (usedElem{heads[1], uint32(10*round + 1)}) {
			t.Fatalf("round %d: used ring = %+v", round, got)
		}
	}
	if signals != 3 {
		t.Fatalf("%d interrupts, want 3", signals)
	}
	if !mem.wrote(d.usedAddr()+2, 2) || !mem.wrote(d.usedAddr()+4, 4*8) {
		t.Fatal("used ring not written through GuestMemory.WriteAt")
	}
	d.setAvailFlags(availFNoInterrupt)
	q.Notify()
	if signals != 3 {
		t.Fatal("Notify raised the interrupt although the driver suppressed it")
	}
}

func TestValidate(t *testing.T) {
	good := Queue{Size: 256, DescAddr: 0x1000, AvailAddr: 0x2002, UsedAddr: 0x3004}
	if err := good.Validate(256); err != nil {
		t.Fatal(err)
	}
	for _, q := range []Queue{
		{Size: 0, DescAddr: 0x1000},
		{Size: 100, DescAddr: 0x1000},
		{Size: 512, DescAddr: 0x1000},
		{Size: 256, DescAddr: 0x1008},
		{Size: 256, DescAddr: 0x1000, AvailAddr: 1},
		{Size: 256, DescAddr: 0x1000, UsedAddr: 2},
	} {
		if err := q.Validate(256); !errors.Is(err, ErrBadQueue) {
			t.Errorf("Validate(%+v) = %v, want ErrBadQueue", q, err)
		}
	}
}

// FuzzPop feeds arbitrary descriptor tables and available rings to Pop and
// the chain reader and writer: they must never panic, never loop, and
// never yield more buffers than a direct chain plus one indirect table
// can hold.
func FuzzPop(f *testing.F) {
	// Seeds: a valid chain, an indirect chain, a loop.
	seed := func(build func(d *testDriver) []uint16, indirect bool) {
		mem := newTestMem(0x20000)
		d := newTestDriver(f, mem, 8, 0)
		heads := build(d)
		d.publish(heads...)
		f.Add(mem.get(tdDesc, 8*16), mem.get(tdAvail, 4+2*8), mem.get(tdHeap, 256), indirect)
	}
	seed(func(d *testDriver) []uint16 {
		h, _ := d.chain(rd([]byte("hello")), wr(4))
		return []uint16{h}
	}, false)
	seed(func(d *testDriver) []uint16 {
		h, _ := d.indirectChain(rd([]byte("x")), wr(2))
		return []uint16{h}
	}, true)
	seed(func(d *testDriver) []uint16 {
		d.writeDescAt(d.descAddr(), 0, tdHeap, 8, descFNext, 1)
		d.writeDescAt(d.descAddr(), 1, tdHeap, 8, descFNext, 0)
		return []uint16{0, 1}
	}, false)

	f.Fuzz(func(t *testing.T, desc, avail, heap []byte, indirect bool) {
		mem := newTestMem(0x20000)
		mem.put(tdDesc, desc[:min(len(desc), 0x2000)])
		mem.put(tdAvail, avail[:min(len(avail), 0x1000)])
		mem.put(tdHeap, heap[:min(len(heap), 0x10000)])
		q := NewQueue(mem, 8, tdDesc, tdAvail, tdUsed, indirect, func() {})
		for i := 0; i < 64; i++ {
			c, err := q.Pop()
			if errors.Is(err, ErrBadQueue) || c == nil {
				return
			}
			if n := len(c.Readable) + len(c.Writable); n > 8+MaxIndirectDescs {
				t.Fatalf("chain of %d buffers", n)
			}
			if err == nil {
				var buf bytes.Buffer
				_, _ = io.CopyN(&buf, q.Reader(c), 1<<16)
				_, _ = q.Writer(c).Write(make([]byte, min(c.WritableLen(), 1<<16)))
			}
			if err := q.Push(c.Head, 0); err != nil {
				t.Fatalf("Push: %v", err)
			}
		}
	})
}
