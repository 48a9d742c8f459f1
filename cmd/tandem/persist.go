package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/bench"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/disk"
	"github.com/tandemvm/tandem/replicate/pagecodec"
	"github.com/tandemvm/tandem/replicate/persist"
	"github.com/tandemvm/tandem/vmm"
)

// persistRun is tandem run --persist or --resume: the directory the VM's
// epochs become durable in, and the interval between them.
type persistRun struct {
	dir   *persist.Dir
	epoch time.Duration
	// first is the first epoch's number; full, that its record must hold
	// every page that is not zero (a new directory: the guest's image was
	// loaded without the dirty log seeing it).
	first uint64
	full  bool
	// linux is a Linux guest's source: its state carries its devices,
	// and its disk writes go into the records (nil: a flat guest).
	linux *linuxSource
}

// tearEnv makes a persisted VM pull its own plug in the middle of an
// epoch's record, for tests: "EPOCH:BYTES" writes only the first BYTES
// bytes of the record of the first epoch from EPOCH on (counted from the
// VM's start or resume), then SIGKILLs the process.
const tearEnv = "TANDEM_PERSIST_TEAR"

func tearInjection(pr *persistRun) error {
	spec := os.Getenv(tearEnv)
	if spec == "" {
		return nil
	}
	e, b, ok := strings.Cut(spec, ":")
	epoch, err1 := strconv.ParseUint(e, 10, 64)
	bytes, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || bytes < 0 {
		return fmt.Errorf("%s=%q: want EPOCH:BYTES", tearEnv, spec)
	}
	pr.dir.Tear = &persist.Tear{Epoch: pr.first + epoch, Bytes: bytes, Then: func() { syscall.Kill(os.Getpid(), syscall.SIGKILL) }}
	return nil
}

// slowWrites makes the directory's writes factor times slower than
// DRAM's (--persist-write-factor), by the bench's model: this machine's
// DRAM write bandwidth is measured once, and each write of n bytes waits
// (factor-1) times the time DRAM takes for them.
func (pr *persistRun) slowWrites(factor float64, log *slog.Logger) {
	if factor <= 1 {
		return
	}
	bw := bench.MeasureBandwidth(64<<20, 3)
	pr.dir.WriteDelay = bench.WriteModel{DRAMWrite: bw.Write}.Delay(factor)
	log.Info("emulating slow persistent memory", "write_factor", factor, "technology", bench.TechName(factor), "dram_write_GBps", fmt.Sprintf("%.1f", bw.Write/1e9))
}

// checkpointBytes is the log size past which the loop checkpoints: the
// memory file is synchronised and the log starts again.
func checkpointBytes(memBytes uint64) int64 { return max(64<<20, int64(memBytes/2)) }

// specDisks are the paths of the disks spec's guest has, in its order.
func specDisks(spec *vmSpec) []string {
	var out []string
	for _, c := range spec.virtio {
		if c.Type == "blk" {
			out = append(out, c.Path)
		}
	}
	return out
}

// createPersisted makes --persist DIR for a new VM, with a copy of each of
// its disks as they are before it runs.
func createPersisted(dir string, spec *vmSpec, epoch time.Duration, id uint64) (*persistRun, error) {
	vm := persist.VM{ID: id, MemBytes: spec.memBytes, VCPUs: spec.vcpus, Guest: spec.guestName}
	var disks []*os.File
	defer func() {
		for _, f := range disks {
			f.Close()
		}
	}()
	for _, path := range specDisks(spec) {
		f, err := os.Open(path)
		if err != nil {
			return nil, usagef("--disk: %v", err)
		}
		disks = append(disks, f)
		fi, err := f.Stat()
		if err != nil {
			return nil, usagef("--disk: %v", err)
		}
		if fi.Size() == 0 {
			return nil, usagef("--disk %s is empty", path)
		}
		vm.Disks = append(vm.Disks, fi.Size())
	}
	if len(disks) > 0 {
		spec.log.Info("copying the disks into the persisted VM's directory", "dir", dir, "disks", len(disks))
	}
	d, err := persist.Create(dir, vm, disks...)
	if errors.Is(err, persist.ErrExists) {
		return nil, usagef("--persist %s: %v; continue that VM with --resume %s, or give an empty directory", dir, err, dir)
	} else if err != nil {
		return nil, err
	}
	pr := &persistRun{dir: d, epoch: epoch, first: 1, full: true}
	if err := tearInjection(pr); err != nil {
		d.Close()
		return nil, err
	}
	return pr, nil
}

