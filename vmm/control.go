package vmm

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
)

// The control socket speaks one JSON object per line in each direction: a
// ControlRequest, answered by one ControlResponse. It is how `tandem
// snapshot` reaches a running `tandem run`.

// ControlRequest is one command to a running VM.
type ControlRequest struct {
	// Op is "status", "pause", "resume", "snapshot", "stop",
	// "add-replica" or "update-drive".
	Op string `json:"op"`
	// Replica is the replica to add (add-replica).
	Replica string `json:"replica,omitempty"`
	// Path is the snapshot file to write (snapshot), or the new backing
	// file of the drive (update-drive).
	Path string `json:"path,omitempty"`
	// Drive is the drive to give a new backing file (update-drive): its
	// index among the VM's virtio-blk devices, in the order they were
	// added (0 is /dev/vda).
	Drive *int `json:"drive,omitempty"`
	// Stop stops the VM after the snapshot instead of resuming it, so the
	// snapshot is the VM's last state (snapshot).
	Stop bool `json:"stop,omitempty"`
	// MemPath, when set, puts guest memory in a file of its own
	// (VM.WriteSnapshotSplit) and Path holds the rest (snapshot).
	MemPath string `json:"mem_path,omitempty"`
	// Diff writes only the pages written since the previous snapshot to
	// MemPath (snapshot; needs Controller.DiffSnapshots).
	Diff bool `json:"diff,omitempty"`
	// Config is kept in the snapshot's metadata as is (SnapshotMeta.Config).
	Config json.RawMessage `json:"config,omitempty"`
}

// ControlResponse answers a ControlRequest.
type ControlResponse struct {
	OK     bool           `json:"ok"`
	Error  string         `json:"error,omitempty"`
	Status *ControlStatus `json:"status,omitempty"`
}

// ControlStatus describes the VM.
type ControlStatus struct {
	MemBytes uint64 `json:"mem_bytes"`
	VCPUs    int    `json:"vcpus"`
	Paused   bool   `json:"paused"`
	// Replication is what Controller.Replication reports, as is.
	Replication json.RawMessage `json:"replication,omitempty"`
}

// Controller serves control requests for one VM.
type Controller struct {
	VM *VM
	// Meta is written into snapshots (guest name, Tandem version).
	Meta SnapshotMeta
	Log  *slog.Logger
	// Replication, when set, describes the VM's protection for status
	// (package vmm does not interpret it).
	Replication func() json.RawMessage
	// AddReplica, when set, gives the VM's replication another replica
	// (add-replica; package vmm does not interpret the address).
	AddReplica func(addr string) error
	// UpdateDrive, when set, gives drive index (Drive) the backing file
	// at path while the VM runs (update-drive; package vmm interprets
	// neither).
	UpdateDrive func(index int, path string) error
	// DiffSnapshots says the VM's dirty log is the snapshots' own (dirty
	// tracking on, and no replication or persistence harvesting it):
	// every snapshot with a memory file harvests it, so that a Diff
	// snapshot holds the pages written since the previous one.
	DiffSnapshots bool

	mu     sync.Mutex
	pauses int // pauses taken through the control socket and not yet resumed
}

// Serve accepts connections on ln until ctx is done or ln fails.
func (c *Controller) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vmm: control: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.serveConn(ctx, conn)
		}()
	}
}

const maxControlLine = 64 << 10

func (c *Controller) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 4096), maxControlLine)
	enc := json.NewEncoder(conn)
	for sc.Scan() {
		var req ControlRequest
		resp := ControlResponse{OK: true}
		var after func()
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			resp = ControlResponse{Error: "malformed request: " + err.Error()}
		} else if st, then, err := c.Handle(req); err != nil {
			resp = ControlResponse{Error: err.Error()}
		} else {
			resp.Status, after = st, then
		}
		err := enc.Encode(resp)
		if after != nil {
			// Only now: stopping the VM ends the run, and with it the
			// context that closes this connection, before the answer.
			after()
		}
		if err != nil {
			return
		}
	}
	if err := sc.Err(); err != nil && c.Log != nil {
		c.Log.Warn("control connection", "peer", conn.RemoteAddr(), "err", err)
	}
}

