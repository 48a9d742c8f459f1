package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	linuxguest "github.com/tandemvm/tandem/images/linux"
	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/vmm"
)

func TestLinuxUsageErrors(t *testing.T) {
	dir := t.TempDir()
	notKernel := filepath.Join(dir, "notes.txt")
	os.WriteFile(notKernel, []byte("this is not a kernel\n"), 0o644)
	for _, tc := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"run", "--kernel", notKernel, "--guest", "hello"}, 2, "exclude each other"},
		{[]string{"run", "--kernel", notKernel, "--restore", "x.snap"}, 2, "exclude each other"},
		{[]string{"run", "--disk", "d.img"}, 2, "--disk needs --kernel"},
		{[]string{"run", "--guest", "hello", "--cmdline", "quiet"}, 2, "--cmdline needs --kernel"},
		{[]string{"run", "--kernel", notKernel, "--entry", "real16"}, 2, "--entry does not apply to --kernel"},
		{[]string{"run", "--kernel", notKernel, "--ha"}, 2, "--ha does not apply to --kernel"},
		{[]string{"run", "--kernel", notKernel, "--kernel-entry", "uefi"}, 2, "unknown Linux entry"},
		{[]string{"run", "--kernel", notKernel, "--disk", "d.img,rw"}, 2, `unknown option "rw"`},
		{[]string{"run", "--kernel", notKernel, "--net", "bridge:br0"}, 2, "want tap:NAME"},
		{[]string{"run", "--kernel", notKernel, "--channel", "stdio"}, 2, "--channel stdio"},
		{[]string{"run", "--kernel", notKernel, "--vcpus", "300"}, 2, "--vcpus 300"},
		{[]string{"run", "--kernel", filepath.Join(dir, "missing")}, 2, "no such file"},
		{[]string{"run", "--kernel", notKernel, "--initrd", filepath.Join(dir, "missing")}, 2, "--initrd"},
	} {
		t.Run(strings.Join(tc.args[1:], " "), func(t *testing.T) {
			_, stderr, status := runTandem(t, tc.args...)
			if status != tc.status || !strings.Contains(stderr, tc.want) {
				t.Errorf("status %d, stderr %q; want status %d and %q", status, stderr, tc.status, tc.want)
			}
		})
	}
}

func TestLinuxNotAKernel(t *testing.T) {
	kvmtest.Open(t)
	notKernel := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notKernel, []byte("this is not a kernel\n"), 0o644)
	_, stderr, status := runTandem(t, "run", "--kernel", notKernel, "--serial", "none")
	if status != 1 || !strings.Contains(stderr, "not a Linux kernel") {
		t.Errorf("status %d, stderr %q", status, stderr)
	}
}

// TestRunKernel boots the images/linux kernel through `tandem run` with a
// disk, a channel and the RNG to its init, which reboots: tandem exits 0.
// On a PVM host it also checks that tandem said which parameters the
// emulator needs and why.
func TestRunKernel(t *testing.T) {
	kvmtest.Open(t)
	k, err := linuxguest.BuildKernel(context.Background())
	if err != nil {
		if errors.Is(err, linuxguest.ErrToolsMissing) && !kvmtest.Required() {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	initrd, err := linuxguest.BuildInitramfs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o600)
	serial := filepath.Join(dir, "serial.txt")
	_, stderr, status := runTandemFor(t, 6*time.Minute, "run", "--kernel", k.Vmlinux, "--initrd", initrd,
		"--cmdline", "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1",
		"--disk", disk+",ro", "--channel", "unix:"+filepath.Join(dir, "ch.sock"),
		"--vcpus", "1", "--mem", "128M", "--serial", "file:"+serial)
	out, _ := os.ReadFile(serial)
	if !strings.Contains(string(out), "Linux version") || !strings.Contains(string(out), "virtio_mmio.device=4K@0xd0000000:5") {
		t.Fatalf("console:\n%s\nstderr:\n%s", out, stderr)
	}
	if !strings.Contains(stderr, "loaded Linux") || !strings.Contains(stderr, "type=blk") {
		t.Errorf("stderr lacks the load and device lines:\n%s", stderr)
	}
	if vmm.GuestCodeEmulated() {
		for _, p := range []string{"noint3selftest", "clearcpuid="} {
			if !strings.Contains(stderr, "adding "+p) {
				t.Errorf("stderr does not say why it adds %s:\n%s", p, stderr)
			}
		}
	}
	if status != 0 || !strings.Contains(string(out), "tandem-init: done") {
		t.Errorf("status %d, console:\n%s", status, out)
	}
}
