package replicate

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

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

// waitFor polls cond until it holds or a deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (g *OutputGate) waiters() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.waiting
}

// recv waits for a value on c, failing the test after a deadline.
func recv[T any](t *testing.T, what string, c <-chan T) T {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func mustWrite(t *testing.T, w io.Writer, s string) {
	t.Helper()
	if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
		t.Fatalf("Write(%q) = %d, %v", s, n, err)
	}
}

func TestOutputGateEpochs(t *testing.T) {
	// Each step is an operation followed by the expected output so far and
	// the bytes held.
	type step struct {
		op       string // "w <text>", "s <epoch>", "r <epoch>"
		wantOut  string
		wantHeld int
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"in order", []step{
			{"w a", "", 1}, {"s 1", "", 1}, {"w b", "", 2}, {"s 2", "", 2},
			{"w c", "", 3}, {"s 3", "", 3},
			{"r 1", "a", 2}, {"r 2", "ab", 1}, {"r 3", "abc", 0},
		}},
		{"nothing before its epoch", []step{
			{"w abc", "", 3}, {"s 5", "", 3}, {"r 4", "", 3}, {"r 0", "", 3}, {"r 5", "abc", 0},
		}},
		{"later release takes earlier epochs", []step{
			{"w a", "", 1}, {"s 1", "", 1}, {"w b", "", 2}, {"s 2", "", 2},
			{"w c", "", 3}, {"s 4", "", 3}, {"r 3", "ab", 1}, {"r 9", "abc", 0},
		}},
		{"after seal stays held", []step{
			{"w x", "", 1}, {"s 1", "", 1}, {"w y", "", 2}, {"r 1", "x", 1},
			{"r 1", "x", 1}, {"s 2", "x", 1}, {"r 2", "xy", 0},
		}},
		{"epoch zero", []step{
			{"w a", "", 1}, {"s 0", "", 1}, {"r 0", "a", 0},
		}},
		{"empty epochs", []step{
			{"s 1", "", 0}, {"s 2", "", 0}, {"w a", "", 1}, {"s 3", "", 1}, {"r 2", "", 1}, {"r 3", "a", 0},
		}},
		{"non-increasing seal ignored", []step{
			{"w a", "", 1}, {"s 2", "", 1}, {"w b", "", 2}, {"s 2", "", 2}, {"s 1", "", 2},
			{"r 2", "a", 1}, {"s 3", "a", 1}, {"r 3", "ab", 0},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out syncBuffer
			g := NewOutputGate(&out, 0)
			for i, s := range tt.steps {
				op, arg, _ := strings.Cut(s.op, " ")
				var epoch uint64
				fmt.Sscan(arg, &epoch)
				switch op {
				case "w":
					mustWrite(t, g, arg)
				case "s":
					g.Seal(epoch)
				case "r":
					if err := g.Release(epoch); err != nil {
						t.Fatalf("step %d %q: Release: %v", i, s.op, err)
					}
				}
				if got := out.String(); got != s.wantOut {
					t.Fatalf("step %d %q: output %q, want %q", i, s.op, got, s.wantOut)
				}
				if got := g.Held(); got != s.wantHeld {
					t.Fatalf("step %d %q: Held %d, want %d", i, s.op, got, s.wantHeld)
				}
			}
		})
	}
}

func TestOutputGateBackPressure(t *testing.T) {
	var out syncBuffer
	g := NewOutputGate(&out, 4)

	// Open bytes alone never block, even past the limit: only an epoch
	// boundary, which needs the vCPU, could free them.
	mustWrite(t, g, "abcdef")
	g.Seal(1)

	done := make(chan error, 1)
	go func() {
		_, err := g.Write([]byte("g"))
		done <- err
	}()
	waitFor(t, "the writer to block", func() bool { return g.waiters() == 1 })
	select {
	case err := <-done:
		t.Fatalf("Write returned (%v) while the gate was full", err)
	default:
	}
	if err := g.Release(1); err != nil {
		t.Fatal(err)
	}
	if err := recv(t, "the writer to unblock", done); err != nil {
		t.Fatalf("Write after Release: %v", err)
	}
	if got, want := out.String(), "abcdef"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
	if got := g.Held(); got != 1 {
		t.Errorf("Held = %d, want 1", got)
	}
}

func TestOutputGateClose(t *testing.T) {
	var out syncBuffer
	g := NewOutputGate(&out, 2)
	mustWrite(t, g, "ab")
	g.Seal(1)

	const writers = 3
	done := make(chan error, writers)
	for i := 0; i < writers; i++ {
		go func() {
			_, err := g.Write([]byte("c"))
			done <- err
		}()
	}
	waitFor(t, "the writers to block", func() bool { return g.waiters() == writers })
	if err := g.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for i := 0; i < writers; i++ {
		if err := recv(t, "a writer to unblock", done); !errors.Is(err, ErrGateClosed) {
			t.Errorf("blocked Write after Close: %v, want ErrGateClosed", err)
		}
	}
	if n, err := g.Write([]byte("d")); n != 0 || !errors.Is(err, ErrGateClosed) {
		t.Errorf("Write after Close = %d, %v; want 0, ErrGateClosed", n, err)
	}
	if err := g.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// Committed output still comes out.
	if err := g.Release(1); err != nil || out.String() != "ab" {
		t.Errorf("Release after Close: %v, output %q", err, out.String())
	}
}

