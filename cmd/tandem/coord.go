package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
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

// leadWithTerm lets a primary with a coordinator term move to another
// node when its leader is lost: the nodes its links reach may lead, and
// the coordinator records which one does (replicate.PrimaryConfig.Leaders).
func leadWithTerm(cfg *replicate.PrimaryConfig, term coord.Term) {
	cfg.Term = term
	for _, n := range (replicate.Cluster{Links: cfg.Links}).Nodes() {
		if n != cfg.Leader {
			cfg.Leaders = append(cfg.Leaders, n)
		}
	}
	timeout := cfg.AckTimeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	cfg.RecordLeader = func(addr string) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return term.Record(ctx, "leader", addr)
	}
}
