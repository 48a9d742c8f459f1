package main

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/vmm"
)

func cmdReplica(ctx context.Context, args []string) error {
	fs := newFlagSet("replica", "--listen ADDR --auth-key FILE [--leader --replicas ADDR[,ADDR...] [--serial SPEC]]")
	listen := fs.String("listen", "", "address to serve links (and, for the leader, the primary's state) on, HOST:PORT")
	rdmaListen := fs.String("rdma-listen", "", "also accept RDMA links (rdma://HOST:PORT in the primary's --replicas) on this address of an RDMA-capable interface; needs a build with -tags rdma")
	leader := fs.Bool("leader", false, "also receive the VM state, watch the primary, and take over when it fails")
	replicas := fs.String("replicas", "", "leader: the replicas to recover from, HOST:PORT[,...] (include this leader's own --listen address if links feed it)")
	serial := fs.String("serial", "stdio", "leader: COM1 of the recovered VM: stdio, unix:PATH, tcp:ADDR, file:PATH or none")
	control := fs.String("control", "", "leader: control socket of the recovered VM")
	channel := fs.String("channel", "", "leader: the recovered Linux guest's virtio-console (/dev/hvc0): unix:PATH, tcp:ADDR, file:PATH or none (default none)")
	timeout := fs.Duration("heartbeat-timeout", time.Second, "leader: declare the primary failed after this long without a heartbeat")
	maxMem := fs.String("max-mem", "", "largest guest to accept (e.g. 4G); default: this host's memory")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	authf := addAuthFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	if *listen == "" {
		return usagef("--listen is required")
	}
	var recoverFrom []string
	for _, a := range strings.Split(*replicas, ",") {
		if a = strings.TrimSpace(a); a != "" {
			recoverFrom = append(recoverFrom, a)
		}
	}
	switch {
	case *leader && len(recoverFrom) == 0:
		return usagef("--leader needs --replicas to recover from")
	case !*leader && len(recoverFrom) > 0:
		return usagef("--replicas is for the leader (--leader)")
	case *timeout <= 0:
		return usagef("--heartbeat-timeout %v: want a positive duration", *timeout)
	case *channel != "" && !*leader:
		return usagef("--channel is for the leader (--leader)")
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
	r := replicate.NewReplica(replicate.ReplicaConfig{Log: log, Leader: *leader, HeartbeatTimeout: *timeout, MaxMemBytes: maxMemBytes, Auth: creds})
	serveCtx, stopServing := context.WithCancel(ctx)
	defer stopServing()
	served := make(chan error, 1)
	go func() { served <- r.Serve(serveCtx, ln) }()
	if *rdmaListen != "" {
		if err := serveRDMA(serveCtx, r, *rdmaListen, log); err != nil {
			return err
		}
	}
	log.Info("replica listening", "addr", ln.Addr(), "leader", *leader, "connections", creds.Mode())
	if !*leader {
		return <-served
	}
	select {
	case <-ctx.Done():
		stopServing()
		return <-served
	case err := <-served:
		return err
	case <-r.Failed():
	}
	if r.Ended() {
		log.Info("the primary stopped its VM on purpose; nothing to take over")
		fmt.Println("leader: the primary's VM stopped; no takeover")
		return nil
	}
	log.Warn("primary failed; recovering", "reason", r.FailReason())
	// Recovery settles the replicas on an epoch first; its pages are then
	// fetched straight into the new VM's memory (load), so the leader
	// never holds a second copy of guest RAM.
	rc, err := r.StartRecovery(ctx, recoverFrom)
	if err != nil {
		return err
	}
	defer rc.Close()
	info := rc.Info()
	spec := vmSpec{
		memBytes: info.MemBytes, vcpus: info.VCPUs, serial: *serial, control: *control,
		guestName: info.Guest, log: log,
	}
	virtioDevs, _, isLinux, err := splitHAState(info.State)
	if err != nil {
		return fmt.Errorf("recovered state of epoch %d: %w", info.Epoch, err)
	}
	// fetch fills the VM's memory and restores the state of the epoch
	// recovered (FetchInto may settle on an older one if a replica is lost
	// meanwhile); the replicas are no longer fed, so serving stops.
	fetch := func(vm *vmm.VM) error {
		rec, err := rc.FetchInto(ctx, vm.Memory().Bytes())
		if err != nil {
			return err
		}
		rc.Close()
		stopServing()
		<-served
		log.Info("recovered", "epoch", rec.Epoch, "mem_MiB", rec.MemBytes>>20, "took", rec.Took.Round(time.Microsecond), "unreachable", rec.Unreachable)
		fmt.Printf("leader: recovered epoch %d of %s (%d MiB) in %v; resuming the VM\n", rec.Epoch, rec.Guest, rec.MemBytes>>20, rec.Took.Round(time.Millisecond))
		_, state, _, err := splitHAState(rec.State)
		if err != nil {
			return fmt.Errorf("recovered state of epoch %d: %w", rec.Epoch, err)
		}
		var st vmm.State
		if err := st.UnmarshalBinary(state); err != nil {
			return fmt.Errorf("recovered state of epoch %d: %w", rec.Epoch, err)
		}
		return vm.RestoreState(&st)
	}
	spec.load = fetch
	if isLinux {
		// The guest's devices come first: the state includes theirs.
		devs, err := devicesFromMeta(virtioDevs)
		if err != nil {
			return fmt.Errorf("recovered state of epoch %d: %w", info.Epoch, err)
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
			return fetch(vm)
		}
	}
	res, err := runVM(ctx, spec)
	if err != nil {
		return err
	}
	log.Info("VM stopped", "reason", res.Kind, "status", res.Code)
	return nil
}
