package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/fcapi"
)

// apiClient sends requests to a Firecracker API socket with curl
// --unix-socket, as Firecracker's getting-started guide does.
type apiClient struct {
	t    *testing.T
	sock string
	curl string
}

func newAPIClient(t *testing.T, sock string) *apiClient {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("the API tests drive the VMM with curl, as Firecracker's guide does: install curl")
	}
	return &apiClient{t: t, sock: sock, curl: curl}
}

// do sends one request and fails the test unless the status is want; it
// returns the body.
func (a *apiClient) do(method, path, body string, want int) string {
	a.t.Helper()
	args := []string{"--silent", "--show-error", "--max-time", "60", "--unix-socket", a.sock, "-X", method,
		"-H", "Accept: application/json", "-H", "Content-Type: application/json", "--write-out", "\n%{http_code}", "http://localhost" + path}
	if body != "" {
		args = append(args, "--data", body)
	}
	out, err := exec.Command(a.curl, args...).Output()
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			err = fmt.Errorf("%w: %s", err, exit.Stderr)
		}
		a.t.Fatalf("curl %s %s: %v", method, path, err)
	}
	// The body, then the status on a line of its own (--write-out).
	i := bytes.LastIndexByte(out, '\n')
	status, err := strconv.Atoi(string(out[i+1:]))
	if err != nil {
		a.t.Fatalf("curl %s %s: no status in %q", method, path, out)
	}
	if status != want {
		a.t.Fatalf("%s %s %s: %d %s, want %d", method, path, body, status, out[:i], want)
	}
	return string(out[:i])
}

