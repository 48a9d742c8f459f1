// Package etcdtest gives tests a real, private etcd server: one member on
// loopback, on free ports, with its data in the test's temporary
// directory and timings fast enough for 1 s leases, stopped (killed and
// reaped) when the test ends. It runs the etcd binary found in PATH
// (Debian: apt-get install etcd-server). Without one the test is skipped,
// unless TANDEM_REQUIRE_ETCD or TANDEM_REQUIRE_KVM (which CI sets) asks
// for it, in which case it fails.
package etcdtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvRequireEtcd names the environment variable that makes a missing etcd
// binary a test failure instead of a skip (as TANDEM_REQUIRE_KVM does).
const EnvRequireEtcd = "TANDEM_REQUIRE_ETCD"

const envRequireKVM = "TANDEM_REQUIRE_KVM"

// startTimeout bounds the wait for a started server to answer.
const startTimeout = 15 * time.Second

// Required reports whether the environment demands etcd.
func Required() bool {
	for _, e := range []string{EnvRequireEtcd, envRequireKVM} {
		if v := os.Getenv(e); v != "" && v != "0" {
			return true
		}
	}
	return false
}

// Server is a running etcd server.
type Server struct {
	t        testing.TB
	clientAt string // 127.0.0.1:PORT
	cmd      *exec.Cmd
	waited   chan struct{} // closed when the process was reaped
	out      *lockedBuffer
	dial     func(ctx context.Context, network, addr string) (net.Conn, error)

	mu      sync.Mutex
	stopped bool
}

// Start starts an etcd server for t and stops it when t ends. It skips or
// fails t (see the package documentation) when there is no etcd binary.
func Start(t testing.TB) *Server {
	t.Helper()
	return StartWith(t, Options{})
}

// Options say where a server runs.
type Options struct {
	// Host is the address it listens on, on ports 2379 (clients) and 2380
	// (peers); empty means 127.0.0.1, on free ports.
	Host string
	// Command, when set, makes the command that runs etcd from its path
	// and arguments (e.g. inside a network namespace: ip netns exec NS
	// etcd ..., which execs etcd in its own process).
	Command func(bin string, args ...string) *exec.Cmd
	// Dial, when set, is how the test reaches the server (its health
	// check), e.g. from inside that namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// StartWith is Start with the server where o says.
func StartWith(t testing.TB, o Options) *Server {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		msg := "etcd not found in PATH (install it: apt-get install etcd-server, which gives /usr/bin/etcd)"
		if Required() {
			t.Fatalf("%s; %s or %s demands it", msg, EnvRequireEtcd, envRequireKVM)
		}
		t.Skipf("%s; set %s=1 to make this a failure", msg, EnvRequireEtcd)
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		s, err := start(t, bin, o)
		if err == nil {
			t.Cleanup(s.Stop)
			return s
		}
		lastErr = err
		if !errors.Is(err, errPortRace) {
			break
		}
	}
	t.Fatalf("etcdtest: %v", lastErr)
	return nil
}

var errPortRace = errors.New("a port was taken meanwhile")

func start(t testing.TB, bin string, o Options) (*Server, error) {
	host, ports := o.Host, []int{2379, 2380}
	if host == "" {
		var err error
		if ports, err = freePorts(2); err != nil {
			return nil, err
		}
		host = "127.0.0.1"
	}
	client := net.JoinHostPort(host, strconv.Itoa(ports[0]))
	peer := "http://" + net.JoinHostPort(host, strconv.Itoa(ports[1]))
	dir, err := os.MkdirTemp(t.TempDir(), "etcd")
	if err != nil {
		return nil, err
	}
	s := &Server{t: t, clientAt: client, waited: make(chan struct{}), out: &lockedBuffer{}, dial: o.Dial}
	command := exec.Command
	if o.Command != nil {
		command = o.Command
	}
	s.cmd = command(bin,
		"--name=test",
		"--data-dir="+filepath.Join(dir, "data"),
		"--listen-client-urls=http://"+client,
		"--advertise-client-urls=http://"+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=test="+peer,
		"--initial-cluster-state=new",
		// Fast timings: leader election within ~50 ms, and etcd's minimum
		// lease TTL (1.5 election timeouts, rounded up to a second) 1 s.
		"--heartbeat-interval=10",
		"--election-timeout=50",
		"--logger=zap",
		"--log-level=warn",
		"--log-outputs=stderr",
	)
	s.cmd.Stdout = s.out
	s.cmd.Stderr = s.out
	// Pdeathsig kills etcd if the test binary dies without its cleanups
	// (a go test timeout). It fires when the thread that started the
	// process exits, so a goroutine locked to its thread starts it and
	// stays, in Wait, until the process ended.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := s.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.cmd.Wait()
		close(s.waited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	if err := s.waitHealthy(); err != nil {
		s.Stop()
		out := s.out.String()
		if strings.Contains(out, "address already in use") {
			return nil, fmt.Errorf("%w: %v", errPortRace, err)
		}
		return nil, fmt.Errorf("%v; its output:\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("etcd's output:\n%s", s.out.String())
		}
	})
	return s, nil
}

// waitHealthy polls the server's /health until it reports healthy, the
// process exits, or startTimeout passes.
func (s *Server) waitHealthy() error {
	hc := &http.Client{Timeout: 500 * time.Millisecond}
	if s.dial != nil {
		hc.Transport = &http.Transport{DialContext: s.dial}
	}
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := hc.Get("http://" + s.clientAt + "/health")
		if err == nil {
			var body bytes.Buffer
			body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(body.String(), `"true"`) {
				return nil
			}
			err = fmt.Errorf("/health: %s %s", resp.Status, strings.TrimSpace(body.String()))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd on %s not healthy within %v: %v", s.clientAt, startTimeout, err)
		}
		select {
		case <-s.waited:
			return fmt.Errorf("etcd exited before it answered: %v", s.cmd.ProcessState)
		case <-tick.C:
		}
	}
}

// freePorts picks n distinct free TCP ports on 127.0.0.1. Another process
// may take one before etcd binds it; Start then tries again.
func freePorts(n int) ([]int, error) {
	var ports []int
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Endpoints are the server's client endpoints (HOST:PORT).
func (s *Server) Endpoints() []string { return []string{s.clientAt} }

// URL is the server in the command-line form, etcd://HOST:PORT.
func (s *Server) URL() string { return "etcd://" + s.clientAt }

// Stop kills the server and waits for it to exit. It is idempotent, and
// runs at the end of the test anyway.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.stopped = true
	if s.cmd.Process != nil {
		s.cmd.Process.Kill() // SIGKILL ends a stopped process too
		<-s.waited
	}
}

// Pause stops the server's process (SIGSTOP): its sockets stay open but
// nothing answers, as in a partition between its clients and it.
func (s *Server) Pause() {
	s.t.Helper()
	s.signal(syscall.SIGSTOP)
}

// Resume continues a paused server (SIGCONT).
func (s *Server) Resume() {
	s.t.Helper()
	s.signal(syscall.SIGCONT)
}

func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		s.t.Fatalf("etcdtest: %v to a stopped server", sig)
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("etcdtest: %v: %v", sig, err)
	}
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
