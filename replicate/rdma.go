package replicate

// # RDMA transport
//
// A link whose address is rdma://HOST:PORT runs over an RDMA reliable
// connection (RC queue pair) set up with librdmacm, when tandem is built
// with -tags rdma (cgo, libibverbs and librdmacm from rdma-core). Without the
// tag such a link is refused with ErrNoRDMA; everything else is unchanged.
// The state connection to the leader and the leader's recovery reads stay
// on TCP: they carry little data, and recovery must work whatever the
// replicas' NICs do.
//
// Connection. The primary first authenticates the link over TCP at the
// replica's --listen address (?auth=HOST:PORT in the link address): an
// auth handshake, then the link's hello, which the replica admits exactly
// as for a TCP link and answers with a one-time ticket and a confirmation
// key (rdma_auth.go). It then resolves the address and route (rdma_cm),
// creates one RC QP for the link and connects; the connect request's
// private data carries the ticket (rdmaConnectData, 24 bytes: the IB CM
// allows 56). The replica accepts only a ticket it issued, once, registers
// its buffers, pre-posts receives and accepts; the accept's private data
// carries the addresses, rkeys and sizes of its buffers with an HMAC under
// the confirmation key (rdmaAcceptData), which the primary checks before it
// writes. A refusal is an rdma_reject whose private data carries the
// reason, which the primary reports; a request without a valid ticket
// learns only that it was not authenticated.
//
// Buffers. The primary registers guest RAM once per device (ibv_reg_mr, on-
// demand paging first when the device offers it, else pinned), shared by
// every link on that device for as long as the primary lives, plus one small
// map buffer per link. A replica registers, per link, one map buffer and a
// staging buffer of twice guest RAM: epoch e goes to half e%2. Two halves are
// needed because the primary writes epoch e+1 with one-sided writes the
// replica's CPU never sees start: the staged copy of epoch e must survive
// them until the replica learns, at e+1's immediate, whether e was committed
// (apply it) or not (drop it), exactly as the TCP replica decides at e+1's
// map. The primary starts e+1 on a link only after that link acknowledged
// e, and a replica acknowledges e only after the apply of e-1 that reads the
// other half has finished, so the halves are never written while read.
//
// One epoch on one link (seed 003, IV.B): an RDMA_WRITE of the map record
// (rdmaMapRecord) into the replica's map buffer, then the data as RDMA
// writes whose scatter-gather lists point straight into guest memory (or,
// in async mode, the primary's staging copy), split to the QP's max_sge and
// the port's max_msg_sz (planWrites); the last of them is an
// RDMA_WRITE_WITH_IMM whose immediate is the epoch (encodeImm). RC delivers
// in order, so when the replica's receive completes, the map and every byte
// before it are in place. The replica checks the map against the immediate
// and the byte count of the final write, stages the epoch with the TCP
// replica's own logic (beginEpoch through stage.buf), and acknowledges it
// with a SEND_WITH_IMM. A commit is a SEND_WITH_IMM from the primary.
//
// Completions arrive on a completion channel whose file descriptor waits in
// Go's poller (no busy polling, no blocked thread). A work completion in
// error, a QP or port or device async event, and an rdma_cm disconnect all
// end the link: the primary sees an Ack with Err and handles it like a
// broken TCP connection.
//
// Fork safety. Tandem does not call ibv_fork_init and does not need
// RDMAV_FORK_SAFE: guest RAM is MADV_DONTFORK (vmm.NewMemory), Go starts
// child processes with CLONE_VM|CLONE_VFORK (the parent's pages are never
// made copy-on-write), and kernels from 5.13 copy pinned pages for a child
// at fork anyway (ibv_is_fork_initialized then reports "unneeded", which
// tandem rdma-devices prints).
//
// Memory locking. Unless a device supports on-demand paging, registration
// pins pages and counts against RLIMIT_MEMLOCK: a primary needs guest RAM
// (plus its async staging copy in async mode), a replica twice guest RAM per
// RDMA link it serves. Root (CAP_IPC_LOCK) is exempt; anyone else must
// raise the limit (ulimit -l, LimitMEMLOCK=, limits.conf); the error says
// by how much.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// ErrNoRDMA is returned for RDMA links and commands when tandem was built
// without the rdma build tag.
var ErrNoRDMA = errors.New("replicate: this tandem was built without RDMA support: rebuild it with `go build -tags rdma` (needs cgo and Debian's libibverbs-dev and librdmacm-dev)")

