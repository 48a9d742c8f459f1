package bench

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/images"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/persist"
	"github.com/tandemvm/tandem/vmm"
)

// minWindowEpochs is the fewest epochs a run's measured window should
// hold; see runGuestErr.
const minWindowEpochs = 4

// guestVCPUs is the dirty guest's vCPU count: one, so that the other core
// of a 2-core machine is left to replication and the replicas.
const guestVCPUs = 1

// replicaSet is replicas (one per link, in the lab's namespaces, or on
// loopback) and a leader on loopback, served until stop.
type replicaSet struct {
	replicas []*replicate.Replica
	addrs    []string
	leader   *replicate.Replica
	leadAddr string
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// startReplicas starts n replicas whose writes are delayed by delay (nil:
// none), listening on the lab's links, or on loopback when lab is nil.
func (b *bencher) startReplicas(ctx context.Context, lab *Lab, n int, delay func(int)) (*replicaSet, error) {
	ctx, cancel := context.WithCancel(ctx)
	rs := &replicaSet{cancel: cancel}
	serve := func(r *replicate.Replica, ln net.Listener) { rs.serve(ctx, b, r, ln) }
	for i := range n {
		var ln net.Listener
		var err error
		if lab != nil {
			ln, err = lab.Listen(i)
		} else {
			ln, err = net.Listen("tcp", "127.0.0.1:0")
		}
		if err != nil {
			rs.stop()
			return nil, err
		}
		r := replicate.NewReplica(replicate.ReplicaConfig{Auth: b.auth, Log: b.log, Delay: delay})
		rs.replicas = append(rs.replicas, r)
		rs.addrs = append(rs.addrs, ln.Addr().String())
		serve(r, ln)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		rs.stop()
		return nil, err
	}
	rs.leader = replicate.NewReplica(replicate.ReplicaConfig{Auth: b.auth, Log: b.log, Leader: true, HeartbeatTimeout: time.Hour})
	rs.leadAddr = ln.Addr().String()
	serve(rs.leader, ln)
	return rs, nil
}

// startActiveReplica starts one replica that is also the leader and runs
// a shadow of the guest (active backup): its link listens on the lab's
// first link, its state connection on loopback.
func (b *bencher) startActiveReplica(ctx context.Context, lab *Lab) (*replicaSet, error) {
	ctx, cancel := context.WithCancel(ctx)
	rs := &replicaSet{cancel: cancel}
	r := replicate.NewReplica(replicate.ReplicaConfig{Auth: b.auth, Log: b.log, Leader: true, HeartbeatTimeout: time.Hour,
		Shadow: func(memBytes uint64, vcpus int, _ []byte) (replicate.Shadow, error) {
			return vmm.NewShadow(vmm.ShadowConfig{MemBytes: memBytes, VCPUs: vcpus, Log: b.log})
		}})
	rs.replicas, rs.leader = []*replicate.Replica{r}, r
	for _, listen := range []func() (net.Listener, error){
		func() (net.Listener, error) { return lab.Listen(0) },
		func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
	} {
		ln, err := listen()
		if err != nil {
			rs.stop()
			return nil, err
		}
		if rs.addrs == nil {
			rs.addrs = []string{ln.Addr().String()}
		} else {
			rs.leadAddr = ln.Addr().String()
		}
		rs.serve(ctx, b, r, ln)
	}
	return rs, nil
}

// serve serves r on ln until ctx is done or stop.
func (rs *replicaSet) serve(ctx context.Context, b *bencher, r *replicate.Replica, ln net.Listener) {
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		if err := r.Serve(ctx, ln); err != nil {
			b.log.Warn("replica", "err", err)
		}
	}()
}

func (rs *replicaSet) stop() {
	rs.cancel()
	rs.wg.Wait()
}

func newVMID() uint64 {
	var id [8]byte
	rand.Read(id[:])
	return binary.LittleEndian.Uint64(id[:]) | 1
}

