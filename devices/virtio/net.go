package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
)

// virtio-net (virtio 1.x, 5.1), without offloads: one receive and one
// transmit queue, a MAC address and a link that is always up.
const (
	netFMAC    = 1 << 5  // VIRTIO_NET_F_MAC
	netFStatus = 1 << 16 // VIRTIO_NET_F_STATUS

	netSLinkUp = 1

	// netHdrSize is struct virtio_net_hdr_v1, which VERSION_1 always uses.
	netHdrSize = 12
	// maxFrame bounds a frame: a 64 KiB packet plus its Ethernet header,
	// more than any frame a TAP without offloads gives or takes.
	maxFrame = 65536 + 14 + 4

	// NetQueueSize is the size of each queue.
	NetQueueSize = 256

	netRXQueue = 0
	netTXQueue = 1
)

// NetBackend carries Ethernet frames between the device and the host: a
// TAP device, or in tests one end of a socket pair.
type NetBackend interface {
	// ReadFrame reads one frame into p; it blocks until one arrives and
	// fails once the backend is closed.
	ReadFrame(p []byte) (int, error)
	// WriteFrame sends one frame, or returns an error wrapping
	// ErrBackpressure when it cannot take it now (see WritableNotifier).
	// It must not keep p.
	WriteFrame(p []byte) error
	Close() error
}

// ErrBackpressure is returned by a NetBackend's WriteFrame that cannot
// take a frame now, such as an output gate holding its limit of frames
// that wait for their epoch to commit. The device then leaves the frame,
// and every one after it, in the guest's transmit queue — the guest's
// driver sees its queue fill and stops sending, as with a busy NIC — and
// transmits them once the backend says it is writable again.
var ErrBackpressure = errors.New("virtio-net: the backend cannot take more frames now")

// WritableNotifier is implemented by a NetBackend that can refuse frames
// with ErrBackpressure. The device registers fn once; the backend calls it
// whenever it can take frames again after refusing one. fn does not block:
// it only schedules the transmission, which waits while the device is
// paused.
type WritableNotifier interface {
	NotifyWritable(fn func())
}

// Net is a virtio-net device. Frames from the backend are delivered by a
// goroutine of the device's own, which waits for receive buffers when the
// driver has none posted (the backend queues or drops meanwhile) and drops
// frames while the device is not live. Transmission happens in the
// notifying goroutine.
type Net struct {
	backend NetBackend
	mac     net.HardwareAddr
	log     *slog.Logger

	mu      sync.Mutex
	rxReady sync.Cond // signalled on QueueNotify(rx), Reset and Close
	env     *Env
	closed  bool
	txBuf   []byte
	rxDone  chan struct{}
}

// NewNet returns a virtio-net device with the given MAC address over
// backend, and starts its receive goroutine. log may be nil.
func NewNet(backend NetBackend, mac net.HardwareAddr, log *slog.Logger) (*Net, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("virtio-net: MAC address %v is not 6 bytes", mac)
	}
	if log == nil {
		log = slog.Default()
	}
	d := &Net{backend: backend, mac: mac, log: log, rxDone: make(chan struct{})}
	d.rxReady.L = &d.mu
	if n, ok := backend.(WritableNotifier); ok {
		n.NotifyWritable(func() { go d.transmit() })
	}
	go d.receive()
	return d, nil
}

func (d *Net) Type() DeviceType     { return TypeNet }
func (d *Net) Features() uint64     { return netFMAC | netFStatus }
func (d *Net) QueueSizes() []uint16 { return []uint16{NetQueueSize, NetQueueSize} }

// ReadConfig implements Device: mac (6 bytes at 0), status (u16 at 6).
func (d *Net) ReadConfig(off uint64, p []byte) {
	var cfg [8]byte
	copy(cfg[:], d.mac)
	binary.LittleEndian.PutUint16(cfg[6:], netSLinkUp)
	readConfig(cfg[:], off, p)
}

func (d *Net) WriteConfig(off uint64, p []byte) {}

func (d *Net) Activate(env *Env) error {
	if len(env.Queues) != 2 || env.Queues[netRXQueue] == nil || env.Queues[netTXQueue] == nil {
		return errors.New("virtio-net: the receive and transmit queues are not both set up")
	}
	d.mu.Lock()
	d.env = env
	d.mu.Unlock()
	d.rxReady.Broadcast()
	return nil
}

func (d *Net) Reset() {
	d.mu.Lock()
	d.env = nil
	d.mu.Unlock()
	d.rxReady.Broadcast()
}

func (d *Net) QueueNotify(i int) {
	switch i {
	case netRXQueue:
		d.rxReady.Broadcast()
	case netTXQueue:
		d.transmit()
	}
}

