package devices

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeIRQ records the levels a device drives.
type fakeIRQ struct {
	mu     sync.Mutex
	levels []bool
}

func (f *fakeIRQ) SetLevel(high bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.levels = append(f.levels, high)
	return nil
}

// take returns the levels driven since the last call.
func (f *fakeIRQ) take() []bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.levels
	f.levels = nil
	return l
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func rd(t testing.TB, u *UART, off int) byte {
	t.Helper()
	var b [1]byte
	if err := u.ReadPort(u.base+uint16(off), b[:]); err != nil {
		t.Fatalf("read offset %d: %v", off, err)
	}
	return b[0]
}

func wr(t testing.TB, u *UART, off int, v byte) {
	t.Helper()
	if err := u.WritePort(u.base+uint16(off), []byte{v}); err != nil {
		t.Fatalf("write offset %d: %v", off, err)
	}
}

func queue(t testing.TB, u *UART, s string) {
	t.Helper()
	if n, err := u.Write([]byte(s)); n != len(s) || err != nil {
		t.Fatalf("Write(%q) = %d, %v", s, n, err)
	}
}

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (u *UART) blockedWriters() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.waiters
}

// step is one register access in a table-driven UART test: a write of v, or
// a read expecting v.
type step struct {
	write bool
	off   int
	v     byte
}

func w(off int, v byte) step    { return step{true, off, v} }
func r(off int, want byte) step { return step{false, off, want} }

