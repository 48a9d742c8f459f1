package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/cmd/tandem/internal/metrics"
	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/images"
	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

func cmdRun(ctx context.Context, args []string) error {
	fs := newFlagSet("run", "(--guest NAME|PATH | --kernel PATH | --restore FILE) [flags]")
	guest := fs.String("guest", "", "built-in guest ("+strings.Join(images.Names(), ", ")+") or the path of a flat image")
	entry := fs.String("entry", "long64", "CPU mode a flat image given by path is entered in: long64 or real16")
	guestArgs := fs.String("args", "", "guest arguments as key=value[,key=value...] (e.g. for dirty: pattern=scattered,pages=4096)")
	memFlag := fs.String("mem", "64M", "guest RAM (e.g. 64M, 1G)")
	vcpus := fs.Int("vcpus", 1, "number of vCPUs")
	serial := fs.String("serial", "stdio", "COM1: stdio, unix:PATH, tcp:ADDR, file:PATH or none")
	memFile := fs.String("mem-file", "", "back guest RAM with this file (MAP_SHARED) instead of anonymous memory")
	dirty := fs.String("dirty", "off", "dirty page tracking: off, bitmap or ring (--ha: bitmap unless set)")
	control := fs.String("control", "", "serve the control socket (for tandem snapshot) at unix:PATH or tcp:ADDR")
	restore := fs.String("restore", "", "restore the VM from this snapshot file instead of booting a guest")
	restoreMem := fs.String("restore-mem", "", "with --restore: the snapshot's memory file, for a snapshot that keeps guest memory apart (the Firecracker API's)")
	paused := fs.Bool("paused", false, "start paused, until a resume on the control socket (needs --control)")
	logf := addLogFlags(fs) // --log-level, --log-format, --log-path (main.go)
	metricsAddr := fs.String("metrics-addr", "", metricsFlagUsage)
	persistDir := fs.String("persist", "", "make every epoch durable in this directory (new or empty) before its output leaves, disk writes included: the VM survives a power cut with nothing acknowledged lost (continue it with --resume); with --ha, every epoch is durable here as well as replicated before its output leaves, so the whole cluster may lose power")
	resumeDir := fs.String("resume", "", "continue the VM persisted in this directory from its newest durable epoch, persisting on into it; its disks are restored to that epoch (--disk, --net and --channel replace their host side)")
	persistEpoch := fs.Duration("persist-epoch", 50*time.Millisecond, "with --persist or --resume: how long the VM runs between two durable epochs")
	writeFactor := fs.Float64("persist-write-factor", 1, "with --persist or --resume: emulate persistent memory whose writes are this many times slower than DRAM's (seed 003 Table I: 2 ST-MRAM, 20 3D XPoint, 1000 RRAM), each write to the directory delayed to match; put the directory on a RAM file system (/dev/shm) to measure the technology alone")
	ha := addHAFlags(fs)
	linux := addLinuxFlags(fs) // linux.go
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(*logf)
	if err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *metricsAddr != "" {
		if err := serveMetrics(ctx, *metricsAddr, log); err != nil {
			return err
		}
	}

	spec := vmSpec{serial: *serial, control: *control, memFile: *memFile, log: log, paused: *paused}
	switch {
	case *paused && *control == "":
		return usagef("--paused needs --control: a resume on the control socket is what starts the VM")
	case *restoreMem != "" && *restore == "":
		return usagef("--restore-mem needs --restore")
	}
	if spec.dirty, err = vmm.ParseDirtyTracking(*dirty); err != nil {
		return usagef("--dirty: %v", err)
	}
	if *persistDir != "" || *resumeDir != "" {
		switch {
		case *persistDir != "" && *resumeDir != "":
			return usagef("--persist and --resume exclude each other: --resume persists on into its directory")
		case *resumeDir != "" && (*guest != "" || *restore != "" || set["mem"] || set["vcpus"] || set["args"] || slices.ContainsFunc([]string{"kernel", "initrd", "cmdline", "kernel-entry", "rng"}, func(f string) bool { return set[f] })):
			return usagef("--resume %s holds its guest: leave --guest, --restore, --kernel, --mem, --vcpus and --args out", *resumeDir)
		case set["mem-file"]:
			return usagef("--persist and --resume keep guest RAM themselves: leave --mem-file out")
		case *persistEpoch < time.Millisecond:
			return usagef("--persist-epoch %v: want at least 1ms", *persistEpoch)
		case *writeFactor < 1 || *writeFactor > 1e6:
			return usagef("--persist-write-factor %v: want 1 (DRAM, no delay) or more", *writeFactor)
		case set["dirty"] && *dirty == "off":
			return usagef("--persist needs dirty page tracking: --dirty bitmap or ring")
		}
		if spec.dirty == vmm.DirtyOff {
			spec.dirty = vmm.DirtyBitmap
		}
	} else if set["persist-epoch"] || set["persist-write-factor"] {
		return usagef("--persist-epoch and --persist-write-factor need --persist or --resume")
	}
	switch {
	case *resumeDir != "":
		if spec.persist, err = resumePersisted(*resumeDir, &spec, *persistEpoch, linux, set); err != nil {
			return err
		}
		defer spec.persist.dir.Close()
		spec.persist.slowWrites(*writeFactor, log)
		ha.vmID = spec.persist.dir.VM().ID // one VM, replicated and persisted
	case *restore != "" && *guest != "":
		return usagef("--guest and --restore exclude each other: a snapshot already holds its guest")
	case *restore != "":
		for _, name := range []string{"entry", "args", "kernel", "initrd", "cmdline", "kernel-entry", "rng"} {
			if set[name] {
				return usagef("--%s does not apply to --restore: the snapshot holds the guest and its devices", name)
			}
		}
		snap, err := vmm.OpenSnapshot(*restore)
		if err != nil {
			return err
		}
		defer snap.Close()
		switch {
		case snap.Meta.MemoryFile != nil && *restoreMem == "":
			return usagef("--restore %s keeps guest memory in a file of its own: give it with --restore-mem", *restore)
		case snap.Meta.MemoryFile == nil && *restoreMem != "":
			return usagef("--restore %s holds guest memory itself: leave --restore-mem out", *restore)
		}
		snap.MemFile = *restoreMem
		devs, err := devicesFromMeta(snap.Meta.Virtio)
		if err != nil {
			return fmt.Errorf("--restore %s: %w", *restore, err)
		}
		if len(snap.Meta.Virtio) == 0 && (set["disk"] || set["net"] || set["channel"]) {
			return usagef("--disk, --net and --channel do not apply to a snapshot without virtio devices")
		}
		if err := devs.override(linux, set); err != nil {
			return err
		}
		if len(snap.Meta.Virtio) > 0 {
			// The devices come first: the snapshot's state includes theirs.
			spec.virtio = devs.meta()
			spec.load = func(vm *vmm.VM) error { return devs.add(vm, &spec) }
		}
		if set["mem"] {
			if m, err := vmm.ParseMemSize(*memFlag); err != nil || m != snap.Meta.MemBytes {
				return usagef("--mem %s disagrees with the snapshot's %d MiB; leave --mem out", *memFlag, snap.Meta.MemBytes>>20)
			}
		}
		if set["vcpus"] && *vcpus != snap.Meta.VCPUs {
			return usagef("--vcpus %d disagrees with the snapshot's %d vCPUs; leave --vcpus out", *vcpus, snap.Meta.VCPUs)
		}
		spec.memBytes, spec.vcpus, spec.snapshot, spec.guestName = snap.Meta.MemBytes, snap.Meta.VCPUs, snap, snap.Meta.Guest
	case linux.used(set):
		if err := linux.configure(&spec, set, *memFlag, *vcpus); err != nil {
			return err
		}
	case *guest != "":
		if spec.memBytes, err = vmm.ParseMemSize(*memFlag); err != nil {
			return usagef("--mem: %v", err)
		}
		if *vcpus < 1 || *vcpus > boot.MaxFlatVCPUs {
			return usagef("--vcpus %d: want 1 to %d", *vcpus, boot.MaxFlatVCPUs)
		}
		spec.vcpus = *vcpus
		if spec.guest, err = resolveGuest(*guest, *entry, set["entry"]); err != nil {
			return err
		}
		spec.guestName = spec.guest.Name
		if spec.guest.Args != nil {
			if spec.args, err = spec.guest.Args(*guestArgs, spec.memBytes, spec.vcpus); err != nil {
				return usagef("--args: %v", err)
			}
		} else if *guestArgs != "" {
			return usagef("--args: guest %s takes no arguments", spec.guest.Name)
		}
	default:
		return usagef("say what to run: --guest NAME|PATH, --kernel PATH or --restore FILE")
	}
	spec.ha, err = ha.configure(set, spec.guestName, spec.vcpus, log)
	if ha.coordinator != nil {
		spec.joins = &joinWatch{c: ha.coordinator}
	}
	defer ha.close()
	if err != nil {
		return err
	}
	if *persistDir != "" {
		id := newVMID()
		if spec.ha != nil {
			id = spec.ha.VMID // one VM, replicated and persisted
		}
		if spec.persist, err = createPersisted(*persistDir, &spec, *persistEpoch, id); err != nil {
			return err
		}
		defer spec.persist.dir.Close()
		spec.persist.slowWrites(*writeFactor, log)
	}
	if spec.persist != nil && spec.ha != nil {
		// Each epoch is durable here too before it commits. A resumed VM
		// is replicated afresh (an initial copy from the directory's
		// epoch on), and its first record holds all of memory: the guest
		// may run before the initial copy starts its dirty log.
		spec.ha.Persist = spec.persist.epochs
		spec.ha.StartEpoch = spec.persist.first
		spec.persist.epochs.Full = true
	}
	if spec.ha != nil || spec.persist != nil && spec.haDevs == nil {
		// Replicated or persisted: the devices' writes and output go with
		// their epoch.
		spec.haDevs = &haDevices{}
	}
	if spec.ha != nil && spec.dirty == vmm.DirtyOff {
		if set["dirty"] {
			return usagef("--ha needs dirty page tracking: --dirty bitmap or ring")
		}
		// The bitmap: PVM's emulator overfills dirty rings (see README).
		spec.dirty = vmm.DirtyBitmap
	}
	res, err := runVM(ctx, spec)
	if err != nil {
		return err
	}
	switch res.Kind {
	case vmm.ExitGuest:
		log.Info("guest exited", "status", res.Code)
		if res.Code != 0 {
			return exitStatus(min(res.Code, 125))
		}
	default:
		log.Info("VM stopped", "reason", res.Kind)
	}
	return nil
}

