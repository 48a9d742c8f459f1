package replicate

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

// fdWaiter waits in Go's poller for a file descriptor a C library owns: a
// completion channel, an rdma_cm event channel, a device's async event
// queue. It polls a duplicate, so closing the waiter never closes the
// library's descriptor, and makes the shared open file non-blocking, so the
// library's own read returns EAGAIN instead of blocking a thread. No thread
// blocks and nothing spins: the goroutine parks until the kernel signals.
type fdWaiter struct {
	f *os.File
}

func newFDWaiter(fd int, name string) (*fdWaiter, error) {
	dup, err := syscall.Dup(fd)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", name, err)
	}
	syscall.CloseOnExec(dup)
	// O_NONBLOCK belongs to the open file, which fd and dup share.
	if err := syscall.SetNonblock(dup, true); err != nil {
		syscall.Close(dup)
		return nil, fmt.Errorf("%s: set non-blocking: %w", name, err)
	}
	return &fdWaiter{f: os.NewFile(uintptr(dup), name)}, nil
}

// wait calls try, and again each time the descriptor becomes readable,
// until try returns true. try must not block: it reads with the library's
// call and returns false when that says EAGAIN. wait fails when the
// deadline passes or the waiter is closed.
func (w *fdWaiter) wait(try func() bool) error {
	rc, err := w.f.SyscallConn()
	if err != nil {
		return err
	}
	return rc.Read(func(uintptr) bool { return try() })
}

// setDeadline bounds the current and later waits; zero removes the bound.
func (w *fdWaiter) setDeadline(t time.Time) error { return w.f.SetReadDeadline(t) }

// close ends every wait, after the try running now returns.
func (w *fdWaiter) close() error { return w.f.Close() }
