package linux

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestSourcesPresent(t *testing.T) {
	for _, f := range []string{"build.sh", "microvm.config", "initramfs/init.c"} {
		if _, err := os.Stat(filepath.Join(Dir(), f)); err != nil {
			t.Error(err)
		}
	}
	if out, err := exec.Command("bash", "-n", filepath.Join(Dir(), "build.sh")).CombinedOutput(); err != nil {
		t.Errorf("build.sh does not parse: %v\n%s", err, out)
	}
}

// TestConfigFragment checks that every line of microvm.config is a
// comment, blank, an assignment or an explicit "is not set", which is all
// build.sh's check after olddefconfig understands.
func TestConfigFragment(t *testing.T) {
	f, err := os.Open(filepath.Join(Dir(), "microvm.config"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	valid := regexp.MustCompile(`^(|#.*|CONFIG_[A-Z0-9_]+=(y|m|[0-9]+|"[^"]*")|# CONFIG_[A-Z0-9_]+ is not set)$`)
	name := regexp.MustCompile(`CONFIG_[A-Z0-9_]+`)
	seen := map[string]bool{}
	s := bufio.NewScanner(f)
	for n := 1; s.Scan(); n++ {
		line := s.Text()
		if !valid.MatchString(line) {
			t.Errorf("microvm.config:%d: %q", n, line)
		}
		if strings.HasPrefix(line, "CONFIG_") || strings.HasPrefix(line, "# CONFIG_") {
			c := name.FindString(line)
			if seen[c] {
				t.Errorf("microvm.config:%d: %s set twice", n, c)
			}
			seen[c] = true
		}
	}
	for _, must := range []string{"CONFIG_64BIT", "CONFIG_PVH", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES", "CONFIG_SERIAL_8250_CONSOLE", "CONFIG_BLK_DEV_INITRD"} {
		if !seen[must] {
			t.Errorf("microvm.config does not set %s", must)
		}
	}
}