// resolveGuest finds a built-in guest by name, or reads a flat image file.
func resolveGuest(name, entry string, entrySet bool) (images.Guest, error) {
	if g, ok := images.Lookup(name); ok {
		if entrySet {
			return images.Guest{}, usagef("--entry does not apply to the built-in guest %s", name)
		}
		return g, nil
	}
	data, err := os.ReadFile(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return images.Guest{}, usagef("--guest %s: no built-in guest of that name (%s) and no such file", name, strings.Join(images.Names(), ", "))
		}
		return images.Guest{}, usagef("--guest %s: %v", name, err)
	}
	if len(data) == 0 {
		return images.Guest{}, usagef("--guest %s: the file is empty", name)
	}
	g := images.Guest{Name: name, Image: data}
	switch entry {
	case "long64":
		g.Mode = boot.ModeLong64
	case "real16":
		g.Mode = boot.ModeReal16
	default:
		return images.Guest{}, usagef("--entry %q: want long64 or real16", entry)
	}
	return g, nil
}

// vmSpec is everything runVM needs to build and run one VM.
type vmSpec struct {
	memBytes  uint64
	vcpus     int
	memFile   string
	dirty     vmm.DirtyTracking
	serial    string
	control   string
	guest     images.Guest
	guestName string
	virtio    []vmm.VirtioConfig // the virtio devices, for snapshots
	args      []uint64
	snapshot  *vmm.Snapshot
	log       *slog.Logger
	// load fills a new VM before it runs (with a snapshot: adds the devices
	// its state needs, before the restore); nil loads the flat guest.
	load func(*vmm.VM) error
	// ha, when set, replicates the VM (see ha.go), and haDevs collects
	// what its devices give replication.
	ha     *replicate.PrimaryConfig
	haDevs *haDevices
	// persist, when set, makes every epoch durable in a directory
	// (persist.go).
	persist *persistRun
	// joins, when set, adds the nodes that join the VM at the coordinator
	// to the primary's links (coord.go).
	joins *joinWatch
	// ready, when set, is called once the VM is about to run.
	ready func(*vmm.VM)
	// paused starts the VM paused through its control socket.
	paused bool
}