// resumePersisted opens --resume DIR and sets spec up to continue its VM
// from the newest durable epoch.
// Linux devices given on the command line (--disk, --net, --channel)
// replace the host side of the persisted guest's, as with --restore.
func resumePersisted(dir string, spec *vmSpec, epoch time.Duration, linux *linuxFlags, set map[string]bool) (*persistRun, error) {
	d, rec, err := persist.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("--resume %s: %w", dir, err)
	}
	fail := func(err error) (*persistRun, error) {
		d.Close()
		return nil, err
	}
	st, isLinux, err := splitHAState(rec.State)
	if err != nil {
		return fail(fmt.Errorf("--resume %s: the state of epoch %d: %w", dir, rec.Epoch, err))
	}
	spec.memBytes, spec.vcpus, spec.guestName = rec.VM.MemBytes, rec.VM.VCPUs, rec.VM.Guest
	addDevices := func(*vmm.VM) error { return nil }
	if isLinux {
		devs, err := devicesFromMeta(st.virtio)
		if err != nil {
			return fail(fmt.Errorf("--resume %s: the state of epoch %d: %w", dir, rec.Epoch, err))
		}
		if err := devs.override(linux, set); err != nil {
			return fail(err)
		}
		if len(devs.disks) != len(rec.Disks) {
			return fail(fmt.Errorf("--resume %s: %w: the guest has %d disks, the directory %d", dir, persist.ErrCorrupt, len(devs.disks), len(rec.Disks)))
		}
		// The guest runs on its disks as of the epoch: each is made the
		// directory's copy again (whatever it was written after that).
		for i, ds := range devs.disks {
			if fi, err := os.Stat(ds.path); ds.readOnly && err == nil && fi.Size() == rec.VM.Disks[i] {
				continue // never written: the guest cannot
			}
			if err := restoreDisk(ds.path, rec.Disks[i], rec.VM.Disks[i]); err != nil {
				return fail(fmt.Errorf("--resume %s: disk %d: %w", dir, i, err))
			}
			spec.log.Info("disk restored to the durable epoch", "disk", ds.path, "epoch", rec.Epoch)
		}
		spec.virtio = devs.meta()
		spec.haDevs = &haDevices{}
		addDevices = func(vm *vmm.VM) error { return devs.add(vm, spec) }
		// The guest may be on another host than before: tell the L2
		// network where its MACs are now.
		spec.ready = func(vm *vmm.VM) { announceInterfaces(vm, spec.log) }
	} else if linux.used(set) {
		return fail(usagef("--resume %s holds a flat guest: it has no --disk, --net or --channel", dir))
	}
	spec.load = func(vm *vmm.VM) error {
		// The devices come first: the state includes theirs.
		if err := addDevices(vm); err != nil {
			return err
		}
		f, err := os.Open(rec.Memory)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.ReadAt(vm.Memory().Bytes(), 0); err != nil {
			return fmt.Errorf("--resume %s: memory: %w", dir, err)
		}
		var s vmm.State
		if err := s.UnmarshalBinary(st.vm); err != nil {
			return fmt.Errorf("--resume %s: the state of epoch %d: %w", dir, rec.Epoch, err)
		}
		return vm.RestoreState(&s)
	}
	spec.log.Info("resuming a persisted VM", "dir", dir, "epoch", rec.Epoch, "guest", rec.VM.Guest, "mem_MiB", rec.VM.MemBytes>>20,
		"records", rec.Records, "torn_bytes", rec.TornBytes)
	pr := &persistRun{dir: d, epoch: epoch, first: rec.Epoch + 1}
	if err := tearInjection(pr); err != nil {
		d.Close()
		return nil, err
	}
	return pr, nil
}

