package devices

import (
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"sync"
)

// Standard PC serial port assignments.
const (
	COM1Base = 0x3F8
	COM1IRQ  = 4
)

const (
	// UARTPortCount is the number of consecutive ports a UART decodes,
	// starting at its base.
	UARTPortCount = 8
	// UARTInputQueueSize bounds the host input queued for the guest.
	// [UART.Write] blocks while the queue is full.
	UARTInputQueueSize = 64 << 10
)

// Register offsets from the base port.
const (
	regData = 0 // RBR (read) / THR (write); DLL when LCR.DLAB is set
	regIER  = 1 // DLM when LCR.DLAB is set
	regIIR  = 2 // IIR (read) / FCR (write)
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7
)

const (
	ierRDI  = 0x01 // received data available
	ierTHRI = 0x02 // transmitter holding register empty
	ierRLSI = 0x04 // receiver line status
	ierMSI  = 0x08 // modem status
	ierMask = 0x0F

	iirNoInt = 0x01
	iirMSI   = 0x00
	iirTHRI  = 0x02
	iirRDI   = 0x04
	iirRLSI  = 0x06
	iirFIFO  = 0xC0 // FIFOs enabled

	fcrEnable   = 0x01
	fcrKeepMask = 0xC9 // enable, DMA mode, RX trigger level

	lcrDLAB = 0x80

	mcrDTR  = 0x01
	mcrRTS  = 0x02
	mcrOUT1 = 0x04
	mcrOUT2 = 0x08
	mcrLoop = 0x10
	mcrMask = 0x1F

	lsrDR   = 0x01
	lsrOE   = 0x02
	lsrTHRE = 0x20
	lsrTEMT = 0x40

	msrDCTS      = 0x01
	msrDDSR      = 0x02
	msrTERI      = 0x04
	msrDDCD      = 0x08
	msrDeltaMask = 0x0F
	msrCTS       = 0x10
	msrDSR       = 0x20
	msrRI        = 0x40
	msrDCD       = 0x80

	fifoDepth = 16
)

// UART is an 8250/16550A serial port.
//
// Guest output (THR writes) goes to the out writer given to [NewUART] as soon
// as the guest writes it, so the transmitter is always empty. Host input is
// written to the UART with [UART.Write] and queued for the guest, up to
// [UARTInputQueueSize] bytes; the guest sees the queue through a 16-byte
// receive FIFO (one byte with FIFOs disabled).
//
// Deliberate differences from hardware:
//   - Host input is flow-controlled, never lost: a full queue blocks the
//     writer, and FCR's "clear receive FIFO" does not discard host bytes.
//     In loopback mode the line to the host is cut (RTS is inactive), so
//     host writers wait until the guest leaves loopback. Loopback bytes that
//     find the receive FIFO full are lost and set LSR.OE, as on hardware.
//   - The interrupt output is any enabled, pending source gated by MCR.OUT2,
//     as PCs wire it. While the receiver stays non-empty, the line is
//     lowered and raised again after every FIFO-full of bytes the guest
//     reads, so an edge-triggered irqchip keeps delivering interrupts to a
//     guest that leaves its handler with data still queued.
//
// A UART is safe for concurrent use by vCPU goroutines and a host input
// goroutine. Guest register accesses take a short internal lock; the out
// writer is called with no lock held except one that serialises out writes,
// so out may block (for example on a replication output gate) without
// stalling input or other register accesses. While out blocks, a vCPU that
// writes THR waits for it. IRQLine.SetLevel is called with the internal lock
// held.
type UART struct {
	base uint16
	irq  IRQLine
	name string

	outMu      sync.Mutex // serialises out.Write; never held together with mu
	out        io.Writer
	outFailing bool // guarded by outMu: an out.Write error was logged

	mu         sync.Mutex
	space      sync.Cond // input queue space freed, loopback left, or closed
	waiters    int       // host writers waiting on space
	held       int       // Pause depth: host input waits while > 0
	closed     bool
	level      bool // last level driven on irq
	pulse      bool // re-raise the line if it stays high (see rxRun)
	irqFailing bool // an irq.SetLevel error was logged

	// Guest-visible state; all of it is saved by SaveState.
	ier, fcr, lcr, mcr, scr byte
	dll, dlm                byte
	rbr                     byte // last byte the guest received
	thri                    bool // THR-empty interrupt latched
	overrun                 bool // LSR.OE
	msrDelta                byte // MSR delta bits (low nibble)
	rxRun                   byte // bytes read since the last fresh RX edge
	rx                      byteRing
}

