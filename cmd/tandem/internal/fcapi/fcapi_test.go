package fcapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	yaml "go.yaml.in/yaml/v3"
)

// fakeMachine records what the server asks of it.
type fakeMachine struct {
	started *Config
	calls   []string
	fail    error
}

func (m *fakeMachine) Start(cfg Config) error {
	m.calls = append(m.calls, "start")
	if m.fail != nil {
		return m.fail
	}
	m.started = &cfg
	return nil
}
func (m *fakeMachine) Pause() error  { m.calls = append(m.calls, "pause"); return m.fail }
func (m *fakeMachine) Resume() error { m.calls = append(m.calls, "resume"); return m.fail }
func (m *fakeMachine) CreateSnapshot(p SnapshotCreateParams, cfg Config) error {
	m.calls = append(m.calls, "snapshot "+p.SnapshotType)
	return m.fail
}
func (m *fakeMachine) LoadSnapshot(p SnapshotLoadParams) (Config, error) {
	m.calls = append(m.calls, "load "+p.MemFile())
	two, mem := 2, 256
	return Config{MachineConfig: MachineConfig{VCPUCount: &two, MemSizeMib: &mem}, Drives: []Drive{}, NetworkInterfaces: []NetworkInterface{}}, m.fail
}

// call sends one request to s and returns the status and body.
func call(t *testing.T, s http.Handler, method, path, body string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

// step is one request of a table and what must come back: the status and
// a piece of the body (the fault message of an error).
type step struct {
	method, path, body string
	status             int
	want               string
}

func run(t *testing.T, s http.Handler, steps []step) {
	t.Helper()
	for i, st := range steps {
		status, body := call(t, s, st.method, st.path, st.body)
		if status != st.status || !strings.Contains(body, st.want) {
			t.Errorf("step %d: %s %s %s: %d %q; want %d and %q", i, st.method, st.path, st.body, status, body, st.status, st.want)
		}
		if status >= 400 {
			var f map[string]string
			if err := json.Unmarshal([]byte(body), &f); err != nil || f["fault_message"] == "" || len(f) != 1 {
				t.Errorf("step %d: error body %q is not {\"fault_message\": ...}", i, body)
			}
		}
	}
}

// TestLifecycle configures a microVM as firecracker-go-sdk does, starts
// it, pauses and resumes it, and checks that the configuration is frozen
// once it runs.
func TestLifecycle(t *testing.T) {
	m := &fakeMachine{}
	s := NewServer("vm0", "1.2.3", m)
	run(t, s, []step{
		{"GET", "/", "", 200, `"state":"Not started"`},
		{"GET", "/version", "", 200, `{"firecracker_version":"1.2.3"}`},
		{"GET", "/machine-config", "", 200, `"vcpu_count":1`},
		{"PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": true}`, 204, ""},
		{"PATCH", "/machine-config", `{"mem_size_mib": 512}`, 204, ""},
		{"GET", "/machine-config", "", 200, `"vcpu_count":2,"mem_size_mib":512,"smt":false,"track_dirty_pages":true`},
		{"PUT", "/boot-source", `{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}`, 204, ""},
		{"PUT", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true, "is_read_only": false}`, 204, ""},
		{"PUT", "/drives/data", `{"drive_id": "data", "path_on_host": "/d.img", "is_root_device": false}`, 204, ""},
		{"PUT", "/drives/data", `{"drive_id": "data", "path_on_host": "/d2.img", "is_root_device": false, "is_read_only": true}`, 204, ""},
		{"PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`, 204, ""},
		{"PATCH", "/vm", `{"state": "Paused"}`, 400, "has not started"},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
		{"GET", "/", "", 200, `"state":"Running"`},
		{"PUT", "/boot-source", `{"kernel_image_path": "/other"}`, 400, "before InstanceStart"},
		{"PUT", "/drives/x", `{"drive_id": "x", "path_on_host": "/x", "is_root_device": false}`, 400, "before InstanceStart"},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 400, "started already"},
		{"PATCH", "/vm", `{"state": "Paused"}`, 204, ""},
		{"GET", "/", "", 200, `"state":"Paused"`},
		{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 204, ""},
		{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}`, 204, ""},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, "fresh"},
		{"PATCH", "/vm", `{"state": "Resumed"}`, 204, ""},
		{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, "pause it first"},
		{"GET", "/vm/config", "", 200, `"path_on_host":"/d2.img","is_root_device":false,"is_read_only":true`},
	})
	if !slices.Equal(m.calls, []string{"start", "pause", "snapshot ", "snapshot Diff", "resume"}) {
		t.Errorf("machine calls %v", m.calls)
	}
	c := m.started
	if c == nil || *c.MachineConfig.VCPUCount != 2 || *c.MachineConfig.MemSizeMib != 512 || c.BootSource.InitrdPath != "/i" ||
		len(c.Drives) != 2 || c.Drives[1].PathOnHost != "/d2.img" || len(c.NetworkInterfaces) != 1 {
		t.Errorf("started with %+v", c)
	}
}

// TestBadRequests: every malformed or unsupported request is a 400 with a
// fault message that says what is wrong, and changes nothing.
func TestBadRequests(t *testing.T) {
	m := &fakeMachine{}
	s := NewServer("vm0", "1", m)
	before, _ := json.Marshal(s.cfg)
	huge := `{"kernel_image_path": "` + strings.Repeat("k", MaxBody) + `"}`
	run(t, s, []step{
		{"PUT", "/machine-config", `{"vcpu_count": 2`, 400, "malformed"},
		{"PUT", "/machine-config", `{"vcpu_count": "two", "mem_size_mib": 128}`, 400, "malformed"},
		{"PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 128, "turbo": true}`, 400, "unknown field"},
		{"PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 128} {}`, 400, "more than one JSON value"},
		{"PUT", "/machine-config", `{"mem_size_mib": 128}`, 400, "required"},
		{"PUT", "/machine-config", `{"vcpu_count": 3, "mem_size_mib": 128}`, 400, "even number"},
		{"PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 1}`, 400, "mem_size_mib 1"},
		{"PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 128, "smt": true}`, 400, "does not support smt"},
		{"PUT", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 128, "cpu_template": "T2"}`, 400, "cpu_template"},
		{"PATCH", "/machine-config", `{"huge_pages": "2M"}`, 400, "huge_pages"},
		{"PUT", "/boot-source", `{}`, 400, "kernel_image_path is required"},
		{"PUT", "/boot-source", huge, 400, "over 65536 bytes"},
		{"PUT", "/drives/a", `{"drive_id": "b", "path_on_host": "/x", "is_root_device": false}`, 400, "differs"},
		{"PUT", "/drives/a", `{"drive_id": "a", "is_root_device": false, "socket": "/s"}`, 400, "vhost-user"},
		{"PUT", "/drives/a", `{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "io_engine": "Async"}`, 400, "io_engine"},
		{"PUT", "/drives/a", `{"drive_id": "a", "path_on_host": "/x", "is_root_device": false, "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}`, 400, "rate limiters"},
		{"PUT", "/drives/a", `{"drive_id": "a", "is_root_device": false}`, 400, "path_on_host is required"},
		{"PUT", "/drives/a%2F..", `{}`, 400, "no such endpoint"},
		{"PATCH", "/drives/a", `{"drive_id": "a", "path_on_host": "/y"}`, 400, "has not started"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:00:00:00:01"}`, 400, "guest_mac"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id": "eth0"}`, 400, "host_dev_name is required"},
		{"PUT", "/actions", `{"action_type": "SendCtrlAltDel"}`, 400, "does not support the action SendCtrlAltDel"},
		{"PUT", "/actions", `{"action_type": "SendCtrlAltDel"}`, 400, "no keyboard controller"},
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`, 400, "PUT /metrics first"},
		{"PUT", "/actions", `{"action_type": "Reboot"}`, 400, "want InstanceStart"},
		{"PUT", "/logger", `{"log_path": "/l", "level": "Loud"}`, 400, "want Error, Warning, Info, Debug, Trace or Off"},
		{"PUT", "/logger", `{"log_path": "/l", "module": "vmm"}`, 400, "does not support module"},
		{"PUT", "/logger", `{"log_path": "/l", "show_level": "yes"}`, 400, "malformed"},
		{"PUT", "/logger", `{"level": "Info"}`, 400, "cannot be redirected"},
		{"PUT", "/metrics", `{}`, 400, "metrics_path is required"},
		{"PUT", "/metrics", `{"metrics_path": "/m", "emit_ids": true}`, 400, "unknown field"},
		{"PUT", "/metrics", `{"metrics_path": "/no/such/dir/m"}`, 400, "does not exist"},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0"}`, 400, "has not started"},
		{"PATCH", "/network-interfaces/eth0", `{"iface_id": "eth0", "rx_rate_limiter": {"ops": {"size": 1, "refill_time": 1}}}`, 400, "does not support rate limiters"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}`, 400, "does not support rate limiters"},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 400, "no boot source"},
		{"PUT", "/mmds", `{}`, 400, "does not support PUT /mmds"},
		{"PUT", "/snapshot/create", `{"snapshot_path": "/s"}`, 400, "required"},
		{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/s"}`, 400, "two files"},
		{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Half"}`, 400, "want Full or Diff"},
		{"PUT", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, "pause it first"},
		{"PUT", "/snapshot/load", `{"mem_file_path": "/m"}`, 400, "snapshot_path is required"},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s"}`, 400, "exactly one"},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m", "mem_backend": {"backend_type": "File", "backend_path": "/m"}}`, 400, "exactly one"},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Uffd", "backend_path": "/u"}}`, 400, "Uffd"},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_backend": {"backend_type": "Tape", "backend_path": "/u"}}`, 400, "want File"},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m", "vsock_override": {"uds_path": "/v"}}`, 400, "vsock"},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m", "clock_realtime": true}`, 400, "clock_realtime"},
		{"GET", "/balloon/statistics", ``, 400, "does not support"},
		{"DELETE", "/", ``, 400, "no such endpoint"},
		{"GET", "/nonsense", ``, 400, "no such endpoint"},
	})
	after, _ := json.Marshal(s.cfg)
	if string(before) != string(after) || len(m.calls) != 0 || s.state != NotStarted {
		t.Errorf("bad requests changed the server: %s -> %s, calls %v, state %s", before, after, m.calls, s.state)
	}
	// A machine that cannot start or load leaves the instance not started.
	m.fail = errors.New("no KVM")
	run(t, s, []step{
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, "no KVM"},
		{"GET", "/", "", 200, `"Not started"`},
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 400, "no KVM"},
		{"GET", "/", "", 200, `"Not started"`},
		{"PUT", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`, 400, "configured already"},
	})
}

// TestLoadSnapshot: a snapshot loads into a fresh microVM only, paused
// unless resume_vm, with the loaded configuration and the dirty tracking
// the request asks for.
func TestLoadSnapshot(t *testing.T) {
	for _, tc := range []struct {
		body, state, tracking string
	}{
		{`{"snapshot_path": "/s", "mem_file_path": "/m"}`, "Paused", "false"},
		{`{"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"}, "resume_vm": true, "enable_diff_snapshots": true}`, "Running", "true"},
	} {
		m := &fakeMachine{}
		s := NewServer("vm0", "1", m)
		run(t, s, []step{
			{"PUT", "/snapshot/load", tc.body, 204, ""},
			{"GET", "/", "", 200, `"state":"` + tc.state + `"`},
			{"GET", "/machine-config", "", 200, `"vcpu_count":2,"mem_size_mib":256,"track_dirty_pages":` + tc.tracking},
			{"PUT", "/snapshot/load", tc.body, 400, "started"},
			{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 400, "started already"},
		})
		if !slices.Equal(m.calls, []string{"load /m"}) {
			t.Errorf("%s: machine calls %v", tc.body, m.calls)
		}
	}
}

// FuzzDecode: no request body panics the server or is accepted as
// something else than one JSON value of known fields.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{`{"vcpu_count": 2, "mem_size_mib": 128}`, `{"drive_id":"a","path_on_host":"/x","is_root_device":true}`, `{`, `[]`, `null`, `{"state":"Paused"}`,
		`{"drive_id":"a","path_on_host":"/y","rate_limiter":null}`,
		`{"log_path":"/l","level":"Debug","show_level":true}`, `{"metrics_path":"/m","emit_id":true}`, `{"iface_id":"a","rx_rate_limiter":{}}`, `{"replicas":["127.0.0.1:7000"],"leader":"127.0.0.1:7001","policy":"ft","mode":"async","epoch_ms":20,"auth_key_path":"/k"}`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		s := NewServer("vm0", "1", &fakeMachine{})
		s.metricsPeriod = 1000 * time.Hour // a body that opens a metrics file never writes to it
		for _, p := range []struct{ method, path string }{{"PUT", "/machine-config"}, {"PATCH", "/machine-config"}, {"PUT", "/boot-source"},
			{"PUT", "/drives/a"}, {"PUT", "/network-interfaces/a"}, {"PUT", "/actions"}, {"PATCH", "/vm"}, {"PUT", "/snapshot/load"}, {"PUT", "/snapshot/create"},
			{"PUT", "/ha"}, {"PATCH", "/drives/a"}, {"PUT", "/logger"}, {"PUT", "/metrics"}, {"PATCH", "/network-interfaces/a"}} {
			status, resp := call(t, s, p.method, p.path, body)
			if status != 204 && status != 400 {
				t.Fatalf("%s %s %q: status %d %s", p.method, p.path, body, status, resp)
			}
		}
	})
}

// spec is the part of Firecracker's OpenAPI file the test reads.
type spec struct {
	Paths       map[string]map[string]operation `yaml:"paths"`
	Definitions map[string]*schema              `yaml:"definitions"`
	// partial checks a PATCH body: a subset of its schema's fields.
	partial bool
}

type operation struct {
	Parameters []struct {
		In     string  `yaml:"in"`
		Schema *schema `yaml:"schema"`
	} `yaml:"parameters"`
	Responses map[string]struct {
		Schema *schema `yaml:"schema"`
	} `yaml:"responses"`
}

type schema struct {
	Ref        string             `yaml:"$ref"`
	Type       string             `yaml:"type"`
	Required   []string           `yaml:"required"`
	Properties map[string]*schema `yaml:"properties"`
	// AdditionalProperties says what an object's other fields may be.
	AdditionalProperties *additional `yaml:"additionalProperties"`
	Items                *schema     `yaml:"items"`
	Enum                 []string    `yaml:"enum"`
	Minimum              *float64    `yaml:"minimum"`
	Maximum              *float64    `yaml:"maximum"`
}

// additional is an additionalProperties: a schema, or true (any value)
// or false (none).
type additional struct {
	schema *schema
	any    bool
}

func (a *additional) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		a.any = n.Value == "true"
		return nil
	}
	a.schema = new(schema)
	return n.Decode(a.schema)
}

func loadSpec(t *testing.T) *spec {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	path := filepath.Join(filepath.Dir(here), "../../../../../shared/reference/firecracker-api.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the API description: %v", err)
	}
	var s spec
	if err := yaml.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Paths) < 20 || s.Definitions["InstanceInfo"] == nil {
		t.Fatalf("the API description has %d paths: not Firecracker's", len(s.Paths))
	}
	return &s
}

func (s *spec) resolve(sc *schema) *schema {
	for sc != nil && sc.Ref != "" {
		sc = s.Definitions[strings.TrimPrefix(sc.Ref, "#/definitions/")]
	}
	return sc
}

// check validates v (decoded JSON) against sc, naming where in at.
func (s *spec) check(sc *schema, v any, at string) error {
	sc = s.resolve(sc)
	if sc == nil {
		return nil
	}
	switch x := v.(type) {
	case map[string]any:
		if sc.Type != "" && sc.Type != "object" {
			return fmt.Errorf("%s: an object where the spec has %s", at, sc.Type)
		}
		for _, r := range sc.Required {
			if _, ok := x[r]; !ok && !s.partial {
				return fmt.Errorf("%s: required %q missing", at, r)
			}
		}
		for k, fv := range x {
			p, ok := sc.Properties[k]
			if a := sc.AdditionalProperties; !ok && a != nil && (a.any || a.schema != nil) {
				p, ok = a.schema, true
			}
			if !ok {
				return fmt.Errorf("%s: %q is not in the spec", at, k)
			}
			if err := s.check(p, fv, at+"."+k); err != nil {
				return err
			}
		}
	case []any:
		if sc.Type != "array" {
			return fmt.Errorf("%s: an array where the spec has %s", at, sc.Type)
		}
		for i, e := range x {
			if err := s.check(sc.Items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case string:
		if sc.Type != "string" {
			return fmt.Errorf("%s: a string where the spec has %s", at, sc.Type)
		}
		if len(sc.Enum) > 0 && !slices.Contains(sc.Enum, x) {
			return fmt.Errorf("%s: %q is none of %v", at, x, sc.Enum)
		}
	case float64:
		if sc.Type != "integer" && sc.Type != "number" {
			return fmt.Errorf("%s: a number where the spec has %s", at, sc.Type)
		}
		if sc.Type == "integer" && x != float64(int64(x)) {
			return fmt.Errorf("%s: %v is not an integer", at, x)
		}
		if sc.Minimum != nil && x < *sc.Minimum || sc.Maximum != nil && x > *sc.Maximum {
			return fmt.Errorf("%s: %v out of range", at, x)
		}
	case bool:
		if sc.Type != "boolean" {
			return fmt.Errorf("%s: a boolean where the spec has %s", at, sc.Type)
		}
	}
	return nil
}

// TestAgainstSpec drives every endpoint Tandem serves and checks, against
// Firecracker's API description itself: that the spec has the method and
// path, that each request body the test sends is valid by the spec's
// schema, that the status returned is one the spec lists, and that every
// response body (the errors' too) is valid by the schema of that status.
func TestAgainstSpec(t *testing.T) {
	sp := loadSpec(t)
	s := NewServer("vm0", "1.2.3", &fakeMachine{})
	s.RedirectLog = (&logRecorder{}).redirect
	defer s.Close()
	logPath, metricsPath := filepath.Join(t.TempDir(), "log"), filepath.Join(t.TempDir(), "metrics")
	os.WriteFile(logPath, nil, 0o600)
	os.WriteFile(metricsPath, nil, 0o600)
	for _, c := range []struct{ method, specPath, path, body string }{
		{"GET", "/", "/", ""},
		{"GET", "/version", "/version", ""},
		{"GET", "/machine-config", "/machine-config", ""},
		{"PUT", "/machine-config", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true}`},
		{"PATCH", "/machine-config", "/machine-config", `{"mem_size_mib": 512}`},
		{"PUT", "/machine-config", "/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256, "huge_pages": "2M"}`},
		{"PUT", "/boot-source", "/boot-source", `{"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": "/i"}`},
		{"PUT", "/drives/{drive_id}", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/r.img", "is_root_device": true, "is_read_only": false}`},
		{"PATCH", "/drives/{drive_id}", "/drives/rootfs", `{"drive_id": "rootfs", "path_on_host": "/s.img"}`},
		{"PUT", "/network-interfaces/{iface_id}", "/network-interfaces/eth0", `{"iface_id": "eth0", "host_dev_name": "tap0"}`},
		{"PATCH", "/vm", "/vm", `{"state": "Paused"}`},
		{"PUT", "/actions", "/actions", `{"action_type": "FlushMetrics"}`},
		{"PUT", "/logger", "/logger", `{"log_path": "` + logPath + `", "level": "Debug", "show_level": true, "show_log_origin": false}`},
		{"PUT", "/logger", "/logger", `{"log_path": "` + logPath + `", "level": "Info"}`},
		{"PUT", "/metrics", "/metrics", `{"metrics_path": "` + metricsPath + `", "emit_id": true, "properties": {"host": "h1"}}`},
		{"PUT", "/actions", "/actions", `{"action_type": "FlushMetrics"}`},
		{"PATCH", "/network-interfaces/{iface_id}", "/network-interfaces/eth0", `{"iface_id": "eth0"}`},
		{"PUT", "/actions", "/actions", `{"action_type": "InstanceStart"}`},
		{"PATCH", "/network-interfaces/{iface_id}", "/network-interfaces/eth0", `{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 1000, "refill_time": 100}}}`},
		{"PATCH", "/network-interfaces/{iface_id}", "/network-interfaces/eth0", `{"iface_id": "eth0", "tx_rate_limiter": {}}`},
		{"PUT", "/logger", "/logger", `{"level": "Warning"}`},
		{"PATCH", "/vm", "/vm", `{"state": "Paused"}`},
		{"PUT", "/snapshot/create", "/snapshot/create", `{"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Diff"}`},
		{"PUT", "/snapshot/load", "/snapshot/load", `{"snapshot_path": "/s", "mem_file_path": "/m"}`},
		{"PATCH", "/vm", "/vm", `{"state": "Resumed"}`},
		{"GET", "/vm/config", "/vm/config", ""},
		{"GET", "/", "/", ""},
		{"PUT", "/mmds", "/mmds", `{}`},
	} {
		name := c.method + " " + c.path
		op, ok := sp.Paths[c.specPath][strings.ToLower(c.method)]
		if !ok {
			t.Errorf("%s: the spec has no %s %s", name, c.method, c.specPath)
			continue
		}
		if c.body != "" {
			var req any
			json.Unmarshal([]byte(c.body), &req)
			sp.partial = c.method == "PATCH" && c.specPath == "/machine-config"
			for _, p := range op.Parameters {
				if p.In == "body" {
					if err := sp.check(p.Schema, req, "request"); err != nil {
						t.Errorf("%s: the test's request is not valid by the spec: %v", name, err)
					}
				}
			}
			sp.partial = false
		}
		status, body := call(t, s, c.method, c.path, c.body)
		resp, ok := op.Responses[strconv.Itoa(status)]
		if !ok {
			resp, ok = op.Responses["default"]
			if !ok || status < 400 {
				t.Errorf("%s: status %d is not one the spec lists", name, status)
				continue
			}
		}
		if resp.Schema == nil {
			if strings.TrimSpace(body) != "" {
				t.Errorf("%s: status %d has no body in the spec, got %q", name, status, body)
			}
			continue
		}
		var v any
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Errorf("%s: response %q is not JSON", name, body)
			continue
		}
		if err := sp.check(resp.Schema, v, "response"); err != nil {
			t.Errorf("%s: status %d: %v (body %s)", name, status, err, body)
		}
	}
	// The Go types name only fields the spec's definitions have.
	for def, typ := range map[string]any{"MachineConfiguration": MachineConfig{}, "BootSource": BootSource{}, "Drive": Drive{},
		"NetworkInterface": NetworkInterface{}, "InstanceInfo": InstanceInfo{}, "FullVmConfiguration": Config{},
		"Logger": LoggerConfig{}, "Metrics": MetricsConfig{}, "PartialNetworkInterface": PartialNetworkInterface{},
		"SnapshotCreateParams": SnapshotCreateParams{}, "SnapshotLoadParams": SnapshotLoadParams{}, "MemoryBackend": MemoryBackend{}, "NetworkOverride": NetworkOverride{}} {
		props := sp.resolve(sp.Definitions[def]).Properties
		rt := reflect.TypeOf(typ)
		for i := range rt.NumField() {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if name == "-" {
				continue // Tandem's own, never in the JSON
			}
			if _, ok := props[name]; !ok {
				t.Errorf("%s.%s: %q is not a property of %s", rt.Name(), rt.Field(i).Name, name, def)
			}
		}
	}
}