func TestUARTRegisters(t *testing.T) {
	tests := []struct {
		name  string
		input string // queued before the steps
		steps []step
	}{
		{"reset values", "", []step{
			r(regIER, 0), r(regIIR, 0x01), r(regLCR, 0), r(regMCR, 0),
			r(regLSR, 0x60), r(regMSR, 0xB0), r(regSCR, 0),
		}},
		{"LCR read-back", "", []step{w(regLCR, 0x1B), r(regLCR, 0x1B), w(regLCR, 0x03), r(regLCR, 0x03)}},
		{"SCR read-back", "", []step{w(regSCR, 0x5A), r(regSCR, 0x5A), w(regSCR, 0xA5), r(regSCR, 0xA5)}},
		{"DLAB selects DLL and DLM", "", []step{
			w(regLCR, 0x80), r(regData, 0x0C), r(regIER, 0x00), // 9600 baud at reset
			w(regData, 0x01), w(regIER, 0x02), r(regData, 0x01), r(regIER, 0x02),
			w(regLCR, 0x03), w(regIER, 0x05), r(regIER, 0x05),
			w(regLCR, 0x83), r(regData, 0x01), r(regIER, 0x02),
			w(regLCR, 0x03), r(regIER, 0x05),
		}},
		{"DLAB hides RBR", "a", []step{
			w(regLCR, 0x80), r(regData, 0x0C), r(regLSR, 0x61),
			w(regLCR, 0x00), r(regData, 'a'), r(regLSR, 0x60),
		}},
		{"IER reserved bits read as zero", "", []step{w(regIER, 0xF0), r(regIER, 0x00), w(regIER, 0xFF), r(regIER, 0x0F)}},
		{"MCR reserved bits read as zero", "", []step{w(regMCR, 0xFF), r(regMCR, 0x1F)}},
		{"FCR enables FIFO bits in IIR", "", []step{
			w(regIIR, 0x01), r(regIIR, 0xC1),
			w(regIIR, 0xC7), r(regIIR, 0xC1),
			w(regIIR, 0x00), r(regIIR, 0x01),
			w(regIIR, 0xC6), r(regIIR, 0x01), // other bits need the enable bit
		}},
		{"LSR reports data ready", "xy", []step{
			r(regLSR, 0x61), r(regData, 'x'), r(regLSR, 0x61), r(regData, 'y'), r(regLSR, 0x60),
			r(regData, 'y'), // an empty receiver returns the last byte
		}},
		{"LSR and MSR ignore writes", "", []step{w(regLSR, 0x00), r(regLSR, 0x60), w(regMSR, 0x00), r(regMSR, 0xB0)}},
		{"IIR priority line status > data > THRE > modem status", "", []step{
			w(regIER, 0x0F),
			w(regMCR, mcrLoop), // modem lines change: all four status bits drop
			w(regData, 'a'),    // loopback: received
			w(regData, 'b'),    // FIFO disabled, receiver full: overrun
			r(regIIR, 0x06), r(regIIR, 0x06), r(regLSR, 0x63),
			r(regIIR, 0x04), r(regData, 'a'),
			r(regIIR, 0x02), // reading IIR clears the THRE interrupt
			r(regIIR, 0x00), r(regMSR, 0x0B),
			r(regIIR, 0x01), r(regMSR, 0x00),
		}},
		{"THRE interrupt re-armed by THR write and IER enable", "", []step{
			w(regIER, ierTHRI), r(regIIR, 0x02), r(regIIR, 0x01),
			w(regIER, ierTHRI), r(regIIR, 0x01), // already enabled: no new interrupt
			w(regData, 'z'), r(regIIR, 0x02), r(regIIR, 0x01),
			w(regIER, 0), w(regIER, ierTHRI), r(regIIR, 0x02),
		}},
		{"modem status interrupt only when enabled", "", []step{
			w(regMCR, mcrLoop), r(regIIR, 0x01), w(regIER, ierMSI), r(regIIR, 0x00), r(regMSR, 0x0B), r(regIIR, 0x01),
		}},
		{"loopback wires MCR to MSR", "", []step{
			w(regMCR, mcrLoop|mcrOUT2|mcrRTS), r(regMSR, 0x92), // Linux's probe expects 0x90 in the high nibble
			w(regMCR, mcrLoop|mcrDTR|mcrRTS|mcrOUT1|mcrOUT2), r(regMSR, 0xF0|msrDDSR),
			w(regMCR, mcrLoop|mcrDTR|mcrRTS|mcrOUT2), r(regMSR, 0xB0|msrTERI),
			w(regMCR, 0), r(regMSR, 0xB0), // back to an always-ready peer
		}},
		{"loopback overrun with FIFO", "", []step{
			w(regIIR, 0x01), w(regMCR, mcrLoop),
			w(regData, 0), w(regData, 1), w(regData, 2), w(regData, 3), w(regData, 4), w(regData, 5), w(regData, 6), w(regData, 7),
			w(regData, 8), w(regData, 9), w(regData, 10), w(regData, 11), w(regData, 12), w(regData, 13), w(regData, 14), w(regData, 15),
			r(regLSR, 0x61), w(regData, 16), r(regLSR, 0x63), r(regLSR, 0x61),
			r(regData, 0), r(regData, 1),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out syncBuffer
			u := NewUART(COM1Base, &fakeIRQ{}, &out)
			if tt.input != "" {
				queue(t, u, tt.input)
			}
			for i, s := range tt.steps {
				if s.write {
					wr(t, u, s.off, s.v)
					continue
				}
				if got := rd(t, u, s.off); got != s.v {
					t.Fatalf("step %d: read offset %d = %#02x, want %#02x", i, s.off, got, s.v)
				}
			}
		})
	}
}

func TestUARTOutput(t *testing.T) {
	var out syncBuffer
	u := NewUART(COM1Base, nil, &out)
	for _, c := range []byte("hello\n") {
		wr(t, u, regData, c)
	}
	// A 2-byte access writes THR, then IER.
	if err := u.WritePort(COM1Base, []byte{'!', 0x0F}); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "hello\n!" {
		t.Errorf("output %q, want %q", got, "hello\n!")
	}
	if got := rd(t, u, regIER); got != 0x0F {
		t.Errorf("IER = %#x after 2-byte write, want 0x0f", got)
	}
	// Writing the divisor latch is not output.
	wr(t, u, regLCR, lcrDLAB)
	wr(t, u, regData, 'X')
	if got := out.String(); got != "hello\n!" {
		t.Errorf("output %q after DLL write, want no change", got)
	}

	// A nil writer discards output.
	NewUART(COM1Base, nil, nil).WritePort(COM1Base, []byte{'x'})
}