// transmit sends the frames the driver has made available, in order, and
// stops at the first one the backend refuses with ErrBackpressure; the
// backend's writable notification calls it again.
func (d *Net) transmit() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return
	}
	q := d.env.Queues[netTXQueue]
	drainWhile(d.env, "virtio-net", q, func(c *Chain) (uint32, bool) {
		n := c.ReadableLen()
		if n < netHdrSize || n > netHdrSize+maxFrame {
			d.env.Log.Warn("virtio-net: transmit chain of bad length dropped", "bytes", n)
			return 0, true
		}
		if cap(d.txBuf) < int(n) {
			d.txBuf = make([]byte, netHdrSize+maxFrame)
		}
		buf := d.txBuf[:n]
		if _, err := io.ReadFull(q.Reader(c), buf); err != nil {
			d.env.Log.Warn("virtio-net: transmit: read from guest", "err", err)
			return 0, true
		}
		err := d.backend.WriteFrame(buf[netHdrSize:])
		switch {
		case errors.Is(err, ErrBackpressure):
			return 0, false
		case err != nil:
			d.env.Log.Debug("virtio-net: transmit: frame dropped by the backend", "err", err)
		}
		return 0, true
	})
}

// receive runs for the device's lifetime, moving frames from the backend
// into the receive queue.
func (d *Net) receive() {
	defer close(d.rxDone)
	buf := make([]byte, netHdrSize+maxFrame)
	for {
		n, err := d.backend.ReadFrame(buf[netHdrSize:])
		if err != nil {
			d.mu.Lock()
			closed := d.closed
			d.mu.Unlock()
			if !closed {
				d.log.Error("virtio-net: backend read failed; receive stopped", "err", err)
			}
			return
		}
		clear(buf[:netHdrSize])
		binary.LittleEndian.PutUint16(buf[10:], 1) // num_buffers
		if !d.deliver(buf[:netHdrSize+n]) {
			return
		}
	}
}

// deliver puts one frame (with its header) into the next receive chain,
// waiting for one if needed. It returns false once the device is closed.
func (d *Net) deliver(frame []byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for {
		switch {
		case d.closed:
			return false
		case d.env == nil:
			return true // not live: drop
		}
		env := d.env
		q := env.Queues[netRXQueue]
		c, err := q.Pop()
		switch {
		case err != nil && errors.Is(err, ErrBadQueue):
			env.Broken(err)
			return true
		case c == nil:
			d.rxReady.Wait()
			continue
		}
		var written uint32
		if err != nil {
			env.Log.Warn("virtio-net: malformed receive chain returned unused", "err", err)
		} else if c.WritableLen() < uint64(len(frame)) {
			env.Log.Warn("virtio-net: receive buffer too small; frame dropped", "buffer", c.WritableLen(), "frame", len(frame))
		} else {
			w := q.Writer(c)
			if _, err := w.Write(frame); err != nil {
				env.Log.Warn("virtio-net: receive: write to guest", "err", err)
			}
			written = w.Written()
		}
		if err := q.Push(c.Head, written); err != nil {
			env.Broken(err)
			return true
		}
		q.Notify()
		return true
	}
}

// Close stops the device and closes its backend.
func (d *Net) Close() error {
	d.mu.Lock()
	d.closed = true
	d.env = nil
	d.mu.Unlock()
	d.rxReady.Broadcast()
	err := d.backend.Close()
	<-d.rxDone
	return err
}

// FrameFile returns a NetBackend over a file in which every read and
// write is one frame: a TAP device or one end of a SOCK_SEQPACKET pair. The
// file should be non-blocking (os.NewFile on an O_NONBLOCK descriptor) so
// that Close interrupts a pending read.
func FrameFile(f *os.File) NetBackend { return frameFile{f} }

type frameFile struct{ f *os.File }

func (b frameFile) ReadFrame(p []byte) (int, error) { return b.f.Read(p) }
func (b frameFile) WriteFrame(p []byte) error {
	_, err := b.f.Write(p)
	return err
}
func (b frameFile) Close() error { return b.f.Close() }

// Pause implements Pauser: it holds queue processing until Resume.
func (d *Net) Pause() { d.mu.Lock() }

// Resume implements Pauser.
func (d *Net) Resume() { d.mu.Unlock() }

// rarpFrame is the frame Announce sends: a broadcast RARP request (RFC
// 903, "request reverse") whose sender and target hardware addresses are
// mac, with no protocol addresses, as QEMU announces a migrated guest.
// Its only purpose is its Ethernet source address: switches and bridges
// that see it learn that mac is now behind this port.
func rarpFrame(mac net.HardwareAddr) []byte {
	f := make([]byte, 60) // the minimum Ethernet payload, padded
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], 0x8035) // EtherType RARP
	binary.BigEndian.PutUint16(f[14:], 1)      // hardware: Ethernet
	binary.BigEndian.PutUint16(f[16:], 0x0800) // protocol: IPv4
	f[18], f[19] = 6, 4                        // address lengths
	binary.BigEndian.PutUint16(f[20:], 3)      // request reverse
	copy(f[22:28], mac)                        // sender hardware address
	copy(f[32:38], mac)                        // target hardware address
	return f
}

// Announce tells the L2 network where the guest's MAC address now is, by
// sending count RARP frames from it on the backend (straight to the
// backend, for a VM that has just taken over on another host). The guest's
// own traffic will do the same, but only once it sends.
func (d *Net) Announce(count int) error {
	f := rarpFrame(d.mac)
	for i := 0; i < count; i++ {
		if err := d.backend.WriteFrame(f); err != nil {
			return fmt.Errorf("virtio-net: announce %v: %w", d.mac, err)
		}
	}
	return nil
}