// TestAPILinuxLifecycle drives a Linux guest through Firecracker's API
// the way Firecracker's getting-started guide does with curl: start the
// VMM on a socket, wait for it to answer, configure the machine, the
// kernel and a root drive, start the instance, then pause and resume it;
// the guest's console (COM1 on the VMM's stdout) shows it counting on its
// disk, not while paused, and on again after. Then it takes a Full
// snapshot and, further on, a Diff, ends the VMM with SIGTERM (status 0,
// the socket gone), rebases the Diff's memory onto the Full's with tandem
// rebase-snap, and loads it in a new VMM: refused with the Diff's memory
// file alone, paused with the rebased one, counting on from where the
// Diff was taken once resumed.
func TestAPILinuxLifecycle(t *testing.T) {
	k, initrd := linuxGuest(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "firecracker.socket")
	disk := filepath.Join(dir, "rootfs.img")
	os.WriteFile(disk, make([]byte, 1<<20), 0o600)
	p := startCommand(t, tandemBin, "--api-sock", sock, "--id", "api-test")
	api := newAPIClient(t, sock)
	pollFor(t, "the API socket", 30*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if got := api.do("GET", "/", "", 200); !strings.Contains(got, `"id":"api-test"`) || !strings.Contains(got, `"state":"Not started"`) {
		t.Fatalf("GET /: %s", got)
	}
	api.do("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128, "track_dirty_pages": true}`, 204)
	api.do("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q, "initrd_path": %q, "boot_args": "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vda"}`, k.Vmlinux, initrd), 204)
	api.do("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id": "rootfs", "path_on_host": %q, "is_root_device": true, "is_read_only": false}`, disk), 204)
	api.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
	api.do("PUT", "/boot-source", `{"kernel_image_path": "/elsewhere"}`, 400)
	ticks := regexp.MustCompile(`tandem-init: tick (\d+) disk (\d+)`)
	tickOf := func(p *process, nth int) int {
		m := ticks.FindAllStringSubmatch(p.stdout.String(), -1)
		if len(m) == 0 {
			return -1
		}
		n, _ := strconv.Atoi(m[(nth+len(m))%len(m)][1])
		return n
	}
	last := func() int { return tickOf(p, -1) }
	pollFor(t, "the guest counting on its disk", 6*time.Minute, func() bool { return last() >= 3 })
	api.do("PATCH", "/vm", `{"state": "Paused"}`, 204)
	if got := api.do("GET", "/", "", 200); !strings.Contains(got, `"state":"Paused"`) {
		t.Fatalf("GET / after the pause: %s", got)
	}
	at := last()
	time.Sleep(500 * time.Millisecond) // five ticks' time: none may come while paused
	if n := last(); n > at+1 {         // one may have been on its way out
		t.Fatalf("the guest counted from %d to %d while paused", at, n)
	}
	api.do("PATCH", "/vm", `{"state": "Resumed"}`, 204)
	pollFor(t, "the guest counting again", time.Minute, func() bool { return last() >= at+3 })
	var cfg struct {
		Drives []struct {
			PathOnHost string `json:"path_on_host"`
		} `json:"drives"`
		MachineConfig struct {
			MemSizeMib int `json:"mem_size_mib"`
		} `json:"machine-config"`
	}
	if err := json.Unmarshal([]byte(api.do("GET", "/vm/config", "", 200)), &cfg); err != nil || len(cfg.Drives) != 1 || cfg.Drives[0].PathOnHost != disk || cfg.MachineConfig.MemSizeMib != 128 {
		t.Fatalf("GET /vm/config: %+v, %v", cfg, err)
	}

	fullSnap, fullMem := filepath.Join(dir, "full.snap"), filepath.Join(dir, "full.mem")
	diffSnap, diffMem := filepath.Join(dir, "diff.snap"), filepath.Join(dir, "diff.mem")
	api.do("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path": %q, "mem_file_path": %q}`, fullSnap, fullMem), 400) // running
	api.do("PATCH", "/vm", `{"state": "Paused"}`, 204)
	api.do("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path": %q, "mem_file_path": %q, "snapshot_type": "Full"}`, fullSnap, fullMem), 204)
	api.do("PATCH", "/vm", `{"state": "Resumed"}`, 204)
	at = last()
	pollFor(t, "the guest counting after the Full snapshot", time.Minute, func() bool { return last() >= at+3 })
	api.do("PATCH", "/vm", `{"state": "Paused"}`, 204)
	api.do("PUT", "/snapshot/create", fmt.Sprintf(`{"snapshot_path": %q, "mem_file_path": %q, "snapshot_type": "Diff"}`, diffSnap, diffMem), 204)
	atDiff := last()
	p.cmd.Process.Signal(syscall.SIGTERM)
	if status := p.wait(t, time.Minute); status != 0 {
		t.Fatalf("tandem --api-sock exited with %d after SIGTERM; stderr:\n%s", status, p.stderr.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the API socket is left behind: %v", err)
	}

	sock2 := filepath.Join(dir, "restored.socket")
	p2 := startCommand(t, tandemBin, "--api-sock", sock2)
	api2 := newAPIClient(t, sock2)
	pollFor(t, "the second API socket", 30*time.Second, func() bool {
		c, err := net.Dial("unix", sock2)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	load := func(mem string, want int) string {
		return api2.do("PUT", "/snapshot/load", fmt.Sprintf(`{"snapshot_path": %q, "mem_backend": {"backend_type": "File", "backend_path": %q}, "track_dirty_pages": true}`, diffSnap, mem), want)
	}
	if got := load(diffMem, 400); !strings.Contains(got, "rebase") {
		t.Errorf("loading a Diff not rebased: %s, want a fault naming the rebase", got)
	}
	if _, stderr, status := runTandem(t, "rebase-snap", "--base-file", fullMem, "--diff-file", diffMem); status != 0 {
		t.Fatalf("tandem rebase-snap: status %d: %s", status, stderr)
	}
	load(fullMem, 204)
	if got := api2.do("GET", "/", "", 200); !strings.Contains(got, `"state":"Paused"`) {
		t.Fatalf("GET / after the load: %s", got)
	}
	if got := api2.do("GET", "/vm/config", "", 200); !strings.Contains(got, disk) || !strings.Contains(got, `"track_dirty_pages":true`) {
		t.Errorf("GET /vm/config after the load: %s", got)
	}
	api2.do("PATCH", "/vm", `{"state": "Resumed"}`, 204)
	pollFor(t, "the restored guest counting", time.Minute, func() bool { return tickOf(p2, -1) >= atDiff+2 })
	if first := tickOf(p2, 0); first < atDiff {
		t.Errorf("the restored guest's first tick is %d, the Diff was taken at %d: not the Diff's guest", first, atDiff)
	}
	p2.cmd.Process.Signal(syscall.SIGTERM)
	if status := p2.wait(t, time.Minute); status != 0 {
		t.Fatalf("the restored tandem --api-sock exited with %d after SIGTERM; stderr:\n%s", status, p2.stderr.String())
	}
}

// TestAPIFlags: the socket must be given and must not exist.
func TestAPIFlags(t *testing.T) {
	exists := filepath.Join(t.TempDir(), "sock")
	os.WriteFile(exists, nil, 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--id", "x"}, "--api-sock PATH is required"},
		{[]string{"--api-sock", exists}, "exists"},
		{[]string{"--api-sock", exists + "2", "stray"}, "unexpected argument"},
	} {
		_, stderr, status := runTandem(t, c.args...)
		if status != exitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("tandem %v: status %d, stderr %q; want %d and %q", c.args, status, stderr, exitUsage, c.want)
		}
	}
}

// TestRunArgs: the API's configuration becomes tandem run's flags, the
// root drive first (/dev/vda), then the others in the order given, and
// the run logs as the API process does.
func TestRunArgs(t *testing.T) {
	one, mem, yes := 2, 256, true
	cfg := fcapi.Config{
		BootSource:    &fcapi.BootSource{KernelImagePath: "/k", InitrdPath: "/i", BootArgs: "console=ttyS0"},
		MachineConfig: fcapi.MachineConfig{VCPUCount: &one, MemSizeMib: &mem, TrackDirtyPages: &yes},
		Drives: []fcapi.Drive{{DriveID: "a", PathOnHost: "/a"}, {DriveID: "root", PathOnHost: "/r", IsRootDevice: true, IsReadOnly: &yes},
			{DriveID: "b", PathOnHost: "/b"}},
		NetworkInterfaces: []fcapi.NetworkInterface{{IfaceID: "eth0", HostDevName: "tap0"}},
	}
	log := logFlags{level: "debug", format: "json", path: "/var/log/tandem.log", showOrigin: true}
	got := strings.Join(runArgs(cfg, "unix:/c", log), " ")
	want := "--kernel /k --mem 256M --vcpus 2 --serial stdio --control unix:/c" +
		" --log-level debug --log-format json --log-show-level=false --log-show-origin=true --log-path /var/log/tandem.log --initrd /i --cmdline console=ttyS0 --dirty bitmap --disk /r,ro --disk /a --disk /b --net tap:tap0"
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// TestAPILogging: the API process's log handler switches where it logs
// (PUT /logger), for the loggers derived from it too; the logging flags
// choose the format, the level and what a line shows.
func TestAPILogging(t *testing.T) {
	var before, after bytes.Buffer
	sw := newSwitchableHandler(slog.NewTextHandler(&before, nil))
	log := slog.New(sw)
	derived := log.With("vm", "vm0").WithGroup("run")
	log.Info("one")
	derived.Info("two", "n", 2)
	sw.switchTo(slog.NewJSONHandler(&after, &slog.HandlerOptions{Level: slog.LevelWarn}))
	derived.Info("hidden")
	derived.Warn("three", "n", 3)
	log.Warn("four")
	if got := before.String(); !strings.Contains(got, "msg=one") || !strings.Contains(got, "msg=two vm=vm0 run.n=2") || strings.Contains(got, "three") {
		t.Errorf("before the switch: %q", got)
	}
	if got := after.String(); !strings.Contains(got, `"msg":"three","vm":"vm0","run":{"n":3}`) || !strings.Contains(got, `"msg":"four"`) || strings.Contains(got, "hidden") {
		t.Errorf("after the switch: %q", got)
	}

	path := filepath.Join(t.TempDir(), "tandem.log")
	for _, c := range []struct {
		flags     logFlags
		want, not string
	}{
		{logFlags{level: "info", format: "json", path: path, showLevel: true}, `"level":"INFO","msg":"logged"`, "debugged"},
		{logFlags{level: "DEBUG", format: "text", path: path}, `msg=debugged`, "level="},
		{logFlags{level: "warn", format: "text", path: path, showLevel: true, showOrigin: true}, `source=`, "logged"},
		{logFlags{level: "off", format: "text", path: path, showLevel: true}, "", "logged"},
	} {
		os.WriteFile(path, nil, 0o600)
		l, err := newLogger(c.flags)
		if err != nil {
			t.Fatalf("%+v: %v", c.flags, err)
		}
		l.Debug("debugged")
		l.Info("logged")
		l.Warn("warned")
		b, _ := os.ReadFile(path)
		if got := string(b); !strings.Contains(got, c.want) || strings.Contains(got, c.not) {
			t.Errorf("%+v: the log is %q; want %q and no %q", c.flags, got, c.want, c.not)
		}
	}
	for _, f := range []logFlags{{level: "loud", format: "text"}, {level: "info", format: "yaml"}, {level: "info", format: "text", path: t.TempDir()}} {
		if _, err := newLogger(f); err == nil {
			t.Errorf("%+v: no error", f)
		}
	}
}
