package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// consoleTick is the looping init's progress line on a console, which may
// end it with \r\n.
var consoleTick = regexp.MustCompile(`tandem-init: tick (\d+) disk (\d+)\r?\n`)

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
