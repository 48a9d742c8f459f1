package fcapi

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// PUT /ha and GET /ha are Tandem's own endpoints, not in Firecracker's
// API: the replication of the microVM, as `tandem run --ha` has it.
//
// PUT /ha, before InstanceStart only, replicates the microVM to be
// started: its body is an HAConfig, decoded as strictly as every other
// body, checked, and kept with the defaults filled in (each PUT replaces
// the previous one whole). The Machine gets it in Config.HA at Start.
//
// GET /ha answers an HAState: {"enabled": false} for a microVM without
// PUT /ha; before InstanceStart {"enabled": true, "config": ...}; after
// it the configuration and, from the Machine (HAReporter), the running
// replication's status inline: its generation, committed epoch, leader,
// links and last pause.

// HAConfig is the body of PUT /ha.
type HAConfig struct {
	// Replicas are the replication links, HOST:PORT each (a replica's
	// tandem replica --listen, or rdma://HOST:PORT for its
	// --rdma-listen): at least one; one may appear more than once.
	Replicas []string `json:"replicas"`
	// Leader is the node that receives the VM state and takes over,
	// HOST:PORT.
	Leader string `json:"leader"`
	// Policy is "fast" (each page on one link; the default) or "ft"
	// (every page on every link).
	Policy string `json:"policy,omitempty"`
	// Mode is "sync" (the VM paused until its epoch commits; the
	// default) or "async".
	Mode string `json:"mode,omitempty"`
	// EpochMs is how long the VM runs between two pauses, in
	// milliseconds: 1 to MaxEpochMs, 50 by default.
	EpochMs *int `json:"epoch_ms,omitempty"`
	// AuthKeyPath is the replication key file (tandem keygen FILE), the
	// same on every node: required.
	AuthKeyPath string `json:"auth_key_path"`
	// InsecurePlaintext authenticates the connections with the key but
	// leaves them unencrypted.
	InsecurePlaintext bool `json:"insecure_plaintext,omitempty"`
	// Coordinator, when set, decides who is primary through etcd:
	// etcd://HOST:PORT[,HOST:PORT...].
	Coordinator string `json:"coordinator,omitempty"`
}

// Defaults and bounds of an HAConfig.
const (
	DefaultEpochMs = 50
	MaxEpochMs     = 60_000
)

// HAState is GET /ha's answer. Replication is there once the microVM
// runs.
type HAState struct {
	Enabled bool      `json:"enabled"`
	Config  *HAConfig `json:"config,omitempty"`
	*HAReplication
}

// HAReplication is the running replication's status.
type HAReplication struct {
	// Generation is the primary's term; CommittedEpoch the newest epoch
	// every replica needed holds, whose output has left.
	Generation     uint64 `json:"generation"`
	CommittedEpoch uint64 `json:"committed_epoch"`
	// Leader is the state holder in service (the configured leader
	// while none is); LeaderConnected is false while none is, and the
	// output is held.
	Leader          string `json:"leader"`
	LeaderConnected bool   `json:"leader_connected"`
	Policy          string `json:"policy"`
	// Protected is false while nothing can commit (no leader or no
	// live link); Degraded says a link or a state holder is down.
	Protected bool     `json:"protected"`
	Degraded  bool     `json:"degraded"`
	Links     []HALink `json:"links"`
	LastPause *HAPause `json:"last_pause,omitempty"`
}

// HALink is one replication link's state.
type HALink struct {
	Addr  string `json:"addr"`
	Alive bool   `json:"alive"`
	// Joining is a link catching up (it does not count for commits yet).
	Joining bool `json:"joining"`
	// AckedEpoch is the newest epoch the link acknowledged; LagEpochs
	// how far behind the newest epoch the primary has (the last pause's,
	// or the committed one if newer) that is, 0 for a link in step.
	AckedEpoch    uint64  `json:"acked_epoch"`
	LagEpochs     uint64  `json:"lag_epochs"`
	RateBytesPerS float64 `json:"rate_bytes_per_s"`
	// BytesLastEpoch is what the last pause sent on the link.
	BytesLastEpoch uint64 `json:"bytes_last_epoch"`
}

// HAPause is the newest epoch's pause: how many pages it found dirty and
// how long each step took, in microseconds.
type HAPause struct {
	Epoch      uint64  `json:"epoch"`
	DirtyPages int     `json:"dirty_pages"`
	HarvestUs  float64 `json:"harvest_us"`
	GroupUs    float64 `json:"group_us"`
	TransferUs float64 `json:"transfer_us"`
	AckUs      float64 `json:"ack_us"`
	TotalUs    float64 `json:"total_us"`
}

