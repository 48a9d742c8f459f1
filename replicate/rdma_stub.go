//go:build !rdma

package replicate

import "context"

// RDMAEnabled reports whether this build has the RDMA transport.
const RDMAEnabled = false

func dialRDMA(ctx context.Context, d rdmaDial) (Link, error) { return nil, ErrNoRDMA }

// ListenRDMA needs a build with -tags rdma.
func ListenRDMA(addr string) (RDMAListener, error) { return nil, ErrNoRDMA }

// ServeRDMA needs a build with -tags rdma.
func (r *Replica) ServeRDMA(ctx context.Context, ln RDMAListener) error { return ErrNoRDMA }

// RDMADevices needs a build with -tags rdma.
func RDMADevices() ([]RDMADevice, error) { return nil, ErrNoRDMA }

// RDMAForkStatus reports libibverbs' fork support; this build has none.
func RDMAForkStatus() string { return "not applicable (built without RDMA)" }