func TestUARTInputOrder(t *testing.T) {
	u := NewUART(COM1Base, nil, nil)
	queue(t, u, "ab")
	queue(t, u, "c")
	var got []byte
	for rd(t, u, regLSR)&lsrDR != 0 {
		got = append(got, rd(t, u, regData))
	}
	if string(got) != "abc" {
		t.Errorf("received %q, want %q", got, "abc")
	}
}

func TestUARTRXInterruptLevel(t *testing.T) {
	irq := &fakeIRQ{}
	u := NewUART(COM1Base, irq, nil)

	queue(t, u, "ab")
	if got := irq.take(); len(got) != 0 {
		t.Fatalf("levels %v with interrupts disabled, want none", got)
	}
	wr(t, u, regIER, ierRDI)
	if got := irq.take(); len(got) != 0 {
		t.Fatalf("levels %v without MCR.OUT2, want none", got)
	}
	wr(t, u, regMCR, mcrOUT2|mcrDTR|mcrRTS)
	if got := irq.take(); !slices.Equal(got, []bool{true}) {
		t.Fatalf("levels %v after setting OUT2, want [true]", got)
	}
	if got := rd(t, u, regIIR); got != iirRDI {
		t.Fatalf("IIR = %#x, want %#x", got, iirRDI)
	}
	rd(t, u, regData)
	// Without FIFOs the receiver holds one byte: reading it while more is
	// queued gives a fresh edge, as the next byte "arrives".
	if got := irq.take(); !slices.Equal(got, []bool{false, true}) {
		t.Fatalf("levels %v reading with data still queued, want [false true]", got)
	}
	rd(t, u, regData)
	if got := irq.take(); !slices.Equal(got, []bool{false}) {
		t.Fatalf("levels %v after draining, want [false]", got)
	}
	queue(t, u, "c")
	if got := irq.take(); !slices.Equal(got, []bool{true}) {
		t.Fatalf("levels %v on new input, want [true]", got)
	}
	wr(t, u, regMCR, 0) // OUT2 gates the line
	if got := irq.take(); !slices.Equal(got, []bool{false}) {
		t.Fatalf("levels %v after clearing OUT2, want [false]", got)
	}
}

func TestUARTRXInterruptEdgePerFIFO(t *testing.T) {
	irq := &fakeIRQ{}
	u := NewUART(COM1Base, irq, nil)
	wr(t, u, regIIR, fcrEnable)
	wr(t, u, regIER, ierRDI)
	wr(t, u, regMCR, mcrOUT2)
	queue(t, u, string(make([]byte, 40)))
	for range 40 {
		rd(t, u, regData)
	}
	// High on arrival, a fresh edge after each 16 bytes read while more
	// remain, low once drained.
	want := []bool{true, false, true, false, true, false}
	if got := irq.take(); !slices.Equal(got, want) {
		t.Errorf("levels %v, want %v", got, want)
	}
}

func TestUARTTHREInterruptLevel(t *testing.T) {
	irq := &fakeIRQ{}
	u := NewUART(COM1Base, irq, nil)
	wr(t, u, regMCR, mcrOUT2)
	steps := []struct {
		name string
		do   func()
		want []bool
	}{
		{"enable THRE interrupt", func() { wr(t, u, regIER, ierTHRI) }, []bool{true}},
		{"read IIR", func() { rd(t, u, regIIR) }, []bool{false}},
		{"write THR", func() { wr(t, u, regData, 'a') }, []bool{true}},
		{"write THR again", func() { wr(t, u, regData, 'b') }, nil},
		{"disable", func() { wr(t, u, regIER, 0) }, []bool{false}},
		{"re-enable", func() { wr(t, u, regIER, ierTHRI) }, []bool{true}},
		{"clear OUT2", func() { wr(t, u, regMCR, 0) }, []bool{false}},
	}
	for _, s := range steps {
		s.do()
		if got := irq.take(); !slices.Equal(got, s.want) {
			t.Fatalf("%s: levels %v, want %v", s.name, got, s.want)
		}
	}
}

