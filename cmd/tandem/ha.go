package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/coord"
	"github.com/tandemvm/tandem/vmm"
)

// haOutputLimit bounds the guest output held while epochs commit; beyond it
// the vCPU writing output waits.
const haOutputLimit = 16 << 20

// haFlags are the replication flags of tandem run.
type haFlags struct {
	enabled    *bool
	replicas   *string
	leader     *string
	epoch      *time.Duration
	policy     *string
	mode       *string
	sgMax      *int
	reduce     *string
	pageCache  *string
	trace      *string
	record     *string
	speculate  *float64
	active     *string
	ackTimeout *time.Duration
	heartbeat  *time.Duration
	auth       *authFlags
	coord      *coordFlags
	// coordinator is the connection to --coordinator, held for the run
	// (close ends the term).
	coordinator coord.Coordinator
	// recorder writes --record-epochs, to recordFile.
	recorder   *replicate.EpochRecorder
	recordFile *os.File
	// vmID, when set, is the VM's id (a resumed persisted VM keeps its
	// own); otherwise configure makes one.
	vmID uint64
}

// newVMID returns a random VM id (never 0, which is reserved).
func newVMID() uint64 {
	var id [8]byte
	rand.Read(id[:])
	return binary.LittleEndian.Uint64(id[:]) | 1
}

// close ends the primary's term at the coordinator, if any, and finishes
// the epoch recording.
func (h *haFlags) close() {
	if h.coordinator != nil {
		h.coordinator.Close()
	}
	if h.recorder != nil {
		if err := h.recorder.Flush(); err != nil {
			slog.Error("--record-epochs", "err", err)
		}
		h.recordFile.Close()
	}
}

func addHAFlags(fs *flag.FlagSet) *haFlags {
	return &haFlags{
		enabled:    fs.Bool("ha", false, "replicate the VM to --replicas, with --leader ready to take over"),
		replicas:   fs.String("replicas", "", "replica addresses, one per link (HOST:PORT[,HOST:PORT...], or rdma://HOST:PORT for an RDMA link to a replica's --rdma-listen); a replica may appear more than once"),
		leader:     fs.String("leader", "", "the leader's address (HOST:PORT): it receives the VM state and takes over"),
		epoch:      fs.Duration("epoch", 50*time.Millisecond, "replication epoch: how long the VM runs between two pauses"),
		policy:     fs.String("policy", "fast", "link policy: fast (pages split across links) or ft (every page on every link)"),
		mode:       fs.String("mode", "sync", "sync (VM paused until the epoch commits) or async (stop-copy-resume baseline)"),
		sgMax:      fs.Int("sg-max", 0, "group each epoch's dirty pages into at most this many regions (seed 003: 32); 0 groups by cost for the transport"),
		reduce:     fs.String("reduce", replicate.DefaultReduction.String(), "traffic reduction on TCP links: none, all, or a list of zero (zero pages as a record), delta (changed bytes against --page-cache), similar (a page equal to a cached one as a reference), zstd"),
		pageCache:  fs.String("page-cache", "64M", "with --reduce delta or similar: primary memory kept for copies of committed pages (least recently sent dropped first)"),
		trace:      fs.String("trace", "", "write one JSON line per epoch to this file"),
		speculate:  fs.Float64("speculate", 0, "send pages ahead this far through each epoch's interval while the VM runs (0 off, e.g. 0.5; sync mode, TCP links): the pause then moves only what was written again"),
		active:     fs.String("active-backup", "off", "active backup: off, auto (on while it pays) or on: links to nodes started with --shadow send only the pages the node's own running copy of the VM wrote differently (needs --policy ft, --mode sync, no --speculate)"),
		record:     fs.String("record-epochs", "", "record every epoch's dirty pages and their contents to this file, for tandem bench --traffic --recording (large: the dirty bytes of the whole run; lengthens the pauses)"),
		ackTimeout: fs.Duration("ack-timeout", 2*time.Second, "a link that does not acknowledge an epoch within this time (plus transfer time) has failed"),
		heartbeat:  fs.Duration("heartbeat", 100*time.Millisecond, "interval of heartbeats to the leader"),
		auth:       addAuthFlags(fs),
		coord:      addCoordFlags(fs),
	}
}

