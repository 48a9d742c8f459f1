package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every network namespace the bench creates;
// the owning process id follows, so that namespaces a killed bench left
// behind can be told from those of a bench still running.
const nsPrefix = "tandem-bench-"

// Lab is the bench's network: one namespace per replica link, each joined
// to the bench's own (root) namespace by a veth pair whose two ends are
// shaped with tbf to the link rate, so that "more links" is more real
// bandwidth. The primary and the leader live in the root namespace; replica
// i listens on Links[i].PeerIP inside Links[i].NS.
type Lab struct {
	Prefix string // namespace name prefix, nsPrefix + pid
	Rate   uint64 // bits per second per link and direction
	Links  []LabLink
	mu     sync.Mutex
	closed bool
}

// LabLink is one shaped veth link.
type LabLink struct {
	NS     string // the replica's namespace
	HostIf string // the veth end in the root namespace
	HostIP string // its address (the primary's side)
	PeerIP string // the address inside NS (the replica's side)
}

// run runs a command and returns its error with its output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// CheckLabTools reports why a lab cannot be built here, or nil.
func CheckLabTools() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s (iproute2) not found", tool)
		}
	}
	return nil
}

// staleNamespaces returns the bench namespaces among names whose owning
// process is gone according to alive.
func staleNamespaces(names []string, alive func(pid int) bool) []string {
	var stale []string
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || !alive(pid) {
			stale = append(stale, n)
		}
	}
	return stale
}

func listNamespaces() []string {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return nil
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func pidAlive(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}

// RemoveStaleNamespaces deletes the namespaces (and so their veth links)
// of bench processes that no longer run. It returns what it removed.
func RemoveStaleNamespaces() []string {
	stale := staleNamespaces(listNamespaces(), pidAlive)
	for _, ns := range stale {
		run("ip", "netns", "del", ns)
	}
	return stale
}

// tbfBurst is the bucket of a tbf shaping rate bits/s: one millisecond of
// traffic, at least 64 KiB so that a GSO packet always fits.
func tbfBurst(rate uint64) uint64 {
	return max(rate/8/1000, 64<<10)
}

// tbfArgs are the tc arguments shaping dev's egress to rate bits/s.
func tbfArgs(dev string, rate uint64) []string {
	return []string{"qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", strconv.FormatUint(rate, 10) + "bit",
		"burst", strconv.FormatUint(tbfBurst(rate), 10),
		"latency", "100ms"}
}

// pickSubnet chooses a /24 under 10.0.0.0/8 that no interface uses: the
// root namespace sees the host ends of the veths, so their subnet must not
// collide with anything real (or with another bench running).
func pickSubnet(rng *rand.Rand) (string, error) {
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		return "", fmt.Errorf("ip addr show: %v", err)
	}
	routes, _ := exec.Command("ip", "-4", "route", "show").Output()
	used := string(out) + string(routes)
	for range 64 {
		s := fmt.Sprintf("10.%d.%d", 200+rng.IntN(50), rng.IntN(250))
		if !strings.Contains(used, " "+s+".") {
			return s, nil
		}
	}
	return "", errors.New("no free 10.x.y.0/24 subnet for the bench links")
}

// NewLab builds n shaped links at rate bits/s. Close removes them.
func NewLab(n int, rate uint64) (*Lab, error) {
	if err := CheckLabTools(); err != nil {
		return nil, err
	}
	if n < 1 || n > 60 {
		return nil, fmt.Errorf("bench: %d links: want 1 to 60", n)
	}
	pid := os.Getpid()
	rng := rand.New(rand.NewPCG(uint64(pid), uint64(os.Getppid())))
	subnet, err := pickSubnet(rng)
	if err != nil {
		return nil, err
	}
	l := &Lab{Prefix: fmt.Sprintf("%s%d", nsPrefix, pid), Rate: rate}
	for i := range n {
		link := LabLink{
			NS:     fmt.Sprintf("%s-%d", l.Prefix, i),
			HostIf: fmt.Sprintf("tbh%d-%d", pid%100000, i),
			HostIP: fmt.Sprintf("%s.%d", subnet, 4*i+1),
			PeerIP: fmt.Sprintf("%s.%d", subnet, 4*i+2),
		}
		l.Links = append(l.Links, link)
		if err := l.addLink(link, fmt.Sprintf("tbp%d-%d", pid%100000, i)); err != nil {
			l.Close()
			return nil, err
		}
	}
	return l, nil
}

func (l *Lab) addLink(k LabLink, peer string) error {
	steps := [][]string{
		{"ip", "netns", "add", k.NS},
		{"ip", "link", "add", k.HostIf, "type", "veth", "peer", "name", peer},
		{"ip", "link", "set", peer, "netns", k.NS},
		{"ip", "-n", k.NS, "link", "set", peer, "name", "eth0"},
		{"ip", "-n", k.NS, "addr", "add", k.PeerIP + "/30", "dev", "eth0"},
		{"ip", "-n", k.NS, "link", "set", "eth0", "up"},
		{"ip", "-n", k.NS, "link", "set", "lo", "up"},
		{"ip", "addr", "add", k.HostIP + "/30", "dev", k.HostIf},
		{"ip", "link", "set", k.HostIf, "up"},
		append([]string{"tc"}, tbfArgs(k.HostIf, l.Rate)...),
		append([]string{"tc", "-n", k.NS}, tbfArgs("eth0", l.Rate)...),
	}
	for _, s := range steps {
		if err := run(s[0], s[1:]...); err != nil {
			return fmt.Errorf("bench: building link %s: %w", k.NS, err)
		}
	}
	return nil
}

// Close deletes the namespaces, which deletes the veth pairs with them.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	var errs []error
	for _, k := range l.Links {
		if err := run("ip", "netns", "del", k.NS); err != nil {
			errs = append(errs, err)
		}
		// Normally gone with the namespace; a half-built link may remain.
		exec.Command("ip", "link", "del", k.HostIf).Run()
	}
	return errors.Join(errs...)
}

// Listen opens a TCP listener on link i's replica address, inside its
// namespace, on a free port.
func (l *Lab) Listen(i int) (net.Listener, error) {
	return listenIn(l.Links[i].NS, net.JoinHostPort(l.Links[i].PeerIP, "0"))
}

// listenIn opens a TCP listener inside the named network namespace. A
// socket belongs to the namespace of the thread that created it, so the
// listener is opened on a locked OS thread switched into ns and back; if
// switching back fails the thread stays locked and dies with its goroutine.
func listenIn(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/var/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		var lc net.ListenConfig
		ln, lerr := lc.Listen(context.Background(), "tcp", addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread is in the wrong namespace: keep it locked so it
			// exits with this goroutine.
			done <- result{ln, lerr}
			return
		}
		runtime.UnlockOSThread()
		done <- result{ln, lerr}
	}()
	r := <-done
	if r.err != nil {
		return nil, fmt.Errorf("bench: listen in %s on %s: %w", ns, addr, r.err)
	}
	return r.ln, nil
}
