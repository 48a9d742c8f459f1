package virtio

import (
	"crypto/rand"
	"errors"
	"sync"
)

// maxEntropyPerChain bounds the bytes one request gets, so that a driver
// offering a huge buffer cannot keep the device busy.
const maxEntropyPerChain = 64 << 10

// RNG is a virtio-rng device (virtio 1.x, 5.4): it fills the driver's
// buffers with bytes from the host's crypto/rand.
type RNG struct {
	mu  sync.Mutex
	env *Env
	buf []byte
}

// NewRNG returns a virtio-rng device.
func NewRNG() *RNG { return &RNG{} }

func (d *RNG) Type() DeviceType                 { return TypeRNG }
func (d *RNG) Features() uint64                 { return 0 }
func (d *RNG) QueueSizes() []uint16             { return []uint16{64} }
func (d *RNG) ReadConfig(off uint64, p []byte)  { clear(p) }
func (d *RNG) WriteConfig(off uint64, p []byte) {}

func (d *RNG) Activate(env *Env) error {
	if len(env.Queues) != 1 || env.Queues[0] == nil {
		return errors.New("virtio-rng: the request queue is not set up")
	}
	d.mu.Lock()
	d.env = env
	d.mu.Unlock()
	return nil
}

func (d *RNG) Reset() {
	d.mu.Lock()
	d.env = nil
	d.mu.Unlock()
}

func (d *RNG) QueueNotify(int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.env == nil {
		return
	}
	q := d.env.Queues[0]
	drain(d.env, "virtio-rng", q, func(c *Chain) uint32 {
		want := int(min(c.WritableLen(), maxEntropyPerChain))
		if cap(d.buf) < want {
			d.buf = make([]byte, want)
		}
		b := d.buf[:want]
		rand.Read(b) // crypto/rand never fails
		w := q.Writer(c)
		if _, err := w.Write(b); err != nil {
			d.env.Log.Warn("virtio-rng: write to guest", "err", err)
		}
		return w.Written()
	})
}

// Pause implements Pauser: it holds queue processing until Resume.
func (d *RNG) Pause() { d.mu.Lock() }

// Resume implements Pauser.
func (d *RNG) Resume() { d.mu.Unlock() }