// pagesWritten reads the dirty guest's counter of pages written (vCPU 0's
// status slot) from guest memory, atomically: the guest updates it while
// it runs.
func pagesWritten(mem []byte) (uint64, bool) {
	slot := mem[boot.StatusPageGPA:]
	magic := atomic.LoadUint64((*uint64)(unsafe.Pointer(&slot[images.DirtyStatusMagicOffset])))
	if magic != images.DirtyStatusMagic {
		return 0, false
	}
	return atomic.LoadUint64((*uint64)(unsafe.Pointer(&slot[images.DirtyStatusPagesOffset]))), true
}

// runGuest runs the dirty guest once as spec says and records its
// progress and, when replicated, the primary's epoch trace.
func (b *bencher) runGuest(ctx context.Context, spec RunSpec) *RawRun {
	raw := &RawRun{Spec: spec}
	if err := b.runGuestErr(ctx, spec, raw); err != nil {
		raw.Error = err.Error()
	}
	return raw
}

// seedPages is how the matrix, the recovery runs and the data path send
// pages: raw, as seed 003 did; the traffic part compares the reductions.
var seedPages = replicate.Reduction{}

// dirtyVM makes a VM of mem bytes with the dirty guest loaded, writing
// pattern at rate pages/s (0: flat out), tracking dirty pages as tracking
// says. Close it.
func (b *bencher) dirtyVM(mem uint64, pattern string, rate uint64, tracking vmm.DirtyTracking) (*vmm.VM, error) {
	params := images.DefaultDirtyParams(mem)
	pat, err := images.ParsePattern(pattern)
	if err != nil {
		return nil, err
	}
	params.Pattern, params.Rate, params.Ring = pat, rate, b.cfg.Ring
	if err := params.Validate(mem, guestVCPUs); err != nil {
		return nil, err
	}
	vm, err := vmm.New(vmm.Config{Memory: vmm.MemoryConfig{Bytes: mem}, VCPUs: guestVCPUs, Dirty: tracking, Logger: b.log})
	if err != nil {
		return nil, fmt.Errorf("the VM: %w", err)
	}
	guest, _ := images.Lookup("dirty")
	if err := vm.LoadFlat(guest.Image, guest.Mode, params.Args()); err != nil {
		vm.Close()
		return nil, fmt.Errorf("loading the dirty guest: %w", err)
	}
	return vm, nil
}

// protection is what protects a guest run: a replicate.Primary, or a
// replicate.Local (persistence alone).
type protection interface {
	Run(ctx context.Context) error
	Committed() uint64
}

// guestRun is a running VM and, when it is protected, its protection.
type guestRun struct {
	vm   *vmm.VM
	prot protection
	// vmDone and repDone get what the VM's and the protection's runs
	// returned; a watcher that takes one puts it back for stop.
	vmDone, repDone chan error
	stopVM, stopRep context.CancelFunc
}

// startGuest runs vm and, if not nil, prot.
func startGuest(ctx context.Context, vm *vmm.VM, prot protection) *guestRun {
	g := &guestRun{vm: vm, prot: prot, vmDone: make(chan error, 1), repDone: make(chan error, 1)}
	var vctx, rctx context.Context
	vctx, g.stopVM = context.WithCancel(ctx)
	rctx, g.stopRep = context.WithCancel(ctx)
	go func() {
		res, err := vm.Run(vctx)
		if err == nil && res.Kind != vmm.ExitStopped {
			err = fmt.Errorf("the guest stopped: %v (status %d)", res.Kind, res.Code)
		}
		g.vmDone <- err
	}()
	if prot != nil {
		go func() { g.repDone <- prot.Run(rctx) }()
	}
	return g
}

// stop stops the protection, then the VM, and returns what either failed
// with and the last committed epoch.
func (g *guestRun) stop() (committed uint64, err error) {
	var errs []error
	if g.prot != nil {
		g.stopRep()
		if err := <-g.repDone; err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("protection: %w", err))
		}
		committed = g.prot.Committed()
	}
	g.stopVM()
	g.vm.Stop()
	if err := <-g.vmDone; err != nil && !errors.Is(err, context.Canceled) {
		errs = append(errs, fmt.Errorf("VM: %w", err))
	}
	return committed, errors.Join(errs...)
}

