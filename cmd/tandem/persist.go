package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/bench"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/disk"
	"github.com/tandemvm/tandem/replicate/persist"
	"github.com/tandemvm/tandem/vmm"
)

// persistRun is tandem run --persist or --resume: the directory the VM's
// epochs become durable in, the interval between them, and the first
// epoch's number.
type persistRun struct {
	dir    *persist.Dir
	epoch  time.Duration
	first  uint64
	epochs *persist.Epochs // feeds dir the epochs: replicate.LocalPersister
}

// newPersistRun persists into d from epoch first on; full says the first
// record must hold every page that is not zero (a new directory: the
// guest's image was loaded without the dirty log seeing it). A Linux
// guest's disk writes come out of its state into the records.
func newPersistRun(d *persist.Dir, epoch time.Duration, first uint64, full bool) (*persistRun, error) {
	pr := &persistRun{dir: d, epoch: epoch, first: first,
		epochs: &persist.Epochs{Dir: d, Full: full, Split: diskWritesApart(d.VM().Disks)}}
	if err := tearInjection(pr); err != nil {
		return nil, err
	}
	return pr, nil
}

// diskWritesApart takes a Linux guest's disk writes (disks of the given
// sizes) out of its state, which keeps an empty disk section.
func diskWritesApart(disks []int64) func(state []byte) ([]byte, []*disk.Writes, error) {
	return func(state []byte) ([]byte, []*disk.Writes, error) {
		st, linux, err := splitHAState(state)
		if err != nil || !linux {
			return state, nil, err
		}
		writes, err := st.diskWrites(disks)
		if err != nil {
			return nil, nil, err
		}
		return withoutDisks(state, st), writes, nil
	}
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
	logPersistentMemory(d, spec.log)
	pr, err := newPersistRun(d, epoch, 1, true)
	if err != nil {
		d.Close()
	}
	return pr, err
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
	logPersistentMemory(d, spec.log)
	pr, err := newPersistRun(d, epoch, rec.Epoch+1, false)
	if err != nil {
		d.Close()
	}
	return pr, err
}

// logPersistentMemory says when the directory's log is on persistent
// memory, written through a mapping with cache-line flushes.
func logPersistentMemory(d *persist.Dir, log *slog.Logger) {
	if mode := d.DAX(); mode != "" {
		log.Info("the persisted VM's log is on persistent memory", "mode", mode)
	}
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

// runPersisted runs vm and, every epoch, pauses it, stages its dirty
// pages, disk writes and state, resumes it, and makes the epoch durable
// before its output (held in gates: the serial console's and, for a
// Linux guest, its devices') is released: the output commit of
// replication, with the directory as the only replica
// (replicate.Local). It returns when the VM stops, its last epoch durable
// and its output out; a failure to persist stops the VM with its output
// held.
func runPersisted(ctx context.Context, vm *vmm.VM, spec *vmSpec, gates replicate.Gates) (vmm.Result, error) {
	pr, log := spec.persist, spec.log
	src, err := haSource(vm, spec.virtio, spec.haDevs)
	if err != nil {
		return vmm.Result{}, err
	}
	local, err := replicate.NewLocal(replicate.LocalConfig{Epoch: pr.epoch, Persist: pr.epochs, FirstEpoch: pr.first, Log: log,
		Summary: func(line string) { log.Info(line) }}, src, gates)
	if err != nil {
		return vmm.Result{}, err
	}
	vmDone := startRun(ctx, vm)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runErr := make(chan error, 1)
	go func() { runErr <- local.Run(lctx) }()
	var r vmResult
	select {
	case r = <-vmDone:
		cancel()
		err = <-runErr
	case err = <-runErr:
		if err != nil && !errors.Is(err, vmm.ErrNotRunning) {
			log.Error("persisting failed; stopping the VM with its output held", "err", err)
			vm.Stop()
			<-vmDone
			return vmm.Result{}, fmt.Errorf("--persist: %w", err)
		}
		r = <-vmDone
	}
	switch {
	case err != nil && !errors.Is(err, vmm.ErrNotRunning):
		log.Error("persisting failed as the VM stopped; its last output stays held", "err", err)
	case r.err == nil:
		// What the guest wrote last leaves once it is durable.
		if err := local.Finish(); err != nil {
			log.Error("the last epoch could not be made durable; its output is dropped", "err", err)
		}
	}
	return r.res, r.err
}

// withoutDisks is a Linux guest's state (split as st) with an empty disk
// section: the record carries the writes itself.
func withoutDisks(state []byte, st haState) []byte {
	at := len(state) - len(st.vm) - len(st.disks) - 4 // the section's length
	out := make([]byte, 0, at+4+len(st.vm))
	out = append(out, state[:at]...)
	return append(append(out, 0, 0, 0, 0), st.vm...)
}
