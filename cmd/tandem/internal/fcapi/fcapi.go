// Package fcapi serves Firecracker's REST API (the subset Tandem supports
// of ../shared/reference/firecracker-api.yaml) so that Firecracker's
// tooling drives Tandem unchanged: it owns the request and response
// bodies, the microVM's configuration before it starts, the order in
// which requests are allowed, and the error shape ({"fault_message":
// ...}). It starts and controls nothing itself: a Machine does.
//
// # Rules
//
// Before InstanceStart the configuration requests (PUT and PATCH
// /machine-config, PUT /boot-source, PUT /drives/{id}, PUT
// /network-interfaces/{id}) change the configuration; after it they are
// refused with 400, as are PATCH /vm and the pause state before it.
// PATCH /network-interfaces/{id} is for after InstanceStart, on an
// interface configured before it; it changes rate limiters, which Tandem
// has none of, so it accepts only null ones and changes nothing.
// PATCH /drives/{id} is for after InstanceStart too: a path_on_host swaps
// the running drive's backing file (DriveUpdater, drivepatch.go), and a
// rate limiter must be null. PUT /ha (before InstanceStart) and GET /ha
// are Tandem's own, the microVM's replication (ha.go).
// PUT /snapshot/create needs the microVM paused, and a Diff needs
// track_dirty_pages; PUT /snapshot/load needs a fresh microVM (nothing
// configured but the logger and the metrics, not started), which it
// leaves paused unless resume_vm. A request body is at most MaxBody bytes
// of one JSON value whose fields are all known and of their types;
// anything else is a 400 that changes nothing. A field Tandem does not
// support with a value other than its default (a rate limiter, the Async
// io_engine, a vhost-user socket, a CPU template, huge pages, a guest
// MAC, a logger module) is a 400 that says so, and so is an endpoint or
// action of the API Tandem does not serve (SendCtrlAltDel: the guest has
// no keyboard controller to send it to): never a silent ignore.
//
// # Logger and metrics
//
// PUT /logger and PUT /metrics are accepted once each, before
// InstanceStart. Their log_path and metrics_path name a file or FIFO that
// must exist; a FIFO must have a reader, or the request is a 400 that
// says so (nothing waits for one). PUT /logger hands the file to
// Server.RedirectLog, which sends the log of the API process and of the
// microVM it runs there, at the level asked (Trace is slog's debug, Off
// is no log); log_path may be left out, to change the level and what a
// line shows only. PUT /metrics writes one JSON object a line to its file
// (see metricsLine for the shape): on the action FlushMetrics (a 400
// before PUT /metrics), every MetricsPeriod, and a last one on Close.
// The metrics are those of Server.Metrics, a Prometheus Gatherer. GET
// /metrics, which Firecracker does not have, answers the same metrics in
// Prometheus' text exposition format, for a scraper.
//
// # Config file
//
// ParseConfigFile reads Firecracker's --config-file (the parts of
// FullVmConfiguration Tandem serves); Server.Apply runs each part as the
// request that configures it, then InstanceStart.
package fcapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// MaxBody bounds a request body.
const MaxBody = 64 << 10

// MachineConfig is Firecracker's MachineConfiguration.
type MachineConfig struct {
	VCPUCount       *int    `json:"vcpu_count,omitempty"`
	MemSizeMib      *int    `json:"mem_size_mib,omitempty"`
	SMT             *bool   `json:"smt,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
}

// BootSource is Firecracker's BootSource.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is Firecracker's Drive.
type Drive struct {
	DriveID      string          `json:"drive_id"`
	PathOnHost   string          `json:"path_on_host,omitempty"`
	IsRootDevice bool            `json:"is_root_device"`
	IsReadOnly   *bool           `json:"is_read_only,omitempty"`
	PartUUID     string          `json:"partuuid,omitempty"`
	CacheType    string          `json:"cache_type,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
	IOEngine     string          `json:"io_engine,omitempty"`
	Socket       string          `json:"socket,omitempty"`
}

// NetworkInterface is Firecracker's NetworkInterface.
type NetworkInterface struct {
	IfaceID       string          `json:"iface_id"`
	HostDevName   string          `json:"host_dev_name"`
	GuestMAC      string          `json:"guest_mac,omitempty"`
	MTU           *int            `json:"mtu,omitempty"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

// Config is the microVM's configuration, as GET /vm/config returns it
// (Firecracker's FullVmConfiguration, the parts Tandem has).
type Config struct {
	BootSource        *BootSource        `json:"boot-source,omitempty"`
	Drives            []Drive            `json:"drives"`
	MachineConfig     MachineConfig      `json:"machine-config"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces"`
	Logger            *LoggerConfig      `json:"logger,omitempty"`
	Metrics           *MetricsConfig     `json:"metrics,omitempty"`
	// HA is PUT /ha's replication (ha.go), nil for none. Tandem's own,
	// it is not part of Firecracker's configuration: GET /ha shows it.
	HA *HAConfig `json:"-"`
}

