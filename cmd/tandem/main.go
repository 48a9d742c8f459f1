// Command tandem is the Tandem microVM hypervisor: one binary that runs a VM,
// snapshots it, restores it, and demonstrates it.
//
//	tandem run --guest counter --mem 64M --serial unix:/tmp/counter.sock
//	tandem snapshot --control unix:/tmp/vm.ctl --out vm.snap
//	tandem run --restore vm.snap --serial stdio
//	tandem demo
//	tandem version
//	tandem --api-sock /tmp/firecracker.socket --id vm0   (Firecracker's API)
//	tandem --config-file vm.json                         (Firecracker's --no-api)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
)

// exitUsage is the exit status for bad flags or arguments.
const exitUsage = 2

// usageError marks an error caused by the command line, not the VM.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitStatus is returned by a subcommand that wants a specific exit status
// without an error message (e.g. the guest's own status).
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

var commands = []command{
	{"run", "boot a guest: a built-in test guest, a flat image, or a snapshot", cmdRun},
	{"replica", "keep a copy of a replicated VM; with --leader, take over when the primary fails", cmdReplica},
	{"keygen", "write a new replication key file (for --auth-key)", cmdKeygen},
	{"snapshot", "write a snapshot of a running VM through its control socket", cmdSnapshot},
	{"rebase-snap", "write a Diff snapshot's memory file onto its base's, so the Diff restores (Firecracker's rebase-snap)", cmdRebaseSnap},
	{"status", "show a running VM and its protection: generation, leader, links and their lag", cmdStatus},
	{"add-replica", "protect a running VM with one more node: a link, and with a coordinator a state holder", cmdAddReplica},
	{"bench", "reproduce seed 003's evaluation: replication matrix, report and plots", cmdBench},
	{"demo", "boot the built-in counter guest and talk to it", cmdDemo},
	{"rdma-devices", "list the RDMA devices, ports and limits the RDMA transport can use", cmdRDMADevices},
	{"version", "print the version of tandem and of the KVM it finds", cmdVersion},
	{"--api-sock", "PATH [--id ID] [--config-file FILE]: serve Firecracker's API on a Unix socket and run the microVM it configures (tandem --config-file FILE: FILE's microVM, no API)", cmdAPI},
}

func main() {
	os.Exit(mainStatus(os.Args[1:]))
}

func mainStatus(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stdout)
		return 0
	}
	if startedAsFirecracker(args[0]) {
		// Started the way Firecracker is: its API on a socket, or its
		// configuration in a file.
		args = append([]string{"--api-sock"}, args...)
	}
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err := c.run(ctx, args[1:])
		var status exitStatus
		var uerr usageError
		switch {
		case err == nil:
			return 0
		case errors.As(err, &status):
			return int(status)
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.As(err, &uerr):
			fmt.Fprintf(os.Stderr, "tandem %s: %v\n", c.name, err)
			return exitUsage
		default:
			fmt.Fprintf(os.Stderr, "tandem %s: %v\n", c.name, err)
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "tandem: unknown command %q\n\n", args[0])
	usage(os.Stderr)
	return exitUsage
}

// startedAsFirecracker says whether the first argument is one of the
// flags Firecracker is started with, which cmdAPI takes.
func startedAsFirecracker(arg string) bool {
	for _, flag := range []string{"--api-sock", "--id", "--config-file", "--no-api", "--log-", "--metrics-addr"} {
		if strings.HasPrefix(arg, flag) {
			return true
		}
	}
	return false
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: tandem <command> [flags]")
	fmt.Fprintln(w)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-9s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'tandem <command> --help' for the flags of a command.")
}

// newFlagSet returns a flag set that reports errors instead of exiting.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("tandem "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: tandem %s %s\n\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args and rejects stray positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			v += " " + s.Value[:min(12, len(s.Value))]
		}
	}
	return strings.TrimSpace(v)
}
