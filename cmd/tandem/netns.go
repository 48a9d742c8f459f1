package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// inNetns runs fn on a thread of its own that has entered the named
// network namespace (as `ip netns add` makes them); sockets fn opens stay
// in it. The thread ends with fn: it is never handed back to the scheduler
// inside the namespace.
func inNetns(name string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		f, err := os.Open("/run/netns/" + name)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("enter network namespace %s: %w", name, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// dialInNetns opens a TCP connection to addr from the named network
// namespace.
func dialInNetns(name, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNetns(name, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	})
	return c, err
}

// ipCommand runs iproute2's ip.
func ipCommand(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