// Transport is what a link runs over.
type Transport int

const (
	TransportTCP Transport = iota
	TransportRDMA
)

func (t Transport) String() string {
	if t == TransportRDMA {
		return "rdma"
	}
	return "tcp"
}

// LinkAddr is a parsed link address from --replicas: HOST:PORT or
// tcp://HOST:PORT for TCP, rdma://HOST:PORT for RDMA, where rdma:// takes an
// optional ?src=IP naming the local address, and so the local RDMA device
// and port, the link leaves from (several links can then use several
// RNICs, as in seed 003), and auth=HOST:PORT, the replica's TCP address
// where the link is authenticated (required to dial; options join with &).
type LinkAddr struct {
	Transport Transport
	Host      string
	Port      string
	Source    string // rdma: local IP to bind, or ""
	// Auth (rdma) is the replica's TCP address (its --listen), where the
	// link is authenticated before its RDMA connection (rdma_auth.go).
	Auth string
}

// HostPort is the address without scheme and options.
func (a LinkAddr) HostPort() string { return net.JoinHostPort(a.Host, a.Port) }

func (a LinkAddr) String() string {
	if a.Transport == TransportTCP {
		return a.HostPort()
	}
	s := "rdma://" + a.HostPort()
	var opts []string
	if a.Source != "" {
		opts = append(opts, "src="+a.Source)
	}
	if a.Auth != "" {
		opts = append(opts, "auth="+a.Auth)
	}
	if len(opts) > 0 {
		s += "?" + strings.Join(opts, "&")
	}
	return s
}

// ParseLinkAddr parses one --replicas entry.
func ParseLinkAddr(s string) (LinkAddr, error) {
	scheme, rest, found := strings.Cut(s, "://")
	if !found {
		scheme, rest = "tcp", s
	}
	var a LinkAddr
	switch strings.ToLower(scheme) {
	case "tcp":
		a.Transport = TransportTCP
	case "rdma":
		a.Transport = TransportRDMA
	default:
		return LinkAddr{}, fmt.Errorf("link address %q: unknown scheme %q (want tcp:// or rdma://)", s, scheme)
	}
	hostport, query, _ := strings.Cut(rest, "?")
	if query != "" {
		if a.Transport != TransportRDMA {
			return LinkAddr{}, fmt.Errorf("link address %q: options are for rdma:// links", s)
		}
		q, err := url.ParseQuery(query)
		if err != nil {
			return LinkAddr{}, fmt.Errorf("link address %q: %v", s, err)
		}
		for k, v := range q {
			if (k != "src" && k != "auth") || len(v) != 1 {
				return LinkAddr{}, fmt.Errorf("link address %q: unknown option %q (rdma:// takes ?src=IP&auth=HOST:PORT)", s, k)
			}
			switch k {
			case "src":
				if net.ParseIP(v[0]) == nil {
					return LinkAddr{}, fmt.Errorf("link address %q: src=%q is not an IP address", s, v[0])
				}
				a.Source = v[0]
			case "auth":
				if h, p, err := net.SplitHostPort(v[0]); err != nil || h == "" || p == "" {
					return LinkAddr{}, fmt.Errorf("link address %q: auth=%q is not HOST:PORT", s, v[0])
				}
				a.Auth = v[0]
			}
		}
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return LinkAddr{}, fmt.Errorf("link address %q: %v", s, err)
	}
	if host == "" {
		return LinkAddr{}, fmt.Errorf("link address %q: no host", s)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return LinkAddr{}, fmt.Errorf("link address %q: port %q: want 1-65535", s, port)
	}
	a.Host, a.Port = host, port
	return a, nil
}