func runVM(ctx context.Context, spec vmSpec) (vmm.Result, error) {
	console, err := devices.OpenConsole(spec.serial)
	if err != nil {
		return vmm.Result{}, usagef("--serial: %v", err)
	}
	defer console.Close()
	if a, ok := console.(interface{ Addr() net.Addr }); ok {
		spec.log.Info("serial console listening", "addr", a.Addr())
	}
	var serialOut io.Writer = console
	var gate *replicate.OutputGate
	if spec.ha != nil || spec.persist != nil {
		// Guest output leaves only once the epoch that produced it commits.
		gate = replicate.NewOutputGate(console, haOutputLimit)
		defer gate.Close()
		serialOut = gate
	}
	vm, err := vmm.New(vmm.Config{
		Memory:    vmm.MemoryConfig{Bytes: spec.memBytes, File: spec.memFile},
		VCPUs:     spec.vcpus,
		Dirty:     spec.dirty,
		SerialOut: serialOut,
		Logger:    spec.log,
	})
	if err != nil {
		return vmm.Result{}, err
	}
	defer vm.Close()
	start := time.Now()
	if spec.load != nil {
		err = spec.load(vm)
	}
	switch {
	case err != nil:
	case spec.snapshot != nil:
		if err = spec.snapshot.Restore(vm); err == nil {
			spec.log.Info("restored snapshot", "guest", spec.guestName, "virtio_devices", len(spec.virtio), "took", time.Since(start).Round(time.Microsecond))
		}
	case spec.load == nil:
		err = vm.LoadFlat(spec.guest.Image, spec.guest.Mode, spec.args)
	}
	if err != nil {
		return vmm.Result{}, err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var primary *replicate.Primary
	// Set before the replication loop starts (runReplicated), which
	// hands it every epoch.
	var vmMetrics *metrics.VM
	if spec.ha != nil {
		src, err := haSource(vm, spec.virtio, spec.haDevs)
		if err != nil {
			return vmm.Result{}, err
		}
		gates := append(replicate.Gates{gate}, spec.haDevs.gates...)
		cfg := *spec.ha
		cfg.Disks = spec.haDevs.images
		cfg.Observe = func(rec *replicate.EpochTrace) { vmMetrics.Observe(rec) }
		primary, err = startPrimary(ctx, src, gates, cfg)
		if errors.Is(err, replicate.ErrCannotProtect) {
			// A VM just taken over whose successor refused it: it runs,
			// unprotected, rather than hold its output for ever.
			spec.log.Error("the VM runs UNPROTECTED: the node chosen to protect it refused", "err", err,
				"operator", "give every node the copies the guest needs (--disk), then move the VM")
			go releaseUnprotected(ctx, gates, cfg.Epoch)
			primary, err = nil, nil
		}
		if err != nil {
			return vmm.Result{}, err
		}
		if primary != nil && spec.joins != nil {
			go spec.joins.watch(ctx, coordVM(cfg.VMID), primary, spec.log)
		}
	}
	metricSrc := metrics.Sources{Exits: vm.Exits, MemBytes: spec.memBytes, VCPUs: spec.vcpus}
	if primary != nil {
		metricSrc.Replication = primary.Status
	}
	vmMetrics = metrics.NewVM(metricSrc)
	if err := metrics.Register(vmMetrics); err != nil {
		spec.log.Warn("the VM's metrics are not exported", "err", err)
	}
	if spec.control != "" {
		ln, err := listenControl(spec.control)
		if err != nil {
			return vmm.Result{}, usagef("--control: %v", err)
		}
		c := &vmm.Controller{VM: vm, Meta: vmm.SnapshotMeta{Tandem: version(), Guest: spec.guestName, Virtio: spec.virtio}, Log: spec.log,
			DiffSnapshots: spec.dirty != vmm.DirtyOff && spec.ha == nil && spec.persist == nil}
		if spec.paused {
			if _, _, err := c.Handle(vmm.ControlRequest{Op: "pause"}); err != nil {
				return vmm.Result{}, err
			}
			spec.log.Info("the VM starts paused: resume it on the control socket", "addr", spec.control)
		}
		if primary != nil {
			c.Replication = func() json.RawMessage {
				b, _ := json.Marshal(primary.Status())
				return b
			}
			c.AddReplica = func(addr string) error {
				actx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				return primary.AddLink(actx, addr)
			}
		}
		c.UpdateDrive = driveUpdater(vm, &spec, c)
		go func() {
			if err := c.Serve(ctx, ln); err != nil {
				spec.log.Error("control socket", "err", err)
			}
		}()
		spec.log.Info("control socket listening", "addr", spec.control)
	}
	// Host input to the guest. A console's Read ends only when the user
	// quits (Ctrl-A x on a terminal) or the console is closed: stop then.
	go func() {
		io.Copy(vm.Serial(), console)
		vm.Stop()
	}()
	if spec.snapshot != nil {
		// A restored guest may be on another host than when it was
		// snapshotted: tell the L2 network where its MACs are now.
		announceInterfaces(vm, spec.log)
	}
	if spec.ready != nil {
		spec.ready(vm)
	}
	if spec.persist != nil && spec.ha == nil {
		return runPersisted(ctx, vm, &spec, append(replicate.Gates{gate}, spec.haDevs.gates...))
	}
	if primary == nil {
		return vm.Run(ctx)
	}
	return runReplicated(ctx, vm, primary, spec.log)
}

// driveUpdater is a run's update-drive (Controller.UpdateDrive): the
// index-th virtio-blk device gets the file at path, opened read-only if
// the drive is, and the file it had is closed. A snapshot taken after
// names the new file. A replicated or persisted run refuses: its disks
// travel with its epochs, and a disk swapped on the primary alone would
// diverge from the replicas' and the directory's copies of it.
func driveUpdater(vm *vmm.VM, spec *vmSpec, c *vmm.Controller) func(index int, path string) error {
	return func(index int, path string) error {
		switch {
		case spec.ha != nil:
			return errors.New("a replicated VM's drives cannot be changed (tandem run --ha): the replicas' copies of the disk would diverge from the new file")
		case spec.persist != nil:
			return errors.New("a persisted VM's drives cannot be changed (tandem run --persist or --resume): the directory's copy of the disk would diverge from the new file")
		}
		var drives []*vmm.VirtioDevice
		for _, d := range vm.VirtioDevices() {
			if _, ok := d.Device().(*virtio.Block); ok {
				drives = append(drives, d)
			}
		}
		if index >= len(drives) {
			return fmt.Errorf("drive %d: the VM has %d drives", index, len(drives))
		}
		drive := drives[index]
		be, err := virtio.OpenFileBackend(path, drive.Device().(*virtio.Block).ReadOnly())
		if err != nil {
			return fmt.Errorf("drive %d: %w", index, err)
		}
		old, err := drive.Transport.ReplaceBlockBackend(be)
		if err != nil {
			be.Close()
			return fmt.Errorf("drive %d: %w", index, err)
		}
		if err := old.Close(); err != nil {
			spec.log.Warn("closing the drive's previous file", "drive", index, "err", err)
		}
		// Snapshots name the drive's file (handlers run one at a time,
		// so Meta is the Controller's alone here).
		meta := slices.Clone(c.Meta.Virtio)
		for i, n := 0, 0; i < len(meta); i++ {
			if meta[i].Type == "blk" {
				if n == index {
					meta[i].Path = path
					break
				}
				n++
			}
		}
		c.Meta.Virtio = meta
		spec.log.Info("drive updated", "drive", index, "path", path, "sectors", drive.Device().(*virtio.Block).Capacity())
		return nil
	}
}

func listenControl(addr string) (net.Listener, error) {
	if rest, ok := strings.CutPrefix(addr, "tcp:"); ok {
		return net.Listen("tcp", rest)
	}
	path := strings.TrimPrefix(addr, "unix:")
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path) // a stale socket from an earlier run
	}
	return net.Listen("unix", path)
}

