package virtio

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seqpacketPair returns two connected frame files: the device's backend
// end and the test's peer end.
func seqpacketPair(t *testing.T) (*os.File, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fds[0]), "device"), os.NewFile(uintptr(fds[1]), "peer")
}

var testMAC = net.HardwareAddr{0x02, 0x54, 0x4e, 0x44, 0x4d, 0x01}

// waitUsed polls the driver's used ring until n entries arrived.
func waitUsed(t *testing.T, q *testDriver, n int) []usedElem {
	t.Helper()
	var got []usedElem
	deadline := time.Now().Add(5 * time.Second)
	for len(got) < n {
		got = append(got, q.used()...)
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d used entries after 5 s: %+v", len(got), n, got)
		}
		time.Sleep(time.Millisecond)
	}
	return got
}

// newPairedNet returns a virtio-net device over one end of a frame socket
// pair, and the test's peer end; both are closed when the test ends.
func newPairedNet(t *testing.T) (*Net, *os.File) {
	t.Helper()
	devEnd, peer := seqpacketPair(t)
	t.Cleanup(func() { peer.Close() })
	dev, err := NewNet(FrameFile(devEnd), testMAC, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev, peer
}

func TestNetTransmitAndReceive(t *testing.T) {
	dev, peer := newPairedNet(t)
	d, irq := newMMIODriver(t, dev)

	var cfg [8]byte
	dev.ReadConfig(0, cfg[:])
	if !bytes.Equal(cfg[:6], testMAC) || binary.LittleEndian.Uint16(cfg[6:]) != netSLinkUp {
		t.Fatalf("config = % x", cfg)
	}

	d.setup(^uint64(0), 16)
	rx, tx := d.qs[netRXQueue], d.qs[netTXQueue]

	// Transmit: header and frame split across descriptors.
	frame := append(bytes.Repeat([]byte{0xFF}, 6), []byte("\x02TNDM\x01\x08\x00hello, peer")...)
	head, _ := tx.chain(rd(make([]byte, netHdrSize)), rd(frame[:10]), rd(frame[10:]))
	tx.publish(head)
	d.write(RegQueueNotify, netTXQueue)
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := peer.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], frame) {
		t.Fatalf("peer got %q, %v; want %q", buf[:n], err, frame)
	}
	if u := tx.used(); len(u) != 1 || u[0].head != head || u[0].len != 0 {
		t.Fatalf("tx used = %+v", u)
	}

	// Receive a frame sent before any buffer is posted: it waits.
	in := []byte("incoming frame from the host side")
	if _, err := peer.Write(in); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if u := rx.used(); len(u) != 0 {
		t.Fatalf("frame delivered without a buffer: %+v", u)
	}
	before := irq.count()
	h, addrs := rx.chain(wr(netHdrSize), wr(1514))
	rx.publish(h)
	d.write(RegQueueNotify, netRXQueue)
	u := waitUsed(t, rx, 1)
	if u[0].head != h || u[0].len != uint32(netHdrSize+len(in)) {
		t.Fatalf("rx used = %+v", u)
	}
	hdr := d.mem.get(addrs[0], netHdrSize)
	if binary.LittleEndian.Uint16(hdr[10:]) != 1 || !bytes.Equal(d.mem.get(addrs[1], len(in)), in) {
		t.Fatalf("rx header % x, data %q", hdr, d.mem.get(addrs[1], len(in)))
	}
	if !d.mem.wrote(addrs[1], len(in)) {
		t.Fatal("received frame not written through GuestMemory.WriteAt")
	}
	if irq.count() <= before {
		t.Fatal("no interrupt for the received frame")
	}

	// A receive buffer too small: the frame is dropped, the chain
	// returned empty, and the next frame uses the next buffer.
	small, _ := rx.chain(wr(netHdrSize + 4))
	big, _ := rx.chain(wr(netHdrSize + 1514))
	rx.publish(small, big)
	peer.Write(bytes.Repeat([]byte{1}, 100))
	peer.Write([]byte("fits"))
	u = waitUsed(t, rx, 2)
	if u[0] != (usedElem{small, 0}) || u[1] != (usedElem{big, netHdrSize + 4}) {
		t.Fatalf("used = %+v", u)
	}
}