// configure validates the flags and returns the primary's configuration,
// or nil when --ha is off.
func (h *haFlags) configure(set map[string]bool, guest string, vcpus int, log *slog.Logger) (*replicate.PrimaryConfig, error) {
	if !*h.enabled {
		for _, name := range []string{"replicas", "leader", "epoch", "policy", "mode", "sg-max", "reduce", "page-cache", "trace", "record-epochs", "speculate", "active-backup", "ack-timeout", "heartbeat", "auth-key", "insecure-plaintext", "coordinator", "coordinator-ttl"} {
			if set[name] {
				return nil, usagef("--%s needs --ha", name)
			}
		}
		return nil, nil
	}
	cfg := &replicate.PrimaryConfig{
		Leader: *h.leader, Guest: guest, VCPUs: vcpus, Epoch: *h.epoch, SGMax: *h.sgMax,
		AckTimeout: *h.ackTimeout, Heartbeat: *h.heartbeat, Log: log,
		Summary: func(line string) { log.Info(line) },
	}
	for _, a := range strings.Split(*h.replicas, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.Links = append(cfg.Links, a)
		}
	}
	switch {
	case len(cfg.Links) == 0:
		return nil, usagef("--ha needs --replicas")
	case cfg.Leader == "":
		return nil, usagef("--ha needs --leader")
	case *h.epoch < time.Millisecond:
		return nil, usagef("--epoch %v: want at least 1ms", *h.epoch)
	case *h.sgMax < 0:
		return nil, usagef("--sg-max %d: want 0 (by cost) or more", *h.sgMax)
	case *h.speculate < 0 || *h.speculate >= 1:
		return nil, usagef("--speculate %v: want 0 (off) or a fraction of the interval below 1", *h.speculate)
	case *h.speculate > 0 && *h.mode != "sync":
		return nil, usagef("--speculate needs --mode sync: async already sends while the VM runs")
	case *h.speculate > 0 && *h.policy != "ft":
		return nil, usagef("--speculate needs --policy ft: with fast, a page sent ahead on one link and again on another would leave two copies of one epoch")
	}
	cfg.Speculate = *h.speculate
	active, err := replicate.ParseActiveBackup(*h.active)
	if err != nil {
		return nil, usagef("--active-backup: %v", err)
	}
	cfg.ActiveBackup = active
	if active != replicate.ActiveBackupOff && (*h.policy != "ft" || *h.mode != "sync" || *h.speculate > 0) {
		return nil, usagef("--active-backup needs --policy ft and --mode sync, without --speculate: the node running the copy must be sent every page of an epoch at its pause")
	}
	cache, err := vmm.ParseMemSize(*h.pageCache)
	if err != nil {
		return nil, usagef("--page-cache: %v", err)
	}
	red, err := replicate.ParseReduction(*h.reduce, int64(cache))
	if err != nil {
		return nil, usagef("--reduce: %v", err)
	}
	cfg.Reduce = &red
	if cfg.Auth, err = h.auth.credentials("--ha"); err != nil {
		return nil, err
	}
	if cfg.Policy, err = replicate.ParsePolicy(*h.policy); err != nil {
		return nil, usagef("--policy: %v", err)
	}
	if cfg.Mode, err = replicate.ParseMode(*h.mode); err != nil {
		return nil, usagef("--mode: %v", err)
	}
	cfg.VMID = h.vmID
	if cfg.VMID == 0 {
		cfg.VMID = newVMID()
	}
	if *h.trace != "" {
		f, err := os.Create(*h.trace)
		if err != nil {
			return nil, usagef("--trace: %v", err)
		}
		cfg.Trace = replicate.NewTraceWriter(f) // closed at exit
	}
	if *h.record != "" {
		f, err := os.Create(*h.record)
		if err != nil {
			return nil, usagef("--record-epochs: %v", err)
		}
		h.recordFile, h.recorder = f, replicate.NewEpochRecorder(f)
		cfg.Record = h.recorder
	}
	if err := faultInjection(cfg); err != nil {
		return nil, err
	}
	// With a coordinator the term comes first: its generation is etcd's
	// revision, and no output leaves unless it still holds.
	c, err := h.coord.open(context.Background(), log)
	if err != nil {
		return nil, err
	}
	if c != nil {
		h.coordinator = c
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		term, err := c.Acquire(ctx, coordVM(cfg.VMID), coordNode(""))
		if err != nil {
			return nil, fmt.Errorf("--coordinator: becoming the primary of VM %s: %w", coordVM(cfg.VMID), err)
		}
		leadWithTerm(cfg, term)
		log.Info("primary term granted by the coordinator", "vm", coordVM(cfg.VMID), "generation", term.Generation())
	}
	return cfg, nil
}