type failWriter struct{ n int }

func (w failWriter) Write(p []byte) (int, error) {
	if w.n >= 0 {
		return min(w.n, len(p)), nil // short write without an error
	}
	return 0, errors.New("console gone")
}

func TestOutputGateWriterError(t *testing.T) {
	tests := []struct {
		name string
		w    io.Writer
		want string
	}{
		{"error", failWriter{n: -1}, "console gone"},
		{"short write", failWriter{n: 1}, io.ErrShortWrite.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewOutputGate(tt.w, 6)
			mustWrite(t, g, "abcd")
			g.Seal(1)
			mustWrite(t, g, "ef")
			g.Seal(2)
			err := g.Release(2)
			if err == nil || err.Error() != tt.want {
				t.Errorf("Release = %v, want %q", err, tt.want)
			}
			// Dropped anyway: the gate is not wedged.
			if got := g.Held(); got != 0 {
				t.Errorf("Held = %d after a failed Release, want 0", got)
			}
			mustWrite(t, g, "abcdefgh")
		})
	}
}

// blockingWriter blocks every Write until released.
type blockingWriter struct {
	entered chan struct{}
	release chan struct{}
	syncBuffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.entered <- struct{}{}
	<-w.release
	return w.syncBuffer.Write(p)
}

func TestOutputGateSlowWriter(t *testing.T) {
	w := &blockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	g := NewOutputGate(w, 1<<10)
	mustWrite(t, g, "a")
	g.Seal(1)
	mustWrite(t, g, "b")
	g.Seal(2)

	released := make(chan error, 2)
	go func() { released <- g.Release(1) }()
	recv(t, "Release to reach the writer", w.entered)

	// The guest is not held up by the slow console.
	wrote := make(chan error, 1)
	go func() {
		_, err := g.Write([]byte("c"))
		g.Seal(3)
		wrote <- err
	}()
	if err := recv(t, "Write during a slow Release", wrote); err != nil {
		t.Fatal(err)
	}
	// A later Release waits its turn, so epochs stay in order.
	go func() { released <- g.Release(3) }()
	w.release <- struct{}{}
	recv(t, "the second Release to reach the writer", w.entered)
	w.release <- struct{}{}
	recv(t, "the second Release to reach the writer", w.entered)
	w.release <- struct{}{}
	for i := 0; i < 2; i++ {
		if err := recv(t, "Release", released); err != nil {
			t.Fatal(err)
		}
	}
	if got := w.String(); got != "abc" {
		t.Errorf("output %q, want %q", got, "abc")
	}
}

// TestOutputGateConcurrent runs writers against an epoch loop that seals
// and releases the previous epoch, as an asynchronous pipeline does.
func TestOutputGateConcurrent(t *testing.T) {
	var out syncBuffer
	g := NewOutputGate(&out, 64)
	const writers, lines = 4, 300

	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < lines; j++ {
				if _, err := fmt.Fprintf(g, "w%d:%d\n", i, j); err != nil {
					t.Errorf("writer %d: %v", i, err)
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for e := uint64(1); ; e++ {
			g.Seal(e)
			if err := g.Release(e - 1); err != nil {
				t.Errorf("Release: %v", err)
			}
			select {
			case <-stop:
				g.Seal(e + 1)
				if err := g.Release(e + 1); err != nil {
					t.Errorf("Release: %v", err)
				}
				return
			default:
			}
		}
	}()
	wg.Wait()
	close(stop)
	<-loopDone

	if got := g.Held(); got != 0 {
		t.Errorf("Held = %d at the end, want 0", got)
	}
	next := make([]int, writers)
	for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		var i, j int
		if _, err := fmt.Sscanf(line, "w%d:%d", &i, &j); err != nil {
			t.Fatalf("garbled line %q: %v", line, err)
		}
		if j != next[i] {
			t.Fatalf("writer %d: line %d after %d", i, j, next[i]-1)
		}
		next[i]++
	}
	for i, n := range next {
		if n != lines {
			t.Errorf("writer %d: %d lines out, want %d", i, n, lines)
		}
	}
}

func TestGateDoesNotBlockWritersDuringAPause(t *testing.T) {
	g := NewOutputGate(io.Discard, 8)
	g.Write([]byte("12345678"))
	g.Seal(1) // sealed and at the limit: the next Write blocks
	done := make(chan error, 1)
	go func() {
		_, err := g.Write([]byte("x"))
		done <- err
	}()
	waitFor(t, "the writer to block", func() bool { return g.waiters() == 1 })
	g.BeginPause()
	if err := recv(t, "the blocked write", done); err != nil {
		t.Fatal(err)
	}
	// While pausing nothing blocks, however full.
	if _, err := g.Write([]byte("more")); err != nil {
		t.Fatal(err)
	}
	g.EndPause()
	// Back-pressure again once the pause is over.
	go func() {
		_, err := g.Write([]byte("y"))
		done <- err
	}()
	waitFor(t, "the writer to block again", func() bool { return g.waiters() == 1 })
	g.Release(1)
	if err := recv(t, "the write after Release", done); err != nil {
		t.Fatal(err)
	}
}