func TestUARTLoopback(t *testing.T) {
	var out syncBuffer
	u := NewUART(COM1Base, nil, &out)
	wr(t, u, regMCR, mcrLoop|mcrOUT2|mcrRTS)
	wr(t, u, regData, 0x55)
	if out.String() != "" {
		t.Errorf("loopback byte reached the output: %q", out.String())
	}
	if got := rd(t, u, regLSR); got&lsrDR == 0 {
		t.Fatalf("LSR = %#x, want DR after loopback write", got)
	}
	if got := rd(t, u, regData); got != 0x55 {
		t.Errorf("RBR = %#x, want 0x55", got)
	}

	// Host input waits while the line is looped back.
	done := make(chan error, 1)
	go func() {
		_, err := u.Write([]byte("h"))
		done <- err
	}()
	waitFor(t, "host writer to block", func() bool { return u.blockedWriters() == 1 })
	if got := rd(t, u, regLSR); got&lsrDR != 0 {
		t.Fatalf("LSR = %#x: host input reached the receiver in loopback", got)
	}
	wr(t, u, regMCR, mcrOUT2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := rd(t, u, regData); got != 'h' {
		t.Errorf("RBR = %q, want 'h'", got)
	}
}

func TestUARTWriteBlocksWhenFull(t *testing.T) {
	u := NewUART(COM1Base, nil, nil)
	full := bytes.Repeat([]byte{'a'}, UARTInputQueueSize)
	if n, err := u.Write(full); n != len(full) || err != nil {
		t.Fatalf("filling the queue: %d, %v", n, err)
	}

	type result struct {
		n   int
		err error
	}
	done := make(chan result, 1)
	go func() {
		n, err := u.Write([]byte("xyz"))
		done <- result{n, err}
	}()
	waitFor(t, "writer to block", func() bool { return u.blockedWriters() == 1 })
	rd(t, u, regData) // room for one byte: the writer queues 'x' and waits again
	waitFor(t, "writer to block again", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.waiters == 1 && u.rx.free() == 0
	})
	rd(t, u, regData)
	rd(t, u, regData)
	if res := <-done; res.n != 3 || res.err != nil {
		t.Fatalf("Write = %d, %v; want 3, nil", res.n, res.err)
	}
	for range UARTInputQueueSize - 3 {
		rd(t, u, regData)
	}
	var got []byte
	for rd(t, u, regLSR)&lsrDR != 0 {
		got = append(got, rd(t, u, regData))
	}
	if string(got) != "xyz" {
		t.Errorf("tail of input %q, want %q", got, "xyz")
	}

	// Close unblocks a waiting writer.
	u.Write(full)
	go func() {
		n, err := u.Write([]byte("more"))
		done <- result{n, err}
	}()
	waitFor(t, "writer to block", func() bool { return u.blockedWriters() == 1 })
	u.Close()
	if res := <-done; res.n != 0 || !errors.Is(res.err, ErrClosed) {
		t.Fatalf("Write after Close = %d, %v; want 0, ErrClosed", res.n, res.err)
	}
	if _, err := u.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Write on closed UART = %v, want ErrClosed", err)
	}
}

// blockingWriter blocks every Write until release is closed.
type blockingWriter struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	b.entered <- struct{}{}
	<-b.release
	return len(p), nil
}

func TestUARTOutputBlockingHoldsNoLock(t *testing.T) {
	bw := &blockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	u := NewUART(COM1Base, nil, bw)
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.WritePort(COM1Base, []byte{'a'})
	}()
	<-bw.entered
	// While output is blocked, input and register reads still work.
	queue(t, u, "in")
	if got := rd(t, u, regLSR); got != 0x61 {
		t.Errorf("LSR = %#x while output blocked, want 0x61", got)
	}
	close(bw.release)
	<-done
}

