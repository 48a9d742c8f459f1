package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	linuxguest "github.com/tandemvm/tandem/images/linux"
)

// linuxWorkloadMiB is the heap of the Linux guest's memory-writing
// workload (tandem_work) that tandem bench --traffic --linux-workload
// records.
const linuxWorkloadMiB = 32

// waitWorkLines waits until console holds n of the workload's reports, one
// per second of it (under --ha, each a replicated second: output leaves
// as epochs commit).
func waitWorkLines(ctx context.Context, p *demoProc, console string, n int, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(console)
		if strings.Count(string(b), "tandem-init: work ") >= n {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("the Linux workload's %s exited:\n%s", p.name, p.log.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d seconds of the Linux workload did not show within %v; console in %s", n, limit, console)
		}
	}
}

// benchLinuxWorkload records seconds of the Linux workload at epoch into
// out/raw/traffic-linux.rec for tandem bench --traffic and returns its path.
func benchLinuxWorkload(ctx context.Context, out string, epoch time.Duration, seconds int) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	raw := filepath.Join(out, "raw")
	if err := os.MkdirAll(raw, 0o755); err != nil {
		return "", err
	}
	rec := filepath.Join(raw, "traffic-linux.rec")
	fmt.Printf("bench: recording %d s of the Linux guest's workload (%d MiB heap, %v epochs) into %s; the guest boots first (about 10-30 s where its kernel is emulated)\n",
		seconds, linuxWorkloadMiB, epoch, rec)
	if err := recordLinuxWorkload(ctx, self, raw, rec, epoch, seconds); err != nil {
		return "", fmt.Errorf("bench: the Linux workload: %w", err)
	}
	return rec, nil
}

// recordLinuxWorkload boots the Linux test guest running its
// memory-writing workload (text, records updated in place, zeroed
// buffers, code copies: images/linux/initramfs/init.c, tandem_work) and
// snapshots it once the workload runs, so that the boot is not recorded;
// then it restores the snapshot replicated with epoch to a replica and a
// leader on loopback, records every epoch to rec (tandem run
// --record-epochs) for seconds seconds of the workload, and stops it.
// self is the tandem binary, dir a scratch directory; the guest's
// consoles are left there.
func recordLinuxWorkload(ctx context.Context, self, dir, rec string, epoch time.Duration, seconds int) error {
	k, err := linuxguest.BuildKernel(ctx)
	if err != nil {
		return err
	}
	initrd, err := linuxguest.BuildInitramfs(ctx)
	if err != nil {
		return err
	}
	key := filepath.Join(dir, "linux-workload.key")
	if err := newKeyFile(key); err != nil {
		return err
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	replica, leader := ports[0], ports[1]
	var procs []*demoProc
	defer func() {
		for i := len(procs) - 1; i >= 0; i-- {
			procs[i].stop()
		}
	}()
	start := func(name string, args ...string) (*demoProc, error) {
		p, err := startDemoProc(ctx, self, name, args...)
		if err == nil {
			procs = append(procs, p)
		}
		return p, err
	}
	for _, c := range [][]string{
		{"replica", "replica", "--listen", replica, "--auth-key", key},
		{"leader", "replica", "--listen", leader, "--leader", "--replicas", replica, "--auth-key", key},
	} {
		p, err := start(c[0], c[1:]...)
		if err != nil {
			return err
		}
		if err := p.waitLog("replica listening", 10*time.Second); err != nil {
			return err
		}
	}
	// The boot, unreplicated, up to the workload's first report.
	bootConsole, ctl, snap := filepath.Join(dir, "linux-boot.console"), filepath.Join(dir, "linux-boot.ctl"), filepath.Join(dir, "linux-workload.snap")
	boot, err := start("boot", "run", "--kernel", k.Vmlinux, "--initrd", initrd, "--mem", "128M",
		"--cmdline", fmt.Sprintf("console=ttyS0 reboot=k panic=-1 tandem_work=%d", linuxWorkloadMiB),
		"--serial", "file:"+bootConsole, "--control", "unix:"+ctl)
	if err != nil {
		return err
	}
	if err := waitWorkLines(ctx, boot, bootConsole, 1, 10*time.Minute); err != nil { // on PVM the kernel runs emulated
		return err
	}
	snapshot, err := start("snapshot", "snapshot", "--control", "unix:"+ctl, "--out", snap, "--stop")
	if err != nil {
		return err
	}
	for _, p := range []*demoProc{snapshot, boot} {
		select {
		case <-p.done:
		case <-time.After(time.Minute):
			return fmt.Errorf("the Linux workload's %s did not end:\n%s", p.name, p.log.String())
		}
		if p.cmd.ProcessState.ExitCode() != 0 {
			return fmt.Errorf("the Linux workload's %s failed:\n%s", p.name, p.log.String())
		}
	}
	// The workload, replicated and recorded.
	console := filepath.Join(dir, "linux-workload.console")
	primary, err := start("primary", "run", "--restore", snap, "--serial", "file:"+console,
		"--ha", "--auth-key", key, "--replicas", replica, "--leader", leader,
		"--epoch", epoch.String(), "--record-epochs", rec)
	if err != nil {
		return err
	}
	if err := waitWorkLines(ctx, primary, console, seconds, time.Duration(seconds)*time.Second+2*time.Minute); err != nil {
		return err
	}
	primary.stop() // flushes the recording
	if fi, err := os.Stat(rec); err != nil || fi.Size() == 0 {
		return fmt.Errorf("the Linux workload left no recording in %s (%v)", rec, err)
	}
	return nil
}
