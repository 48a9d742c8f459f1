package devices

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestOpenConsoleBadSpec(t *testing.T) {
	for _, spec := range []string{"", "stdin", "STDIO", "pty", "unix", "unix:", "tcp:", "file:", "serial:/dev/ttyS0", " none"} {
		c, err := OpenConsole(spec)
		if err == nil {
			c.Close()
			t.Errorf("OpenConsole(%q) succeeded, want an error", spec)
			continue
		}
		if !errors.Is(err, ErrBadConsoleSpec) {
			t.Errorf("OpenConsole(%q) = %v, want ErrBadConsoleSpec", spec, err)
		}
		for _, form := range []string{"stdio", "none", "unix:PATH", "tcp:HOST:PORT", "file:PATH"} {
			if !strings.Contains(err.Error(), form) {
				t.Errorf("OpenConsole(%q) error %q does not list %s", spec, err, form)
			}
		}
	}
}

type chunk struct {
	data []byte
	err  error
}

// pumpReads reads c in a goroutine until an error, sending what it gets.
func pumpReads(c io.Reader) <-chan chunk {
	ch := make(chan chunk, 16)
	go func() {
		defer close(ch)
		for {
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			ch <- chunk{buf[:n], err}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

// expectInput collects chunks from ch until it has want.
func expectInput(t *testing.T, ch <-chan chunk, want string) {
	t.Helper()
	var got []byte
	timeout := time.After(5 * time.Second)
	for len(got) < len(want) {
		select {
		case c, ok := <-ch:
			if !ok || c.err != nil {
				t.Fatalf("console Read ended (%v) after %q, want %q", c.err, got, want)
			}
			got = append(got, c.data...)
		case <-timeout:
			t.Fatalf("timed out: console read %q, want %q", got, want)
		}
	}
	if string(got) != want {
		t.Fatalf("console read %q, want %q", got, want)
	}
}

func expectEOF(t *testing.T, ch <-chan chunk) {
	t.Helper()
	select {
	case c := <-ch:
		if c.err != io.EOF {
			t.Fatalf("console Read = %q, %v; want io.EOF", c.data, c.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("console Read did not return after Close")
	}
}

func clientReads(t *testing.T, conn net.Conn, want string) {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, len(want))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if string(buf) != want {
		t.Fatalf("client read %q, want %q", buf, want)
	}
}

func TestNetConsole(t *testing.T) {
	specs := map[string]string{
		"tcp":  "tcp:127.0.0.1:0",
		"unix": "unix:" + filepath.Join(t.TempDir(), "serial.sock"),
	}
	for name, spec := range specs {
		t.Run(name, func(t *testing.T) {
			c, err := OpenConsole(spec)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			addr := c.(Addresser).Addr()
			input := pumpReads(c)

			// No client yet: output is dropped, not buffered or failed.
			if n, err := c.Write([]byte("lost")); n != 4 || err != nil {
				t.Fatalf("Write without client = %d, %v; want 4, nil", n, err)
			}

			first, err := net.Dial(addr.Network(), addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer first.Close()
			first.Write([]byte("hello"))
			expectInput(t, input, "hello") // the console now has this client
			c.Write([]byte("world"))
			clientReads(t, first, "world")

			second, err := net.Dial(addr.Network(), addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer second.Close()
			second.Write([]byte("two"))
			expectInput(t, input, "two")
			c.Write([]byte("to second"))
			clientReads(t, second, "to second")

			// The first client was disconnected when the second arrived.
			first.SetReadDeadline(time.Now().Add(5 * time.Second))
			if n, err := first.Read(make([]byte, 16)); err == nil {
				t.Fatalf("first client read %d bytes, want it disconnected", n)
			} else if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("first client still connected after a second one arrived")
			}

			if err := c.Close(); err != nil {
				t.Fatal(err)
			}
			expectEOF(t, input)
			if _, err := c.Write([]byte("x")); !errors.Is(err, ErrClosed) {
				t.Errorf("Write after Close = %v, want ErrClosed", err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("second Close = %v", err)
			}
			if name == "unix" {
				if _, err := os.Lstat(strings.TrimPrefix(spec, "unix:")); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("socket file left behind after Close: %v", err)
				}
			}
		})
	}
}

func TestNetConsoleClientReconnects(t *testing.T) {
	c, err := OpenConsole("tcp:127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.(Addresser).Addr()
	input := pumpReads(c)
	for _, msg := range []string{"one", "two"} {
		conn, err := net.Dial("tcp", addr.String())
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(msg))
		expectInput(t, input, msg) // a departed client does not end the input
		conn.Close()
	}
}

func TestNetConsoleDropsStalledClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := newNetConsole(ln)
	c.writeTimeout = 20 * time.Millisecond
	defer c.Close()
	input := pumpReads(c)

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("x"))
	expectInput(t, input, "x")

	// The client never reads; once the socket buffers fill, a write times
	// out and the client is dropped.
	big := make([]byte, 1<<20)
	deadline := time.Now().Add(10 * time.Second)
	for {
		start := time.Now()
		if n, err := c.Write(big); n != len(big) || err != nil {
			t.Fatalf("Write = %d, %v; want success even for a stalled client", n, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("Write blocked for %v", d)
		}
		c.mu.Lock()
		dropped := c.conn == nil
		c.mu.Unlock()
		if dropped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stalled client was never dropped")
		}
	}
}

func TestUnixConsoleSocketFile(t *testing.T) {
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	c, err := OpenConsole("unix:" + stale)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	c.Close()

	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err := OpenConsole("unix:" + regular); err == nil {
		c.Close()
		t.Fatal("OpenConsole replaced a regular file")
	}
	if b, err := os.ReadFile(regular); err != nil || string(b) != "keep me" {
		t.Errorf("regular file changed: %q, %v", b, err)
	}
}

func TestSinkConsoles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	for i, line := range []string{"first\n", "second\n"} {
		c, err := OpenConsole("file:" + path)
		if err != nil {
			t.Fatal(err)
		}
		input := pumpReads(c)
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		expectEOF(t, input) // no input, and Read returned only on Close
		if i == 0 {
			continue
		}
		if b, _ := os.ReadFile(path); string(b) != "first\nsecond\n" {
			t.Errorf("log file %q, want both lines appended", b)
		}
	}

	c, err := OpenConsole("none")
	if err != nil {
		t.Fatal(err)
	}
	input := pumpReads(c)
	if n, err := c.Write([]byte("gone")); n != 4 || err != nil {
		t.Errorf("Write = %d, %v", n, err)
	}
	select {
	case ch := <-input:
		t.Fatalf("none console Read returned %q, %v before Close", ch.data, ch.err)
	default:
	}
	c.Close()
	expectEOF(t, input)
}

func TestEscapeFilter(t *testing.T) {
	tests := []struct {
		name     string
		reads    []string
		want     string
		wantQuit bool
	}{
		{"plain", []string{"abc"}, "abc", false},
		{"ctrl-a ctrl-a", []string{"a\x01\x01b"}, "a\x01b", false},
		{"ctrl-a other", []string{"\x01c"}, "\x01c", false},
		{"quit", []string{"ab\x01xcd"}, "ab", true},
		{"quit split across reads", []string{"ab\x01", "x"}, "ab", true},
		{"escaped ctrl-a split", []string{"\x01", "\x01x"}, "\x01x", false},
		{"capital X is not quit", []string{"\x01X"}, "\x01X", false},
		{"trailing ctrl-a held", []string{"a\x01"}, "a", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f escapeFilter
			var got []byte
			quit := false
			for _, r := range tt.reads {
				got, quit = f.filter(got, []byte(r))
				if quit {
					break
				}
			}
			if string(got) != tt.want || quit != tt.wantQuit {
				t.Errorf("got %q, quit=%v; want %q, quit=%v", got, quit, tt.want, tt.wantQuit)
			}
		})
	}
}

func TestStdioConsole(t *testing.T) {
	newConsole := func(t *testing.T) (*stdioConsole, *os.File, *syncBuffer) {
		t.Helper()
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close(); w.Close() })
		var out syncBuffer
		c, err := newStdioConsole(r, &out)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, w, &out
	}

	t.Run("input output and quit", func(t *testing.T) {
		c, w, out := newConsole(t)
		input := pumpReads(c)
		w.Write([]byte("ls\x01\x01\r"))
		expectInput(t, input, "ls\x01\r")
		w.Write([]byte("bye\x01x ignored"))
		expectInput(t, input, "bye")
		expectEOF(t, input)
		c.Write([]byte("guest says hi"))
		if out.String() != "guest says hi" {
			t.Errorf("output %q", out.String())
		}
	})
	t.Run("close unblocks read", func(t *testing.T) {
		c, _, _ := newConsole(t)
		input := pumpReads(c)
		c.Close()
		expectEOF(t, input)
		if _, err := c.Write([]byte("x")); !errors.Is(err, ErrClosed) {
			t.Errorf("Write after Close = %v, want ErrClosed", err)
		}
	})
	t.Run("stdin EOF waits for close", func(t *testing.T) {
		c, w, _ := newConsole(t)
		input := pumpReads(c)
		w.Write([]byte("last"))
		w.Close()
		expectInput(t, input, "last")
		select {
		case ch := <-input:
			t.Fatalf("Read returned %q, %v at stdin EOF; want it to wait for Close", ch.data, ch.err)
		case <-time.After(50 * time.Millisecond):
		}
		c.Close()
		expectEOF(t, input)
	})
}

var (
	_ Console   = (*stdioConsole)(nil)
	_ Console   = (*netConsole)(nil)
	_ Console   = (*sinkConsole)(nil)
	_ Addresser = (*netConsole)(nil)
)
