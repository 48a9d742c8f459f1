package replicate

import (
	"errors"
	"io"
	"sync"
)

// ErrGateClosed is returned by [OutputGate.Write] after [OutputGate.Close].
var ErrGateClosed = errors.New("replicate: output gate closed")

// OutputGate holds what the guest emits (serial bytes) until the epoch that
// produced it is committed on the replicas, so that nobody outside ever sees
// output from a state that a failover could roll back. It sits between a
// device and its host console: the device writes to the gate, and the
// replication loop seals the open buffer at each epoch boundary and releases
// epochs as the replicas acknowledge them.
//
// An OutputGate is safe for concurrent use.
type OutputGate struct {
	w     io.Writer
	limit int

	// wmu serialises writes to w, so that concurrent Releases reach w in
	// epoch order. It is taken before mu and is never held by Write, so a
	// slow w stalls Release but not the guest.
	wmu sync.Mutex

	mu       sync.Mutex
	cond     sync.Cond // signalled when sealed bytes are dropped or on Close
	open     []byte    // output of the epoch in progress
	sealed   epochQueue[[]byte]
	held     int // bytes in open and sealed
	heldSeal int // bytes in sealed
	closed   bool
	pausing  int      // BeginPause depth: Write does not block while > 0
	waiting  int      // Writes blocked on cond, for tests
	spare    [][]byte // released buffers kept for reuse
}

// epochQueue is what a gate keeps of sealed output: one entry per epoch
// that emitted something, under epochs that only increase, taken oldest
// first. It is the part of the output commit rule both gates share.
type epochQueue[T any] struct {
	entries   []epochEntry[T]
	lastEpoch uint64
	anySealed bool // lastEpoch is valid
}

type epochEntry[T any] struct {
	epoch uint64
	v     T
}

// advance records a Seal of epoch, and reports false when epoch is not
// greater than every epoch sealed before: such a Seal must be ignored, its
// output staying open, since releasing it early is the one thing a gate
// must never do.
func (q *epochQueue[T]) advance(epoch uint64) bool {
	if q.anySealed && epoch <= q.lastEpoch {
		return false
	}
	q.lastEpoch, q.anySealed = epoch, true
	return true
}

// push adds epoch's output; call it after advance(epoch).
func (q *epochQueue[T]) push(epoch uint64, v T) {
	q.entries = append(q.entries, epochEntry[T]{epoch, v})
}

// take removes the entries of every epoch up to and including epoch and
// appends them to dst, oldest first.
func (q *epochQueue[T]) take(epoch uint64, dst []epochEntry[T]) []epochEntry[T] {
	n := 0
	for n < len(q.entries) && q.entries[n].epoch <= epoch {
		n++
	}
	dst = append(dst, q.entries[:n]...)
	rest := copy(q.entries, q.entries[n:])
	clear(q.entries[rest:])
	q.entries = q.entries[:rest]
	return dst
}

// A gate keeps up to maxSpare released buffers of at most maxSpareCap bytes
// for reuse, so that a steady trickle of output does not allocate every
// epoch, while a one-off burst is not kept around.
const (
	maxSpare    = 4
	maxSpareCap = 64 << 10
)

// NewOutputGate returns a gate that releases output to w. limit bounds the
// bytes held, as back-pressure on the guest (see [OutputGate.Write]); a
// limit below 1 means no bound.
func NewOutputGate(w io.Writer, limit int) *OutputGate {
	g := &OutputGate{w: w, limit: limit}
	g.cond.L = &g.mu
	return g
}

