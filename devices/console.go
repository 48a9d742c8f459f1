package devices

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
)

// Console is the host side of a serial line: Read returns bytes typed into
// the guest (host → guest) and Write takes the guest's output.
//
// Read blocks until input arrives or the console is closed, then returns
// io.EOF. For a "stdio" console io.EOF also means the user typed the quit
// sequence (Ctrl-A x): the VMM should treat io.EOF from Read while the
// console is open as a request to stop the VM. Other consoles never end
// their input by themselves.
//
// Write does not fail because nobody is listening: like a serial line, a
// console drops output it cannot deliver. It returns [ErrClosed] after
// Close, and the host I/O error for a "file" console.
//
// Close releases the console and unblocks a pending Read. It is idempotent.
type Console interface {
	io.ReadWriteCloser
}

// Addresser is implemented by consoles that listen for clients ("unix:" and
// "tcp:"); Addr is the address they listen on.
type Addresser interface {
	Addr() net.Addr
}

// ErrBadConsoleSpec is wrapped by [OpenConsole] errors for a spec it does not
// understand.
var ErrBadConsoleSpec = errors.New("devices: bad serial console spec")

const consoleForms = `"stdio", "none", "unix:PATH", "tcp:HOST:PORT" or "file:PATH"`

// OpenConsole opens the host side of a serial line from a --serial spec:
//
//   - "stdio": the terminal. Raw mode when stdin is a TTY, restored on
//     Close. Ctrl-A x quits (Read returns io.EOF); Ctrl-A Ctrl-A sends one
//     Ctrl-A; Ctrl-A followed by anything else sends both bytes. This
//     escape handling applies even when stdin is not a TTY. When stdin
//     reaches end of file, Read blocks until Close.
//   - "unix:PATH": listen on a Unix socket at PATH. A stale socket file
//     there is removed first; any other kind of file is an error. One
//     client at a time: a new client replaces the old one. Input comes from
//     the current client; output goes to it, or is dropped when no client is
//     connected. A client that does not accept output for a second is
//     disconnected.
//   - "tcp:ADDR": the same over TCP, e.g. "tcp:127.0.0.1:4444".
//   - "none": output is discarded; there is no input.
//   - "file:PATH": output is appended to PATH (created with mode 0600);
//     there is no input.
func OpenConsole(spec string) (Console, error) {
	kind, arg, hasArg := strings.Cut(spec, ":")
	switch {
	case spec == "stdio":
		return newStdioConsole(os.Stdin, os.Stdout)
	case spec == "none":
		return newSinkConsole(io.Discard), nil
	case kind == "unix" && hasArg && arg != "":
		return listenUnix(arg)
	case kind == "tcp" && hasArg && arg != "":
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			return nil, fmt.Errorf("devices: serial console: %w", err)
		}
		return newNetConsole(ln), nil
	case kind == "file" && hasArg && arg != "":
		f, err := os.OpenFile(arg, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("devices: serial console: %w", err)
		}
		return newSinkConsole(f), nil
	}
	return nil, fmt.Errorf("%w %q: want %s", ErrBadConsoleSpec, spec, consoleForms)
}

// sinkConsole has no input and writes output to w ("none" and "file:").
type sinkConsole struct {
	w         io.Writer
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

func newSinkConsole(w io.Writer) *sinkConsole {
	return &sinkConsole{w: w, done: make(chan struct{})}
}

// Read blocks until Close: there is no input.
func (c *sinkConsole) Read(p []byte) (int, error) {
	<-c.done
	return 0, io.EOF
}

func (c *sinkConsole) Write(p []byte) (int, error) {
	select {
	case <-c.done:
		return 0, ErrClosed
	default:
	}
	return c.w.Write(p)
}

func (c *sinkConsole) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		if cl, ok := c.w.(io.Closer); ok {
			c.closeErr = cl.Close()
		}
	})
	return c.closeErr
}