// restoreDisk makes the disk at path (created if missing) the persisted
// copy at from, of size bytes.
func restoreDisk(path, from string, size int64) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	err = persist.CopyFile(dst, src, size)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// nonZeroPages appends the pages of mem that are not all zero.
func nonZeroPages(dst []uint64, mem []byte) []uint64 {
	for p := 0; p < len(mem)/persist.PageSize; p++ {
		if !pagecodec.IsZero(mem[p*persist.PageSize : (p+1)*persist.PageSize]) {
			dst = append(dst, uint64(p))
		}
	}
	return dst
}

// stage stages epoch e of the still VM in the directory: its dirty pages
// (every page that is not zero, for a new directory), its disk writes and
// its state, with its output sealed in gates. It returns the pages, in
// pages' storage.
func (pr *persistRun) stage(src *vmm.ReplicationSource, gates replicate.Gates, e uint64, pages []uint64) ([]uint64, error) {
	pages, err := src.HarvestDirty(pages[:0])
	if err != nil {
		return pages, err
	}
	if pr.full {
		pages = nonZeroPages(pages[:0], src.Memory())
	}
	var state []byte
	var writes []*disk.Writes
	if pr.linux != nil {
		state, writes, err = pr.linux.captureApart()
	} else {
		state, err = src.CaptureState()
	}
	if err != nil {
		return pages, err
	}
	gates.Seal(e)
	if err := pr.dir.Stage(e, pages, src.Memory(), state, writes...); err != nil {
		return pages, err
	}
	pr.full = false // the record holds them; a failed Sync ends the run
	return pages, nil
}

// runPersisted runs vm and, every epoch, pauses it, stages its dirty
// pages, disk writes and state, resumes it, and makes the epoch durable
// before its output (held in gates: the serial console's and, for a
// Linux guest, its devices') is released: the output commit of
// replication, with the directory as the only replica. It returns when
// the VM stops; a failure to persist stops the VM with its output held.
func runPersisted(ctx context.Context, vm *vmm.VM, spec *vmSpec, gates replicate.Gates) (vmm.Result, error) {
	pr, log := spec.persist, spec.log
	src, err := vmm.NewReplicationSource(vm)
	if err != nil {
		return vmm.Result{}, err
	}
	if len(spec.virtio) > 0 {
		if pr.linux, err = newLinuxSource(src, spec.virtio, spec.haDevs.disks); err != nil {
			return vmm.Result{}, err
		}
	}
	vmDone := startRun(ctx, vm)
	var pages []uint64
	e := pr.first
	tick := time.NewTicker(pr.epoch)
	defer tick.Stop()
	var sum persistSummary
	summary := time.NewTicker(time.Second)
	defer summary.Stop()
	persistOne := func() error {
		gates.BeginPause()
		defer gates.EndPause()
		start := time.Now()
		if err := src.Pause(); err != nil {
			return err
		}
		var err error
		pages, err = pr.stage(src, gates, e, pages)
		src.Resume()
		if err != nil {
			return err
		}
		paused := time.Since(start)
		log0 := pr.dir.LogBytes()
		if err := pr.dir.Sync(); err != nil {
			return err
		}
		sum.add(len(pages), paused, time.Since(start), pr.dir.LogBytes()-log0)
		if err := gates.Release(e); err != nil {
			log.Warn("guest output", "err", err)
		}
		e++
		if pr.dir.LogBytes() > checkpointBytes(uint64(len(src.Memory()))) {
			return pr.dir.Checkpoint()
		}
		return nil
	}
	for {
		select {
		case r := <-vmDone:
			// What the guest wrote last leaves once it is durable.
			if r.err == nil {
				if err := persistFinal(pr, src, gates, e); err != nil {
					log.Error("the last epoch could not be made durable; its output is dropped", "err", err)
				}
			}
			return r.res, r.err
		case <-summary.C:
			if line := sum.line(); line != "" {
				log.Info(line)
			}
		case <-tick.C:
			if err := persistOne(); err != nil {
				if errors.Is(err, vmm.ErrNotRunning) {
					continue // the VM is stopping: vmDone follows
				}
				log.Error("persisting failed; stopping the VM with its output held", "err", err)
				vm.Stop()
				<-vmDone
				return vmm.Result{}, fmt.Errorf("--persist: %w", err)
			}
		}
	}
}

