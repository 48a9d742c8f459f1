package bench

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// The raw data a bench run leaves in its output directory; the analysis
// (results.json, report.md, plots) is computed from these files alone, so
// `tandem bench --analyze DIR` reproduces it.
const (
	rawDir      = "raw"
	tracesDir   = "traces"
	envFile     = "raw/env.json"
	runsDir     = "raw/runs"
	recoveryRaw = "raw/recovery.json"
	harvestRaw  = "raw/harvest.json"
	pipelineRaw = "raw/pipeline.json"
	trafficRaw  = "raw/traffic.json" // the traffic part (traffic.go)
)

// Env describes the machine and the run's parameters.
type Env struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Tandem   string    `json:"tandem"`
	Go       string    `json:"go"`
	Kernel   string    `json:"kernel"`
	CPU      string    `json:"cpu"`
	CPUs     int       `json:"cpus"`
	MemTotal string    `json:"mem_total"`
	KVM      string    `json:"kvm"`
	LoadAvg  [2]string `json:"loadavg"` // at start and at end (1, 5, 15 min)
	Config   Config    `json:"config"`
	// Bandwidth is this machine's memory bandwidth; WriteBW is the DRAM
	// write bandwidth the write-latency model used (measured or given).
	Bandwidth Bandwidth `json:"bandwidth"`
	WriteBW   float64   `json:"write_model_Bps"`
	// LinkTCP is the TCP goodput measured on each shaped link, all at
	// once, before the runs (bytes/s).
	LinkTCP []float64 `json:"link_tcp_Bps"`
	// Loopback is loopback TCP bandwidth with 1, 2 and 4 streams (bytes/s).
	Loopback map[int]float64 `json:"loopback_Bps"`
	// LoopbackTLS is the same over the bench's encrypted connections (TLS
	// 1.3), when they are encrypted; Connections is their mode.
	LoopbackTLS map[int]float64 `json:"loopback_tls_Bps,omitempty"`
	Connections string          `json:"connections,omitempty"`
	// Guest: the dirty guest's vCPUs and dirty tracking in replicated runs.
	GuestVCPUs int      `json:"guest_vcpus"`
	Tracking   string   `json:"tracking"`
	Errors     []string `json:"errors,omitempty"`
}

// ProgressSample is the dirty guest's pages-written counter at a moment.
type ProgressSample struct {
	T     float64 `json:"t"` // seconds since the VM started
	Pages uint64  `json:"pages"`
}

// RawRun is one run of the dirty guest.
type RawRun struct {
	Spec RunSpec `json:"spec"`
	// Start is when the VM started; the measured window is
	// [WindowStart, WindowEnd], after the initial copy and the warm-up.
	Start       time.Time        `json:"start"`
	WindowStart time.Time        `json:"window_start"`
	WindowEnd   time.Time        `json:"window_end"`
	PagesStart  uint64           `json:"pages_start"`
	PagesEnd    uint64           `json:"pages_end"`
	Samples     []ProgressSample `json:"samples"`
	Trace       string           `json:"trace,omitempty"` // relative to the output directory
	Committed   uint64           `json:"committed"`       // last committed epoch
	Error       string           `json:"error,omitempty"`
}

// RawRecovery is one recovery of the leader from the replicas.
type RawRecovery struct {
	MemBytes uint64        `json:"mem_bytes"`
	Replicas int           `json:"replicas"`
	Rep      int           `json:"rep"`
	Took     time.Duration `json:"took_ns"`
	Epoch    uint64        `json:"epoch"`
	Verified bool          `json:"verified"` // the image equals the source's memory
	SyncTook time.Duration `json:"initial_copy_ns"`
	Error    string        `json:"error,omitempty"`
}

// RawHarvest is one harvest of the dirty pages of a paused VM.
type RawHarvest struct {
	Tracking string        `json:"tracking"`
	MemBytes uint64        `json:"mem_bytes"`
	Target   uint64        `json:"target_pages"` // the guest's working set
	Dirty    int           `json:"dirty_pages"`  // pages harvested
	Took     time.Duration `json:"took_ns"`
	Error    string        `json:"error,omitempty"`
}

// RawPipeline is one data-path microbenchmark: a synthetic dirty set sent
// epoch after epoch over loopback to replicas in this process.
type RawPipeline struct {
	Name     string        `json:"name"`
	Policy   string        `json:"policy"`
	Links    int           `json:"links"`
	MemBytes uint64        `json:"mem_bytes"`
	Dirty    uint64        `json:"dirty_pages"`
	Pattern  string        `json:"pattern"`
	Trace    string        `json:"trace"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	Error    string        `json:"error,omitempty"`
}

func writeJSON(dir, name string, v any) error {
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readJSON(dir, name string, v any) error {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
