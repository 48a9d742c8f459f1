// Package linux owns Tandem's Linux test guest: a minimal microVM kernel
// built from Debian's linux-source-6.12 with the config fragment
// microvm.config and the patches in patches/ (each says which host
// behaviour it answers: they let the guest reach userspace where KVM runs
// guest ring 0 in its instruction emulator), and an initramfs whose init
// (initramfs/init.c, built with musl) prints markers, exercises the virtio
// devices and reboots. build.sh builds both once per machine into a cache
// outside the work tree, keyed by the hash of their inputs; this package
// finds (or builds) them for tests and tools.
//
// The kernel takes about 7 minutes to build on 2 cores; .ci/run builds it
// before the tests. See the README section "Booting Linux".
package linux

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
)

// Kernel is a built guest kernel.
type Kernel struct {
	Dir     string // the cache directory holding the files below
	Vmlinux string // ELF vmlinux (with symbols)
	BzImage string
	Config  string // the kernel's full .config
}

// ErrToolsMissing is wrapped by errors that mean the machine lacks what
// the build needs (kernel sources, compilers), as opposed to a failed
// build.
var ErrToolsMissing = errors.New("linux: build tools or kernel sources missing")

// Dir is the directory of this package's sources (build.sh,
// microvm.config, initramfs/init.c). It is found from this file's
// compile-time path, so it is valid when running from a source tree, as
// tests do.
func Dir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "images/linux"
	}
	return filepath.Dir(file)
}

// BuildKernel returns the cached kernel, building it first if needed. The
// build stops when ctx is done.
func BuildKernel(ctx context.Context) (Kernel, error) {
	dir, err := run(ctx, "kernel")
	if err != nil {
		return Kernel{}, err
	}
	return Kernel{
		Dir:     dir,
		Vmlinux: filepath.Join(dir, "vmlinux"),
		BzImage: filepath.Join(dir, "bzImage"),
		Config:  filepath.Join(dir, "config"),
	}, nil
}

// BuildInitramfs returns the path of the cached initramfs (a newc cpio
// archive), building it first if needed.
func BuildInitramfs(ctx context.Context) (string, error) {
	return run(ctx, "initramfs")
}

// run runs build.sh what and returns the path it prints.
func run(ctx context.Context, what string) (string, error) {
	script := filepath.Join(Dir(), "build.sh")
	if _, err := os.Stat(script); err != nil {
		return "", fmt.Errorf("linux: %w: %v", ErrToolsMissing, err)
	}
	cmd := exec.CommandContext(ctx, "bash", script, what)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = "..." + msg[len(msg)-2000:]
		}
		if strings.Contains(msg, "missing tools") || strings.Contains(msg, "not found: apt-get install") {
			return "", fmt.Errorf("linux: build.sh %s: %w: %s", what, ErrToolsMissing, msg)
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("linux: build.sh %s did not finish in time (%v); run images/linux/build.sh %s first", what, ctx.Err(), what)
		}
		return "", fmt.Errorf("linux: build.sh %s: %v: %s", what, err, msg)
	}
	out := strings.TrimSpace(stdout.String())
	if i := strings.LastIndexByte(out, '\n'); i >= 0 {
		out = out[i+1:]
	}
	if out == "" {
		return "", fmt.Errorf("linux: build.sh %s printed no path", what)
	}
	return out, nil
}