// dialTransport opens link index over the transport its address names.
func (p *Primary) dialTransport(ctx context.Context, addr string, index int, hello Hello) (Link, error) {
	if !strings.Contains(addr, "://") {
		// Plain HOST:PORT, dialled exactly as given.
		return p.dialTCP(ctx, addr, index, hello)
	}
	a, err := ParseLinkAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("replicate: link %d: %w", index, err)
	}
	if a.Transport == TransportTCP {
		return p.dialTCP(ctx, a.HostPort(), index, hello)
	}
	if !RDMAEnabled {
		_, err := dialRDMA(ctx, rdmaDial{addr: a})
		return nil, fmt.Errorf("replicate: link %d (%s): %w", index, a, err)
	}
	// Authenticate over TCP first; the ticket lets the RDMA connect
	// request through (rdma_auth.go).
	setup, ticket, confirm, err := p.rdmaSetup(ctx, a, hello)
	if err != nil {
		return nil, fmt.Errorf("replicate: link %d (%s): %w", index, a, err)
	}
	defer setup.c.Close()
	l, err := dialRDMA(ctx, rdmaDial{
		addr: a, index: index, vmID: p.cfg.VMID, hello: hello, mem: p.src.Memory(), acks: p.acks,
		chunk: p.cfg.FaultChunk, progress: p.cfg.FaultProgress, log: p.log,
		ticket: ticket, confirm: confirm,
	})
	if err != nil {
		return nil, fmt.Errorf("replicate: link %d (%s): %w", index, a, err)
	}
	return l, nil
}

// rdmaDial is what dialRDMA needs to open a link.
type rdmaDial struct {
	addr     LinkAddr
	index    int
	vmID     uint64
	hello    Hello
	mem      []byte // guest RAM, registered once per device
	acks     chan<- Ack
	chunk    int
	progress func(epoch uint64, n int)
	log      *slog.Logger
	// ticket goes in the connect request; confirm authenticates the
	// replica's accept (rdma_auth.go).
	ticket  rdmaTicket
	confirm [32]byte
}

func (p *Primary) dialTCP(ctx context.Context, addr string, index int, hello Hello) (Link, error) {
	l, err := dialLink(ctx, p.cfg.Auth, addr, index, p.cfg.VMID, p.cfg.Generation, hello, p.acks)
	if err != nil {
		return nil, err
	}
	l.chunk, l.progress = p.cfg.FaultChunk, p.cfg.FaultProgress
	p.log.Debug("replica link connected", "link", index, "addr", addr, "element_cost", l.element)
	return l, nil
}

// RDMAListener accepts RDMA links for a replica (ListenRDMA,
// Replica.ServeRDMA).
type RDMAListener interface {
	// Addr is the bound address, HOST:PORT.
	Addr() string
	Close() error
}

// RDMADevice describes one verbs device for tandem rdma-devices.
type RDMADevice struct {
	Name      string
	NodeType  string
	GUID      string
	FW        string
	MaxQP     int
	MaxQPWR   int
	MaxSGE    int
	MaxCQE    int
	MaxMR     int
	MaxMRSize uint64
	// ODP lists the on-demand paging capabilities of RC QPs ("send",
	// "write", ...), empty when the device has none.
	ODP   []string
	Ports []RDMAPort
}

// RDMAPort is one port of an RDMA device.
type RDMAPort struct {
	Num        int
	State      string
	LinkLayer  string
	ActiveMTU  int
	MaxMsgSize uint64
	GID        string // GID index 0, or ""
}

// ErrNoRDMAKernel means the kernel offers no RDMA at all (no ib_uverbs, no
// /dev/infiniband): ibv_get_device_list fails with ENOSYS.
var ErrNoRDMAKernel = errors.New("the kernel has no RDMA support (no ib_uverbs: /dev/infiniband is missing)")

// rdmaSoftRoCEHint is how to get a verbs device without an RNIC.
const rdmaSoftRoCEHint = "modprobe rdma_rxe && rdma link add rxe0 type rxe netdev IF (IF: an Ethernet interface with the address to use)"

// RDMASoftRoCEHint tells how to create a Soft-RoCE device.
func RDMASoftRoCEHint() string { return rdmaSoftRoCEHint }

// odpCapNames names the bits of an ibv_odp_transport_cap_bits mask.
func odpCapNames(caps uint32) []string {
	names := []string{"send", "recv", "write", "read", "atomic", "srq-recv"}
	var out []string
	for i, n := range names {
		if caps&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		out = []string{"none for RC"}
	}
	return out
}

// linkLayerName names an IBV_LINK_LAYER_* value.
func linkLayerName(l int) string {
	switch l {
	case 1:
		return "InfiniBand"
	case 2:
		return "Ethernet"
	}
	return "unspecified"
}

// mtuBytes converts an enum ibv_mtu (1: 256 ... 5: 4096) to bytes.
func mtuBytes(m int) int {
	if m < 1 || m > 5 {
		return 0
	}
	return 128 << m
}