func TestUARTConcurrentUse(t *testing.T) {
	var out syncBuffer
	u := NewUART(COM1Base, &fakeIRQ{}, &out)
	wr(t, u, regIER, ierRDI|ierTHRI)
	wr(t, u, regMCR, mcrOUT2)
	input := bytes.Repeat([]byte("0123456789"), 1000)
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := u.Write(input); err != nil {
			t.Error(err)
		}
	})
	var got []byte
	wg.Go(func() {
		var b [1]byte
		for len(got) < len(input) {
			u.ReadPort(COM1Base+regLSR, b[:])
			if b[0]&lsrDR != 0 {
				u.ReadPort(COM1Base, b[:])
				got = append(got, b[0])
			}
		}
	})
	wg.Go(func() {
		for range 1000 {
			u.WritePort(COM1Base, []byte{'.'})
			var b [1]byte
			u.ReadPort(COM1Base+regIIR, b[:])
		}
	})
	wg.Wait()
	if !bytes.Equal(got, input) {
		t.Errorf("received %d bytes out of order or lost", len(got))
	}
	if n := len(out.String()); n != 1000 {
		t.Errorf("output %d bytes, want 1000", n)
	}
}

// configure puts u into a state that exercises every saved field.
func configure(t testing.TB, u *UART) {
	t.Helper()
	for _, s := range []step{
		w(regLCR, 0x80), w(regData, 0x03), w(regIER, 0x01), w(regLCR, 0x1B),
		w(regIIR, 0xC7), w(regSCR, 0x77), w(regIER, 0x0F),
		w(regMCR, mcrLoop|mcrOUT2), w(regData, 'L'), // loopback byte, THRE latched, MSR deltas
		w(regMCR, mcrOUT2|mcrRTS|mcrDTR),
	} {
		wr(t, u, s.off, s.v)
	}
	queue(t, u, "queued input")
	for range 3 {
		rd(t, u, regData)
	}
}

func TestUARTSaveLoadRoundTrip(t *testing.T) {
	src := NewUART(COM1Base, nil, nil)
	configure(t, src)
	state, err := src.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if state[0] != uartStateVersion {
		t.Fatalf("version byte %d, want %d", state[0], uartStateVersion)
	}

	irq := &fakeIRQ{}
	dst := NewUART(COM1Base, irq, nil)
	if err := dst.LoadState(state); err != nil {
		t.Fatal(err)
	}
	if got := irq.take(); !slices.Equal(got, []bool{true}) {
		t.Errorf("levels %v after load, want the loaded level [true]", got)
	}
	again, err := dst.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, state) {
		t.Fatalf("state after round trip\n% x\nwant\n% x", again, state)
	}
	if dst.StateName() != "uart@0x3f8" {
		t.Errorf("StateName() = %q", dst.StateName())
	}

	// Both devices now behave identically, register by register, including
	// the queued input and the pending interrupts.
	for _, off := range []int{regIIR, regLSR, regMSR, regIIR, regLCR, regMCR, regSCR, regIER} {
		if a, b := rd(t, src, off), rd(t, dst, off); a != b {
			t.Errorf("offset %d: original %#x, restored %#x", off, a, b)
		}
	}
	var a, b []byte
	for rd(t, src, regLSR)&lsrDR != 0 {
		a = append(a, rd(t, src, regData))
	}
	for rd(t, dst, regLSR)&lsrDR != 0 {
		b = append(b, rd(t, dst, regData))
	}
	if string(a) != "eued input" || !bytes.Equal(a, b) {
		t.Errorf("original received %q, restored %q", a, b)
	}
	wr(t, src, regLCR, lcrDLAB)
	wr(t, dst, regLCR, lcrDLAB)
	if a, b := rd(t, src, regData), rd(t, dst, regData); a != 0x03 || a != b {
		t.Errorf("DLL original %#x, restored %#x, want 0x03", a, b)
	}
}

