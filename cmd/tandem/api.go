package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/fcapi"
	"github.com/tandemvm/tandem/vmm"
)

// cmdAPI is Tandem started the way Firecracker is (tandem --api-sock PATH
// [--id ID]): it serves Firecracker's API on the socket (package fcapi)
// and, on InstanceStart, runs the microVM configured through it as
// `tandem run` would, with COM1 on its standard input and output. It
// ends when the microVM does, with the run's status.
func cmdAPI(ctx context.Context, args []string) error {
	fs := newFlagSet("--api-sock", "PATH [--id ID] [--log-level LEVEL]")
	sock := fs.String("api-sock", "", "serve Firecracker's API on this Unix socket, which must not exist")
	id := fs.String("id", "anonymous-instance", "the microVM's id, as GET / reports it")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	if *sock == "" {
		return usagef("--api-sock PATH is required")
	}
	if _, err := os.Lstat(*sock); err == nil {
		return usagef("--api-sock %s exists: remove it, or give another path", *sock)
	}
	ln, err := net.Listen("unix", *sock)
	if err != nil {
		return usagef("--api-sock: %v", err)
	}
	defer os.Remove(*sock)
	work, err := os.MkdirTemp("", "tandem-api-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	m := &apiMachine{ctx: ctx, log: log, control: "unix:" + filepath.Join(work, "control.sock"), done: make(chan error, 1)}
	hs := &http.Server{Handler: fcapi.NewServer(*id, version(), m), ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go hs.Serve(ln)
	defer hs.Close()
	log.Info("API server listening", "socket", *sock, "id", *id)
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
}

// runArgs are the `tandem run` flags of a configuration.
func runArgs(cfg fcapi.Config, control string) []string {
	mc := cfg.MachineConfig
	args := []string{"--kernel", cfg.BootSource.KernelImagePath, "--mem", strconv.Itoa(*mc.MemSizeMib) + "M",
		"--vcpus", strconv.Itoa(*mc.VCPUCount), "--serial", "stdio", "--control", control}
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
	for _, root := range []bool{true, false} {
		for _, d := range cfg.Drives {
			if d.IsRootDevice != root {
				continue
			}
			spec := d.PathOnHost
			if d.IsReadOnly != nil && *d.IsReadOnly {
				spec += ",ro"
			}
			args = append(args, "--disk", spec)
		}
	}
	for _, n := range cfg.NetworkInterfaces {
		args = append(args, "--net", "tap:"+n.HostDevName)
	}
	return args
}

// Start implements fcapi.Machine: it runs the microVM and returns once
// its control socket answers, or why it did not start.
func (m *apiMachine) Start(cfg fcapi.Config) error {
	args := runArgs(cfg, m.control)
	m.log.Info("starting the microVM", "run", strings.Join(args, " "))
	ran := make(chan error, 1)
	m.started.Store(true)
	go func() {
		err := cmdRun(m.ctx, args)
		ran <- err
		m.done <- err
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		cctx, cancel := context.WithTimeout(m.ctx, time.Second)
		_, err := vmm.ControlCall(cctx, m.control, vmm.ControlRequest{Op: "status"})
		cancel()
		if err == nil {
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
