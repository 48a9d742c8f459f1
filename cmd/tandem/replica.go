package main

import (
	"context"
	"fmt"
	"github.com/tandemvm/tandem/cmd/tandem/internal/metrics"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/coord"
	"github.com/tandemvm/tandem/replicate/disk"
	"github.com/tandemvm/tandem/replicate/replicadir"
	"github.com/tandemvm/tandem/vmm"
)

// diskCopies are the leader's copies of the primary's disks (--disk).
type diskCopies struct {
	files     []*os.File
	sizes     []int64
	replicate []replicate.DiskCopy
}

func openDiskCopies(paths []string) (*diskCopies, error) {
	c := &diskCopies{}
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			c.close()
			return nil, usagef("--disk: %v", err)
		}
		st, err := f.Stat()
		if err == nil && st.Size() == 0 {
			err = fmt.Errorf("%s is empty: the copy must be the size of the primary's disk", p)
		}
		if err != nil {
			f.Close()
			c.close()
			return nil, usagef("--disk: %v", err)
		}
		c.files = append(c.files, f)
		c.sizes = append(c.sizes, st.Size())
		c.replicate = append(c.replicate, replicate.DiskCopy{Name: p, Size: st.Size(), F: f})
	}
	return c, nil
}

// apply writes a committed epoch's disk writes to the copies, and makes
// them durable where the guest flushed (replicate.ReplicaConfig.Committed).
func (c *diskCopies) apply(epoch uint64, state []byte) error {
	if len(c.files) == 0 {
		return nil
	}
	st, linux, err := splitHAState(state)
	if err != nil || !linux {
		return fmt.Errorf("epoch %d: a state without disk writes for %d disk copies (%v)", epoch, len(c.files), err)
	}
	writes, err := st.diskWrites(c.sizes)
	if err != nil {
		return fmt.Errorf("epoch %d: %w", epoch, err)
	}
	for i, w := range writes {
		if err := disk.Apply(c.files[i], w); err != nil {
			return fmt.Errorf("epoch %d: disk %s: %w", epoch, c.files[i].Name(), err)
		}
	}
	return nil
}

func (c *diskCopies) close() {
	for _, f := range c.files {
		f.Close()
	}
	c.files = nil
}

