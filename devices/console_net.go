package devices

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// consoleWriteTimeout is how long a client may take to accept one write
// before it is disconnected.
const consoleWriteTimeout = time.Second

// listenUnix listens on a Unix socket at path, removing a stale socket file
// first. It refuses to remove anything that is not a socket.
func listenUnix(path string) (*netConsole, error) {
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("devices: serial console: %s exists and is not a socket", path)
	case err == nil:
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("devices: serial console: removing stale socket: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("devices: serial console: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("devices: serial console: %w", err)
	}
	return newNetConsole(ln), nil // the listener unlinks path on Close
}

// netConsole serves one client at a time on a listener ("unix:" and
// "tcp:"). A new client replaces the current one.
type netConsole struct {
	ln           net.Listener
	writeTimeout time.Duration

	wmu sync.Mutex // serialises Write

	mu             sync.Mutex
	clientChanged  sync.Cond // a client connected, or the console closed
	conn           net.Conn  // current client, nil if none
	closed         bool
	loggedNoClient bool // "dropping output" was logged since the last client left

	done     chan struct{}
	acceptWG sync.WaitGroup
}

func newNetConsole(ln net.Listener) *netConsole {
	c := &netConsole{
		ln:           ln,
		writeTimeout: consoleWriteTimeout,
		done:         make(chan struct{}),
	}
	c.clientChanged.L = &c.mu
	c.acceptWG.Add(1)
	go c.acceptLoop()
	return c
}

// Addr implements [Addresser].
func (c *netConsole) Addr() net.Addr { return c.ln.Addr() }

func (c *netConsole) acceptLoop() {
	defer c.acceptWG.Done()
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			select {
			case <-c.done:
				return
			default:
			}
			// Typically out of file descriptors; back off, don't spin.
			slog.Warn("devices: serial console: accept failed", "addr", c.ln.Addr(), "err", err)
			select {
			case <-c.done:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			return
		}
		old := c.conn
		c.conn = conn
		c.loggedNoClient = false
		c.clientChanged.Broadcast()
		c.mu.Unlock()
		if old != nil {
			old.Close()
			slog.Info("devices: serial console: new client replaced the previous one", "remote", conn.RemoteAddr())
		} else {
			slog.Info("devices: serial console: client connected", "remote", conn.RemoteAddr())
		}
	}
}

// Read returns input from the current client, waiting for one to connect if
// necessary. Client disconnects are not reported; Read returns io.EOF only
// once the console is closed.
func (c *netConsole) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.mu.Lock()
	for {
		for c.conn == nil && !c.closed {
			c.clientChanged.Wait()
		}
		if c.closed {
			c.mu.Unlock()
			return 0, io.EOF
		}
		conn := c.conn
		c.mu.Unlock()

		n, err := conn.Read(p)
		if n > 0 {
			return n, nil
		}
		c.mu.Lock()
		if c.conn == conn { // not already replaced or dropped
			c.conn = nil
			conn.Close()
			slog.Info("devices: serial console: client disconnected", "remote", conn.RemoteAddr(), "err", err)
		}
	}
}

// Write sends p to the current client. Without a client the output is
// dropped. A client that fails a write, or does not take it within the
// write timeout, is disconnected. Write reports success either way.
func (c *netConsole) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, ErrClosed
	}
	conn := c.conn
	if conn == nil {
		if !c.loggedNoClient {
			c.loggedNoClient = true
			slog.Debug("devices: serial console: no client connected; dropping output", "addr", c.ln.Addr())
		}
		c.mu.Unlock()
		return len(p), nil
	}
	c.mu.Unlock()

	err := conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	if err == nil {
		_, err = conn.Write(p)
	}
	if err != nil {
		c.mu.Lock()
		current, closed := c.conn == conn, c.closed
		if current {
			c.conn = nil
		}
		c.mu.Unlock()
		conn.Close()
		if current && !closed {
			slog.Warn("devices: serial console: disconnecting client that is not taking output", "remote", conn.RemoteAddr(), "err", err)
		}
	}
	return len(p), nil
}

// Close stops listening, disconnects the client and unblocks Read. For a
// Unix socket it removes the socket file.
func (c *netConsole) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conn := c.conn
	c.conn = nil
	close(c.done)
	c.clientChanged.Broadcast()
	c.mu.Unlock()

	err := c.ln.Close()
	if conn != nil {
		conn.Close()
	}
	c.acceptWG.Wait()
	return err
}
