package fcapi

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigFile: a good config file configures every part as its
// request would and starts the microVM.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	logPath, metricsPath := filepath.Join(dir, "log"), filepath.Join(dir, "metrics")
	os.WriteFile(logPath, nil, 0o600)
	os.WriteFile(metricsPath, nil, 0o600)
	file := `{
		"boot-source": {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0", "initrd_path": "/initrd"},
		"drives": [
			{"drive_id": "rootfs", "path_on_host": "/rootfs.img", "is_root_device": true, "is_read_only": false},
			{"drive_id": "data", "path_on_host": "/data.img", "is_root_device": false, "is_read_only": true}
		],
		"machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true},
		"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
		"logger": {"log_path": "` + logPath + `", "level": "Debug"},
		"metrics": {"metrics_path": "` + metricsPath + `"},
		"ha": {"replicas": ["127.0.0.1:7000"], "leader": "127.0.0.1:7000", "auth_key_path": "/k"}
	}`
	cf, err := ParseConfigFile([]byte(file))
	if err != nil {
		t.Fatal(err)
	}
	s, rec, m := newLoggingServer(t)
	defer s.Close()
	if err := s.Apply(cf); err != nil {
		t.Fatal(err)
	}
	c := m.started
	if c == nil || *c.MachineConfig.VCPUCount != 2 || *c.MachineConfig.MemSizeMib != 256 || !*c.MachineConfig.TrackDirtyPages ||
		c.BootSource.InitrdPath != "/initrd" || len(c.Drives) != 2 || !*c.Drives[1].IsReadOnly || len(c.NetworkInterfaces) != 1 ||
		c.Logger == nil || c.Logger.Level != "Debug" || c.Metrics == nil || c.Metrics.MetricsPath != metricsPath || c.HA == nil || c.HA.Policy != "fast" {
		t.Fatalf("started with %+v", c)
	}
	if len(rec.got) != 1 || rec.got[0].Path != logPath || rec.got[0].Level != "debug" {
		t.Errorf("the log was redirected with %+v", rec.got)
	}
	run(t, s, []step{
		{"GET", "/", "", 200, `"state":"Running"`},
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`, 204, ""},
	})
	if b, _ := os.ReadFile(metricsPath); !strings.HasPrefix(string(b), `{"utc_timestamp_ms":`) {
		t.Errorf("the metrics file holds %q", b)
	}

	// The smallest file: a kernel.
	cf, err = ParseConfigFile([]byte(`{"boot-source": {"kernel_image_path": "/k"}}`))
	s2 := NewServer("vm1", "1", &fakeMachine{})
	if err != nil || s2.Apply(cf) != nil {
		t.Fatalf("a file with a kernel only: %v", err)
	}
}

// TestConfigFileErrors: a file that is not one, an unknown or
// unsupported part, or a part its request would refuse is an error that
// names it.
func TestConfigFileErrors(t *testing.T) {
	boot := `"boot-source": {"kernel_image_path": "/k"}`
	for _, c := range []struct{ file, want string }{
		{`[]`, "not a JSON object"},
		{`null`, "not a JSON object"},
		{`{` + boot + `} {}`, "more than one JSON value"},
		{`{` + boot + `, "balooon": {}, "drivers": []}`, `unknown part "balooon", "drivers": want logger, metrics`},
		{`{` + boot + `, "vsock": {"guest_cid": 3, "uds_path": "/v"}}`, `part "vsock": Tandem does not support it`},
		{`{` + boot + `, "drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": true}, {"drive_id": "b", "size": 1}]}`, `"drives"[1]: json: unknown field "size"`},
		{`{` + boot + `, "drives": {"drive_id": "a"}}`, `"drives": json: cannot unmarshal object`},
		{`{` + boot + `, "machine-config": {"vcpu_count": "two"}}`, `"machine-config": json: cannot unmarshal string`},
		{`{` + boot + `, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "queues": 2}]}`, `"network-interfaces"[0]: json: unknown field "queues"`},
		{`{` + boot + `, "logger": {"log_path": "/l", "format": "json"}}`, `"logger": json: unknown field "format"`},
	} {
		if _, err := ParseConfigFile([]byte(c.file)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.file, err, c.want)
		}
	}
	for _, c := range []struct{ file, want string }{
		{`{"drives": []}`, `"boot-source" is required`},
		{`{` + boot + `, "machine-config": {"vcpu_count": 3, "mem_size_mib": 128}}`, `"machine-config": vcpu_count 3`},
		{`{` + boot + `, "drives": [{"drive_id": "root", "path_on_host": "/r", "is_root_device": true}, {"drive_id": "d", "is_root_device": false}]}`, `"drives"[1]: path_on_host is required`},
		{`{` + boot + `, "drives": [{"drive_id": "a/b", "path_on_host": "/r", "is_root_device": true}]}`, `"drives"[0]: the id "a/b" is not`},
		{`{` + boot + `, "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}]}`, `"network-interfaces"[0]: Tandem does not support rate limiters`},
		{`{` + boot + `, "logger": {"level": "Loud"}}`, `"logger": level "Loud"`},
		{`{` + boot + `, "ha": {"replicas": [], "leader": "127.0.0.1:7000"}}`, `"ha": replicas is required`},
		{`{` + boot + `, "metrics": {"metrics_path": "/no/such/metrics"}}`, `"metrics": metrics_path: /no/such/metrics does not exist`},
	} {
		cf, err := ParseConfigFile([]byte(c.file))
		if err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		m := &fakeMachine{}
		s := NewServer("vm0", "1", m)
		s.RedirectLog = (&logRecorder{}).redirect
		if err := s.Apply(cf); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.file, err, c.want)
		}
		if m.started != nil {
			t.Errorf("%s: the microVM started", c.file)
		}
	}
}