// Write appends p to the open epoch's buffer. It never writes to the
// underlying writer itself; [OutputGate.Release] does.
//
// While the gate holds limit bytes or more and some of them are sealed,
// Write blocks until a Release drops them or the gate is closed: this slows
// the writing vCPU down to what the replicas can commit. Bytes of the open
// epoch alone never block Write, however many: only an epoch boundary can
// seal them, and the VM cannot reach one while a vCPU is stuck in a device
// write. For the same reason, whoever calls Release must not wait for the
// VM to pause first. A single Write may take the gate past its limit.
//
// Nor does Write block between BeginPause and EndPause: a vCPU blocked
// inside a device write cannot reach the pause barrier, and only a commit
// after that pause could release it (after a failed epoch, sealed output
// stays held while the VM runs). Each writer then takes the gate past its
// limit by at most one write per pause.
//
// After Close, Write returns ErrGateClosed.
func (g *OutputGate) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for !g.closed && g.pausing == 0 && g.limit > 0 && g.held >= g.limit && g.heldSeal > 0 {
		g.waiting++
		g.cond.Wait()
		g.waiting--
	}
	if g.closed {
		return 0, ErrGateClosed
	}
	if g.open == nil && len(p) > 0 {
		if n := len(g.spare); n > 0 {
			g.open = g.spare[n-1]
			g.spare[n-1] = nil
			g.spare = g.spare[:n-1]
		}
	}
	g.open = append(g.open, p...)
	g.held += len(p)
	return len(p), nil
}

// BeginPause lets writers blocked in Write through, and keeps Write from
// blocking, until the matching EndPause: the replication loop calls it
// before it pauses the VM, so that every vCPU can reach the pause barrier.
// Calls nest.
func (g *OutputGate) BeginPause() {
	g.mu.Lock()
	g.pausing++
	g.cond.Broadcast()
	g.mu.Unlock()
}

// EndPause undoes one BeginPause, once the VM has resumed.
func (g *OutputGate) EndPause() {
	g.mu.Lock()
	if g.pausing > 0 {
		g.pausing--
	}
	g.mu.Unlock()
}

// Seal gives the open buffer to epoch, and later writes go to a new one.
// The replication loop calls it while the VM is paused at the end of the
// epoch, so that the buffer holds exactly what that epoch emitted.
//
// Epochs must increase from one Seal to the next. A Seal with an epoch not
// greater than the previous one is ignored, and its bytes stay open until the
// next valid Seal: releasing them early would be the one thing the gate must
// never do.
func (g *OutputGate) Seal(epoch uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.sealed.advance(epoch) || len(g.open) == 0 {
		return
	}
	g.sealed.push(epoch, g.open)
	g.heldSeal += len(g.open)
	g.open = nil
}

// Release writes every sealed buffer of an epoch up to and including epoch
// to the underlying writer, oldest first, then drops them; releasing an
// epoch thus releases all earlier ones too. It returns the first error from
// the writer. The bytes are dropped whether or not they could be written: a
// broken console must not wedge the VM by keeping the gate full.
//
// Release blocks while the underlying writer does, but Write does not.
// Release keeps working after Close, so that committed output still comes
// out.
func (g *OutputGate) Release(epoch uint64) error {
	g.wmu.Lock()
	defer g.wmu.Unlock()

	g.mu.Lock()
	var stack [8]epochEntry[[]byte]
	out := g.sealed.take(epoch, stack[:0])
	if len(out) == 0 {
		g.mu.Unlock()
		return nil
	}
	for _, h := range out {
		g.held -= len(h.v)
		g.heldSeal -= len(h.v)
	}
	g.cond.Broadcast()
	g.mu.Unlock()

	var err error
	for _, h := range out {
		if err != nil {
			break
		}
		var k int
		k, err = g.w.Write(h.v)
		if err == nil && k < len(h.v) {
			err = io.ErrShortWrite
		}
	}

	g.mu.Lock()
	for _, h := range out {
		if len(g.spare) == maxSpare {
			break
		}
		if cap(h.v) > maxSpareCap {
			continue
		}
		g.spare = append(g.spare, h.v[:0])
	}
	g.mu.Unlock()
	return err
}

// Held returns the number of bytes the gate holds, sealed or not.
func (g *OutputGate) Held() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.held
}

// Close makes pending and later Writes fail with ErrGateClosed. Output
// already held stays held and can still be released. Close always returns
// nil.
func (g *OutputGate) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	g.cond.Broadcast()
	return nil
}