func TestNetMalformedTransmit(t *testing.T) {
	devEnd, peer := seqpacketPair(t)
	defer peer.Close()
	dev, _ := NewNet(FrameFile(devEnd), testMAC, quietLog)
	defer dev.Close()
	d, _ := newMMIODriver(t, dev)
	d.setup(^uint64(0), 16)
	tx := d.qs[netTXQueue]
	short, _ := tx.chain(rd([]byte{1, 2, 3})) // shorter than the header
	loop := uint16(8)
	tx.writeDescAt(tx.descAddr(), 8, tx.alloc(16, nil), 16, descFNext, 8)
	tx.next = 9
	good, _ := tx.chain(rd(make([]byte, netHdrSize)), rd([]byte("ok")))
	tx.publish(short, loop, good)
	d.write(RegQueueNotify, netTXQueue)
	if u := tx.used(); len(u) != 3 {
		t.Fatalf("used = %+v", u)
	}
	buf := make([]byte, 64)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(buf); err != nil || string(buf[:n]) != "ok" {
		t.Fatalf("peer got %q, %v", buf[:n], err)
	}
}

func TestNetCloseStopsReceive(t *testing.T) {
	devEnd, peer := seqpacketPair(t)
	defer peer.Close()
	dev, _ := NewNet(FrameFile(devEnd), testMAC, quietLog)
	d, _ := newMMIODriver(t, dev)
	d.setup(^uint64(0), 16)
	peer.Write([]byte("waits for a buffer that never comes"))
	time.Sleep(10 * time.Millisecond)
	done := make(chan error)
	go func() { done <- dev.Close() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs while the receive goroutine waits for buffers")
	}
}

// TestTAP checks the TAP backend against the kernel: frames the device
// transmits leave through the TAP interface, and frames sent into the
// interface reach the guest. It runs in a network namespace of its own,
// so it touches nothing of the host's network.
func TestTAP(t *testing.T) {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("no /dev/net/tun")
	}
	runtime.LockOSThread() // the namespace belongs to this thread; never unlocked, so the thread dies with the test
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Skipf("cannot create a network namespace (needs root): %v", err)
	}
	be, name, err := OpenTAP("tndm%d")
	if err != nil {
		t.Fatal(err)
	}
	dev, err := NewNet(be, testMAC, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	setUp(t, name)
	sock, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sock)
	if err := unix.Bind(sock, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}); err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptTimeval(sock, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5})

	d, _ := newMMIODriver(t, dev)
	d.setup(^uint64(0), 16)
	rx, tx := d.qs[netRXQueue], d.qs[netTXQueue]

	// Guest → TAP. An experimental EtherType (0x88B5) keeps the kernel
	// from answering.
	frame := append(append(append([]byte{}, ifc.HardwareAddr...), testMAC...), 0x88, 0xB5)
	frame = append(frame, []byte("tandem virtio-net over TAP")...)
	h, _ := tx.chain(rd(make([]byte, netHdrSize)), rd(frame))
	tx.publish(h)
	d.write(RegQueueNotify, netTXQueue)
	buf := make([]byte, 2048)
	for {
		n, _, err := unix.Recvfrom(sock, buf, 0)
		if err != nil {
			t.Fatalf("no frame on the TAP interface: %v", err)
		}
		if bytes.Equal(buf[:n], frame) {
			break
		}
	}

	// TAP → guest.
	rh, addrs := rx.chain(wr(netHdrSize + 1514))
	rx.publish(rh)
	d.write(RegQueueNotify, netRXQueue)
	in := append(append(append([]byte{}, testMAC...), ifc.HardwareAddr...), 0x88, 0xB5)
	in = append(in, []byte("from the host")...)
	if err := unix.Sendto(sock, in, 0, &unix.SockaddrLinklayer{Ifindex: ifc.Index, Halen: 6}); err != nil {
		t.Fatal(err)
	}
	for {
		u := waitUsed(t, rx, 1)
		got := d.mem.get(addrs[0]+netHdrSize, int(u[0].len)-netHdrSize)
		if bytes.Equal(got, in) {
			break
		}
		// Something else (IPv6 autoconfiguration) came first: repost.
		rx.publish(rh)
		d.write(RegQueueNotify, netRXQueue)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// setUp brings an interface up with SIOCSIFFLAGS.
func setUp(t *testing.T, name string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	req, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, req); err != nil {
		t.Fatal(err)
	}
	req.SetUint16(req.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, req); err != nil {
		t.Fatal(err)
	}
}

var _ io.Reader = (*ChainReader)(nil)