// NewUART returns a UART decoding ports [base, base+[UARTPortCount]),
// driving irq (nil for a polled port) and sending guest output to out (nil
// discards it). Register it on a [Bus] with
// RegisterPorts(base, UARTPortCount, u).
func NewUART(base uint16, irq IRQLine, out io.Writer) *UART {
	u := &UART{
		base: base,
		irq:  irq,
		name: fmt.Sprintf("uart@%#x", base),
		out:  out,
		dll:  0x0C, // 9600 baud, as firmware leaves it
		rx:   byteRing{size: UARTInputQueueSize},
	}
	u.space.L = &u.mu
	return u
}

// ReadPort implements [PortDevice]. A multi-byte access reads consecutive
// registers; bytes beyond the UART's ports read 0xFF.
func (u *UART) ReadPort(port uint16, data []byte) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range data {
		off := int(port) - int(u.base) + i
		if off < 0 || off >= UARTPortCount {
			data[i] = 0xFF
			continue
		}
		data[i] = u.readReg(off)
	}
	u.updateIRQ()
	return nil
}

// WritePort implements [PortDevice]. A multi-byte access writes consecutive
// registers; bytes beyond the UART's ports are ignored. Output bytes are
// written to out before WritePort returns.
func (u *UART) WritePort(port uint16, data []byte) error {
	var buf [4]byte
	out := buf[:0]
	u.mu.Lock()
	for i, v := range data {
		off := int(port) - int(u.base) + i
		if off < 0 || off >= UARTPortCount {
			continue
		}
		out = u.writeReg(off, v, out)
	}
	u.updateIRQ()
	u.mu.Unlock()

	if len(out) > 0 {
		u.emit(out)
	}
	return nil
}

// Write queues host input for the guest and returns once all of p is
// queued. It blocks while the input queue is full or the UART is in
// loopback mode, until the guest drains the queue or [UART.Close] is called,
// in which case it returns the count queued so far and [ErrClosed].
func (u *UART) Write(p []byte) (int, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	n := 0
	for {
		if u.closed {
			return n, ErrClosed
		}
		if n == len(p) {
			return n, nil
		}
		if u.mcr&mcrLoop != 0 || u.rx.free() == 0 || u.held > 0 {
			u.waiters++
			u.space.Wait()
			u.waiters--
			continue
		}
		if u.rx.len() == 0 {
			u.rxRun = 0
		}
		n += u.rx.push(p[n:])
		u.updateIRQ()
	}
}

// Pause holds host input: until the matching [UART.Resume], [UART.Write]
// queues nothing, so neither the UART's state nor its interrupt line
// changes from the host side while the VM is paused for a snapshot or an
// epoch. Guest register accesses are not affected (the vCPUs are paused
// too). Pauses nest.
func (u *UART) Pause() {
	u.mu.Lock()
	u.held++
	u.mu.Unlock()
}

// Resume undoes one Pause and lets held host input in.
func (u *UART) Resume() {
	u.mu.Lock()
	if u.held > 0 {
		u.held--
	}
	if u.held == 0 {
		u.space.Broadcast()
	}
	u.mu.Unlock()
}

// Close unblocks pending and future [UART.Write] calls, which fail with
// [ErrClosed]. The guest side keeps working. Close is idempotent.
func (u *UART) Close() error {
	u.mu.Lock()
	u.closed = true
	u.space.Broadcast()
	u.mu.Unlock()
	return nil
}