// persistRoot is where persisted runs keep their directories: a RAM file
// system, so that the emulated technology's delay is what the writes cost.
func persistRoot() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() && unix.Access("/dev/shm", unix.W_OK) == nil {
		return "/dev/shm"
	}
	return os.TempDir()
}

// startPersist makes a directory for a persisted run of vm, its writes
// slowed to the factor's technology once its first record, all of the
// loaded guest, is durable (as the replicas' initial copy is not part of
// the measure); remove it with the function returned.
func (b *bencher) startPersist(vm *vmm.VM, factor float64) (replicate.LocalPersister, func(), error) {
	dir, err := os.MkdirTemp(persistRoot(), "tandem-bench-persist-")
	if err != nil {
		return nil, nil, err
	}
	d, err := persist.Create(filepath.Join(dir, "vm"), persist.VM{ID: newVMID(), MemBytes: vm.Memory().Size(), VCPUs: guestVCPUs, Guest: "dirty"})
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	p := &slowAfterFirst{Epochs: &persist.Epochs{Dir: d, Full: true}, delay: b.model.Delay(factor)}
	return p, func() { d.Close(); os.RemoveAll(dir) }, nil
}

// slowAfterFirst is a persister whose directory writes at DRAM speed until
// its first record is durable, then with delay.
type slowAfterFirst struct {
	*persist.Epochs
	delay func(n int)
}

func (s *slowAfterFirst) Sync() error {
	err := s.Epochs.Sync()
	if err == nil && s.Dir.WriteDelay == nil {
		s.Dir.WriteDelay = s.delay
	}
	return err
}

