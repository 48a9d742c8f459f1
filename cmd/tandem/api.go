package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/fcapi"
	"github.com/tandemvm/tandem/cmd/tandem/internal/metrics"
	"github.com/tandemvm/tandem/vmm"
)

// cmdAPI is Tandem started the way Firecracker is (tandem --api-sock PATH
// [--id ID]): it serves Firecracker's API on the socket (package fcapi)
// and, on InstanceStart, runs the microVM configured through it as
// `tandem run` would, with COM1 on its standard input and output. With
// --config-file FILE it configures and starts the microVM as FILE says
// (Firecracker's JSON configuration) without waiting for API requests,
// and then serves the API only if --api-sock is given. It ends when the
// microVM does, with the run's status.
func cmdAPI(ctx context.Context, args []string) error {
	fs := newFlagSet("--api-sock", "PATH [--id ID] [--config-file FILE] [--log-level LEVEL] ... | --config-file FILE [--no-api]")
	sock := fs.String("api-sock", "", "serve Firecracker's API on this Unix socket, which must not exist")
	id := fs.String("id", "anonymous-instance", "the microVM's id, as GET / reports it")
	configFile := fs.String("config-file", "", "configure the microVM as this JSON file (Firecracker's --config-file) says and start it")
	noAPI := fs.Bool("no-api", false, "serve no API: run the microVM of --config-file (Firecracker's flag; the default without --api-sock)")
	metricsAddr := fs.String("metrics-addr", "", metricsFlagUsage+" (the API socket serves them too, at GET /metrics)")
	logf := addLogFlags(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	base, err := newLogHandler(*logf)
	if err != nil {
		return err
	}
	logSwitch := newSwitchableHandler(base)
	log := slog.New(logSwitch)
	switch {
	case *noAPI && *sock != "":
		return usagef("--no-api and --api-sock exclude each other")
	case *sock == "" && *configFile == "":
		return usagef("--api-sock PATH is required, or --config-file FILE to run a microVM without the API")
	}
	if *metricsAddr != "" {
		if err := serveMetrics(ctx, *metricsAddr, log); err != nil {
			return err
		}
	}
	work, err := os.MkdirTemp("", "tandem-api-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	m := &apiMachine{ctx: ctx, log: log, control: "unix:" + filepath.Join(work, "control.sock"), done: make(chan error, 1)}
	m.logFlags.Store(logf)
	srv := fcapi.NewServer(*id, version(), m)
	srv.Metrics, srv.Log = metrics.Gatherer(), log
	srv.RedirectLog = func(o fcapi.LogOptions) error {
		next := *m.logFlags.Load()
		next.level, next.showLevel, next.showOrigin = o.Level, o.ShowLevel, o.ShowOrigin
		if o.File != nil {
			adoptLogOutput(o.Path, o.File)
			next.path = o.Path
		}
		h, err := newLogHandler(next)
		if err != nil {
			return err
		}
		logSwitch.switchTo(h)
		m.logFlags.Store(&next)
		return nil
	}
	defer func() {
		if err := srv.Close(); err != nil {
			log.Warn("writing the last metrics line", "err", err)
		}
	}()
	if *sock != "" {
		if _, err := os.Lstat(*sock); err == nil {
			return usagef("--api-sock %s exists: remove it, or give another path", *sock)
		}
		ln, err := net.Listen("unix", *sock)
		if err != nil {
			return usagef("--api-sock: %v", err)
		}
		defer os.Remove(*sock)
		hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go hs.Serve(ln)
		defer hs.Close()
		log.Info("API server listening", "socket", *sock, "id", *id)
	}
	if *configFile != "" {
		if err := applyConfigFile(srv, *configFile); err != nil {
			return err
		}
	}
	select {
	case <-ctx.Done():
		if m.started.Load() {
			<-m.done // the microVM stops with ctx
		}
		return nil
	case err := <-m.done:
		return err
	}
}

// apiMachine runs the microVM the API configured (fcapi.Machine).
type apiMachine struct {
	ctx     context.Context
	log     *slog.Logger
	control string // the run's control socket, for pause and resume
	started atomic.Bool
	done    chan error // what the run returned
	// logFlags are the logging flags of the run: cmdAPI's, until PUT
	// /logger changes them.
	logFlags atomic.Pointer[logFlags]
}

// runArgs are the `tandem run` flags of a configuration, the run logging
// as log says.
func runArgs(cfg fcapi.Config, control string, log logFlags) []string {
	mc := cfg.MachineConfig
	args := []string{"--kernel", cfg.BootSource.KernelImagePath, "--mem", strconv.Itoa(*mc.MemSizeMib) + "M",
		"--vcpus", strconv.Itoa(*mc.VCPUCount), "--serial", "stdio", "--control", control}
	args = append(args, log.args()...)
	if cfg.BootSource.InitrdPath != "" {
		args = append(args, "--initrd", cfg.BootSource.InitrdPath)
	}
	if cfg.BootSource.BootArgs != "" {
		args = append(args, "--cmdline", cfg.BootSource.BootArgs)
	}
	if mc.TrackDirtyPages != nil && *mc.TrackDirtyPages {
		args = append(args, "--dirty", "bitmap")
	}
	// The root device is /dev/vda, then the others in the order given.
	for _, d := range cfg.DriveOrder() {
		spec := d.PathOnHost
		if d.IsReadOnly != nil && *d.IsReadOnly {
			spec += ",ro"
		}
		args = append(args, "--disk", spec)
	}
	for _, n := range cfg.NetworkInterfaces {
		args = append(args, "--net", "tap:"+n.HostDevName)
	}
	args = append(args, haArgs(cfg.HA)...) // apiha.go
	return args
}

// Start implements fcapi.Machine: it runs the microVM and returns once
// its control socket answers, or why it did not start.
func (m *apiMachine) Start(cfg fcapi.Config) error {
	return m.launch(runArgs(cfg, m.control, *m.logFlags.Load()))
}

// launch runs `tandem run args` and returns once its control socket
// answers. A run that does not start leaves the API serving, for the
// client to correct the configuration; one that started ends cmdAPI
// when it ends.
func (m *apiMachine) launch(args []string) error {
	m.log.Info("starting the microVM", "run", strings.Join(args, " "))
	ran := make(chan error, 1)
	go func() { ran <- cmdRun(m.ctx, args) }()
	deadline := time.Now().Add(time.Minute)
	for {
		cctx, cancel := context.WithTimeout(m.ctx, time.Second)
		_, err := vmm.ControlCall(cctx, m.control, vmm.ControlRequest{Op: "status"})
		cancel()
		if err == nil {
			m.started.Store(true)
			go func() { m.done <- <-ran }()
			return nil
		}
		select {
		case err := <-ran:
			if err == nil {
				err = errors.New("the microVM ended at once")
			}
			return err
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the microVM did not start within a minute: %w", err)
		}
	}
}

// CreateSnapshot implements fcapi.Snapshotter. The API's configuration
// goes into the snapshot, for LoadSnapshot to give back.
func (m *apiMachine) CreateSnapshot(p fcapi.SnapshotCreateParams, cfg fcapi.Config) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Minute)
	defer cancel()
	_, err = vmm.ControlCall(ctx, m.control, vmm.ControlRequest{Op: "snapshot", Path: p.SnapshotPath, MemPath: p.MemFilePath, Diff: p.SnapshotType == "Diff", Config: b})
	return err
}