// InstanceInfo is Firecracker's InstanceInfo.
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// Instance states, as InstanceInfo names them.
const (
	NotStarted = "Not started"
	Running    = "Running"
	Paused     = "Paused"
)

// Machine starts and controls the microVM.
type Machine interface {
	// Start boots the microVM as cfg says and returns once it runs.
	Start(cfg Config) error
	Pause() error
	Resume() error
}

// Server is the API of one microVM.
type Server struct {
	// ID and Version answer GET / and GET /version.
	ID, Version string
	Machine     Machine
	// RedirectLog, if set, sends the log of the API process and of the
	// microVM it runs as a PUT /logger asks; it owns o.File once it
	// returns nil. Unset, PUT /logger is refused.
	RedirectLog func(o LogOptions) error
	// Metrics are the metrics PUT /metrics writes and GET /metrics
	// answers; nil is none.
	Metrics prometheus.Gatherer
	// Log is where the server logs what no request waits for (a
	// periodic metrics line it could not write); nil is slog's default.
	Log *slog.Logger

	mu    sync.Mutex
	cfg   Config
	state string
	// configured says a configuration request succeeded, which rules
	// out loading a snapshot.
	configured bool
	// metrics writes the lines of PUT /metrics; closed says Close ended
	// them for good.
	metrics       *metricsWriter
	metricsPeriod time.Duration // MetricsPeriod unless set (by tests)
	closed        bool
}

func (s *Server) logger() *slog.Logger {
	if s.Log == nil {
		return slog.Default()
	}
	return s.Log
}

// NewServer returns a server for a microVM not yet started, with
// Firecracker's default machine configuration (1 vCPU, 128 MiB).
func NewServer(id, version string, m Machine) *Server {
	one, mem, off := 1, 128, false
	return &Server{ID: id, Version: version, Machine: m, state: NotStarted,
		cfg: Config{MachineConfig: MachineConfig{VCPUCount: &one, MemSizeMib: &mem, SMT: &off, TrackDirtyPages: &off}, Drives: []Drive{}, NetworkInterfaces: []NetworkInterface{}}}
}

// faultError is a request refused with a status and a fault message.
type faultError struct {
	status int
	msg    string
}