func (b *bencher) runGuestErr(ctx context.Context, spec RunSpec, raw *RawRun) error {
	setup := spec.SetupOf()
	tracking := vmm.DirtyOff
	if setup.Protected() {
		tracking = vmm.DirtyBitmap // what tandem run --ha and --persist use
	}
	// The console: the Linux workload reports its progress there, behind
	// the output gate when the run is protected.
	console := &workProgress{}
	var gate *replicate.OutputGate
	var serial io.Writer = console
	if setup.Protected() {
		gate = replicate.NewOutputGate(console, 16<<20)
		defer gate.Close()
		serial = gate
	}
	var vm *vmm.VM
	var err error
	if spec.Pattern == linuxPattern {
		vm, err = b.linuxVM(ctx, spec.MemBytes, tracking, serial)
	} else {
		vm, err = b.dirtyVM(spec.MemBytes, spec.Pattern, b.cfg.Rate, tracking)
	}
	if err != nil {
		return err
	}
	defer vm.Close()
	mem := vm.Memory().Bytes()
	progress := func() (uint64, bool) { return pagesWritten(mem) }
	if spec.Pattern == linuxPattern {
		progress = console.progress
	}

	var prot protection
	if setup.Protected() {
		raw.Trace = filepath.Join(tracesDir, spec.ID+".jsonl")
		traceFile, err := os.Create(filepath.Join(b.cfg.Out, raw.Trace))
		if err != nil {
			return err
		}
		defer traceFile.Close()
		trace := replicate.NewTraceWriter(traceFile)
		src, err := vmm.NewReplicationSource(vm)
		if err != nil {
			return err
		}
		var epochs replicate.LocalPersister
		if setup.Persist {
			var remove func()
			if epochs, remove, err = b.startPersist(vm, spec.Factor); err != nil {
				return err
			}
			defer remove()
		}
		if setup.Links == 0 {
			if prot, err = replicate.NewLocal(replicate.LocalConfig{Epoch: spec.Epoch, Persist: epochs, Trace: trace, Log: b.log}, src, gate); err != nil {
				return err
			}
		} else {
			primary, stop, err := b.startPrimary(ctx, spec, src, gate, trace, epochs)
			if err != nil {
				return err
			}
			defer stop()
			prot = primary
		}
	}
	raw.Start = time.Now()
	run := startGuest(ctx, vm, prot)
	vmDone, repDone := run.vmDone, run.repDone
	stopAll := func() error {
		var err error
		raw.Committed, err = run.stop()
		return err
	}

	sample := func() uint64 {
		n, _ := progress()
		raw.Samples = append(raw.Samples, ProgressSample{T: time.Since(raw.Start).Seconds(), Pages: n})
		return n
	}
	// The clock starts once the guest runs and the initial copy of memory
	// is committed; then the warm-up, then the measured window.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(30 * time.Second)
	var windowStart, windowEnd time.Time
	phase := 0 // 0 starting, 1 warming up, 2 measuring
	var committed0 uint64
	lastSample := time.Time{}
	for {
		select {
		case <-ctx.Done():
			stopAll()
			return ctx.Err()
		case err := <-vmDone:
			vmDone <- err
			return errors.Join(fmt.Errorf("the VM stopped early: %v", err), stopAll())
		case err := <-repDone:
			repDone <- err
			return errors.Join(fmt.Errorf("replication stopped early: %v", err), stopAll())
		case now := <-tick.C:
			if now.Sub(lastSample) >= 250*time.Millisecond {
				sample()
				lastSample = now
			}
			switch phase {
			case 0:
				_, started := progress()
				if started && (prot == nil || prot.Committed() >= 1) {
					phase, windowStart = 1, now.Add(b.cfg.Warmup)
				} else if now.After(deadline) {
					return errors.Join(errors.New("the guest or the initial copy did not start within 30s"), stopAll())
				}
			case 1:
				if !now.Before(windowStart) {
					phase, windowEnd = 2, now.Add(b.cfg.Duration)
					raw.WindowStart, raw.PagesStart = now, sample()
					if prot != nil {
						committed0 = prot.Committed()
					}
				}
			case 2:
				// Long epochs (async on a slow link stretches them to the
				// transfer time) extend the window, up to 3 times, until a
				// few epochs fall in it.
				short := prot != nil && prot.Committed() < committed0+minWindowEpochs &&
					now.Before(raw.WindowStart.Add(3*b.cfg.Duration))
				if !now.Before(windowEnd) && !short {
					raw.WindowEnd, raw.PagesEnd = now, sample()
					return stopAll()
				}
			}
		}
	}
}

// startPrimary starts the replicas of spec's setup and connects a primary
// of src to them; epochs, when set, makes every epoch durable on this
// host too. stop stops the replicas.
func (b *bencher) startPrimary(ctx context.Context, spec RunSpec, src replicate.Source, gate replicate.Gate, trace *replicate.TraceWriter,
	epochs replicate.LocalPersister) (_ *replicate.Primary, stop func(), err error) {
	setup := spec.SetupOf()
	rs, err := b.startReplicas(ctx, b.lab, setup.Links, b.model.Delay(spec.Factor))
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			rs.stop()
		}
	}()
	mode, _ := replicate.ParseMode(setup.Mode)
	policy, _ := replicate.ParsePolicy(setup.Policy)
	pcfg := replicate.PrimaryConfig{
		Auth:  b.auth,
		Links: rs.addrs, Leader: rs.leadAddr, VMID: newVMID(), Guest: "dirty", VCPUs: guestVCPUs,
		Epoch: spec.Epoch, Policy: policy, Mode: mode, SGMax: b.cfg.SGMax, Reduce: &seedPages,
		Trace: trace, Log: b.log,
		AckTimeout: 10 * time.Second,
	}
	pcfg.Persist = epochs
	if mode == replicate.ModeAsync {
		pcfg.StagingDelay = b.model.Delay(spec.Factor)
	}
	primary, err := replicate.NewPrimary(pcfg, src, gate)
	if err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = primary.Connect(cctx)
	cancel()
	if err != nil {
		return nil, nil, err
	}
	return primary, rs.stop, nil
}