// heldBackend takes frames until it holds limit of them, then refuses
// with ErrBackpressure until release lets them out: an output gate.
type heldBackend struct {
	closed   chan struct{}
	mu       sync.Mutex
	limit    int
	held     [][]byte
	sent     [][]byte
	writable func()
}

func (b *heldBackend) ReadFrame(p []byte) (int, error) { <-b.closed; return 0, os.ErrClosed }
func (b *heldBackend) Close() error                    { close(b.closed); return nil }
func (b *heldBackend) NotifyWritable(fn func())        { b.writable = fn }
func (b *heldBackend) WriteFrame(p []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.held) >= b.limit {
		return fmt.Errorf("gate: %w", ErrBackpressure)
	}
	b.held = append(b.held, bytes.Clone(p))
	return nil
}

func (b *heldBackend) release() {
	b.mu.Lock()
	b.sent = append(b.sent, b.held...)
	b.held = nil
	b.mu.Unlock()
	b.writable()
}

func (b *heldBackend) sentFrames() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for _, f := range b.sent {
		out = append(out, string(f))
	}
	return out
}

// TestNetTransmitBackpressure checks that frames a backend refuses with
// ErrBackpressure stay in the guest's transmit queue, in order, neither
// dropped nor returned, and go out once the backend is writable again —
// not while the device is paused.
func TestNetTransmitBackpressure(t *testing.T) {
	be := &heldBackend{limit: 1, closed: make(chan struct{})}
	dev, err := NewNet(be, testMAC, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	if be.writable == nil {
		t.Fatal("the device did not register for writable notifications")
	}
	d, _ := newMMIODriver(t, dev)
	d.setup(^uint64(0), 16)
	tx := d.qs[netTXQueue]
	var heads []uint16
	for _, f := range []string{"one", "two", "three"} {
		h, _ := tx.chain(rd(make([]byte, netHdrSize)), rd([]byte(f)))
		heads = append(heads, h)
	}
	tx.publish(heads...)
	d.write(RegQueueNotify, netTXQueue)
	if u := tx.used(); len(u) != 1 || u[0].head != heads[0] {
		t.Fatalf("used after the gate filled = %+v, want only the first frame's chain", u)
	}
	// Another notify while full changes nothing.
	d.write(RegQueueNotify, netTXQueue)
	if u := tx.used(); len(u) != 0 {
		t.Fatalf("chains returned while the backend refuses: %+v", u)
	}

	// Writable while paused: nothing moves until Resume.
	dev.Pause()
	be.release()
	time.Sleep(20 * time.Millisecond) // a transmission would run now if it could
	if u := tx.used(); len(u) != 0 {
		t.Fatalf("chains returned while paused: %+v", u)
	}
	dev.Resume()
	u := waitUsed(t, tx, 1)
	if u[0].head != heads[1] {
		t.Fatalf("used = %+v, want the second frame's chain", u)
	}
	be.release()
	u = waitUsed(t, tx, 1)
	if u[0].head != heads[2] {
		t.Fatalf("used = %+v, want the third frame's chain", u)
	}
	be.release()
	if got := be.sentFrames(); strings.Join(got, ",") != "one,two,three" {
		t.Errorf("frames sent %q, want one, two, three in order", got)
	}
	dev.Close()
}

func TestNetAnnounce(t *testing.T) {
	dev, peer := newPairedNet(t)
	if err := dev.Announce(2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		buf := make([]byte, 128)
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := peer.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		f := buf[:n]
		switch {
		case n != 60:
			t.Errorf("frame of %d bytes, want 60", n)
		case !bytes.Equal(f[0:6], bytes.Repeat([]byte{0xff}, 6)) || !bytes.Equal(f[6:12], testMAC):
			t.Errorf("destination % x, source % x; want broadcast from %v", f[0:6], f[6:12], testMAC)
		case binary.BigEndian.Uint16(f[12:]) != 0x8035 || binary.BigEndian.Uint16(f[20:]) != 3:
			t.Errorf("EtherType %#x, operation %d; want RARP request reverse", binary.BigEndian.Uint16(f[12:]), binary.BigEndian.Uint16(f[20:]))
		case !bytes.Equal(f[22:28], testMAC) || !bytes.Equal(f[32:38], testMAC):
			t.Errorf("sender % x, target % x; want %v", f[22:28], f[32:38], testMAC)
		}
	}
}