// Handle carries out one request. A request that stops the VM (stop, or a
// snapshot with Stop, which leaves the VM paused) returns the stopping as
// after, for the caller to run once it has answered: stopping ends the run
// that serves the answer.
func (c *Controller) Handle(req ControlRequest) (_ *ControlStatus, after func(), err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch req.Op {
	case "status":
	case "pause":
		if err := c.VM.Pause(); err != nil {
			return nil, nil, err
		}
		c.pauses++
	case "resume":
		if c.pauses == 0 {
			return nil, nil, errors.New("not paused through the control socket")
		}
		c.pauses--
		c.VM.Resume()
	case "snapshot":
		if req.Path == "" {
			return nil, nil, errors.New("snapshot needs a path")
		}
		err := c.VM.Pause()
		if err != nil && !errors.Is(err, ErrNotRunning) {
			return nil, nil, err
		}
		paused := err == nil
		meta := c.Meta
		meta.Created = time.Now().UTC()
		meta.Config = req.Config
		err = c.snapshot(req, meta)
		switch {
		case paused && (err != nil || !req.Stop):
			c.VM.Resume()
		case paused:
			// Stopped before it runs again: nothing happens after the
			// snapshot that the snapshot does not hold.
			after = func() { c.VM.Stop(); c.VM.Resume() }
		case req.Stop:
			after = c.VM.Stop
		}
		if err != nil {
			return nil, nil, err
		}
	case "stop":
		after = c.VM.Stop
	case "add-replica":
		switch {
		case c.AddReplica == nil:
			return nil, nil, errors.New("the VM is not replicated (tandem run --ha)")
		case req.Replica == "":
			return nil, nil, errors.New("add-replica needs a replica address")
		}
		if err := c.AddReplica(req.Replica); err != nil {
			return nil, nil, err
		}
	case "update-drive":
		switch {
		case c.UpdateDrive == nil:
			return nil, nil, errors.New("this VM's drives cannot be updated")
		case req.Drive == nil || *req.Drive < 0:
			return nil, nil, errors.New("update-drive needs a drive index, 0 or more")
		case req.Path == "":
			return nil, nil, errors.New("update-drive needs the drive's new path")
		}
		if err := c.UpdateDrive(*req.Drive, req.Path); err != nil {
			return nil, nil, err
		}
	default:
		return nil, nil, fmt.Errorf("unknown op %q (want status, pause, resume, snapshot, stop, add-replica or update-drive)", req.Op)
	}
	st := &ControlStatus{MemBytes: c.VM.mem.Size(), VCPUs: len(c.VM.vcpus), Paused: c.VM.Paused()}
	if c.Replication != nil {
		st.Replication = c.Replication()
	}
	return st, after, nil
}

// snapshot writes the snapshot req asks for of the paused VM.
func (c *Controller) snapshot(req ControlRequest, meta SnapshotMeta) error {
	switch {
	case req.MemPath == "" && req.Diff:
		return errors.New("a Diff snapshot needs a memory file")
	case req.MemPath == "":
		return c.VM.WriteSnapshot(req.Path, meta)
	case req.Diff && !c.DiffSnapshots:
		return errors.New("a Diff snapshot needs the VM's dirty log, and it is off or taken by replication or persistence")
	}
	var dirty *DirtySet
	if c.DiffSnapshots {
		// Harvested for a Full snapshot too: the next Diff starts here.
		// Should the write fail, the pages are dirty again so that no
		// later Diff misses them.
		set := NewDirtySet(c.VM.mem.Size() / PageSize)
		if err := c.VM.HarvestDirty(set); err != nil {
			return err
		}
		if req.Diff {
			dirty = set
		}
		if err := c.VM.WriteSnapshotSplit(req.Path, req.MemPath, dirty, meta); err != nil {
			c.VM.mem.redirty(set)
			return err
		}
		return nil
	}
	return c.VM.WriteSnapshotSplit(req.Path, req.MemPath, nil, meta)
}

// ControlCall sends one request to the control socket at addr ("unix:PATH",
// "tcp:HOST:PORT", or a bare Unix socket path) and returns the response.
func ControlCall(ctx context.Context, addr string, req ControlRequest) (*ControlStatus, error) {
	network, address := "unix", addr
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		address = rest
	} else if rest, ok := strings.CutPrefix(addr, "tcp:"); ok {
		network, address = "tcp", rest
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("vmm: control %s: %w", addr, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("vmm: control %s: %w", addr, err)
	}
	var resp ControlResponse
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
		return nil, fmt.Errorf("vmm: control %s: no answer: %w", addr, err)
	}
	if !resp.OK {
		return nil, fmt.Errorf("vmm: control %s: %s", addr, resp.Error)
	}
	return resp.Status, nil
}
