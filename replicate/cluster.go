package replicate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Cluster is how a primary replicates: the links, the leader and the
// settings of its epochs. The primary sends it to the leader on every
// state connection (MsgCluster, before anything else), so that the node
// that takes over can protect the VM in turn with the nodes that are left
// (Replica.Cluster), whatever flags it was started with.
type Cluster struct {
	Links      []string      `json:"links"`
	Leader     string        `json:"leader"`
	Policy     Policy        `json:"policy"`
	Mode       Mode          `json:"mode"`
	Epoch      time.Duration `json:"epoch_ns"`
	SGMax      int           `json:"sg_max"`
	AckTimeout time.Duration `json:"ack_timeout_ns"`
	Heartbeat  time.Duration `json:"heartbeat_ns"`
	// Reduce is the links' traffic reduction (nil: the default), and
	// Speculate how far through an interval pages are sent ahead.
	Reduce    *Reduction `json:"reduce,omitempty"`
	Speculate float64    `json:"speculate,omitempty"`
	// ActiveBackup is whether links to nodes that run a shadow send
	// only what it wrote differently (active.go).
	ActiveBackup ActiveBackup `json:"active_backup,omitempty"`
}

// cluster is this primary's Cluster.
func (p *Primary) cluster() Cluster {
	c := p.cfg
	return Cluster{Links: c.Links, Leader: c.Leader, Policy: c.Policy, Mode: c.Mode, Epoch: c.Epoch,
		SGMax: c.SGMax, AckTimeout: c.AckTimeout, Heartbeat: c.Heartbeat, Reduce: c.Reduce, Speculate: c.Speculate, ActiveBackup: c.ActiveBackup}
}

func (c *Cluster) marshal() []byte {
	b, _ := json.Marshal(c)
	return b
}

// parseCluster decodes and checks a MsgCluster payload.
func parseCluster(b []byte) (*Cluster, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	var c Cluster
	if err := d.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: cluster description: %v", ErrProtocol, err)
	}
	switch {
	case len(c.Links) == 0 || len(c.Links) > MaxLinks:
		return nil, fmt.Errorf("%w: cluster description with %d links", ErrProtocol, len(c.Links))
	case c.Policy != PolicyFast && c.Policy != PolicyFT:
		return nil, fmt.Errorf("%w: cluster description with policy %d", ErrProtocol, c.Policy)
	case c.Mode != ModeSync && c.Mode != ModeAsync:
		return nil, fmt.Errorf("%w: cluster description with mode %d", ErrProtocol, c.Mode)
	case c.Epoch <= 0 || c.SGMax < 0 || c.AckTimeout <= 0 || c.Heartbeat <= 0:
		return nil, fmt.Errorf("%w: cluster description with epoch %v, sg-max %d, ack timeout %v, heartbeat %v", ErrProtocol, c.Epoch, c.SGMax, c.AckTimeout, c.Heartbeat)
	case c.Speculate < 0 || c.Speculate >= 1 || (c.Speculate > 0 && c.Policy != PolicyFT):
		return nil, fmt.Errorf("%w: cluster description speculating at %v of the interval with policy %v", ErrProtocol, c.Speculate, c.Policy)
	case c.ActiveBackup < ActiveBackupOff || c.ActiveBackup > ActiveBackupOn ||
		(c.ActiveBackup != ActiveBackupOff && (c.Policy != PolicyFT || c.Mode != ModeSync || c.Speculate > 0)):
		return nil, fmt.Errorf("%w: cluster description with active backup %v, policy %v, mode %v, speculating at %v", ErrProtocol, c.ActiveBackup, c.Policy, c.Mode, c.Speculate)
	case c.Reduce != nil && (c.Reduce.CacheBytes < 0 || c.Reduce.CacheBytes > maxGuestBytes || (c.Reduce.Similar && c.Reduce.CacheBytes < PageSize)):
		return nil, fmt.Errorf("%w: cluster description with a page cache of %d bytes", ErrProtocol, c.Reduce.CacheBytes)
	}
	return &c, nil
}

// Cluster is the replication of the VM whose state this node holds, as
// its primary described it; false before any.
func (r *Replica) Cluster() (Cluster, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cluster == nil {
		return Cluster{}, false
	}
	return *r.cluster, true
}

// StateGeneration is the generation of the primary whose state this node
// received last; zero if none.
func (r *Replica) StateGeneration() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stateGen
}

// VMID is the id of the VM this node serves; zero before any.
func (r *Replica) VMID() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.vmID
}

// Successor is how the node named self protects the VM once it has taken
// it over (no coordinator): the same links but those to self (a primary
// keeps no copy of its own memory), and as its leader the first node of
// them. With no link left, links is empty: the VM runs unprotected.
func (c Cluster) Successor(self string) (links []string, leader string) {
	for _, l := range c.Links {
		if linkNode(l) != self {
			links = append(links, l)
		}
	}
	if len(links) > 0 {
		leader = linkNode(links[0])
	}
	return links, leader
}

// Nodes are the nodes the links reach, each once, by the address of
// their --listen: where a recovery finds the pages.
func (c Cluster) Nodes() []string {
	var nodes []string
	for _, l := range c.Links {
		if n := linkNode(l); !slices.Contains(nodes, n) {
			nodes = append(nodes, n)
		}
	}
	return nodes
}

// linkNode is the node address (its --listen) a link entry names: the
// entry itself for TCP, the ?auth= address for RDMA.
func linkNode(link string) string {
	a, err := ParseLinkAddr(link)
	if err != nil {
		return link
	}
	if a.Transport == TransportRDMA {
		return a.Auth
	}
	return a.HostPort()
}