func cmdReplica(ctx context.Context, args []string) error {
	fs := newFlagSet("replica", "--listen ADDR --auth-key FILE [--serial SPEC] [--leader --replicas ADDR[,ADDR...]]")
	listen := fs.String("listen", "", "address to serve links and the primary's state on, HOST:PORT; name this node by it everywhere (the primary's --replicas and --leader)")
	advertise := fs.String("advertise", "", "the address the primary and the other nodes know this node by, if not --listen's")
	rdmaListen := fs.String("rdma-listen", "", "also accept RDMA links (rdma://HOST:PORT in the primary's --replicas) on this address of an RDMA-capable interface; needs a build with -tags rdma")
	fs.Bool("leader", false, "accepted for compatibility: every node receives the VM state when the primary names it --leader, watches the primary, and takes over when it fails")
	replicas := fs.String("replicas", "", "the replicas to recover from, HOST:PORT[,...] (default: the primary's links, which it tells its leader)")
	serial := fs.String("serial", "stdio", "COM1 of the VM if this node takes it over: stdio, unix:PATH, tcp:ADDR, file:PATH or none")
	control := fs.String("control", "", "control socket of the VM if this node takes it over")
	channel := fs.String("channel", "", "the virtio-console (/dev/hvc0) of a Linux guest this node takes over: unix:PATH, tcp:ADDR, file:PATH or none (default none)")
	var nets, disks listFlag
	fs.Var(&nets, "net", "a TAP device for the network interface of a Linux guest this node takes over, tap:NAME (repeatable, in the primary's order)")
	fs.Var(&disks, "disk", "this node's copy of one of the primary's disks, PATH (repeatable, in the primary's order, each the size of its disk), for when the primary names it --leader: brought to the primary's content when replication starts, then fed every committed epoch's writes")
	timeout := fs.Duration("heartbeat-timeout", time.Second, "declare the primary failed after this long without a message, once its epochs are this long overdue, or this long after its state connection broke if it does not reconnect")
	maxMem := fs.String("max-mem", "", "largest guest to accept (e.g. 4G); default: this host's memory")
	logf := addLogFlags(fs) // --log-level, --log-format, --log-path (main.go)
	metricsAddr := fs.String("metrics-addr", "", metricsFlagUsage)
	shadow := fs.Bool("shadow", false, "active backup: run a copy of the VM (a second copy of its memory, a vCPU's worth of CPU) from every committed epoch this node holds the state of, so that a primary run with --active-backup sends its link here only the pages the copy wrote differently; guests without disks or network interfaces")
	persistDir := fs.String("persist", "", "keep this node's store in DIR (new, empty, or left by an earlier run of this node): every epoch and state it acknowledges is durable there first, so that after the whole cluster lost power the VM is recovered from the replicas' directories (start each node again with its --persist, and its --disk copies); TCP links only, without --shadow")
	join := fs.String("join", "", "with --coordinator: offer this node to the running VM with this id (16 hex digits: tandem status shows it); its primary adds it as a link and a state holder")
	authf := addAuthFlags(fs)
	coordf := addCoordFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(*logf)
	if err != nil {
		return err
	}
	if *listen == "" {
		return usagef("--listen is required")
	}
	if *metricsAddr != "" {
		if err := serveMetrics(ctx, *metricsAddr, log); err != nil {
			return err
		}
	}
	var recoverFrom []string
	for _, a := range strings.Split(*replicas, ",") {
		if a = strings.TrimSpace(a); a != "" {
			recoverFrom = append(recoverFrom, a)
		}
	}
	if *timeout <= 0 {
		return usagef("--heartbeat-timeout %v: want a positive duration", *timeout)
	}
	if *persistDir != "" && (*shadow || *rdmaListen != "") {
		return usagef("--persist takes TCP links only, without --shadow: shadows and RDMA links are not kept with the epochs yet")
	}
	if *join != "" {
		if *coordf.url == "" {
			return usagef("--join needs --coordinator: the primary learns of joining nodes there")
		}
		if id, err := strconv.ParseUint(*join, 16, 64); err != nil || id == 0 || len(*join) != 16 {
			return usagef("--join %q: want a VM id of 16 hex digits, as tandem status shows it", *join)
		}
	}
	self := *listen
	if *advertise != "" {
		self = *advertise
	}
	leaderNets, err := parseNets(nets)
	if err != nil {
		return err
	}
	// A TAP the recovered guest cannot have would only show at takeover:
	// check now that each exists.
	for _, n := range leaderNets {
		if _, err := os.Stat("/sys/class/net/" + n.tap); err != nil {
			return usagef("--net tap:%s: no such network device on this host; create it (ip tuntap add dev %s mode tap) and attach it to the guest's network", n.tap, n.tap)
		}
	}
	if err := checkChannel(*channel); err != nil {
		return err
	}
	creds, err := authf.credentials("tandem replica")
	if err != nil {
		return err
	}
	var maxMemBytes uint64
	if *maxMem != "" {
		if maxMemBytes, err = vmm.ParseMemSize(*maxMem); err != nil {
			return usagef("--max-mem: %v", err)
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return usagef("--listen: %v", err)
	}
	copies, err := openDiskCopies(disks)
	if err != nil {
		return err
	}
	defer copies.close()
	coordinator, err := coordf.open(ctx, log)
	if err != nil {
		return err
	}
	if coordinator != nil {
		defer coordinator.Close()
	}
	rcfg := replicate.ReplicaConfig{Log: log, Leader: true, Coordinated: coordinator != nil, HeartbeatTimeout: *timeout,
		MaxMemBytes: maxMemBytes, Auth: creds, Disks: copies.replicate, Committed: copies.apply}
	if *shadow {
		rcfg.Shadow = newShadowVM(log)
	}
	var r *replicate.Replica
	if *persistDir != "" {
		d, c, err := replicadir.Open(*persistDir)
		if err != nil {
			return fmt.Errorf("--persist %s: %w", *persistDir, err)
		}
		defer d.Close()
		if r, err = replicate.OpenReplica(rcfg, d, c); err != nil {
			return fmt.Errorf("--persist %s: %w", *persistDir, err)
		}
	} else {
		r = replicate.NewReplica(rcfg)
	}
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	// A takeover waits for the serving to end; whatever ends it first ends
	// the waits for a takeover too.
	var servedErr error
	serveDone := make(chan struct{})
	go func() { servedErr = r.Serve(serveCtx, ln); close(serveDone) }()
	if *rdmaListen != "" {
		if err := serveRDMA(serveCtx, r, *rdmaListen, log); err != nil {
			return err
		}
	}
	log.Info("replica listening", "addr", ln.Addr(), "connections", creds.Mode())
	leave := func() {}
	if *join != "" {
		if leave, err = coordinator.Join(ctx, strings.ToLower(*join), coordNode(self), []byte(self)); err != nil {
			return fmt.Errorf("--join %s: %w", *join, err)
		}
		log.Info("joined the VM at the coordinator: its primary adds this node", "vm", *join)
	}
	defer leave()
	waitCtx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	go func() {
		select {
		case <-serveDone:
			stopWaiting()
		case <-waitCtx.Done():
		}
	}()
	stopped := func() error {
		stopServing()
		<-serveDone
		return servedErr
	}
	var (
		term    coord.Term
		cluster replicate.Cluster
		rec     *replicate.Recovered
		memFile *os.File
		memPath string
		// failedAt is when the primary was declared failed (recovery
		// began), for the takeover's recovery time.
		failedAt time.Time
	)
	for {
		if coordinator != nil {
			// With a coordinator, the takeover is a term of its own:
			// granted only once the failed primary's lease has expired,
			// and its generation is etcd's revision.
			term, err = awaitTerm(waitCtx, r, coordinator, self, *coordf.ttl, log)
			if term == nil {
				serr := stopped()
				switch {
				case err == nil:
					log.Info("the primary stopped its VM on purpose; nothing to take over")
					fmt.Println("leader: the primary's VM stopped; no takeover")
					return serr
				case waitCtx.Err() != nil: // stopping, or serving ended
					return serr
				}
				return err
			}
		} else {
			select {
			case <-waitCtx.Done():
				return stopped()
			case <-r.Failed():
			}
			if r.Ended() {
				log.Info("the primary stopped its VM on purpose; nothing to take over")
				fmt.Println("leader: the primary's VM stopped; no takeover")
				return stopped()
			}
			log.Warn("primary failed; recovering", "reason", r.FailReason())
		}
		failedAt = time.Now()
		cluster, _ = r.Cluster()
		from := recoverFrom
		if len(from) == 0 {
			from = cluster.Nodes()
		}
		var gen uint64
		if term != nil {
			gen = term.Generation()
		}
		rec, memFile, memPath, err = recoverVM(ctx, r, from, gen)
		if err == nil {
			break
		}
		if term == nil {
			return err
		}
		// Another holder may have what this one lacks: give the term
		// back and serve on.
		term.Resign(context.Background())
		log.Error("takeover failed: gave the term back, serving on as a replica; trying again later unless another node takes over", "err", err)
		select {
		case <-waitCtx.Done():
			return stopped()
		case <-time.After(*coordf.ttl): // the other campaigners go first
		}
	}
	defer memFile.Close()
	log.Info("recovered", "epoch", rec.Epoch, "mem_MiB", rec.MemBytes>>20, "took", rec.Took.Round(time.Microsecond), "unreachable", rec.Unreachable)
	fmt.Printf("leader: recovered epoch %d of %s (%d MiB) in %v; resuming the VM\n", rec.Epoch, rec.Guest, rec.MemBytes>>20, rec.Took.Round(time.Millisecond))
	// The replicas are no longer fed; stop serving them and run the VM.
	stopped()
	leave() // a primary is no backup of its own VM
	spec := vmSpec{
		memBytes: rec.MemBytes, vcpus: rec.VCPUs, serial: *serial, control: *control,
		guestName: rec.Guest, log: log, memFile: memPath,
	}
	// The VM is protected again at once, as the next generation, by the
	// nodes that are left (replicate.Cluster.Successor).
	if links, next := cluster.Successor(self); len(links) > 0 {
		spec.ha = &replicate.PrimaryConfig{
			Links: links, Leader: next, VMID: rec.VMID, Generation: rec.Generation, StartEpoch: rec.Epoch + 1, Reprotect: true,
			Guest: rec.Guest, VCPUs: rec.VCPUs, Epoch: cluster.Epoch, Policy: cluster.Policy, Mode: cluster.Mode,
			SGMax: cluster.SGMax, Reduce: cluster.Reduce, Speculate: cluster.Speculate, ActiveBackup: cluster.ActiveBackup, AckTimeout: cluster.AckTimeout, Heartbeat: cluster.Heartbeat, Auth: creds, Log: log,
			Summary: func(line string) { log.Info(line) },
		}
		if term != nil {
			leadWithTerm(spec.ha, term)
			spec.joins = &joinWatch{c: coordinator, self: self}
		}
		spec.haDevs = &haDevices{}
		spec.dirty = vmm.DirtyBitmap
		log.Info("protecting the VM again", "generation", rec.Generation, "links", links, "leader", next)
	} else {
		log.Warn("no node is left to replicate to: the VM runs unprotected", "generation", rec.Generation)
	}
	st, isLinux, err := splitHAState(rec.State)
	if err != nil {
		return fmt.Errorf("recovered state of epoch %d: %w", rec.Epoch, err)
	}
	state := st.vm
	restore := func(vm *vmm.VM) error {
		var st vmm.State
		if err := st.UnmarshalBinary(state); err != nil {
			return fmt.Errorf("recovered state of epoch %d: %w", rec.Epoch, err)
		}
		return vm.RestoreState(&st) // the memory is already in place
	}
	spec.load = restore
	if isLinux {
		// The guest's devices come first: the state includes theirs.
		devs, err := devicesFromMeta(st.virtio)
		if err != nil {
			return fmt.Errorf("recovered state of epoch %d: %w", rec.Epoch, err)
		}
		// Its disks are this node's copies, now of the recovered epoch.
		if len(devs.disks) != len(disks) {
			return fmt.Errorf("the recovered guest has %d disks, this leader holds %d copies", len(devs.disks), len(disks))
		}
		for i := range devs.disks {
			devs.disks[i].path = disks[i]
		}
		copies.close()
		if len(nets) > 0 {
			if err := devs.override(&linuxFlags{nets: nets}, map[string]bool{"net": true}); err != nil {
				return fmt.Errorf("the recovered guest's network: %w", err)
			}
		} else if len(devs.nets) > 0 {
			log.Warn("the recovered guest's network interfaces attach to the primary's TAP names here: give the leader --net tap:NAME for each", "interfaces", len(devs.nets))
		}
		if devs.channel != "" {
			devs.channel = *channel
			if devs.channel == "" {
				log.Warn("the recovered guest's virtio-console goes nowhere: give the leader --channel")
				devs.channel = "none"
			}
		}
		spec.virtio = devs.meta()
		spec.load = func(vm *vmm.VM) error {
			if err := devs.add(vm, &spec); err != nil {
				return err
			}
			return restore(vm)
		}
		spec.ready = func(vm *vmm.VM) { announceInterfaces(vm, log) }
	}
	resumed := spec.ready
	spec.ready = func(vm *vmm.VM) {
		if resumed != nil {
			resumed(vm)
		}
		metrics.Failover(time.Since(failedAt).Seconds()) // the VM resumes now
	}
	res, err := runVM(ctx, spec)
	if err != nil {
		return err
	}
	log.Info("VM stopped", "reason", res.Kind, "status", res.Code)
	return nil
}

// recoverVM recovers the VM from the replicas as the takeover generation
// gen (zero: the next). The pages go straight into the memory the new VM
// will run on (a memfd, which the VM maps as its --mem-file, at path), so
// the leader never holds a second copy of guest RAM. Recovery settles the
// replicas on an epoch first, which gives the size.
func recoverVM(ctx context.Context, r *replicate.Replica, from []string, gen uint64) (*replicate.Recovered, *os.File, string, error) {
	rc, err := r.StartRecoveryAs(ctx, from, gen)
	if err != nil {
		return nil, nil, "", err
	}
	defer rc.Close()
	memPath, memFile, err := recoveryMemory(rc.Info().MemBytes)
	if err != nil {
		return nil, nil, "", err
	}
	rec, err := fetchInto(ctx, rc, memFile, rc.Info().MemBytes)
	if err != nil {
		memFile.Close()
		return nil, nil, "", err
	}
	return rec, memFile, memPath, nil
}

// recoveryMemory makes the file the recovered VM's memory lives in: a
// memfd of memBytes, named by a path the VM can open as its memory file.
func recoveryMemory(memBytes uint64) (string, *os.File, error) {
	fd, err := unix.MemfdCreate("tandem-recovered-guest", unix.MFD_CLOEXEC)
	if err != nil {
		return "", nil, fmt.Errorf("recovery: guest memory: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tandem-recovered-guest")
	if err := f.Truncate(int64(memBytes)); err != nil {
		f.Close()
		return "", nil, fmt.Errorf("recovery: guest memory of %d MiB: %w", memBytes>>20, err)
	}
	return fmt.Sprintf("/proc/self/fd/%d", fd), f, nil
}

// fetchInto gathers the recovered pages into f through a mapping that is
// gone once they are in: the VM maps the file again.
func fetchInto(ctx context.Context, rc *replicate.Recovery, f *os.File, memBytes uint64) (*replicate.Recovered, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, int(memBytes), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("recovery: map guest memory: %w", err)
	}
	defer unix.Munmap(mem)
	rec, err := rc.FetchInto(ctx, mem)
	if err != nil {
		return nil, err
	}
	rec.Memory = nil // unmapped below
	return rec, nil
}