func (u *UART) emit(p []byte) {
	u.outMu.Lock()
	defer u.outMu.Unlock()
	if u.out == nil {
		return
	}
	if _, err := u.out.Write(p); err != nil {
		if !u.outFailing {
			u.outFailing = true
			slog.Warn("devices: serial output failed; dropping output until it recovers", "device", u.name, "err", err)
		}
		return
	}
	if u.outFailing {
		u.outFailing = false
		slog.Info("devices: serial output recovered", "device", u.name)
	}
}

// readReg reads register off. u.mu is held.
func (u *UART) readReg(off int) byte {
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			return u.dll
		}
		u.popRx()
		return u.rbr
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			return u.dlm
		}
		return u.ier
	case regIIR:
		iir := u.iir()
		if iir&0x0F == iirTHRI {
			u.thri = false
		}
		return iir
	case regLCR:
		return u.lcr
	case regMCR:
		return u.mcr
	case regLSR:
		v := u.lsr()
		u.overrun = false
		return v
	case regMSR:
		v := u.modemStatus() | u.msrDelta
		u.msrDelta = 0
		return v
	default: // regSCR
		return u.scr
	}
}

// writeReg writes v to register off, appending any output byte to out.
// u.mu is held.
func (u *UART) writeReg(off int, v byte, out []byte) []byte {
	switch off {
	case regData:
		if u.lcr&lcrDLAB != 0 {
			u.dll = v
			break
		}
		// Output is immediate, so THR is empty again at once.
		u.thri = true
		if u.mcr&mcrLoop != 0 {
			u.loopback(v)
			break
		}
		out = append(out, v)
	case regIER:
		if u.lcr&lcrDLAB != 0 {
			u.dlm = v
			break
		}
		v &= ierMask
		switch {
		case v&ierTHRI == 0:
			u.thri = false
		case u.ier&ierTHRI == 0:
			// Enabling the THRE interrupt with THR empty raises it.
			u.thri = true
		}
		u.ier = v
	case regIIR: // FCR
		// The FIFO reset bits are not stored; the receive "FIFO" is the
		// flow-controlled host queue and is never discarded (see UART).
		if v&fcrEnable == 0 {
			u.fcr = 0
		} else {
			u.fcr = v & fcrKeepMask
		}
	case regLCR:
		u.lcr = v
	case regMCR:
		before := u.modemStatus()
		wasLoop := u.mcr&mcrLoop != 0
		u.mcr = v & mcrMask
		u.noteModemChange(before, u.modemStatus())
		if wasLoop && u.mcr&mcrLoop == 0 && u.waiters > 0 {
			u.space.Broadcast()
		}
	case regLSR, regMSR:
		// Read-only here (factory test registers on some parts).
	default: // regSCR
		u.scr = v
	}
	return out
}

// popRx moves the next queued byte into RBR, if any. u.mu is held.
func (u *UART) popRx() {
	b, ok := u.rx.pop()
	if !ok {
		return
	}
	u.rbr = b
	if u.waiters > 0 {
		u.space.Broadcast()
	}
	if u.rx.len() == 0 {
		u.rxRun = 0
		return
	}
	u.rxRun++
	if int(u.rxRun) >= u.fifoDepth() {
		u.rxRun = 0
		u.pulse = true
	}
}

// loopback feeds an output byte back to the receiver. u.mu is held.
func (u *UART) loopback(v byte) {
	if u.rx.len() >= u.fifoDepth() {
		u.overrun = true
		return
	}
	if u.rx.len() == 0 {
		u.rxRun = 0
	}
	u.rx.push([]byte{v})
}

func (u *UART) fifoDepth() int {
	if u.fcr&fcrEnable != 0 {
		return fifoDepth
	}
	return 1
}

// modemStatus returns the MSR status bits (high nibble): the modem lines of
// an always-ready peer, or the MCR outputs wired back in loopback mode.
func (u *UART) modemStatus() byte {
	if u.mcr&mcrLoop == 0 {
		return msrDCD | msrDSR | msrCTS
	}
	var s byte
	if u.mcr&mcrRTS != 0 {
		s |= msrCTS
	}
	if u.mcr&mcrDTR != 0 {
		s |= msrDSR
	}
	if u.mcr&mcrOUT1 != 0 {
		s |= msrRI
	}
	if u.mcr&mcrOUT2 != 0 {
		s |= msrDCD
	}
	return s
}