// LoadSnapshot implements fcapi.Snapshotter: it runs `tandem run
// --restore` on the snapshot and its memory file, with the network
// overrides as --net.
func (m *apiMachine) LoadSnapshot(p fcapi.SnapshotLoadParams) (fcapi.Config, error) {
	snap, err := vmm.OpenSnapshot(p.SnapshotPath)
	if err != nil {
		return fcapi.Config{}, err
	}
	meta := snap.Meta
	snap.Close()
	cfg, err := snapshotConfig(meta)
	if err != nil {
		return fcapi.Config{}, err
	}
	for _, o := range p.NetworkOverrides {
		i := slices.IndexFunc(cfg.NetworkInterfaces, func(n fcapi.NetworkInterface) bool { return n.IfaceID == o.IfaceID })
		if i < 0 {
			return fcapi.Config{}, fmt.Errorf("network_overrides: the snapshot has no interface %q", o.IfaceID)
		}
		cfg.NetworkInterfaces[i].HostDevName = o.HostDevName
	}
	args := []string{"--restore", p.SnapshotPath, "--restore-mem", p.MemFile(), "--serial", "stdio", "--control", m.control}
	args = append(args, m.logFlags.Load().args()...)
	if !p.ResumeVM {
		args = append(args, "--paused")
	}
	if p.Tracking() {
		args = append(args, "--dirty", "bitmap")
	}
	if len(p.NetworkOverrides) > 0 {
		for _, n := range cfg.NetworkInterfaces {
			args = append(args, "--net", "tap:"+n.HostDevName)
		}
	}
	if err := m.launch(args); err != nil {
		return fcapi.Config{}, err
	}
	return cfg, nil
}

// snapshotConfig is the API configuration of the microVM a snapshot
// holds: the one saved in it by CreateSnapshot, or for a snapshot taken
// otherwise (tandem snapshot) one read from its devices.
func snapshotConfig(meta vmm.SnapshotMeta) (fcapi.Config, error) {
	var cfg fcapi.Config
	if len(meta.Config) > 0 {
		if err := json.Unmarshal(meta.Config, &cfg); err != nil {
			return cfg, fmt.Errorf("the snapshot's API configuration: %w", err)
		}
	} else {
		for _, v := range meta.Virtio {
			switch v.Type {
			case "blk":
				ro := v.ReadOnly
				cfg.Drives = append(cfg.Drives, fcapi.Drive{DriveID: fmt.Sprintf("drive%d", len(cfg.Drives)), PathOnHost: v.Path, IsRootDevice: len(cfg.Drives) == 0, IsReadOnly: &ro})
			case "net":
				cfg.NetworkInterfaces = append(cfg.NetworkInterfaces, fcapi.NetworkInterface{IfaceID: fmt.Sprintf("eth%d", len(cfg.NetworkInterfaces)), HostDevName: v.TAP})
			}
		}
	}
	if cfg.Drives == nil {
		cfg.Drives = []fcapi.Drive{}
	}
	if cfg.NetworkInterfaces == nil {
		cfg.NetworkInterfaces = []fcapi.NetworkInterface{}
	}
	vcpus, mib, off := meta.VCPUs, int(meta.MemBytes>>20), false
	cfg.MachineConfig.VCPUCount, cfg.MachineConfig.MemSizeMib = &vcpus, &mib
	if cfg.MachineConfig.SMT == nil {
		cfg.MachineConfig.SMT = &off
	}
	return cfg, nil
}

func (m *apiMachine) op(op string) error {
	ctx, cancel := context.WithTimeout(m.ctx, 10*time.Second)
	defer cancel()
	_, err := vmm.ControlCall(ctx, m.control, vmm.ControlRequest{Op: op})
	return err
}

// Pause implements fcapi.Machine.
func (m *apiMachine) Pause() error { return m.op("pause") }

// Resume implements fcapi.Machine.
func (m *apiMachine) Resume() error { return m.op("resume") }