// faultEnv makes the primary kill itself in the middle of an epoch, for
// failover tests: "EPOCH:BYTES" sends SIGKILL once the epochs from EPOCH on
// have put BYTES bytes on the wire (over all links), which happens while an
// epoch is being sent; "after:PATH:BYTES" counts the bytes from the moment
// the file PATH exists (a test that waits for its guest to be busy first).
const faultEnv = "TANDEM_FAULT_KILL_AT"

func faultInjection(cfg *replicate.PrimaryConfig) error {
	spec := os.Getenv(faultEnv)
	if spec == "" {
		return nil
	}
	armed := func() bool { return true }
	var epoch uint64
	var bytes int64
	var err1, err2 error
	if rest, ok := strings.CutPrefix(spec, "after:"); ok {
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 {
			return fmt.Errorf("%s=%q: want after:PATH:BYTES", faultEnv, spec)
		}
		path := rest[:i]
		var seen atomic.Bool
		armed = func() bool {
			if !seen.Load() {
				if _, err := os.Stat(path); err == nil {
					seen.Store(true)
				}
			}
			return seen.Load()
		}
		bytes, err2 = strconv.ParseInt(rest[i+1:], 10, 64)
	} else {
		e, b, ok := strings.Cut(spec, ":")
		if !ok {
			return fmt.Errorf("%s=%q: want EPOCH:BYTES or after:PATH:BYTES", faultEnv, spec)
		}
		epoch, err1 = strconv.ParseUint(e, 10, 64)
		bytes, err2 = strconv.ParseInt(b, 10, 64)
	}
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%s=%q: want EPOCH:BYTES or after:PATH:BYTES", faultEnv, spec)
	}
	var sent atomic.Int64
	cfg.FaultChunk = 4096
	cfg.FaultProgress = func(ep uint64, n int) {
		if ep >= epoch && armed() && sent.Add(int64(n)) >= bytes {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
	return nil
}

// haDevices is what a replicated VM's devices give replication, each added
// as the device is opened: the output gates beyond COM1's (which runVM
// makes), each holding what the guest writes until the epoch that wrote it
// commits, and the disks.
type haDevices struct {
	gates []replicate.Gate
	// disks record what each epoch writes to the guest's disks, which
	// then travels in the epoch's state; images are the same disks for
	// the leader's initial copy.
	disks  []*virtio.TrackedBackend
	images []replicate.DiskImage
}

// trackDisk records the writes to a disk of a replicated guest.
func (o *haDevices) trackDisk(be virtio.BlockBackend, path string) virtio.BlockBackend {
	t := virtio.NewTrackedBackend(be)
	o.disks = append(o.disks, t)
	o.images = append(o.images, replicate.DiskImage{Name: path, Size: be.Size(), R: t})
	return t
}

// gateConsole puts the guest-to-host direction of a console behind a gate.
func (o *haDevices) gateConsole(host devices.Console) devices.Console {
	g := replicate.NewOutputGate(host, haOutputLimit)
	o.gates = append(o.gates, g)
	return gatedConsole{Console: host, gate: g}
}

// gateNet puts the transmit side of a network interface behind a gate.
func (o *haDevices) gateNet(be virtio.NetBackend) virtio.NetBackend {
	g := newGatedNet(be, haOutputLimit)
	o.gates = append(o.gates, g.gate)
	return g
}

// announceInterfaces tells the L2 network where the MACs of a VM's
// network interfaces are now, after a takeover (see virtio.Net.Announce).
func announceInterfaces(vm *vmm.VM, log *slog.Logger) {
	for _, d := range vm.VirtioDevices() {
		if n, ok := d.Device().(*virtio.Net); ok {
			if err := n.Announce(3); err != nil {
				log.Warn("announcing the recovered guest's interface", "err", err)
			}
		}
	}
}

// gatedConsole is a console whose writes go through an output gate; reads
// (host input to the guest) do not wait.
type gatedConsole struct {
	devices.Console
	gate *replicate.OutputGate
}

func (c gatedConsole) Write(p []byte) (int, error) { return c.gate.Write(p) }

func (c gatedConsole) Close() error {
	c.gate.Close()
	return c.Console.Close()
}

// haSource is the replication source of a VM: a Linux guest's carries its
// virtio devices in its state (hastate.go).
func haSource(vm *vmm.VM, virtioDevs []vmm.VirtioConfig, ha *haDevices) (replicate.Source, error) {
	src, err := vmm.NewReplicationSource(vm)
	if err != nil {
		return nil, err
	}
	if len(virtioDevs) == 0 {
		return src, nil
	}
	return newLinuxSource(src, virtioDevs, ha.disks)
}

// startPrimary connects the replication links before the guest runs, so an
// unreachable replica stops the start instead of leaving the VM unprotected.
func startPrimary(ctx context.Context, src replicate.Source, gate replicate.Gate, cfg replicate.PrimaryConfig) (*replicate.Primary, error) {
	p, err := replicate.NewPrimary(cfg, src, gate)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.Connect(cctx); err != nil {
		return nil, err
	}
	cfg.Log.Info("replicating", "links", len(cfg.Links), "leader", cfg.Leader, "policy", cfg.Policy, "mode", cfg.Mode, "epoch", cfg.Epoch, "connections", cfg.Auth.Mode())
	return p, nil
}

// releaseUnprotected lets the output of a VM that runs without
// replication out of its gates, an epoch interval at a time, until ctx
// ends.
func releaseUnprotected(ctx context.Context, gates replicate.Gate, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for e := uint64(1); ; e++ {
		gates.Seal(e)
		gates.Release(e)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// vmResult is what VM.Run returned.
type vmResult struct {
	res vmm.Result
	err error
}

// startRun runs vm in a goroutine of its own; the channel gets what Run
// returned (and may be given it back by whoever reads it).
func startRun(ctx context.Context, vm *vmm.VM) chan vmResult {
	done := make(chan vmResult, 1)
	go func() {
		res, err := vm.Run(ctx)
		done <- vmResult{res, err}
	}()
	return done
}

// runReplicated runs the VM and its replication together. If replication
// fails the VM stops: its output stays held, so nothing escapes that the
// leader's copy could contradict. A lost leader is not a failure: the VM
// runs on with its output held until a leader is back (replicate.Primary).
func runReplicated(ctx context.Context, vm *vmm.VM, p *replicate.Primary, log *slog.Logger) (vmm.Result, error) {
	repErr := make(chan error, 1)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { repErr <- p.Run(rctx) }()
	vmDone := startRun(ctx, vm)
	select {
	case r := <-vmDone:
		// The VM ended here, on purpose or by its own fault: tell the
		// leader there is nothing to take over, and let the output out.
		p.Finish()
		if err := <-repErr; err != nil && !errors.Is(err, context.Canceled) {
			log.Warn("replication did not end cleanly; the leader may take over", "err", err)
		}
		return r.res, r.err
	case err := <-repErr:
		if err == nil || errors.Is(err, context.Canceled) {
			r := <-vmDone
			return r.res, r.err
		}
		if errors.Is(err, replicate.ErrFenced) {
			log.Error("this primary was deposed: a newer primary term (a takeover) runs this VM elsewhere; stopping this copy with its output held", "err", err)
		} else {
			log.Error("replication failed; stopping the VM with its output held", "err", err)
		}
		vm.Stop()
		<-vmDone
		return vmm.Result{}, err
	}
}