// noteModemChange latches MSR delta bits for a change of the modem lines.
func (u *UART) noteModemChange(before, after byte) {
	changed := before ^ after
	if changed&msrCTS != 0 {
		u.msrDelta |= msrDCTS
	}
	if changed&msrDSR != 0 {
		u.msrDelta |= msrDDSR
	}
	if changed&msrDCD != 0 {
		u.msrDelta |= msrDDCD
	}
	if before&msrRI != 0 && after&msrRI == 0 {
		u.msrDelta |= msrTERI
	}
}

func (u *UART) lsr() byte {
	v := byte(lsrTHRE | lsrTEMT)
	if u.rx.len() > 0 {
		v |= lsrDR
	}
	if u.overrun {
		v |= lsrOE
	}
	return v
}

// source returns the highest-priority enabled pending interrupt, in IIR
// encoding (iirNoInt if none).
func (u *UART) source() byte {
	switch {
	case u.ier&ierRLSI != 0 && u.overrun:
		return iirRLSI
	case u.ier&ierRDI != 0 && u.rx.len() > 0:
		return iirRDI
	case u.ier&ierTHRI != 0 && u.thri:
		return iirTHRI
	case u.ier&ierMSI != 0 && u.msrDelta != 0:
		return iirMSI
	}
	return iirNoInt
}

func (u *UART) iir() byte {
	v := u.source()
	if u.fcr&fcrEnable != 0 {
		v |= iirFIFO
	}
	return v
}

func (u *UART) wantLevel() bool {
	return u.source() != iirNoInt && u.mcr&mcrOUT2 != 0
}

// updateIRQ drives the interrupt line to its new level if it changed (or
// pulses it if a fresh edge is due). u.mu is held.
func (u *UART) updateIRQ() {
	pulse := u.pulse
	u.pulse = false
	want := u.wantLevel()
	if want == u.level {
		if !want || !pulse {
			return
		}
		if !u.setLevel(false) {
			return
		}
	}
	u.setLevel(want)
}

// setLevel drives the line and records the level on success. u.mu is held.
func (u *UART) setLevel(high bool) bool {
	if u.irq == nil {
		u.level = high
		return true
	}
	if err := u.irq.SetLevel(high); err != nil {
		if !u.irqFailing {
			u.irqFailing = true
			slog.Warn("devices: setting interrupt line failed", "device", u.name, "high", high, "err", err)
		}
		return false
	}
	u.irqFailing = false
	u.level = high
	return true
}

// StateName implements [Stateful]: "uart@0x3f8" for COM1.
func (u *UART) StateName() string { return u.name }

const (
	uartStateVersion = 1
	uartStateHeader  = 16 // fixed fields before the queued input

	uartFlagTHRI    = 0x01
	uartFlagOverrun = 0x02
	uartFlagMask    = 0x03
)

// SaveState implements [Stateful]. The encoding (version 1) is:
//
//	[0] version  [1] IER  [2] FCR  [3] LCR  [4] MCR  [5] SCR  [6] DLL  [7] DLM
//	[8] RBR  [9] flags (0x01 THRE interrupt latched, 0x02 overrun)
//	[10] MSR delta bits  [11] receive-run counter
//	[12:16] queued input length n (little endian)  [16:16+n] queued input
func (u *UART) SaveState() ([]byte, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var flags byte
	if u.thri {
		flags |= uartFlagTHRI
	}
	if u.overrun {
		flags |= uartFlagOverrun
	}
	b := make([]byte, 0, uartStateHeader+u.rx.len())
	b = append(b, uartStateVersion, u.ier, u.fcr, u.lcr, u.mcr, u.scr, u.dll, u.dlm,
		u.rbr, flags, u.msrDelta, u.rxRun)
	b = binary.LittleEndian.AppendUint32(b, uint32(u.rx.len()))
	return u.rx.appendTo(b), nil
}