func (e *faultError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &faultError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// errStarted refuses a pre-boot request after InstanceStart.
var errStarted = &faultError{http.StatusBadRequest, "the microVM has started: this configuration can only be changed before InstanceStart"}

// unsupported are the endpoints of Firecracker's API Tandem does not serve.
var unsupported = []string{"/balloon", "/cpu-config", "/pmem", "/mmds", "/entropy", "/serial", "/hotplug", "/vsock"}

var idPath = regexp.MustCompile(`^/(drives|network-interfaces)/([A-Za-z0-9_-]{1,64})$`)

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.TrimSuffix(r.URL.Path, "/") == "/metrics" {
		s.serveMetricsText(w, r)
		return
	}
	status, body, err := s.route(r)
	if err != nil {
		var f *faultError
		if !errors.As(err, &f) {
			f = &faultError{http.StatusInternalServerError, err.Error()}
		}
		status, body = f.status, map[string]string{"fault_message": f.msg}
	}
	if body == nil {
		w.WriteHeader(status)
		return
	}
	b, _ := json.Marshal(body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func (s *Server) route(r *http.Request) (int, any, error) {
	path := strings.TrimSuffix(r.URL.Path, "/")
	if path == "" {
		path = "/"
	}
	method := r.Method
	switch {
	case path == "/" && method == http.MethodGet:
		s.mu.Lock()
		defer s.mu.Unlock()
		return http.StatusOK, InstanceInfo{AppName: "Tandem", ID: s.ID, State: s.state, VMMVersion: s.Version}, nil
	case path == "/version" && method == http.MethodGet:
		return http.StatusOK, map[string]string{"firecracker_version": s.Version}, nil
	case path == "/machine-config":
		switch method {
		case http.MethodGet:
			s.mu.Lock()
			defer s.mu.Unlock()
			return http.StatusOK, s.cfg.MachineConfig, nil
		case http.MethodPut, http.MethodPatch:
			return s.machineConfig(r, method == http.MethodPatch)
		}
	case path == "/boot-source" && method == http.MethodPut:
		var b BootSource
		if err := decode(r, &b); err != nil {
			return 0, nil, err
		}
		if b.KernelImagePath == "" {
			return 0, nil, badRequest("kernel_image_path is required")
		}
		return s.configure(func(c *Config) error { c.BootSource = &b; return nil })
	case path == "/actions" && method == http.MethodPut:
		return s.action(r)
	case path == "/logger" && method == http.MethodPut:
		return s.putLogger(r)
	case path == "/metrics" && method == http.MethodPut:
		return s.putMetrics(r)
	case path == "/vm" && method == http.MethodPatch:
		return s.vmState(r)
	case path == "/ha":
		return s.ha(r)
	case path == "/snapshot/create" && method == http.MethodPut:
		return s.createSnapshot(r)
	case path == "/snapshot/load" && method == http.MethodPut:
		return s.loadSnapshot(r)
	case path == "/vm/config" && method == http.MethodGet:
		s.mu.Lock()
		defer s.mu.Unlock()
		return http.StatusOK, s.cfg, nil
	}
	if m := idPath.FindStringSubmatch(path); m != nil {
		switch {
		case m[1] == "drives" && method == http.MethodPut:
			return s.drive(r, m[2])
		case m[1] == "network-interfaces" && method == http.MethodPut:
			return s.networkInterface(r, m[2])
		case m[1] == "network-interfaces" && method == http.MethodPatch:
			return s.patchNetworkInterface(r, m[2])
		case m[1] == "drives" && method == http.MethodPatch:
			return s.patchDrive(r, m[2])
		}
	}
	for _, u := range unsupported {
		if path == u || strings.HasPrefix(path, u+"/") {
			return 0, nil, badRequest("Tandem does not support %s %s", method, path)
		}
	}
	return 0, nil, badRequest("no such endpoint: %s %s", method, path)
}

// decode reads one JSON value of at most MaxBody bytes into v, refusing
// unknown fields and trailing data.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxBody+1))
	if err != nil {
		return badRequest("reading the request: %v", err)
	}
	if len(b) > MaxBody {
		return badRequest("the request body is over %d bytes", MaxBody)
	}
	return decodeBytes(b, v)
}

func decodeBytes(b []byte, v any) error {
	if err := decodeStrict(b, v); err != nil {
		return badRequest("malformed request body: %v", err)
	}
	return nil
}

// decodeStrict reads the one JSON value of b into v, refusing unknown
// fields and trailing data.
func decodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("more than one JSON value")
	}
	return nil
}

// configure applies change to the configuration, before InstanceStart only.
func (s *Server) configure(change func(*Config) error) (int, any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != NotStarted {
		return 0, nil, errStarted
	}
	next := s.cfg
	next.Drives = slices.Clone(s.cfg.Drives)
	next.NetworkInterfaces = slices.Clone(s.cfg.NetworkInterfaces)
	if err := change(&next); err != nil {
		return 0, nil, err
	}
	s.cfg = next
	s.configured = true
	return http.StatusNoContent, nil, nil
}

func (s *Server) machineConfig(r *http.Request, partial bool) (int, any, error) {
	var m MachineConfig
	if err := decode(r, &m); err != nil {
		return 0, nil, err
	}
	if !partial && (m.VCPUCount == nil || m.MemSizeMib == nil) {
		return 0, nil, badRequest("vcpu_count and mem_size_mib are required")
	}
	return s.configure(func(c *Config) error {
		mc := c.MachineConfig
		if !partial {
			off := false
			mc = MachineConfig{SMT: &off, TrackDirtyPages: &off}
		}
		if m.VCPUCount != nil {
			if *m.VCPUCount < 1 || *m.VCPUCount > 32 || *m.VCPUCount > 1 && *m.VCPUCount%2 != 0 {
				return badRequest("vcpu_count %d: want 1 or an even number up to 32", *m.VCPUCount)
			}
			mc.VCPUCount = m.VCPUCount
		}
		if m.MemSizeMib != nil {
			if *m.MemSizeMib < 16 || *m.MemSizeMib > 1<<20 {
				return badRequest("mem_size_mib %d: want 16 to %d", *m.MemSizeMib, 1<<20)
			}
			mc.MemSizeMib = m.MemSizeMib
		}
		if m.SMT != nil {
			if *m.SMT {
				return badRequest("Tandem does not support smt: each vCPU is one thread")
			}
			mc.SMT = m.SMT
		}
		if m.TrackDirtyPages != nil {
			mc.TrackDirtyPages = m.TrackDirtyPages
		}
		if m.CPUTemplate != nil && *m.CPUTemplate != "None" {
			return badRequest("Tandem does not support cpu_template %q: the guest sees the host's CPUID", *m.CPUTemplate)
		}
		if m.HugePages != nil && *m.HugePages != "None" {
			return badRequest("Tandem does not support huge_pages %q yet", *m.HugePages)
		}
		c.MachineConfig = mc
		return nil
	})
}