// HAReporter is a Machine that reports its replication: GET /ha of a
// started, replicated microVM is refused for a Machine that is not one.
type HAReporter interface {
	// HAStatus is the running microVM's replication now, or
	// ErrNotReplicating while it runs without (before its initial copy
	// has reached the replicas, or after replication stopped).
	HAStatus() (HAReplication, error)
}

// ErrNotReplicating is an HAReporter's answer for a microVM configured for
// HA whose replication is not running now: GET /ha shows it unprotected.
var ErrNotReplicating = errors.New("the microVM runs without replication now")

func (s *Server) ha(r *http.Request) (int, any, error) {
	switch r.Method {
	case http.MethodPut:
		return s.putHA(r)
	case http.MethodGet:
		return s.getHA()
	}
	return 0, nil, badRequest("no such endpoint: %s /ha (GET or PUT)", r.Method)
}

func (s *Server) putHA(r *http.Request) (int, any, error) {
	var h HAConfig
	if err := decode(r, &h); err != nil {
		return 0, nil, err
	}
	if err := h.check(); err != nil {
		return 0, nil, err
	}
	return s.configure(func(c *Config) error { c.HA = &h; return nil })
}

// check validates h and fills in its defaults.
func (h *HAConfig) check() error {
	if len(h.Replicas) == 0 {
		return badRequest("replicas is required: at least one HOST:PORT")
	}
	for i, a := range h.Replicas {
		if err := checkNodeAddr(a, true); err != nil {
			return badRequest("replicas[%d] %q: %v", i, a, err)
		}
	}
	if h.Leader == "" {
		return badRequest("leader is required: HOST:PORT")
	}
	if err := checkNodeAddr(h.Leader, false); err != nil {
		return badRequest("leader %q: %v", h.Leader, err)
	}
	switch h.Policy {
	case "":
		h.Policy = "fast"
	case "fast", "ft":
	default:
		return badRequest("policy %q: want fast or ft", h.Policy)
	}
	switch h.Mode {
	case "":
		h.Mode = "sync"
	case "sync", "async":
	default:
		return badRequest("mode %q: want sync or async", h.Mode)
	}
	if h.EpochMs == nil {
		ms := DefaultEpochMs
		h.EpochMs = &ms
	}
	if *h.EpochMs < 1 || *h.EpochMs > MaxEpochMs {
		return badRequest("epoch_ms %d: want 1 to %d", *h.EpochMs, MaxEpochMs)
	}
	if h.AuthKeyPath == "" {
		return badRequest("auth_key_path is required: the replication key file every node shares (tandem keygen FILE); insecure_plaintext only leaves the connections unencrypted")
	}
	if h.Coordinator != "" && !strings.HasPrefix(h.Coordinator, "etcd://") {
		return badRequest("coordinator %q: want etcd://HOST:PORT[,HOST:PORT...]", h.Coordinator)
	}
	return nil
}

// checkNodeAddr checks a node's address: HOST:PORT, or for a link
// (rdma allowed) rdma://HOST:PORT with an optional ?query.
func checkNodeAddr(addr string, rdmaAllowed bool) error {
	hostPort := addr
	if rest, ok := strings.CutPrefix(addr, "rdma://"); ok {
		if !rdmaAllowed {
			return fmt.Errorf("want HOST:PORT (the leader's state connection is TCP)")
		}
		hostPort, _, _ = strings.Cut(rest, "?")
	}
	if strings.ContainsAny(hostPort, ", \t\n/") {
		return fmt.Errorf("want HOST:PORT, one address")
	}
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return fmt.Errorf("want HOST:PORT: %v", err)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want 1 to 65535", port)
	}
	if host == "" {
		return fmt.Errorf("no host: want HOST:PORT")
	}
	return nil
}

func (s *Server) getHA() (int, any, error) {
	s.mu.Lock()
	cfg, state := s.cfg.HA, s.state
	s.mu.Unlock()
	switch {
	case cfg == nil:
		return http.StatusOK, HAState{}, nil
	case state == NotStarted:
		return http.StatusOK, HAState{Enabled: true, Config: cfg}, nil
	}
	rep, ok := s.Machine.(HAReporter)
	if !ok {
		return 0, nil, badRequest("this microVM does not report its replication")
	}
	st, err := rep.HAStatus()
	switch {
	case errors.Is(err, ErrNotReplicating):
		st = HAReplication{Policy: cfg.Policy}
	case err != nil:
		return 0, nil, fmt.Errorf("reading the replication status: %w", err)
	}
	if st.Links == nil {
		st.Links = []HALink{}
	}
	return http.StatusOK, HAState{Enabled: true, Config: cfg, HAReplication: &st}, nil
}
