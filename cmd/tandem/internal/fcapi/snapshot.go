package fcapi

import (
	"encoding/json"
	"net/http"
)

// SnapshotCreateParams is Firecracker's SnapshotCreateParams.
type SnapshotCreateParams struct {
	MemFilePath  string `json:"mem_file_path"`
	SnapshotPath string `json:"snapshot_path"`
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// MemoryBackend is Firecracker's MemoryBackend.
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// NetworkOverride is Firecracker's NetworkOverride.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// SnapshotLoadParams is Firecracker's SnapshotLoadParams.
type SnapshotLoadParams struct {
	EnableDiffSnapshots *bool             `json:"enable_diff_snapshots,omitempty"`
	TrackDirtyPages     *bool             `json:"track_dirty_pages,omitempty"`
	MemFilePath         string            `json:"mem_file_path,omitempty"`
	MemBackend          *MemoryBackend    `json:"mem_backend,omitempty"`
	SnapshotPath        string            `json:"snapshot_path"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       json.RawMessage   `json:"vsock_override,omitempty"`
	ClockRealtime       *bool             `json:"clock_realtime,omitempty"`
	HugePages           *string           `json:"huge_pages,omitempty"`
}

// MemFile is the memory file the parameters name, whichever field names it.
func (p SnapshotLoadParams) MemFile() string {
	if p.MemBackend != nil {
		return p.MemBackend.BackendPath
	}
	return p.MemFilePath
}

// Tracking says whether the loaded microVM tracks dirty pages (for Diff
// snapshots), by either of the two fields that ask for it.
func (p SnapshotLoadParams) Tracking() bool {
	return p.TrackDirtyPages != nil && *p.TrackDirtyPages || p.EnableDiffSnapshots != nil && *p.EnableDiffSnapshots
}

// Snapshotter is a Machine that snapshots: PUT /snapshot/create and
// /snapshot/load are refused for a Machine that is not one.
type Snapshotter interface {
	// CreateSnapshot writes the paused microVM, configured as cfg says,
	// to p's two files.
	CreateSnapshot(p SnapshotCreateParams, cfg Config) error
	// LoadSnapshot runs the microVM of a snapshot, paused unless
	// p.ResumeVM, and returns its configuration.
	LoadSnapshot(p SnapshotLoadParams) (Config, error)
}

func (s *Server) createSnapshot(r *http.Request) (int, any, error) {
	var p SnapshotCreateParams
	if err := decode(r, &p); err != nil {
		return 0, nil, err
	}
	switch {
	case p.SnapshotPath == "" || p.MemFilePath == "":
		return 0, nil, badRequest("snapshot_path and mem_file_path are required")
	case p.SnapshotPath == p.MemFilePath:
		return 0, nil, badRequest("snapshot_path and mem_file_path must be two files")
	case p.SnapshotType != "" && p.SnapshotType != "Full" && p.SnapshotType != "Diff":
		return 0, nil, badRequest("snapshot_type %q: want Full or Diff", p.SnapshotType)
	}
	sn, ok := s.Machine.(Snapshotter)
	if !ok {
		return 0, nil, badRequest("this microVM cannot be snapshotted")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state != Paused:
		return 0, nil, badRequest("the microVM is %s: pause it first (PATCH /vm {\"state\": \"Paused\"})", s.state)
	case p.SnapshotType == "Diff" && !*s.cfg.MachineConfig.TrackDirtyPages:
		return 0, nil, badRequest("a Diff snapshot needs track_dirty_pages: set it in /machine-config before InstanceStart, or in /snapshot/load")
	}
	if err := sn.CreateSnapshot(p, s.cfg); err != nil {
		return 0, nil, badRequest("creating the snapshot: %v", err)
	}
	return http.StatusNoContent, nil, nil
}

func (s *Server) loadSnapshot(r *http.Request) (int, any, error) {
	var p SnapshotLoadParams
	if err := decode(r, &p); err != nil {
		return 0, nil, err
	}
	switch {
	case p.SnapshotPath == "":
		return 0, nil, badRequest("snapshot_path is required")
	case (p.MemFilePath == "") == (p.MemBackend == nil):
		return 0, nil, badRequest("give exactly one of mem_file_path and mem_backend")
	case p.MemBackend != nil && p.MemBackend.BackendType == "Uffd":
		return 0, nil, badRequest("Tandem does not support the Uffd memory backend yet: use File")
	case p.MemBackend != nil && p.MemBackend.BackendType != "File":
		return 0, nil, badRequest("backend_type %q: want File", p.MemBackend.BackendType)
	case p.MemFile() == "":
		return 0, nil, badRequest("the memory file's path is empty")
	case len(p.VsockOverride) > 0 && string(p.VsockOverride) != "null":
		return 0, nil, badRequest("Tandem does not support vsock, so there is none to override")
	case p.ClockRealtime != nil && *p.ClockRealtime:
		return 0, nil, badRequest("Tandem does not support clock_realtime: the guest's clock resumes where it was")
	case p.HugePages != nil && *p.HugePages != "None":
		return 0, nil, badRequest("Tandem does not support huge_pages %q yet", *p.HugePages)
	}
	sn, ok := s.Machine.(Snapshotter)
	if !ok {
		return 0, nil, badRequest("this microVM cannot load snapshots")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state != NotStarted:
		return 0, nil, badRequest("the microVM has started: a snapshot loads only into a fresh one")
	case s.configured:
		return 0, nil, badRequest("the microVM is configured already: a snapshot loads only before any configuration but the logger's and metrics'")
	}
	cfg, err := sn.LoadSnapshot(p)
	if err != nil {
		return 0, nil, badRequest("loading the snapshot: %v", err)
	}
	track := p.Tracking()
	cfg.MachineConfig.TrackDirtyPages = &track
	// The logger and the metrics are this process's, not the snapshot's.
	cfg.Logger, cfg.Metrics = s.cfg.Logger, s.cfg.Metrics
	s.cfg = cfg
	s.state = Paused
	if p.ResumeVM {
		s.state = Running
	}
	return http.StatusNoContent, nil, nil
}
