package virtio

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

func TestConsole(t *testing.T) {
	host, peer := net.Pipe()
	defer peer.Close()
	dev := NewConsole(host, quietLog)
	defer dev.Close()

	// Typed before the driver is up: kept until there is a buffer.
	go peer.Write([]byte("typed early\n"))
	time.Sleep(10 * time.Millisecond)

	d, _ := newMMIODriver(t, dev)
	d.setup(^uint64(0), 16)
	rx, tx := d.qs[consoleRXQueue], d.qs[consoleTXQueue]

	// Guest → host.
	h, _ := tx.chain(rd([]byte("hello ")), rd([]byte("host\n")))
	tx.publish(h)
	go d.write(RegQueueNotify, consoleTXQueue)
	buf := make([]byte, 64)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, buf[:11]); err != nil || string(buf[:11]) != "hello host\n" {
		t.Fatalf("host got %q, %v", buf[:11], err)
	}

	// Host → guest, across two small buffers.
	h1, a1 := rx.chain(wr(5))
	h2, a2 := rx.chain(wr(64))
	rx.publish(h1, h2)
	d.write(RegQueueNotify, consoleRXQueue)
	u := waitUsed(t, rx, 2)
	got := append(d.mem.get(a1[0], int(u[0].len)), d.mem.get(a2[0], int(u[1].len))...)
	if u[0].head != h1 || u[1].head != h2 || string(got) != "typed early\n" {
		t.Fatalf("guest got %q (used %+v)", got, u)
	}
	if !d.mem.wrote(a1[0], 5) {
		t.Fatal("console input not written through GuestMemory.WriteAt")
	}
}

func TestRNG(t *testing.T) {
	d, irq := newMMIODriver(t, NewRNG())
	d.setup(^uint64(0), 16)
	q := d.qs[0]
	h1, a1 := q.chain(wr(32))
	h2, _ := q.indirectChain(wr(maxEntropyPerChain + 100))
	bad, _ := q.chain(rd([]byte("readable only")), wr(8))
	q.publish(h1, h2, bad)
	d.write(RegQueueNotify, 0)
	u := q.used()
	if len(u) != 3 || u[0] != (usedElem{h1, 32}) || u[1] != (usedElem{h2, maxEntropyPerChain}) || u[2].head != bad {
		t.Fatalf("used = %+v", u)
	}
	if bytes.Equal(d.mem.get(a1[0], 32), make([]byte, 32)) {
		t.Fatal("no entropy written")
	}
	if !d.mem.wrote(a1[0], 32) || irq.count() != 1 {
		t.Fatalf("dirty tracking or interrupt missing (%d interrupts)", irq.count())
	}
}
