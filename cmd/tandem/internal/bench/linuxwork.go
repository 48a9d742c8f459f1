package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	linuxguest "github.com/tandemvm/tandem/images/linux"
	"github.com/tandemvm/tandem/vmm"
)

// The matrix's "linux" pattern is the Linux test guest's memory-writing
// workload (images/linux/initramfs/init.c, tandem_work: text written as a
// log, records updated in place, buffers zeroed and partly refilled, code
// copied around, a 1 ms sleep per iteration) instead of the dirty guest.
// The guest boots once per memory size, unreplicated, until the workload
// reports; the bench snapshots it there, and every run restores that
// snapshot, so no run replicates a boot. Progress is the workload's
// iterations per second, read from the lines it prints each second
// (behind the output gate when replicated, as a client would see them).

const (
	linuxPattern = "linux"
	// linuxWorkMiB is the workload's heap.
	linuxWorkMiB = 32
	// linuxBootLimit bounds the boot to the workload's first report: the
	// guest kernel runs in KVM's emulator on PVM hosts (30-60 s there).
	linuxBootLimit = 10 * time.Minute
)

// progressUnit is what a run's progress counts per second.
func progressUnit(pattern string) string {
	if pattern == linuxPattern {
		return "iterations/s"
	}
	return "pages/s"
}

// workloadName names a pattern's workload in the report.
func workloadName(pattern string, ring uint64) string {
	if pattern == linuxPattern {
		return "the Linux test guest's memory-writing workload"
	}
	return fmt.Sprintf("the `%s` dirty guest (loop in ring %d)", pattern, ring)
}

// workProgress reads the workload's console: the iterations of its
// newest "tandem-init: work <seconds> <iterations>" line, and the output's
// tail for errors.
type workProgress struct {
	mu    sync.Mutex
	line  []byte // the unfinished line
	iters uint64
	seen  bool
	tail  []byte
}

func (w *workProgress) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.tail = append(w.tail, p...)
	if len(w.tail) > 4096 {
		w.tail = w.tail[len(w.tail)-4096:]
	}
	for _, c := range p {
		if c != '\n' {
			if len(w.line) < 256 {
				w.line = append(w.line, c)
			}
			continue
		}
		if f := strings.Fields(string(w.line)); len(f) == 4 && f[0] == "tandem-init:" && f[1] == "work" {
			if n, err := strconv.ParseUint(f[3], 10, 64); err == nil {
				w.iters, w.seen = n, true
			}
		}
		w.line = w.line[:0]
	}
	return len(p), nil
}

// progress returns the newest iteration count and whether any was seen.
func (w *workProgress) progress() (uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.iters, w.seen
}

func (w *workProgress) output() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return string(bytes.TrimSpace(w.tail))
}

// linuxSnapshot returns the snapshot of the booted workload with mem of
// RAM, booting it the first time; a failed boot is remembered, so the
// runs that need it fail at once with the same error.
func (b *bencher) linuxSnapshot(ctx context.Context, mem uint64) (string, error) {
	if b.linuxSnaps == nil {
		b.linuxSnaps = map[uint64]linuxSnap{}
	}
	if s, ok := b.linuxSnaps[mem]; ok {
		return s.path, s.err
	}
	start := time.Now()
	b.progress("booting the Linux workload (%d MiB, %d MiB heap) to snapshot it; its kernel runs emulated on PVM hosts (30-60 s)", mem>>20, linuxWorkMiB)
	path := filepath.Join(b.cfg.Out, "raw", fmt.Sprintf("linux-%dm.snap", mem>>20))
	err := b.bootLinuxWorkload(ctx, mem, path)
	if err == nil {
		b.progress("Linux workload snapshot in %v: %s", time.Since(start).Round(time.Second), path)
	}
	b.linuxSnaps[mem] = linuxSnap{path: path, err: err}
	return path, err
}

type linuxSnap struct {
	path string
	err  error
}

// bootLinuxWorkload boots the workload and snapshots it to path once it
// has reported.
func (b *bencher) bootLinuxWorkload(ctx context.Context, mem uint64, path string) error {
	k, err := linuxguest.BuildKernel(ctx)
	if err != nil {
		return fmt.Errorf("the Linux workload: %w", err)
	}
	initrdPath, err := linuxguest.BuildInitramfs(ctx)
	if err != nil {
		return fmt.Errorf("the Linux workload: %w", err)
	}
	kernel, err := os.ReadFile(k.Vmlinux)
	if err != nil {
		return err
	}
	initrd, err := os.ReadFile(initrdPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	console := &workProgress{}
	vm, err := vmm.New(vmm.Config{Memory: vmm.MemoryConfig{Bytes: mem}, VCPUs: guestVCPUs, SerialOut: console, Logger: b.log})
	if err != nil {
		return fmt.Errorf("the Linux workload's VM: %w", err)
	}
	defer vm.Close()
	if _, err := vm.LoadLinux(vmm.LinuxConfig{Kernel: kernel, Initrd: initrd,
		Cmdline: fmt.Sprintf("console=ttyS0 reboot=k panic=-1 tandem_work=%d", linuxWorkMiB)}); err != nil {
		return fmt.Errorf("the Linux workload: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { _, err := vm.Run(runCtx); done <- err }()
	defer func() { stop(); vm.Stop(); <-done }()
	deadline := time.Now().Add(linuxBootLimit)
	for {
		if _, ok := console.progress(); ok {
			break
		}
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("the Linux workload's VM stopped before the workload ran (%v); console:\n%s", err, console.output())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the Linux workload did not report within %v; console:\n%s", linuxBootLimit, console.output())
		}
	}
	if err := vm.Pause(); err != nil {
		return err
	}
	return vm.WriteSnapshot(path, vmm.SnapshotMeta{Tandem: "bench", Created: time.Now(), MemBytes: mem, VCPUs: guestVCPUs, Guest: "linux-workload"})
}

// linuxVM makes a VM of the booted workload with mem of RAM from its
// snapshot, its console going to serial. Close it.
func (b *bencher) linuxVM(ctx context.Context, mem uint64, tracking vmm.DirtyTracking, serial io.Writer) (*vmm.VM, error) {
	path, err := b.linuxSnapshot(ctx, mem)
	if err != nil {
		return nil, err
	}
	snap, err := vmm.OpenSnapshot(path)
	if err != nil {
		return nil, err
	}
	defer snap.Close()
	vm, err := vmm.New(vmm.Config{Memory: vmm.MemoryConfig{Bytes: mem}, VCPUs: guestVCPUs, Dirty: tracking, SerialOut: serial, Logger: b.log})
	if err != nil {
		return nil, fmt.Errorf("the VM: %w", err)
	}
	if err := snap.Restore(vm); err != nil {
		vm.Close()
		return nil, fmt.Errorf("restoring the Linux workload: %w", err)
	}
	return vm, nil
}