// persistFinal makes the stopped VM's last epoch durable and releases its
// output.
func persistFinal(pr *persistRun, src *vmm.ReplicationSource, gates replicate.Gates, e uint64) error {
	if _, err := pr.stage(src, gates, e, nil); err != nil {
		return err
	}
	if err := pr.dir.Sync(); err != nil {
		return err
	}
	return gates.Release(e)
}

// haPersister is a replicated VM's local persistence (--ha --persist, a
// replicate.LocalPersister): the primary stages each epoch with it while
// the VM is paused and waits for it before the epoch commits. A Linux
// guest's disk writes come out of the state into the record.
type haPersister struct {
	pr    *persistRun
	pages []uint64
}

func newHAPersister(pr *persistRun) *haPersister { return &haPersister{pr: pr} }

// Stage implements replicate.LocalPersister.
func (h *haPersister) Stage(e uint64, pages []uint64, mem []byte, state []byte) error {
	if h.pr.full {
		h.pages = nonZeroPages(h.pages[:0], mem)
		pages = h.pages
	}
	st, linux, err := splitHAState(state)
	if err != nil {
		return err
	}
	var writes []*disk.Writes
	if disks := h.pr.dir.VM().Disks; linux && len(disks) > 0 {
		if writes, err = st.diskWrites(disks); err != nil {
			return err
		}
		state = withoutDisks(state, st)
	}
	if err := h.pr.dir.Stage(e, pages, mem, state, writes...); err != nil {
		return err
	}
	h.pr.full = false
	return nil
}

// Sync implements replicate.LocalPersister, and checkpoints when the log
// has grown.
func (h *haPersister) Sync() error {
	if err := h.pr.dir.Sync(); err != nil {
		return err
	}
	if h.pr.dir.LogBytes() > checkpointBytes(h.pr.dir.VM().MemBytes) {
		return h.pr.dir.Checkpoint()
	}
	return nil
}

// withoutDisks is a Linux guest's state (split as st) with an empty disk
// section: the record carries the writes itself.
func withoutDisks(state []byte, st haState) []byte {
	at := len(state) - len(st.vm) - len(st.disks) - 4 // the section's length
	out := make([]byte, 0, at+4+len(st.vm))
	out = append(out, state[:at]...)
	return append(append(out, 0, 0, 0, 0), st.vm...)
}

// persistSummary sums up a second of persisted epochs in a log line: the
// dirty pages, the bytes the log took, the VM's pause, and the time until
// the epoch was durable (its output released), from the pause's start.
type persistSummary struct {
	epochs, pages   int
	bytes           int64
	paused, durable []time.Duration
}

func (s *persistSummary) add(pages int, paused, durable time.Duration, bytes int64) {
	s.epochs++
	s.pages += pages
	s.bytes += bytes
	s.paused = append(s.paused, paused)
	s.durable = append(s.durable, durable)
}

func (s *persistSummary) line() string {
	if s.epochs == 0 {
		return ""
	}
	pct := func(d []time.Duration, p int) time.Duration {
		slices.Sort(d)
		return d[min(len(d)-1, max(0, (p*len(d)+99)/100-1))].Round(10 * time.Microsecond)
	}
	line := fmt.Sprintf("persisted epochs %d | dirty %d pg/epoch | log %.1f MB/s | pause p50 %v p99 %v | durable p50 %v p99 %v",
		s.epochs, s.pages/s.epochs, float64(s.bytes)/1e6, pct(s.paused, 50), pct(s.paused, 99), pct(s.durable, 50), pct(s.durable, 99))
	*s = persistSummary{paused: s.paused[:0], durable: s.durable[:0]}
	return line
}
