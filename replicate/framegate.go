package replicate

import (
	"errors"
	"sync"
)

// ErrGateFull is returned by [FrameGate.WriteFrame] when the gate holds its
// limit: the frame was not taken, and the caller keeps it until the gate
// says it is writable again.
var ErrGateFull = errors.New("replicate: frame gate full")

// FrameGate holds the frames a guest transmits on one network interface
// until the epoch that produced them is committed on the replicas, as
// Remus buffers a protected VM's network output: nobody outside ever sees
// a packet from a state that a failover could roll back. Received frames
// do not pass through it; they go to the guest at once.
//
// Its memory is bounded. Past its limit it does not block and does not
// drop: WriteFrame refuses the frame with ErrGateFull, the device leaves it
// in the guest's transmit queue (whose driver then stops sending, as with
// a busy NIC), and the function given to NotifyWritable runs once a
// Release has made room. Refusing never blocks, so the gate cannot keep a
// vCPU from reaching an epoch's pause.
//
// A FrameGate is safe for concurrent use.
type FrameGate struct {
	send  func(frame []byte) error
	limit int

	wmu sync.Mutex // serialises sends, so that releases go out in epoch order

	mu       sync.Mutex
	open     heldFrames
	sealed   epochQueue[heldFrames]
	held     int  // bytes held, open and sealed
	refused  bool // a frame was refused since the last release
	writable func()
	closed   bool
}

// heldFrames is one epoch's frames, back to back in data.
type heldFrames struct {
	data  []byte
	sizes []int
}

// NewFrameGate returns a gate that releases frames through send (a TAP
// device's write) and holds at most limit bytes of frames; a limit below 1
// means no bound.
func NewFrameGate(send func(frame []byte) error, limit int) *FrameGate {
	return &FrameGate{send: send, limit: limit}
}

// WriteFrame copies frame into the open epoch, or returns ErrGateFull
// without taking it when the gate is at its limit (a gate holding nothing
// takes any one frame), or ErrGateClosed after Close.
func (g *FrameGate) WriteFrame(frame []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.closed:
		return ErrGateClosed
	case g.limit > 0 && g.held > 0 && g.held+len(frame) > g.limit:
		g.refused = true
		return ErrGateFull
	}
	g.open.data = append(g.open.data, frame...)
	g.open.sizes = append(g.open.sizes, len(frame))
	g.held += len(frame)
	return nil
}

// NotifyWritable sets the function called after a Release that follows a
// refusal. It must not block.
func (g *FrameGate) NotifyWritable(fn func()) {
	g.mu.Lock()
	g.writable = fn
	g.mu.Unlock()
}

// Seal gives the open frames to epoch, with the same rules as
// [OutputGate.Seal]: epochs increase, and a Seal that does not is ignored.
func (g *FrameGate) Seal(epoch uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.sealed.advance(epoch) || len(g.open.sizes) == 0 {
		return
	}
	g.sealed.push(epoch, g.open)
	g.open = heldFrames{}
}

// Release sends every frame of an epoch up to and including epoch, oldest
// first, then drops them, and calls the writable function if a frame was
// refused meanwhile. It returns the first send error; frames are dropped
// whether or not they could be sent (a network that loses a frame is one
// the guest's protocols already survive), and it keeps working after
// Close, so that committed frames still go out.
func (g *FrameGate) Release(epoch uint64) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()

	g.mu.Lock()
	out := g.sealed.take(epoch, nil)
	for _, h := range out {
		g.held -= len(h.v.data)
	}
	g.mu.Unlock()

	var err error
	for _, h := range out {
		off := 0
		for _, size := range h.v.sizes {
			if e := g.send(h.v.data[off : off+size]); e != nil && err == nil {
				err = e
			}
			off += size
		}
	}

	g.mu.Lock()
	notify := g.refused && len(out) > 0
	if notify {
		g.refused = false
	}
	fn := g.writable
	g.mu.Unlock()
	if notify && fn != nil {
		fn()
	}
	return err
}

// BeginPause and EndPause are part of [Gate]; a frame gate never blocks a
// writer, so there is nothing to let through.
func (g *FrameGate) BeginPause() {}

// EndPause: see BeginPause.
func (g *FrameGate) EndPause() {}

// Held returns the bytes of frames held, sealed or not.
func (g *FrameGate) Held() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held
}

// Close makes later WriteFrames fail with ErrGateClosed; held frames can
// still be released.
func (g *FrameGate) Close() error {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	return nil
}

// Gate is what the replication loop drives at each epoch: a console's
// [OutputGate], an interface's [FrameGate], or several as [Gates].
type Gate interface {
	// BeginPause and EndPause bracket every pause of the VM.
	BeginPause()
	EndPause()
	// Seal closes the output of epoch, with the VM paused at its end.
	Seal(epoch uint64)
	// Release lets out the output of every epoch up to epoch, once it
	// has committed.
	Release(epoch uint64) error
}

// Gates drives several gates as one, in order; Release returns the first
// error and still releases every gate.
type Gates []Gate

// Held is the output g holds now, in bytes: what an [OutputGate] or a
// [FrameGate] holds, summed over [Gates]; 0 for a gate that does not say.
func Held(g Gate) int {
	switch g := g.(type) {
	case Gates:
		n := 0
		for _, one := range g {
			n += Held(one)
		}
		return n
	case interface{ Held() int }:
		return g.Held()
	}
	return 0
}

func (gs Gates) BeginPause() {
	for _, g := range gs {
		g.BeginPause()
	}
}

func (gs Gates) EndPause() {
	for _, g := range gs {
		g.EndPause()
	}
}

func (gs Gates) Seal(epoch uint64) {
	for _, g := range gs {
		g.Seal(epoch)
	}
}

func (gs Gates) Release(epoch uint64) error {
	var first error
	for _, g := range gs {
		if err := g.Release(epoch); err != nil && first == nil {
			first = err
		}
	}
	return first
}
