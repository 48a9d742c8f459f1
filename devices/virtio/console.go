package virtio

import (
	"errors"
	"io"
	"log/slog"
	"sync"
)

// virtio-console (virtio 1.x, 5.3) with a single port and no optional
// features: the guest's /dev/hvc0, a byte stream to and from the host.
const (
	consoleRXQueue   = 0 // host → guest ("receiveq")
	consoleTXQueue   = 1 // guest → host ("transmitq")
	consoleQueueSize = 64
	consoleChunk     = 4096
	maxConsoleChain  = 64 << 10
)

// Console is a virtio-console device whose one port is connected to host,
// typically a devices.Console (a Unix socket, TCP address or file). Input
// from the host waits for the driver's buffers, so nothing typed before the
// guest opens the port is lost; output goes to host as the guest writes
// it.
type Console struct {
	host io.ReadWriteCloser
	log  *slog.Logger

	mu      sync.Mutex
	rxReady sync.Cond
	env     *Env
	closed  bool
	txBuf   []byte
	rxDone  chan struct{}
}

// NewConsole returns a virtio-console device connected to host and starts
// the goroutine that reads host input. log may be nil.
func NewConsole(host io.ReadWriteCloser, log *slog.Logger) *Console {
	if log == nil {
		log = slog.Default()
	}
	d := &Console{host: host, log: log, rxDone: make(chan struct{})}
	d.rxReady.L = &d.mu
	go d.receive()
	return d
}

func (d *Console) Type() DeviceType                 { return TypeConsole }
func (d *Console) Features() uint64                 { return 0 }
func (d *Console) QueueSizes() []uint16             { return []uint16{consoleQueueSize, consoleQueueSize} }
func (d *Console) ReadConfig(off uint64, p []byte)  { clear(p) }
func (d *Console) WriteConfig(off uint64, p []byte) {}

func (d *Console) Activate(env *Env) error {
	if len(env.Queues) != 2 || env.Queues[consoleRXQueue] == nil || env.Queues[consoleTXQueue] == nil {
		return errors.New("virtio-console: the receive and transmit queues are not both set up")
	}
	d.mu.Lock()
	d.env = env
	d.mu.Unlock()
	d.rxReady.Broadcast()
	return nil
}

func (d *Console) Reset() {
	d.mu.Lock()
	d.env = nil
	d.mu.Unlock()
	d.rxReady.Broadcast()
}

func (d *Console) QueueNotify(i int) {
	switch i {
	case consoleRXQueue:
		d.rxReady.Broadcast()
	case consoleTXQueue:
		d.transmit()
	}
}

func (d *Console) transmit() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return
	}
	q := d.env.Queues[consoleTXQueue]
	drain(d.env, "virtio-console", q, func(c *Chain) uint32 {
		n := min(c.ReadableLen(), maxConsoleChain)
		if cap(d.txBuf) < int(n) {
			d.txBuf = make([]byte, n)
		}
		buf := d.txBuf[:n]
		if _, err := io.ReadFull(q.Reader(c), buf); err != nil {
			d.env.Log.Warn("virtio-console: read from guest", "err", err)
			return 0
		}
		if _, err := d.host.Write(buf); err != nil {
			d.env.Log.Debug("virtio-console: host output dropped", "err", err)
		}
		return 0
	})
}

// receive moves host input into the receive queue for the device's
// lifetime.
func (d *Console) receive() {
	defer close(d.rxDone)
	buf := make([]byte, consoleChunk)
	for {
		n, err := d.host.Read(buf)
		if n > 0 && !d.deliver(buf[:n]) {
			return
		}
		if err != nil {
			d.mu.Lock()
			closed := d.closed
			d.mu.Unlock()
			if !closed && !errors.Is(err, io.EOF) {
				d.log.Warn("virtio-console: host input ended", "err", err)
			}
			return
		}
	}
}

// deliver writes p into as many receive chains as it takes, waiting for
// the driver when none is available. It returns false once closed.
func (d *Console) deliver(p []byte) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(p) > 0 {
		if d.closed {
			return false
		}
		if d.env == nil {
			d.rxReady.Wait()
			continue
		}
		env := d.env
		q := env.Queues[consoleRXQueue]
		c, err := q.Pop()
		switch {
		case err != nil && errors.Is(err, ErrBadQueue):
			env.Broken(err)
			d.rxReady.Wait() // until reset
			continue
		case c == nil:
			d.rxReady.Wait()
			continue
		}
		var written uint32
		if err != nil {
			env.Log.Warn("virtio-console: malformed receive chain returned unused", "err", err)
		} else {
			w := q.Writer(c)
			k := min(uint64(len(p)), c.WritableLen())
			if _, err := w.Write(p[:k]); err != nil {
				env.Log.Warn("virtio-console: write to guest", "err", err)
			}
			written = w.Written()
			p = p[written:]
		}
		if err := q.Push(c.Head, written); err != nil {
			env.Broken(err)
		}
		q.Notify()
	}
	return true
}

// Close stops the device and closes the host stream.
func (d *Console) Close() error {
	d.mu.Lock()
	d.closed = true
	d.env = nil
	d.mu.Unlock()
	d.rxReady.Broadcast()
	err := d.host.Close()
	<-d.rxDone
	return err
}

// Pause implements Pauser: it holds queue processing until Resume.
func (d *Console) Pause() { d.mu.Lock() }

// Resume implements Pauser.
func (d *Console) Resume() { d.mu.Unlock() }
