package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/coord"
)

// coordFlags are --coordinator and its lease TTL, on the primary and on
// every node.
type coordFlags struct {
	url *string
	ttl *time.Duration
}

func addCoordFlags(fs *flag.FlagSet) *coordFlags {
	return &coordFlags{
		url: fs.String("coordinator", "", "decide who is primary through etcd, etcd://HOST:PORT[,HOST:PORT...] (the same on the primary and every node): the primary holds a lease-held term whose generation is etcd's revision, and a node takes over only once that lease has expired"),
		ttl: fs.Duration("coordinator-ttl", 2*time.Second, "lease TTL of a primary's term at the coordinator (whole seconds): a primary that cannot renew it stops releasing output within this time, and a takeover waits for it"),
	}
}

// open connects to the coordinator, or returns nil without --coordinator.
func (f *coordFlags) open(ctx context.Context, log *slog.Logger) (coord.Coordinator, error) {
	if *f.url == "" {
		return nil, nil
	}
	eps, err := coord.ParseURL(*f.url)
	if err != nil {
		return nil, usagef("--coordinator: %v", err)
	}
	if *f.ttl < time.Second {
		return nil, usagef("--coordinator-ttl %v: want at least 1s (etcd leases are in seconds)", *f.ttl)
	}
	c, err := coord.NewEtcd(ctx, coord.EtcdConfig{Endpoints: eps, TTL: *f.ttl, Log: log})
	if err != nil {
		return nil, fmt.Errorf("--coordinator %s: %w", *f.url, err)
	}
	return c, nil
}

// coordVM is a VM's name at the coordinator: its replication id.
func coordVM(vmID uint64) string { return fmt.Sprintf("%016x", vmID) }

// coordNode names this process at the coordinator: its node address, or
// host and pid for a primary started by tandem run.
func coordNode(self string) string {
	if self != "" {
		return self
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s:%d", host, os.Getpid())
}

// leadWithTerm makes a primary with a coordinator term send its states to
// every node its links reach, not only to its leader, so that any of them
// can take over (replicate.PrimaryConfig.Holders), and record at the
// coordinator which of them hold the newest committed state: only those
// may take over (awaitTerm).
func leadWithTerm(cfg *replicate.PrimaryConfig, term coord.Term) {
	cfg.Term = term
	for _, n := range (replicate.Cluster{Links: cfg.Links}).Nodes() {
		if n != cfg.Leader {
			cfg.Holders = append(cfg.Holders, n)
		}
	}
	timeout := cfg.AckTimeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	cfg.RecordHolders = func(holders []string) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return term.Record(ctx, holdersRecord, strings.Join(holders, ","))
	}
}

// holdersRecord is the coordinator record (coord.Term.Record) of the nodes
// that hold the newest committed state of a VM, comma-separated.
const holdersRecord = "holders"

// awaitTerm waits, with a coordinator, until this node may take the VM
// over: it holds a state, the coordinator granted it the VM's next term
// (the primary's lease expired, or it resigned), and it is among the
// nodes that the newest record of the holders names (or the term whose
// state it holds recorded none: it never committed a state). A node that
// wins the term but may not use it resigns at once and waits for a state
// of a newer term (a new primary's). A nil term means the primary stopped
// its VM on purpose.
func awaitTerm(ctx context.Context, r *replicate.Replica, c coord.Coordinator, self string, ttl time.Duration, log *slog.Logger) (coord.Term, error) {
	var not uint64 // a state generation this node may not take over with
	for {
		sg, err := waitState(ctx, r, not)
		if err != nil || sg == 0 {
			return nil, err
		}
		vm := coordVM(r.VMID())
		log.Info("holding the VM state: this node takes over if the primary's term ends (its lease expires)", "vm", vm, "generation", sg, "ttl", ttl)
		term, err := c.Campaign(ctx, vm, coordNode(self))
		if err != nil {
			return nil, fmt.Errorf("taking over VM %s at the coordinator: %w", vm, err)
		}
		if ended(r) {
			term.Resign(context.Background())
			return nil, nil
		}
		sg = r.StateGeneration()
		why, err := mayTakeOver(ctx, c, vm, self, sg)
		if err == nil && why == "" {
			log.Info("takeover term granted by the coordinator", "vm", vm, "generation", term.Generation())
			return term, nil
		}
		term.Resign(context.Background())
		if err != nil {
			log.Warn("cannot tell whether this node may take over; trying again", "vm", vm, "err", err)
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(ttl):
			}
			continue
		}
		log.Warn("not taking over: serving on, and waiting for a newer primary's state", "vm", vm, "why", why)
		not = sg
	}
}

// mayTakeOver says why the node self, holding a state of generation sg,
// may not take VM vm over; "" if it may.
func mayTakeOver(ctx context.Context, c coord.Coordinator, vm, self string, sg uint64) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	set, gen, err := c.Recorded(ctx, vm, holdersRecord)
	switch {
	case errors.Is(err, coord.ErrNoRecord):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("reading the VM's state holders at the coordinator: %w", err)
	case gen > sg:
		return fmt.Sprintf("a newer primary term (generation %d) recorded its state holders after this node's state (generation %d)", gen, sg), nil
	case gen == sg && set == "":
		return "the primary ended its VM on purpose", nil
	case gen == sg && !slices.Contains(strings.Split(set, ","), self):
		return fmt.Sprintf("the primary (generation %d) went on without this node's state: the nodes holding the newest are %s", gen, set), nil
	}
	return "", nil
}

// waitState waits until the node holds a state of a generation other than
// not, and returns that generation; zero if the primary stopped its VM on
// purpose.
func waitState(ctx context.Context, r *replicate.Replica, not uint64) (uint64, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if ended(r) {
			return 0, nil
		}
		if g := r.StateGeneration(); g != 0 && g != not {
			return g, nil
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// ended reports whether the primary said goodbye: its VM stopped on
// purpose, and nobody takes it over.
func ended(r *replicate.Replica) bool {
	select {
	case <-r.Failed():
		return r.Ended()
	default:
		return false
	}
}

// joinWatch adds the nodes that join a VM at the coordinator (tandem
// replica --join) as links of its running primary (replicate.Primary.
// AddLink), self (the primary's own node, if it is one) excepted.
type joinWatch struct {
	c    coord.Coordinator
	self string
}

func (w *joinWatch) watch(ctx context.Context, vm string, p *replicate.Primary, log *slog.Logger) {
	ch, err := w.c.WatchMembers(ctx, vm)
	if err != nil {
		log.Warn("cannot watch for nodes joining the VM at the coordinator", "vm", vm, "err", err)
		return
	}
	for members := range ch {
		for _, m := range members {
			addr := string(m.Info)
			if addr == "" || addr == w.self {
				continue
			}
			switch err := p.AddLink(ctx, addr); {
			case err == nil:
				log.Info("a node joined the VM at the coordinator: it becomes a link", "node", m.Node, "addr", addr)
			case errors.Is(err, replicate.ErrLinkExists), ctx.Err() != nil:
			default:
				log.Warn("a node joined the VM at the coordinator but cannot be added", "node", m.Node, "addr", addr, "err", err)
			}
		}
	}
}