// cmdRebaseSnap is Firecracker's rebase-snap: the pages of a Diff
// snapshot's memory file are written onto the memory file of the snapshot
// before it, which then restores with the Diff's state.
func cmdRebaseSnap(ctx context.Context, args []string) error {
	fs := newFlagSet("rebase-snap", "--base-file FILE --diff-file FILE")
	base := fs.String("base-file", "", "the memory file of the snapshot the Diff follows: written in place")
	diff := fs.String("diff-file", "", "the Diff snapshot's memory file")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *base == "" || *diff == "" {
		return usagef("--base-file and --diff-file are required")
	}
	return vmm.RebaseMemoryFile(*base, *diff)
}

func cmdSnapshot(ctx context.Context, args []string) error {
	fs := newFlagSet("snapshot", "--control ADDR --out FILE [--stop]")
	control := fs.String("control", "", "control socket of the running VM (unix:PATH or tcp:ADDR)")
	out := fs.String("out", "", "snapshot file to write")
	stop := fs.Bool("stop", false, "stop the VM after the snapshot instead of resuming it")
	timeout := fs.Duration("timeout", time.Minute, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *control == "" || *out == "" {
		return usagef("--control and --out are required")
	}
	path, err := filepath.Abs(*out) // the VM process may run in another directory
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	if _, err := vmm.ControlCall(ctx, *control, vmm.ControlRequest{Op: "snapshot", Path: path, Stop: *stop}); err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%d KiB) in %v\n", path, fi.Size()>>10, time.Since(start).Round(time.Millisecond))
	return nil
}

func cmdStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status", "--control ADDR")
	control := fs.String("control", "", "control socket of the running VM (unix:PATH or tcp:ADDR)")
	timeout := fs.Duration("timeout", 10*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *control == "" {
		return usagef("--control is required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	st, err := vmm.ControlCall(ctx, *control, vmm.ControlRequest{Op: "status"})
	if err != nil {
		return err
	}
	state := "running"
	if st.Paused {
		state = "paused"
	}
	fmt.Printf("VM: %s, %d MiB, %d vCPUs\n", state, st.MemBytes>>20, st.VCPUs)
	if len(st.Replication) == 0 {
		fmt.Println("replication: off")
		return nil
	}
	var rs replicate.Status
	if err := json.Unmarshal(st.Replication, &rs); err != nil {
		return fmt.Errorf("status of %s: %w", *control, err)
	}
	fmt.Println("replication:", rs)
	for i, l := range rs.Links {
		state := "down (redialling)"
		switch {
		case l.Joining:
			state = fmt.Sprintf("catching up, %d%% of memory sent", 100*l.CaughtUp/max(l.Pages, 1))
		case l.Alive:
			state = fmt.Sprintf("up, acknowledged epoch %d (lag %d), %.1f MB/s", l.Acked, rs.Committed-min(l.Acked, rs.Committed), l.Rate/1e6)
		}
		fmt.Printf("  link %d %s: %s\n", i, l.Addr, state)
	}
	for _, h := range rs.Holders {
		state := "down (redialling)"
		if h.Connected {
			state = fmt.Sprintf("up, acknowledged the state of epoch %d", h.Acked)
		}
		fmt.Printf("  state holder %s: %s\n", h.Addr, state)
	}
	return nil
}

func cmdAddReplica(ctx context.Context, args []string) error {
	fs := newFlagSet("add-replica", "--control ADDR --replica HOST:PORT")
	control := fs.String("control", "", "control socket of the running primary (unix:PATH or tcp:ADDR)")
	replica := fs.String("replica", "", "the node to add as a link, HOST:PORT (its tandem replica --listen) or rdma://HOST:PORT?auth=HOST:PORT; with a coordinator it also holds the VM state")
	timeout := fs.Duration("timeout", 15*time.Second, "give up after this long")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *control == "" || *replica == "" {
		return usagef("--control and --replica are required")
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if _, err := vmm.ControlCall(ctx, *control, vmm.ControlRequest{Op: "add-replica", Replica: *replica}); err != nil {
		return err
	}
	fmt.Printf("added %s: it joins once it answers and holds every page (tandem status shows it)\n", *replica)
	return nil
}

func cmdVersion(ctx context.Context, args []string) error {
	fs := newFlagSet("version", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	fmt.Printf("tandem %s\n", version())
	sys, err := kvm.Open()
	if err != nil {
		fmt.Printf("kvm: unavailable: %v\n", err)
		return nil
	}
	defer sys.Close()
	api, _ := sys.APIVersion()
	fmt.Printf("kvm: API %d", api)
	for _, c := range []kvm.Cap{kvm.CapDirtyLogRing, kvm.CapManualDirtyLogProtect2, kvm.CapImmediateExit, kvm.CapNrVCPUs} {
		n, _ := sys.CheckExtension(c)
		fmt.Printf(", %v=%d", c, n)
	}
	fmt.Println()
	return nil
}