func (s *Server) drive(r *http.Request, id string) (int, any, error) {
	var d Drive
	if err := decode(r, &d); err != nil {
		return 0, nil, err
	}
	switch {
	case d.DriveID != id:
		return 0, nil, badRequest("drive_id %q differs from the path's %q", d.DriveID, id)
	case d.Socket != "":
		return 0, nil, badRequest("Tandem does not support vhost-user drives (socket)")
	case d.PathOnHost == "":
		return 0, nil, badRequest("path_on_host is required")
	case len(d.RateLimiter) > 0 && string(d.RateLimiter) != "null":
		return 0, nil, badRequest("Tandem does not support rate limiters on drives")
	case d.IOEngine != "" && d.IOEngine != "Sync":
		return 0, nil, badRequest("Tandem does not support io_engine %q", d.IOEngine)
	case d.CacheType != "" && d.CacheType != "Unsafe" && d.CacheType != "Writeback":
		return 0, nil, badRequest("cache_type %q: want Unsafe or Writeback", d.CacheType)
	case d.PartUUID != "":
		return 0, nil, badRequest("Tandem does not support partuuid: give root= in boot_args")
	}
	return s.configure(func(c *Config) error {
		i := slices.IndexFunc(c.Drives, func(x Drive) bool { return x.DriveID == id })
		if d.IsRootDevice && slices.ContainsFunc(c.Drives, func(x Drive) bool { return x.IsRootDevice && x.DriveID != id }) {
			return badRequest("another drive is the root device already")
		}
		if i >= 0 {
			c.Drives[i] = d
		} else {
			c.Drives = append(c.Drives, d)
		}
		return nil
	})
}

func (s *Server) networkInterface(r *http.Request, id string) (int, any, error) {
	var n NetworkInterface
	if err := decode(r, &n); err != nil {
		return 0, nil, err
	}
	switch {
	case n.IfaceID != id:
		return 0, nil, badRequest("iface_id %q differs from the path's %q", n.IfaceID, id)
	case n.HostDevName == "":
		return 0, nil, badRequest("host_dev_name is required")
	case n.GuestMAC != "":
		return 0, nil, badRequest("Tandem does not support guest_mac yet: the guest's MAC is derived from the interface")
	case n.MTU != nil:
		return 0, nil, badRequest("Tandem does not support mtu")
	}
	if err := refuseRateLimits(n.RxRateLimiter, n.TxRateLimiter); err != nil {
		return 0, nil, err
	}
	return s.configure(func(c *Config) error {
		i := slices.IndexFunc(c.NetworkInterfaces, func(x NetworkInterface) bool { return x.IfaceID == id })
		if i >= 0 {
			c.NetworkInterfaces[i] = n
		} else {
			c.NetworkInterfaces = append(c.NetworkInterfaces, n)
		}
		return nil
	})
}

func (s *Server) action(r *http.Request) (int, any, error) {
	var a struct {
		ActionType string `json:"action_type"`
	}
	if err := decode(r, &a); err != nil {
		return 0, nil, err
	}
	switch a.ActionType {
	case "InstanceStart":
	case "FlushMetrics":
		return s.flushMetrics()
	case "SendCtrlAltDel":
		return 0, nil, badRequest("Tandem does not support the action SendCtrlAltDel: the guest has no keyboard controller (i8042) to receive it; shut the guest down from inside, or end Tandem with SIGTERM")
	default:
		return 0, nil, badRequest("action_type %q: want InstanceStart, SendCtrlAltDel or FlushMetrics", a.ActionType)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state != NotStarted:
		return 0, nil, badRequest("the microVM has started already")
	case s.cfg.BootSource == nil:
		return 0, nil, badRequest("no boot source: PUT /boot-source first")
	}
	if err := s.Machine.Start(s.cfg); err != nil {
		return 0, nil, badRequest("starting the microVM: %v", err)
	}
	s.state = Running
	return http.StatusNoContent, nil, nil
}

func (s *Server) vmState(r *http.Request) (int, any, error) {
	var v struct {
		State string `json:"state"`
	}
	if err := decode(r, &v); err != nil {
		return 0, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == NotStarted {
		return 0, nil, badRequest("the microVM has not started")
	}
	switch v.State {
	case "Paused":
		if err := s.Machine.Pause(); err != nil {
			return 0, nil, badRequest("pausing the microVM: %v", err)
		}
		s.state = Paused
	case "Resumed":
		if err := s.Machine.Resume(); err != nil {
			return 0, nil, badRequest("resuming the microVM: %v", err)
		}
		s.state = Running
	default:
		return 0, nil, badRequest("state %q: want Paused or Resumed", v.State)
	}
	return http.StatusNoContent, nil, nil
}