func TestUARTLoadStateRejects(t *testing.T) {
	src := NewUART(COM1Base, nil, nil)
	configure(t, src)
	good, _ := src.SaveState()
	with := func(i int, v byte) []byte {
		b := bytes.Clone(good)
		b[i] = v
		return b
	}
	tests := []struct {
		name  string
		state []byte
	}{
		{"nil", nil},
		{"version only", []byte{uartStateVersion}},
		{"unknown version", with(0, 2)},
		{"version zero", with(0, 0)},
		{"truncated header", good[:uartStateHeader-1]},
		{"truncated input", good[:len(good)-1]},
		{"trailing bytes", append(bytes.Clone(good), 0)},
		{"IER reserved bits", with(1, 0x10)},
		{"FCR bits without enable", with(2, 0xC0)},
		{"MCR reserved bits", with(4, 0x20)},
		{"unknown flags", with(9, 0x04)},
		{"MSR status bits", with(10, 0x10)},
		{"run counter", with(11, fifoDepth)},
		{"queue too long", func() []byte {
			b := bytes.Clone(good[:uartStateHeader])
			b[12], b[13], b[14], b[15] = 0x01, 0x00, 0x01, 0x00 // 64 KiB + 1
			return append(b, make([]byte, UARTInputQueueSize+1)...)
		}()},
		{"huge length", func() []byte {
			b := bytes.Clone(good[:uartStateHeader])
			b[12], b[13], b[14], b[15] = 0xFF, 0xFF, 0xFF, 0xFF
			return b
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := NewUART(COM1Base, nil, nil)
			before, _ := dst.SaveState()
			err := dst.LoadState(tt.state)
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("LoadState = %v, want ErrBadState", err)
			}
			after, _ := dst.SaveState()
			if !bytes.Equal(before, after) {
				t.Errorf("failed LoadState changed the device state")
			}
		})
	}
}

func FuzzUARTLoadState(f *testing.F) {
	u := NewUART(COM1Base, nil, nil)
	s, _ := u.SaveState()
	f.Add(s)
	configure(f, u)
	s, _ = u.SaveState()
	f.Add(s)
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF})
	f.Fuzz(func(t *testing.T, state []byte) {
		u := NewUART(COM1Base, &fakeIRQ{}, io.Discard)
		if err := u.LoadState(state); err != nil {
			if !errors.Is(err, ErrBadState) {
				t.Fatalf("error %v does not wrap ErrBadState", err)
			}
			return
		}
		// Accepted states are canonical: they save back unchanged.
		again, err := u.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, state) {
			t.Fatalf("SaveState after LoadState\n% x\nwant\n% x", again, state)
		}
		// And the device works.
		var b [1]byte
		for off := range uint16(UARTPortCount) {
			u.ReadPort(COM1Base+off, b[:])
		}
	})
}

func TestUARTPauseHoldsHostInput(t *testing.T) {
	irq := &fakeIRQ{}
	u := NewUART(COM1Base, irq, nil)
	wr(t, u, regIER, ierRDI)
	wr(t, u, regMCR, mcrOUT2|mcrDTR|mcrRTS)
	irq.take()
	u.Pause()
	u.Pause() // nested
	done := make(chan error, 1)
	go func() {
		_, err := u.Write([]byte("hi"))
		done <- err
	}()
	waitFor(t, "the host writer to be held", func() bool { return u.blockedWriters() == 1 })
	if rd(t, u, regLSR)&lsrDR != 0 {
		t.Fatal("input reached the receiver while paused")
	}
	if l := irq.take(); len(l) != 0 {
		t.Fatalf("interrupt line driven while paused: %v", l)
	}
	u.Resume()
	if u.blockedWriters() != 1 || rd(t, u, regLSR)&lsrDR != 0 {
		t.Fatal("input went in before the last Resume")
	}
	u.Resume()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if l := irq.take(); len(l) == 0 || !l[0] {
		t.Errorf("no interrupt after Resume: %v", l)
	}
	if got := string([]byte{rd(t, u, regData), rd(t, u, regData)}); got != "hi" {
		t.Errorf("received %q after Resume, want %q", got, "hi")
	}
	u.Resume() // unmatched: no effect
	queue(t, u, "x")
}