// LoadState implements [Stateful]. It accepts only what SaveState produces.
// Afterwards it drives the interrupt line to the loaded level even if that
// equals the previous one, so the line matches the device after a restore.
// Host writers blocked on a full queue re-check it.
func (u *UART) LoadState(b []byte) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadState, u.name, fmt.Sprintf(format, args...))
	}
	if len(b) == 0 {
		return bad("empty state")
	}
	if b[0] != uartStateVersion {
		return bad("unsupported version %d (want %d)", b[0], uartStateVersion)
	}
	if len(b) < uartStateHeader {
		return bad("truncated: %d bytes, want at least %d", len(b), uartStateHeader)
	}
	ier, fcr, mcr, flags, delta, run := b[1], b[2], b[4], b[9], b[10], b[11]
	switch {
	case ier&^ierMask != 0:
		return bad("IER %#02x has reserved bits set", ier)
	case fcr&^fcrKeepMask != 0 || (fcr != 0 && fcr&fcrEnable == 0):
		return bad("FCR %#02x is not a valid saved value", fcr)
	case mcr&^mcrMask != 0:
		return bad("MCR %#02x has reserved bits set", mcr)
	case flags&^uartFlagMask != 0:
		return bad("unknown flags %#02x", flags)
	case delta&^msrDeltaMask != 0:
		return bad("MSR delta %#02x has status bits set", delta)
	case run >= fifoDepth:
		return bad("receive-run counter %d out of range", run)
	}
	n := binary.LittleEndian.Uint32(b[12:16])
	if n > UARTInputQueueSize {
		return bad("%d queued input bytes exceed the queue size %d", n, UARTInputQueueSize)
	}
	if uint64(len(b)) != uartStateHeader+uint64(n) {
		return bad("length %d does not match %d queued input bytes", len(b), n)
	}

	u.mu.Lock()
	defer u.mu.Unlock()
	u.ier, u.fcr, u.lcr, u.mcr, u.scr, u.dll, u.dlm, u.rbr = ier, fcr, b[3], mcr, b[5], b[6], b[7], b[8]
	u.thri = flags&uartFlagTHRI != 0
	u.overrun = flags&uartFlagOverrun != 0
	u.msrDelta = delta
	u.rxRun = run
	u.rx.reset()
	u.rx.push(b[uartStateHeader:])
	u.pulse = false
	u.setLevel(u.wantLevel())
	u.space.Broadcast()
	return nil
}

// byteRing is a bounded FIFO of bytes. Its buffer is allocated on first use.
type byteRing struct {
	size    int
	buf     []byte
	head, n int
}

func (r *byteRing) len() int  { return r.n }
func (r *byteRing) free() int { return r.size - r.n }

// push appends as much of p as fits and returns how much it appended.
func (r *byteRing) push(p []byte) int {
	if r.buf == nil && len(p) > 0 {
		r.buf = make([]byte, r.size)
	}
	total := 0
	for len(p) > 0 && r.n < r.size {
		tail := (r.head + r.n) % r.size
		end := r.size
		if tail < r.head {
			end = r.head
		}
		c := copy(r.buf[tail:end], p)
		r.n += c
		p = p[c:]
		total += c
	}
	return total
}

func (r *byteRing) pop() (byte, bool) {
	if r.n == 0 {
		return 0, false
	}
	b := r.buf[r.head]
	r.head = (r.head + 1) % r.size
	r.n--
	if r.n == 0 {
		r.head = 0
	}
	return b, true
}

// appendTo appends the queued bytes, oldest first, to dst.
func (r *byteRing) appendTo(dst []byte) []byte {
	if r.n == 0 {
		return dst
	}
	end := r.head + r.n
	if end <= r.size {
		return append(dst, r.buf[r.head:end]...)
	}
	dst = append(dst, r.buf[r.head:]...)
	return append(dst, r.buf[:end-r.size]...)
}

func (r *byteRing) reset() { r.head, r.n = 0, 0 }
