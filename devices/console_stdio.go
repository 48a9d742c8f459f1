package devices

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// Console escape sequences, as in QEMU's and screen's conventions.
const (
	escapeKey  = 0x01 // Ctrl-A
	escapeQuit = 'x'
)

// escapeFilter strips the console escape sequences from host input.
// Its state carries across calls, so a sequence may be split between reads.
type escapeFilter struct {
	sawEscape bool
}

// filter appends the guest-bound bytes of in to dst. It reports quit when in
// contains the quit sequence; the bytes after it are discarded.
func (f *escapeFilter) filter(dst, in []byte) (out []byte, quit bool) {
	for _, b := range in {
		if !f.sawEscape {
			if b == escapeKey {
				f.sawEscape = true
				continue
			}
			dst = append(dst, b)
			continue
		}
		f.sawEscape = false
		switch b {
		case escapeQuit:
			return dst, true
		case escapeKey:
			dst = append(dst, escapeKey)
		default:
			dst = append(dst, escapeKey, b)
		}
	}
	return dst, false
}

// stdioConsole reads the host's stdin and writes to its stdout.
//
// A read blocked on stdin cannot be interrupted by closing a file, so Read
// polls stdin together with a wake-up pipe that Close writes to.
type stdioConsole struct {
	inFd   int
	out    io.Writer
	termSt *term.State // non-nil if stdin was put in raw mode

	wakeR, wakeW int
	done         chan struct{}
	closeOnce    sync.Once
	releaseOnce  sync.Once

	rmu     sync.Mutex // serialises Read and guards the wake-up pipe's lifetime
	filter  escapeFilter
	raw     []byte
	pending []byte // filtered input not yet returned
	quit    bool   // the quit sequence was typed
	inEOF   bool   // stdin reached end of file
}

func newStdioConsole(in *os.File, out io.Writer) (*stdioConsole, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("devices: serial console: wake-up pipe: %w", err)
	}
	c := &stdioConsole{
		inFd:  int(in.Fd()),
		out:   out,
		wakeR: p[0],
		wakeW: p[1],
		done:  make(chan struct{}),
		raw:   make([]byte, 4096),
	}
	if term.IsTerminal(c.inFd) {
		st, err := term.MakeRaw(c.inFd)
		if err != nil {
			unix.Close(p[0])
			unix.Close(p[1])
			return nil, fmt.Errorf("devices: serial console: raw mode: %w", err)
		}
		c.termSt = st
	}
	return c, nil
}

func (c *stdioConsole) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer func() {
		c.rmu.Unlock()
		select {
		case <-c.done: // Close may have left releasing the fds to us
			c.releaseOnce.Do(c.release)
		default:
		}
	}()
	for {
		if len(c.pending) > 0 {
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		}
		select {
		case <-c.done:
			return 0, io.EOF
		default:
		}
		if c.quit {
			return 0, io.EOF
		}
		if c.inEOF {
			<-c.done
			return 0, io.EOF
		}
		if !c.waitReadable() {
			return 0, io.EOF // closed
		}
		n, err := unix.Read(c.inFd, c.raw)
		switch {
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		case err != nil:
			slog.Warn("devices: reading console input failed; no more input", "err", err)
			c.inEOF = true
			continue
		case n == 0:
			c.inEOF = true
			continue
		}
		c.pending, c.quit = c.filter.filter(c.pending[:0], c.raw[:n])
	}
}

// waitReadable blocks until stdin is readable (or at EOF or in error) and
// reports false if the console was closed instead. c.rmu is held.
func (c *stdioConsole) waitReadable() bool {
	fds := []unix.PollFd{
		{Fd: int32(c.inFd), Events: unix.POLLIN},
		{Fd: int32(c.wakeR), Events: unix.POLLIN},
	}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			slog.Warn("devices: polling console input failed; no more input", "err", err)
			c.inEOF = true
			return true // let Read see inEOF and wait for Close
		}
		if fds[1].Revents != 0 {
			return false
		}
		if fds[0].Revents != 0 {
			return true
		}
	}
}

// release closes the wake-up pipe. It runs once, after Close, by whoever
// holds c.rmu last.
func (c *stdioConsole) release() {
	unix.Close(c.wakeR)
	unix.Close(c.wakeW)
}

func (c *stdioConsole) Write(p []byte) (int, error) {
	select {
	case <-c.done:
		return 0, ErrClosed
	default:
	}
	return c.out.Write(p)
}

// Close restores the terminal and unblocks Read. It does not close stdin or
// stdout.
func (c *stdioConsole) Close() error {
	var err error
	c.closeOnce.Do(func() {
		close(c.done)
		// Wake a Read blocked in poll. The byte is never drained.
		unix.Write(c.wakeW, []byte{0})
		// Release the pipe now unless a Read is using it; that Read then
		// releases it on its way out. Either way Close does not wait for
		// stdin.
		if c.rmu.TryLock() {
			c.releaseOnce.Do(c.release)
			c.rmu.Unlock()
		}
		if c.termSt != nil {
			if rerr := term.Restore(c.inFd, c.termSt); rerr != nil {
				err = fmt.Errorf("devices: serial console: restoring terminal: %w", rerr)
			}
		}
	})
	return err
}
