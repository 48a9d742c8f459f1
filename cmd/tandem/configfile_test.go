package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// consoleTick is the looping init's progress line on a console, which may
// end it with \r\n.
var consoleTick = regexp.MustCompile(`tandem-init: tick (\d+) disk (\d+)\r?\n`)

// TestConfigFileLinux boots the Linux guest the way Firecracker's
// --no-api --config-file does: tandem --config-file FILE, no API calls.
// The guest counts on its disk as in TestAPILinuxLifecycle; the file's
// logger part sends the log of the process and of the run it starts to
// the log file (not standard error), with levels; its metrics part gets
// a last metrics line when SIGTERM ends Tandem.
func TestConfigFileLinux(t *testing.T) {
	k, initrd := linuxGuest(t)
	dir := t.TempDir()
	disk, logPath, metricsPath := filepath.Join(dir, "rootfs.img"), filepath.Join(dir, "tandem.log"), filepath.Join(dir, "metrics.json")
	os.WriteFile(disk, make([]byte, 1<<20), 0o600)
	os.WriteFile(logPath, nil, 0o600)
	os.WriteFile(metricsPath, nil, 0o600)
	config := map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": k.Vmlinux, "initrd_path": initrd, "boot_args": "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vda"},
		"drives":         []any{map[string]any{"drive_id": "rootfs", "path_on_host": disk, "is_root_device": true, "is_read_only": false}},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 128},
		"logger":         map[string]any{"log_path": logPath, "level": "Info", "show_level": true},
		"metrics":        map[string]any{"metrics_path": metricsPath},
	}
	b, _ := json.Marshal(config)
	file := filepath.Join(dir, "vm.json")
	os.WriteFile(file, b, 0o600)

	p := startTandem(t, "--config-file", file)
	logged := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	pollFor(t, "the guest counting on its disk", 6*time.Minute, func() bool {
		if p.exited() {
			console := p.stdout.String()
			t.Fatalf("tandem --config-file ended (status %d); console's end:\n%s\nstderr:\n%s\nlog file:\n%s",
				p.wait(t, 0), console[max(0, len(console)-2000):], p.stderr.String(), logged())
		}
		return len(consoleTick.FindAllString(p.stdout.String(), -1)) >= 3
	})
	// The API process's line, and the run's.
	for _, want := range []string{`level=INFO msg="starting the microVM"`, `level=INFO msg="control socket listening"`} {
		if !strings.Contains(logged(), want) {
			t.Errorf("the log file has no %q:\n%s", want, logged())
		}
	}
	if strings.Contains(p.stderr.String(), "control socket listening") {
		t.Errorf("the run logged to standard error, not the logger's file:\n%s", p.stderr.String())
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if status := p.wait(t, time.Minute); status != 0 {
		t.Fatalf("tandem --config-file exited with %d after SIGTERM; stderr:\n%s", status, p.stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(func() string { b, _ := os.ReadFile(metricsPath); return string(b) }()), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last["utc_timestamp_ms"] == nil || len(last) < 2 {
		t.Errorf("the metrics file's last line %q: %v; want utc_timestamp_ms and metrics", lines[len(lines)-1], err)
	}
}

// TestConfigFileErrors: a config file that is missing, not
// Firecracker's, or that its requests would refuse ends Tandem with an
// error naming the file and the part; nothing runs.
func TestConfigFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		os.WriteFile(path, []byte(content), 0o600)
		return path
	}
	unknown := write("unknown.json", `{"boot-source": {"kernel_image_path": "/k"}, "balooon": {}}`)
	noPath := write("nopath.json", `{"boot-source": {"kernel_image_path": "/k"}, "drives": [{"drive_id": "rootfs", "is_root_device": true}]}`)
	noKernel := write("nokernel.json", fmt.Sprintf(`{"boot-source": {"kernel_image_path": %q}}`, filepath.Join(dir, "vmlinux")))
	for _, c := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"--config-file", filepath.Join(dir, "none.json")}, exitUsage, "no such file"},
		{[]string{"--config-file", unknown}, exitUsage, unknown + `: unknown part "balooon"`},
		{[]string{"--config-file", noPath}, 1, noPath + `: "drives"[0]: path_on_host is required`},
		{[]string{"--config-file", noKernel}, 1, noKernel + ": InstanceStart: starting the microVM"},
		{[]string{"--no-api", "--api-sock", filepath.Join(dir, "sock"), "--config-file", unknown}, exitUsage, "exclude each other"},
		{[]string{"--no-api"}, exitUsage, "or --config-file FILE"},
		{[]string{"--log-format", "yaml", "--config-file", unknown}, exitUsage, `--log-format "yaml"`},
	} {
		_, stderr, status := runTandem(t, c.args...)
		if status != c.status || !strings.Contains(stderr, c.want) {
			t.Errorf("tandem %v: status %d, stderr %q; want %d and %q", c.args, status, stderr, c.status, c.want)
		}
	}
}
