package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/tandemvm/tandem/replicate"
)

// cmdRDMADevices lists the verbs devices the RDMA transport can use.
func cmdRDMADevices(ctx context.Context, args []string) error {
	fs := newFlagSet("rdma-devices", "")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	devs, err := replicate.RDMADevices()
	return printRDMADevices(os.Stdout, devs, err, replicate.RDMAForkStatus())
}

// printRDMADevices prints one line per port, or says plainly why there is
// nothing to print. A build without RDMA is an error; a host without
// devices is not.
func printRDMADevices(w io.Writer, devs []replicate.RDMADevice, err error, fork string) error {
	hint := "To try the RDMA transport without an RNIC, create a Soft-RoCE device:\n  " + replicate.RDMASoftRoCEHint() + "\n"
	switch {
	case errors.Is(err, replicate.ErrNoRDMA):
		return err
	case errors.Is(err, replicate.ErrNoRDMAKernel):
		fmt.Fprintf(w, "no RDMA devices: %v.\n%s", err, hint)
		return nil
	case err != nil:
		return err
	case len(devs) == 0:
		fmt.Fprintf(w, "no RDMA devices: ibv_get_device_list found none.\n%s", hint)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tPORT\tSTATE\tLINK\tMTU\tMAX_MSG\tMAX_SGE\tMAX_QP_WR\tODP (RC)\tGID[0]")
	for _, d := range devs {
		odp := "no"
		if len(d.ODP) > 0 {
			odp = strings.Join(d.ODP, ",")
		}
		if len(d.Ports) == 0 {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t%d\t%d\t%s\t-\n", d.Name, d.MaxSGE, d.MaxQPWR, odp)
		}
		for _, p := range d.Ports {
			gid := p.GID
			if gid == "" {
				gid = "-"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%d\t%d\t%s\t%s\n",
				d.Name, p.Num, p.State, p.LinkLayer, p.ActiveMTU, byteSize(p.MaxMsgSize), d.MaxSGE, d.MaxQPWR, odp, gid)
		}
	}
	tw.Flush()
	for _, d := range devs {
		fmt.Fprintf(w, "%s: %s, node GUID %s, firmware %q, max_qp %d, max_cqe %d, max_mr %d, max_mr_size %s\n",
			d.Name, d.NodeType, d.GUID, d.FW, d.MaxQP, d.MaxCQE, d.MaxMR, byteSize(d.MaxMRSize))
	}
	fmt.Fprintf(w, "fork support in libibverbs: %s\n", fork)
	return nil
}

// byteSize prints a power-of-two size compactly.
func byteSize(n uint64) string {
	for _, u := range []struct {
		shift uint
		name  string
	}{{40, "TiB"}, {30, "GiB"}, {20, "MiB"}, {10, "KiB"}} {
		if n >= 1<<u.shift && n%(1<<u.shift) == 0 {
			return fmt.Sprintf("%d %s", n>>u.shift, u.name)
		}
	}
	return fmt.Sprintf("%d B", n)
}

// serveRDMA starts accepting RDMA links for r on addr until ctx is done.
func serveRDMA(ctx context.Context, r *replicate.Replica, addr string, log *slog.Logger) error {
	ln, err := replicate.ListenRDMA(addr)
	if err != nil {
		if errors.Is(err, replicate.ErrNoRDMA) {
			return usagef("--rdma-listen: %v", err)
		}
		return fmt.Errorf("--rdma-listen: %w", err)
	}
	go func() {
		if err := r.ServeRDMA(ctx, ln); err != nil {
			log.Error("rdma listener stopped", "addr", ln.Addr(), "err", err)
		}
	}()
	log.Info("rdma listener ready", "addr", ln.Addr())
	return nil
}
