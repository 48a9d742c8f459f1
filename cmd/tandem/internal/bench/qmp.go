package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// qmpClient speaks QEMU's machine protocol (QMP) over a Unix socket: one
// JSON object per line, a greeting, then commands answered in order, with
// asynchronous events in between, which it skips.
type qmpClient struct {
	conn net.Conn
	r    *bufio.Reader
}

// qmpTimeout bounds each QMP exchange.
const qmpTimeout = 10 * time.Second

// dialQMP connects to the QMP socket at path, reads the greeting and
// leaves capabilities negotiation mode.
func dialQMP(path string) (*qmpClient, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	c := &qmpClient{conn: conn, r: bufio.NewReader(conn)}
	conn.SetDeadline(time.Now().Add(qmpTimeout))
	var greeting struct {
		QMP json.RawMessage `json:"QMP"`
	}
	line, err := c.r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &greeting)
	}
	if err != nil || greeting.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: no greeting from %s: %q: %v", path, line, err)
	}
	if _, err := c.Execute("qmp_capabilities", nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// Execute runs a command and returns its "return" value.
func (c *qmpClient) Execute(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.conn.SetDeadline(time.Now().Add(qmpTimeout))
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Event  string          `json:"event"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return nil, fmt.Errorf("qmp %s: answer %q: %w", cmd, bytes.TrimSpace(line), err)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("qmp %s: %s: %s", cmd, resp.Error.Class, resp.Error.Desc)
		case resp.Return == nil:
			return nil, fmt.Errorf("qmp %s: answer %q has no return", cmd, bytes.TrimSpace(line))
		}
		return resp.Return, nil
	}
}

// ExecuteInto runs a command and decodes its return value into v.
func (c *qmpClient) ExecuteInto(cmd string, args, v any) error {
	ret, err := c.Execute(cmd, args)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(ret, v); err != nil {
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	return nil
}

func (c *qmpClient) Close() error { return c.conn.Close() }

// qemuProc is a QEMU the bench started, with its QMP connection.
type qemuProc struct {
	cmd    *exec.Cmd
	qmp    *qmpClient
	stderr *bytes.Buffer
	done   chan struct{}
}

// startQEMU starts qemu with args and a QMP socket next to prefix, and
// connects to it.
func startQEMU(ctx context.Context, qemu, prefix string, args []string) (*qemuProc, error) {
	sock := prefix + ".qmp"
	os.Remove(sock)
	cmd := exec.CommandContext(ctx, qemu, append(args, "-qmp", "unix:"+sock+",server=on,wait=off")...)
	p := &qemuProc{cmd: cmd, stderr: &bytes.Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: starting %s: %w", qemu, err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	deadline := time.Now().Add(qmpTimeout)
	for {
		var err error
		if p.qmp, err = dialQMP(sock); err == nil {
			return p, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("bench: %s %s exited: %s", filepath.Base(qemu), strings.Join(args, " "), strings.TrimSpace(p.stderr.String()))
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("bench: %s: no QMP socket within %v: %w", filepath.Base(qemu), qmpTimeout, err)
		}
	}
}

// stop ends the QEMU: quit over QMP, killed if it does not exit soon.
func (p *qemuProc) stop() {
	if p.qmp != nil {
		p.qmp.Execute("quit", nil)
		p.qmp.Close()
	}
	select {
	case <-p.done:
		return
	case <-time.After(5 * time.Second):
	}
	p.cmd.Process.Kill()
	<-p.done
}
