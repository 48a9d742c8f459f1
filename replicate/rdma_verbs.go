//go:build rdma

package replicate

// The cgo layer of the RDMA transport: every call into libibverbs and
// librdmacm is in this file. The rules it keeps:
//
//   - No Go pointer is stored in C memory. Work requests, scatter-gather
//     lists, completions, async and rdma_cm events live in C memory
//     (tdm_scratch, C.malloc); Go fills plain integers into them and C
//     helpers link them into verbs structures (tdm_build).
//   - The only Go memory C keeps is registered buffers (map buffers, a
//     replica's staging, the primary's async staging copy), each pinned with
//     a runtime.Pinner for as long as it is registered. Guest RAM is an mmap,
//     not Go memory.
//   - Every event is acknowledged as soon as it is read, so destroying a CQ,
//     QP or rdma_cm id never waits for an acknowledgement.
//   - File descriptors wait in Go's poller (fdWaiter): nothing spins and no
//     thread blocks in the library.

/*
#cgo LDFLAGS: -libverbs -lrdmacm
#include <endian.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

// A work request as Go describes it; tdm_build turns it into ibv_send_wr.
struct tdm_wr {
	uint64_t wr_id;
	uint64_t remote_addr;
	uint32_t rkey;
	uint32_t first_sge;
	uint32_t num_sge;
	uint32_t opcode;
	uint32_t flags;
	uint32_t imm;
};

// A work completion without ibv_wc's union, which cgo cannot name.
struct tdm_wc {
	uint64_t wr_id;
	uint32_t status, opcode, vendor_err, byte_len, imm, flags;
};

#define TDM_POLL 16

// Per queue pair scratch, all in C memory.
struct tdm_scratch {
	struct tdm_wr *desc;	// depth
	struct ibv_sge *sge;	// depth * max_sge
	struct ibv_send_wr *wr;	// depth
	int bad;		// index of the first work request not posted
	struct ibv_wc wc[TDM_POLL];
	struct tdm_wc out[TDM_POLL];
};

static struct tdm_scratch *tdm_scratch_new(int depth, int max_sge) {
	struct tdm_scratch *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->desc = calloc(depth, sizeof *s->desc);
	s->sge = calloc((size_t)depth * max_sge, sizeof *s->sge);
	s->wr = calloc(depth, sizeof *s->wr);
	if (!s->desc || !s->sge || !s->wr) {
		free(s->desc); free(s->sge); free(s->wr); free(s);
		return NULL;
	}
	return s;
}

static void tdm_scratch_free(struct tdm_scratch *s) {
	if (!s)
		return;
	free(s->desc); free(s->sge); free(s->wr); free(s);
}

// tdm_build links the first n descriptors into a list of send work
// requests whose scatter-gather lists point into s->sge.
static void tdm_build(struct tdm_scratch *s, int n) {
	for (int i = 0; i < n; i++) {
		struct tdm_wr *d = &s->desc[i];
		struct ibv_send_wr *w = &s->wr[i];
		memset(w, 0, sizeof *w);
		w->wr_id = d->wr_id;
		w->next = i + 1 < n ? &s->wr[i + 1] : NULL;
		w->sg_list = d->num_sge ? &s->sge[d->first_sge] : NULL;
		w->num_sge = d->num_sge;
		w->opcode = d->opcode;
		w->send_flags = d->flags;
		w->imm_data = d->imm;
		w->wr.rdma.remote_addr = d->remote_addr;
		w->wr.rdma.rkey = d->rkey;
	}
}

static int tdm_post(struct ibv_qp *qp, struct tdm_scratch *s, int n) {
	struct ibv_send_wr *bad = NULL;
	tdm_build(s, n);
	int r = ibv_post_send(qp, s->wr, &bad);
	s->bad = r && bad ? (int)(bad - s->wr) : 0;
	return r;
}

// Accessors for tests of tdm_build, which need no device.
static uint64_t tdm_wr_id(struct tdm_scratch *s, int i) { return s->wr[i].wr_id; }
static int tdm_wr_next(struct tdm_scratch *s, int i) { return s->wr[i].next ? (int)(s->wr[i].next - s->wr) : -1; }
static int tdm_wr_sge(struct tdm_scratch *s, int i) { return s->wr[i].sg_list ? (int)(s->wr[i].sg_list - s->sge) : -1; }
static int tdm_wr_num_sge(struct tdm_scratch *s, int i) { return s->wr[i].num_sge; }
static uint32_t tdm_wr_opcode(struct tdm_scratch *s, int i) { return s->wr[i].opcode; }
static uint32_t tdm_wr_flags(struct tdm_scratch *s, int i) { return s->wr[i].send_flags; }
static uint32_t tdm_wr_imm(struct tdm_scratch *s, int i) { return s->wr[i].imm_data; }
static uint64_t tdm_wr_remote(struct tdm_scratch *s, int i) { return s->wr[i].wr.rdma.remote_addr; }
static uint32_t tdm_wr_rkey(struct tdm_scratch *s, int i) { return s->wr[i].wr.rdma.rkey; }

// tdm_post_recv posts n receives without buffers: they only catch
// immediates (RDMA_WRITE_WITH_IMM, SEND_WITH_IMM of no bytes).
static int tdm_post_recv(struct ibv_qp *qp, uint64_t wr_id, int n) {
	for (int i = 0; i < n; i++) {
		struct ibv_recv_wr w, *bad = NULL;
		memset(&w, 0, sizeof w);
		w.wr_id = wr_id;
		int r = ibv_post_recv(qp, &w, &bad);
		if (r)
			return r;
	}
	return 0;
}

static int tdm_poll(struct ibv_cq *cq, struct tdm_scratch *s) {
	int n = ibv_poll_cq(cq, TDM_POLL, s->wc);
	for (int i = 0; i < n; i++) {
		s->out[i].wr_id = s->wc[i].wr_id;
		s->out[i].status = s->wc[i].status;
		s->out[i].opcode = s->wc[i].opcode;
		s->out[i].vendor_err = s->wc[i].vendor_err;
		s->out[i].byte_len = s->wc[i].byte_len;
		s->out[i].imm = s->wc[i].imm_data;
		s->out[i].flags = s->wc[i].wc_flags;
	}
	return n;
}

static int tdm_arm(struct ibv_cq *cq) { return ibv_req_notify_cq(cq, 0); }

// tdm_cq_event takes one event off a non-blocking completion channel,
// acknowledges it and re-arms its CQ: 0, EAGAIN (none), or an errno.
static int tdm_cq_event(struct ibv_comp_channel *ch) {
	struct ibv_cq *cq;
	void *ctx;
	if (ibv_get_cq_event(ch, &cq, &ctx))
		return errno;
	ibv_ack_cq_events(cq, 1);
	return ibv_req_notify_cq(cq, 0);
}

struct tdm_async {
	uint32_t kind;
	uint32_t qp_num;
	int32_t port;
	struct ibv_cq *cq;
};

static int tdm_async_event(struct ibv_context *ctx, struct tdm_async *out) {
	struct ibv_async_event ev;
	if (ibv_get_async_event(ctx, &ev))
		return errno;
	memset(out, 0, sizeof *out);
	out->kind = ev.event_type;
	switch (ev.event_type) {
	case IBV_EVENT_QP_FATAL: case IBV_EVENT_QP_REQ_ERR: case IBV_EVENT_QP_ACCESS_ERR:
	case IBV_EVENT_COMM_EST: case IBV_EVENT_SQ_DRAINED: case IBV_EVENT_PATH_MIG:
	case IBV_EVENT_PATH_MIG_ERR: case IBV_EVENT_QP_LAST_WQE_REACHED:
		out->qp_num = ev.element.qp->qp_num;
		break;
	case IBV_EVENT_CQ_ERR:
		out->cq = ev.element.cq;
		break;
	case IBV_EVENT_PORT_ACTIVE: case IBV_EVENT_PORT_ERR: case IBV_EVENT_LID_CHANGE:
	case IBV_EVENT_PKEY_CHANGE: case IBV_EVENT_SM_CHANGE: case IBV_EVENT_CLIENT_REREGISTER:
	case IBV_EVENT_GID_CHANGE:
		out->port = ev.element.port_num;
		break;
	default:
		break;
	}
	ibv_ack_async_event(&ev);
	return 0;
}

#define TDM_PDATA 256

struct tdm_cm_event {
	uint32_t event;
	int32_t status;
	struct rdma_cm_id *id;
	struct rdma_cm_id *listen_id;
	uint32_t plen;
	uint8_t pdata[TDM_PDATA];
};

// tdm_cm_event reads one rdma_cm event, copies what tandem uses (private
// data included) and acknowledges it: 0, EAGAIN (none), or an errno.
static int tdm_cm_event(struct rdma_event_channel *ch, struct tdm_cm_event *out) {
	struct rdma_cm_event *ev;
	if (rdma_get_cm_event(ch, &ev))
		return errno;
	out->event = ev->event;
	out->status = ev->status;
	out->id = ev->id;
	out->listen_id = ev->listen_id;
	out->plen = 0;
	if ((ev->event == RDMA_CM_EVENT_CONNECT_REQUEST || ev->event == RDMA_CM_EVENT_ESTABLISHED ||
	     ev->event == RDMA_CM_EVENT_REJECTED) && ev->param.conn.private_data) {
		out->plen = ev->param.conn.private_data_len;
		if (out->plen > TDM_PDATA)
			out->plen = TDM_PDATA;
		memcpy(out->pdata, ev->param.conn.private_data, out->plen);
	}
	rdma_ack_cm_event(ev);
	return 0;
}

static int tdm_sockaddr(const char *ip, int port, struct sockaddr_storage *ss) {
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		return 0;
	}
	if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		return 0;
	}
	return EINVAL;
}

static int tdm_resolve_addr(struct rdma_cm_id *id, const char *src, const char *dst, int port, int ms) {
	struct sockaddr_storage s, d;
	struct sockaddr *sp = NULL;
	int r = tdm_sockaddr(dst, port, &d);
	if (r)
		return r;
	if (src && src[0]) {
		if ((r = tdm_sockaddr(src, 0, &s)))
			return r;
		sp = (struct sockaddr *)&s;
	}
	return rdma_resolve_addr(id, sp, (struct sockaddr *)&d, ms) ? errno : 0;
}

// tdm_listen binds and listens; it returns the bound port, or -errno.
static int tdm_listen(struct rdma_cm_id *id, const char *ip, int port, int backlog) {
	struct sockaddr_storage a;
	int r = tdm_sockaddr(ip, port, &a);
	if (r)
		return -r;
	if (rdma_bind_addr(id, (struct sockaddr *)&a))
		return -errno;
	if (rdma_listen(id, backlog))
		return -errno;
	return ntohs(rdma_get_src_port(id));
}

static int tdm_set_ack_timeout(struct rdma_cm_id *id, uint8_t t) {
	return rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, sizeof t) ? errno : 0;
}

struct tdm_qp {
	uint32_t send_wr, recv_wr, send_sge, qp_num;
};

// tdm_create_qp creates the RC QP of a connection and reports the
// capabilities the provider granted.
static int tdm_create_qp(struct rdma_cm_id *id, struct ibv_pd *pd, struct ibv_cq *cq, struct tdm_qp *q) {
	struct ibv_qp_init_attr a;
	memset(&a, 0, sizeof a);
	a.send_cq = cq;
	a.recv_cq = cq;
	a.qp_type = IBV_QPT_RC;
	a.sq_sig_all = 0;
	a.cap.max_send_wr = q->send_wr;
	a.cap.max_recv_wr = q->recv_wr;
	a.cap.max_send_sge = q->send_sge;
	a.cap.max_recv_sge = 1;
	if (rdma_create_qp(id, pd, &a))
		return errno;
	struct ibv_qp_attr qa;
	struct ibv_qp_init_attr qi;
	memset(&qi, 0, sizeof qi);
	if (ibv_query_qp(id->qp, &qa, IBV_QP_CAP, &qi) == 0) {
		if (qi.cap.max_send_sge > 0 && qi.cap.max_send_sge < q->send_sge)
			q->send_sge = qi.cap.max_send_sge;
		if (qi.cap.max_send_wr > 0 && qi.cap.max_send_wr < q->send_wr)
			q->send_wr = qi.cap.max_send_wr;
	}
	q->qp_num = id->qp->qp_num;
	return 0;
}

static int tdm_connect(struct rdma_cm_id *id, const void *pd, int len, int accept) {
	struct rdma_conn_param p;
	memset(&p, 0, sizeof p);
	p.private_data = pd;
	p.private_data_len = len;
	p.retry_count = 7;
	p.rnr_retry_count = 7;
	return (accept ? rdma_accept(id, &p) : rdma_connect(id, &p)) ? errno : 0;
}

static int tdm_reject(struct rdma_cm_id *id, const void *pd, int len) {
	return rdma_reject(id, pd, len) ? errno : 0;
}

static struct ibv_mr *tdm_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access) {
	return ibv_reg_mr(pd, addr, len, access);
}

struct tdm_dev {
	char name[64];
	char fw[64];
	uint64_t guid;
	int node_type;
	int max_qp, max_qp_wr, max_sge, max_cqe, max_mr;
	uint64_t max_mr_size;
	int ports;
	uint64_t odp_general;
	uint32_t odp_rc;
};

static int tdm_query_device(struct ibv_context *ctx, struct tdm_dev *d) {
	struct ibv_device_attr_ex ax;
	struct ibv_device_attr *a = &ax.orig_attr;
	memset(&ax, 0, sizeof ax);
	memset(d, 0, sizeof *d);
	if (ibv_query_device_ex(ctx, NULL, &ax)) {
		int r = ibv_query_device(ctx, a);
		if (r)
			return r;
	} else {
		d->odp_general = ax.odp_caps.general_caps;
		d->odp_rc = ax.odp_caps.per_transport_caps.rc_odp_caps;
	}
	strncpy(d->name, ibv_get_device_name(ctx->device), sizeof d->name - 1);
	memcpy(d->fw, a->fw_ver, sizeof d->fw);
	d->fw[sizeof d->fw - 1] = 0;
	d->guid = be64toh(a->node_guid);
	d->node_type = ctx->device->node_type;
	d->max_qp = a->max_qp;
	d->max_qp_wr = a->max_qp_wr;
	d->max_sge = a->max_sge;
	d->max_cqe = a->max_cqe;
	d->max_mr = a->max_mr;
	d->max_mr_size = a->max_mr_size;
	d->ports = a->phys_port_cnt;
	return 0;
}

struct tdm_port {
	int state, link_layer, active_mtu;
	uint32_t max_msg_sz;
	int has_gid;
	uint8_t gid[16];
};

static int tdm_query_port(struct ibv_context *ctx, int port, struct tdm_port *p) {
	struct ibv_port_attr a;
	union ibv_gid g;
	memset(&a, 0, sizeof a);
	memset(p, 0, sizeof *p);
	int r = ibv_query_port(ctx, port, &a);
	if (r)
		return r;
	p->state = a.state;
	p->link_layer = a.link_layer;
	p->active_mtu = a.active_mtu;
	p->max_msg_sz = a.max_msg_sz;
	if (ibv_query_gid(ctx, port, 0, &g) == 0) {
		memcpy(p->gid, g.raw, 16);
		p->has_gid = 1;
	}
	return 0;
}

static const char *tdm_port_state(int s) { return ibv_port_state_str(s); }
static const char *tdm_node_type(int t) { return ibv_node_type_str(t); }
static struct ibv_device *tdm_device_at(struct ibv_device **l, int i) { return l[i]; }
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// The Go mirrors of the C enums (rdma_errors.go) must match: each array
// below has length 0 only if its two values are equal.
var (
	_ [0]struct{} = [int(wcSuccess) - int(C.IBV_WC_SUCCESS)]struct{}{}
	_ [0]struct{} = [int(wcLocLenErr) - int(C.IBV_WC_LOC_LEN_ERR)]struct{}{}
	_ [0]struct{} = [int(wcLocProtErr) - int(C.IBV_WC_LOC_PROT_ERR)]struct{}{}
	_ [0]struct{} = [int(wcWRFlushErr) - int(C.IBV_WC_WR_FLUSH_ERR)]struct{}{}
	_ [0]struct{} = [int(wcLocAccessErr) - int(C.IBV_WC_LOC_ACCESS_ERR)]struct{}{}
	_ [0]struct{} = [int(wcRemAccessErr) - int(C.IBV_WC_REM_ACCESS_ERR)]struct{}{}
	_ [0]struct{} = [int(wcRetryExcErr) - int(C.IBV_WC_RETRY_EXC_ERR)]struct{}{}
	_ [0]struct{} = [int(wcRNRRetryExcErr) - int(C.IBV_WC_RNR_RETRY_EXC_ERR)]struct{}{}
	_ [0]struct{} = [int(wcFatalErr) - int(C.IBV_WC_FATAL_ERR)]struct{}{}
	_ [0]struct{} = [int(wcRespTimeoutErr) - int(C.IBV_WC_RESP_TIMEOUT_ERR)]struct{}{}
	_ [0]struct{} = [int(wcTMRndvIncomplete) - int(C.IBV_WC_TM_RNDV_INCOMPLETE)]struct{}{}

	_ [0]struct{} = [int(evCQErr) - int(C.IBV_EVENT_CQ_ERR)]struct{}{}
	_ [0]struct{} = [int(evQPFatal) - int(C.IBV_EVENT_QP_FATAL)]struct{}{}
	_ [0]struct{} = [int(evPathMigErr) - int(C.IBV_EVENT_PATH_MIG_ERR)]struct{}{}
	_ [0]struct{} = [int(evDeviceFatal) - int(C.IBV_EVENT_DEVICE_FATAL)]struct{}{}
	_ [0]struct{} = [int(evPortErr) - int(C.IBV_EVENT_PORT_ERR)]struct{}{}
	_ [0]struct{} = [int(evGIDChange) - int(C.IBV_EVENT_GID_CHANGE)]struct{}{}
	_ [0]struct{} = [int(evWQFatal) - int(C.IBV_EVENT_WQ_FATAL)]struct{}{}

	_ [0]struct{} = [int(cmAddrResolved) - int(C.RDMA_CM_EVENT_ADDR_RESOLVED)]struct{}{}
	_ [0]struct{} = [int(cmConnectRequest) - int(C.RDMA_CM_EVENT_CONNECT_REQUEST)]struct{}{}
	_ [0]struct{} = [int(cmRejected) - int(C.RDMA_CM_EVENT_REJECTED)]struct{}{}
	_ [0]struct{} = [int(cmEstablished) - int(C.RDMA_CM_EVENT_ESTABLISHED)]struct{}{}
	_ [0]struct{} = [int(cmDisconnected) - int(C.RDMA_CM_EVENT_DISCONNECTED)]struct{}{}
	_ [0]struct{} = [int(cmTimewaitExit) - int(C.RDMA_CM_EVENT_TIMEWAIT_EXIT)]struct{}{}
)

// Verbs values the pure-Go code names (rdma_plan.go) must match too.
var (
	_ [0]struct{} = [int(wrWrite) - int(C.IBV_WR_RDMA_WRITE)]struct{}{}
	_ [0]struct{} = [int(wrWriteImm) - int(C.IBV_WR_RDMA_WRITE_WITH_IMM)]struct{}{}
	_ [0]struct{} = [int(wrSendImm) - int(C.IBV_WR_SEND_WITH_IMM)]struct{}{}
	_ [0]struct{} = [int(wcOpRecv) - int(C.IBV_WC_RECV)]struct{}{}
	_ [0]struct{} = [int(wcOpRecvImm) - int(C.IBV_WC_RECV_RDMA_WITH_IMM)]struct{}{}
	_ [0]struct{} = [int(wcFlagWithImm) - int(C.IBV_WC_WITH_IMM)]struct{}{}
)

const (
	sendSignaled   = uint32(C.IBV_SEND_SIGNALED)
	accessLocal    = int(C.IBV_ACCESS_LOCAL_WRITE)
	accessRemoteWr = int(C.IBV_ACCESS_REMOTE_WRITE)
	accessOnDemand = int(C.IBV_ACCESS_ON_DEMAND)
)

// errNoRDMADevice explains that no verbs device serves an operation.
func errNoRDMADevice(op string, err error) error {
	return fmt.Errorf("no RDMA device on this host (%s: %v): tandem rdma-devices lists what the kernel offers; to try without an RNIC, use Soft-RoCE: %s", op, err, rdmaSoftRoCEHint)
}

// errnoOf returns the errno of a cgo call that failed, EIO when the
// library left none.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	return syscall.EIO
}

// --- devices, protection domains, memory registration

// verbsDevice is one RDMA device as tandem uses it: a protection domain,
// the registrations made in it, and the async events of the device, which
// it forwards to the links they concern. Devices are shared by every link
// and replica connection on them, and reference counted.
type verbsDevice struct {
	ctx        *C.struct_ibv_context
	name       string
	pd         *C.struct_ibv_pd
	maxSGE     int
	maxQPWR    int
	odpGeneral uint64
	odpRC      uint32
	refs       int // under devMu

	async     *fdWaiter
	asyncEv   *C.struct_tdm_async
	asyncDone chan struct{}

	mu       sync.Mutex
	watchers map[*devWatcher]struct{}
	regs     []*memReg
}

// devWatcher is a queue pair that wants to hear about the async events
// that concern it.
type devWatcher struct {
	qpNum uint32
	cq    *C.struct_ibv_cq
	port  int
	fail  func(error)
}

var (
	devMu   sync.Mutex
	devices = map[*C.struct_ibv_context]*verbsDevice{}
)

// acquireDevice returns the device of an rdma_cm id's verbs context.
func acquireDevice(ctx *C.struct_ibv_context) (*verbsDevice, error) {
	if ctx == nil {
		return nil, errors.New("the rdma_cm id is bound to no RDMA device")
	}
	devMu.Lock()
	defer devMu.Unlock()
	if d := devices[ctx]; d != nil {
		d.refs++
		return d, nil
	}
	var info C.struct_tdm_dev
	if r := C.tdm_query_device(ctx, &info); r != 0 {
		return nil, fmt.Errorf("ibv_query_device: %w", syscall.Errno(r))
	}
	d := &verbsDevice{
		ctx: ctx, name: C.GoString(&info.name[0]), maxSGE: int(info.max_sge), maxQPWR: int(info.max_qp_wr),
		odpGeneral: uint64(info.odp_general), odpRC: uint32(info.odp_rc),
		watchers: map[*devWatcher]struct{}{}, asyncDone: make(chan struct{}), refs: 1,
	}
	pd, err := C.ibv_alloc_pd(ctx)
	if pd == nil {
		return nil, fmt.Errorf("%s: ibv_alloc_pd: %w", d.name, errnoOf(err))
	}
	d.pd = pd
	if d.async, err = newFDWaiter(int(ctx.async_fd), d.name+" async events"); err != nil {
		C.ibv_dealloc_pd(pd)
		return nil, err
	}
	d.asyncEv = (*C.struct_tdm_async)(C.calloc(1, C.sizeof_struct_tdm_async))
	go d.asyncLoop()
	devices[ctx] = d
	return d, nil
}

func (d *verbsDevice) release() {
	devMu.Lock()
	d.refs--
	last := d.refs == 0
	if last {
		delete(devices, d.ctx)
	}
	devMu.Unlock()
	if !last {
		return
	}
	d.async.close()
	<-d.asyncDone
	C.free(unsafe.Pointer(d.asyncEv))
	d.mu.Lock()
	regs := d.regs
	d.regs = nil
	d.mu.Unlock()
	for _, r := range regs {
		r.deregister()
	}
	C.ibv_dealloc_pd(d.pd)
}

func (d *verbsDevice) asyncLoop() {
	defer close(d.asyncDone)
	for {
		var r C.int
		err := d.async.wait(func() bool {
			r = C.tdm_async_event(d.ctx, d.asyncEv)
			return r != C.EAGAIN
		})
		if err != nil || r != 0 {
			return
		}
		ev := asyncEvent(d.asyncEv.kind)
		qp, port, cq := uint32(d.asyncEv.qp_num), int(d.asyncEv.port), d.asyncEv.cq
		scope := ev.scope()
		if scope == scopeNone {
			continue
		}
		d.mu.Lock()
		var hit []*devWatcher
		for w := range d.watchers {
			if scope == scopeDevice || (scope == scopeQP && w.qpNum == qp) ||
				(scope == scopeCQ && w.cq == cq) || (scope == scopePort && w.port == port) {
				hit = append(hit, w)
			}
		}
		d.mu.Unlock()
		for _, w := range hit {
			w.fail(fmt.Errorf("%v on RDMA device %s port %d", ev, d.name, w.port))
		}
	}
}

func (d *verbsDevice) watch(w *devWatcher) {
	d.mu.Lock()
	d.watchers[w] = struct{}{}
	d.mu.Unlock()
}

func (d *verbsDevice) unwatch(w *devWatcher) {
	d.mu.Lock()
	delete(d.watchers, w)
	d.mu.Unlock()
}

// memReg is one memory registration.
type memReg struct {
	dev       *verbsDevice
	base, end uintptr
	mr        *C.struct_ibv_mr
	lkey      uint32
	rkey      uint32
	odp       bool
	pin       *runtime.Pinner // Go memory, pinned while registered
	foreign   bool            // Go memory handed to WriteSG (async staging)
	refs      int             // under dev.mu
}

// register registers b with the device: on-demand paging first when the
// device offers it for the access needed, pinned otherwise. goMem says b is
// Go memory, which is pinned for as long as it stays registered. Local
// write access is always asked for, even on buffers only the NIC reads: it
// makes the kernel fault in private writable pages at registration, so a
// registration of never-touched memory cannot pin the shared zero page the
// first write would then move away from.
func (d *verbsDevice) register(b []byte, what string, goMem, remote bool) (*memReg, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("registering %s: empty buffer", what)
	}
	access := accessLocal
	need := uint32(C.IBV_ODP_SUPPORT_SEND)
	if remote {
		access |= accessRemoteWr
		need = uint32(C.IBV_ODP_SUPPORT_WRITE)
	}
	reg := &memReg{dev: d, base: addrOf(b), end: addrOf(b) + uintptr(len(b))}
	if goMem {
		reg.pin = new(runtime.Pinner)
		reg.pin.Pin(&b[0])
	}
	p, n := unsafe.Pointer(&b[0]), C.size_t(len(b))
	if d.odpGeneral&uint64(C.IBV_ODP_SUPPORT) != 0 && d.odpRC&need == need {
		if mr := C.tdm_reg_mr(d.pd, p, n, C.int(access|accessOnDemand)); mr != nil {
			reg.mr, reg.odp = mr, true
		}
	}
	if reg.mr == nil {
		mr, err := C.tdm_reg_mr(d.pd, p, n, C.int(access))
		if mr == nil {
			if reg.pin != nil {
				reg.pin.Unpin()
			}
			return nil, memlockError(what, d.name, uint64(len(b)), errnoOf(err), memlockLimit())
		}
		reg.mr = mr
	}
	reg.lkey, reg.rkey = uint32(reg.mr.lkey), uint32(reg.mr.rkey)
	return reg, nil
}

func (r *memReg) deregister() {
	C.ibv_dereg_mr(r.mr)
	if r.pin != nil {
		r.pin.Unpin()
	}
}

// acquire returns a registration of b shared by every user on the device
// (guest RAM: registered once per VM and device), registering it first if
// needed.
func (d *verbsDevice) acquire(b []byte, what string) (*memReg, error) {
	a := addrOf(b)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.regs {
		if !r.foreign && r.base == a && r.end == a+uintptr(len(b)) {
			r.refs++
			return r, nil
		}
	}
	r, err := d.register(b, what, false, false)
	if err != nil {
		return nil, err
	}
	r.refs = 1
	d.regs = append(d.regs, r)
	return r, nil
}

// acquireForeign returns a registration covering s, Go memory the primary
// hands to WriteSG (its async staging copy). It registers s up to its
// capacity, which ends where the Go object holding it ends, so one
// registration serves every later slice of that buffer from that point on;
// idle registrations it supersedes (the buffer grew, or a slice started
// lower) are dropped.
func (d *verbsDevice) acquireForeign(s []byte) (*memReg, error) {
	a := addrOf(s)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.regs {
		if r.foreign && r.base <= a && a+uintptr(len(s)) <= r.end {
			r.refs++
			return r, nil
		}
	}
	r, err := d.register(s[:cap(s)], "the async staging copy of guest memory", true, false)
	if err != nil {
		return nil, err
	}
	r.foreign, r.refs = true, 1
	kept := d.regs[:0]
	for _, o := range d.regs {
		if o.foreign && o.refs == 0 {
			o.deregister()
			continue
		}
		kept = append(kept, o)
	}
	d.regs = append(kept, r)
	return r, nil
}

// releaseReg drops a user of a shared registration. Guest RAM is
// deregistered with its last link; foreign registrations stay cached, idle,
// until superseded or the device goes.
func (d *verbsDevice) releaseReg(r *memReg) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r.refs--
	if r.refs > 0 || r.foreign {
		return
	}
	for i, o := range d.regs {
		if o == r {
			d.regs = append(d.regs[:i], d.regs[i+1:]...)
			break
		}
	}
	r.deregister()
}

func memlockLimit() uint64 {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(8 /* RLIMIT_MEMLOCK */, &l); err != nil {
		return 0
	}
	return l.Cur
}

// portInfo queries a port.
func (d *verbsDevice) portInfo(port int) (C.struct_tdm_port, error) {
	var p C.struct_tdm_port
	if r := C.tdm_query_port(d.ctx, C.int(port), &p); r != 0 {
		return p, fmt.Errorf("%s port %d: ibv_query_port: %w", d.name, port, syscall.Errno(r))
	}
	return p, nil
}

// --- rdma_cm

// cmID is an rdma_cm identifier, named for the files without cgo.
type cmID = *C.struct_rdma_cm_id

// RDMAEnabled reports whether this build has the RDMA transport.
const RDMAEnabled = true

// cmChannel is an rdma_cm event channel read through the poller.
type cmChannel struct {
	ch   *C.struct_rdma_event_channel
	wait *fdWaiter
	ev   *C.struct_tdm_cm_event
}

// cmEventInfo is one rdma_cm event, copied out of the library.
type cmEventInfo struct {
	ev     cmEvent
	status int32
	id     *C.struct_rdma_cm_id
	pdata  []byte
}

func newCMChannel() (*cmChannel, error) {
	ch, err := C.rdma_create_event_channel()
	if ch == nil {
		if errnoOf(err) == syscall.ENODEV {
			return nil, errNoRDMADevice("rdma_create_event_channel", errnoOf(err))
		}
		return nil, fmt.Errorf("rdma_create_event_channel: %w", errnoOf(err))
	}
	c := &cmChannel{ch: ch}
	if c.wait, err = newFDWaiter(int(ch.fd), "rdma_cm events"); err != nil {
		C.rdma_destroy_event_channel(ch)
		return nil, err
	}
	c.ev = (*C.struct_tdm_cm_event)(C.calloc(1, C.sizeof_struct_tdm_cm_event))
	return c, nil
}

func (c *cmChannel) createID() (*C.struct_rdma_cm_id, error) {
	var id *C.struct_rdma_cm_id
	if r, err := C.rdma_create_id(c.ch, &id, nil, C.RDMA_PS_TCP); r != 0 {
		return nil, fmt.Errorf("rdma_create_id: %w", errnoOf(err))
	}
	return id, nil
}

// next waits for the next event until ctx is done.
func (c *cmChannel) next(ctx context.Context) (cmEventInfo, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.wait.setDeadline(dl)
	} else {
		c.wait.setDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { c.wait.setDeadline(time.Now()) })
	defer stop()
	var r C.int
	err := c.wait.wait(func() bool {
		r = C.tdm_cm_event(c.ch, c.ev)
		return r != C.EAGAIN
	})
	if err != nil {
		if ctx.Err() != nil {
			return cmEventInfo{}, ctx.Err()
		}
		return cmEventInfo{}, err
	}
	if r != 0 {
		return cmEventInfo{}, fmt.Errorf("rdma_get_cm_event: %w", syscall.Errno(r))
	}
	e := cmEventInfo{ev: cmEvent(c.ev.event), status: int32(c.ev.status), id: c.ev.id}
	if c.ev.plen > 0 {
		e.pdata = C.GoBytes(unsafe.Pointer(&c.ev.pdata[0]), C.int(c.ev.plen))
	}
	return e, nil
}

// destroy frees the channel; its ids must be destroyed and no next be
// running.
func (c *cmChannel) destroy() {
	c.wait.close()
	C.rdma_destroy_event_channel(c.ch)
	C.free(unsafe.Pointer(c.ev))
}

func cmResolve(id *C.struct_rdma_cm_id, src, dst string, port int, timeout time.Duration) error {
	cs, cd := C.CString(src), C.CString(dst)
	defer C.free(unsafe.Pointer(cs))
	defer C.free(unsafe.Pointer(cd))
	if r := C.tdm_resolve_addr(id, cs, cd, C.int(port), C.int(timeout.Milliseconds())); r != 0 {
		if r == C.ENODEV || r == C.EADDRNOTAVAIL {
			return errNoRDMADevice("rdma_resolve_addr", syscall.Errno(r))
		}
		return fmt.Errorf("rdma_resolve_addr: %w", syscall.Errno(r))
	}
	return nil
}

func cmResolveRoute(id *C.struct_rdma_cm_id, timeout time.Duration) error {
	if r, err := C.rdma_resolve_route(id, C.int(timeout.Milliseconds())); r != 0 {
		return fmt.Errorf("rdma_resolve_route: %w", errnoOf(err))
	}
	return nil
}

// cmAckTimeout sets the local ACK timeout exponent (4.096 µs << t): with
// the seven transport retries it bounds how long a write to a vanished
// replica takes to fail.
func cmAckTimeout(id *C.struct_rdma_cm_id, t uint8) {
	C.tdm_set_ack_timeout(id, C.uint8_t(t))
}

func cmListen(id *C.struct_rdma_cm_id, ip string, port int) (int, error) {
	c := C.CString(ip)
	defer C.free(unsafe.Pointer(c))
	r := C.tdm_listen(id, c, C.int(port), 64)
	if r < 0 {
		e := syscall.Errno(-r)
		if e == syscall.ENODEV || e == syscall.EADDRNOTAVAIL {
			return 0, errNoRDMADevice("rdma_bind_addr "+net.JoinHostPort(ip, fmt.Sprint(port)), e)
		}
		return 0, fmt.Errorf("rdma_bind_addr/rdma_listen %s: %w", net.JoinHostPort(ip, fmt.Sprint(port)), e)
	}
	return int(r), nil
}

func cmConnect(id *C.struct_rdma_cm_id, pdata []byte, accept bool) error {
	p := C.CBytes(pdata)
	defer C.free(p)
	a, op := C.int(0), "rdma_connect"
	if accept {
		a, op = 1, "rdma_accept"
	}
	if r := C.tdm_connect(id, p, C.int(len(pdata)), a); r != 0 {
		return fmt.Errorf("%s: %w", op, syscall.Errno(r))
	}
	return nil
}

func cmReject(id *C.struct_rdma_cm_id, pdata []byte) {
	p := C.CBytes(pdata)
	defer C.free(p)
	C.tdm_reject(id, p, C.int(len(pdata)))
}

func cmDisconnect(id *C.struct_rdma_cm_id) { C.rdma_disconnect(id) }
func cmDestroyID(id *C.struct_rdma_cm_id)  { C.rdma_destroy_id(id) }
func cmVerbs(id *C.struct_rdma_cm_id) *C.struct_ibv_context {
	return id.verbs
}
func cmPort(id *C.struct_rdma_cm_id) int { return int(id.port_num) }

// --- queue pairs

// wr_id kinds: receives, and send groups (the low bits are the group's
// sequence number).
const (
	wrIDRecv  = 1 << 63
	wrIDWrite = 1 << 62
	wrIDSend  = 1 << 61
	wrIDKinds = wrIDRecv | wrIDWrite | wrIDSend
)

// wcInfo is one work completion.
type wcInfo struct {
	wrID                                 uint64
	status, opcode, vendor, byteLen, imm uint32
	flags                                uint32
}

type sendGroup struct {
	seq  uint64
	n    int
	done chan error
}

// errLinkClosed reports work that ended because its link was closed.
var errLinkClosed = errors.New("the RDMA link was closed")

// rdmaEndpoint is one connection's RC queue pair with its completion
// queue, completion channel and send accounting. Both sides use it.
type rdmaEndpoint struct {
	id      *C.struct_rdma_cm_id
	dev     *verbsDevice
	ch      *C.struct_ibv_comp_channel
	cq      *C.struct_ibv_cq
	qp      *C.struct_ibv_qp
	s       *C.struct_tdm_scratch
	wait    *fdWaiter
	watch   *devWatcher
	port    int
	maxSGE  int
	sqDepth int
	rqDepth int
	maxMsg  uint64

	onRecv func(wcInfo) error // in the completion goroutine
	onFail func(error)

	loopDone chan struct{}
	mu       sync.Mutex
	cond     sync.Cond
	out      int // send work requests not yet completed
	seq      uint64
	groups   []sendGroup
	err      error
	failOnce sync.Once
}

// newEndpoint creates the completion channel, CQ and QP of a connection on
// id and posts its receives. It asks the device for its max_sge and lowers
// the request until the provider accepts the QP.
func newEndpoint(id *C.struct_rdma_cm_id, dev *verbsDevice, sq, rq int, onRecv func(wcInfo) error, onFail func(error)) (*rdmaEndpoint, error) {
	e := &rdmaEndpoint{id: id, dev: dev, port: cmPort(id), loopDone: make(chan struct{}), onRecv: onRecv, onFail: onFail}
	e.cond.L = &e.mu
	sq, rq = max(4, min(sq, dev.maxQPWR)), max(4, min(rq, dev.maxQPWR))
	pi, err := dev.portInfo(e.port)
	if err != nil {
		return nil, err
	}
	e.maxMsg = uint64(pi.max_msg_sz)
	if e.maxMsg == 0 {
		e.maxMsg = 1 << 31
	}
	ch, cerr := C.ibv_create_comp_channel(dev.ctx)
	if ch == nil {
		return nil, fmt.Errorf("%s: ibv_create_comp_channel: %w", dev.name, errnoOf(cerr))
	}
	e.ch = ch
	cq, cerr := C.ibv_create_cq(dev.ctx, C.int(sq+rq), nil, ch, 0)
	if cq == nil {
		e.destroy()
		return nil, fmt.Errorf("%s: ibv_create_cq of %d entries: %w", dev.name, sq+rq, errnoOf(cerr))
	}
	e.cq = cq
	q := C.struct_tdm_qp{send_wr: C.uint32_t(sq), recv_wr: C.uint32_t(rq), send_sge: C.uint32_t(max(1, min(dev.maxSGE, 256)))}
	for {
		r := C.tdm_create_qp(id, dev.pd, cq, &q)
		if r == 0 {
			break
		}
		if r != C.EINVAL || q.send_sge <= 1 {
			e.destroy()
			return nil, fmt.Errorf("%s: rdma_create_qp (%d send WRs of %d SGEs): %w", dev.name, sq, q.send_sge, syscall.Errno(r))
		}
		q.send_sge /= 2
	}
	e.qp = id.qp
	e.maxSGE, e.sqDepth, e.rqDepth = int(q.send_sge), int(q.send_wr), rq
	if e.s = C.tdm_scratch_new(C.int(e.sqDepth), C.int(e.maxSGE)); e.s == nil {
		e.destroy()
		return nil, errors.New("out of memory for work requests")
	}
	if e.wait, err = newFDWaiter(int(ch.fd), "completion channel"); err != nil {
		e.destroy()
		return nil, err
	}
	if r := C.tdm_arm(cq); r != 0 {
		e.destroy()
		return nil, fmt.Errorf("ibv_req_notify_cq: %w", syscall.Errno(r))
	}
	if r := C.tdm_post_recv(e.qp, wrIDRecv, C.int(rq)); r != 0 {
		e.destroy()
		return nil, fmt.Errorf("ibv_post_recv: %w", syscall.Errno(r))
	}
	e.watch = &devWatcher{qpNum: uint32(e.qp.qp_num), cq: cq, port: e.port, fail: e.fail}
	dev.watch(e.watch)
	return e, nil
}

// start runs the completion goroutine.
func (e *rdmaEndpoint) start() {
	go func() {
		defer close(e.loopDone)
		e.drain()
		for {
			var r C.int
			err := e.wait.wait(func() bool {
				r = C.tdm_cq_event(e.ch)
				return r != C.EAGAIN
			})
			if err != nil {
				return // closed
			}
			if r != 0 {
				e.fail(fmt.Errorf("completion channel: %w", syscall.Errno(r)))
				return
			}
			e.drain()
		}
	}()
}

// drain handles every completion in the CQ.
func (e *rdmaEndpoint) drain() {
	for {
		n := int(C.tdm_poll(e.cq, e.s))
		if n < 0 {
			e.fail(errors.New("ibv_poll_cq failed"))
			return
		}
		for i := 0; i < n; i++ {
			o := &e.s.out[i]
			e.complete(wcInfo{
				wrID: uint64(o.wr_id), status: uint32(o.status), opcode: uint32(o.opcode), vendor: uint32(o.vendor_err),
				byteLen: uint32(o.byte_len), imm: uint32(o.imm), flags: uint32(o.flags),
			})
		}
		if n < C.TDM_POLL {
			return
		}
	}
}

func (e *rdmaEndpoint) failed() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err
}

func (e *rdmaEndpoint) complete(w wcInfo) {
	if w.wrID&wrIDRecv != 0 {
		if err := wcError("receive", w.status, w.vendor); err != nil {
			if e.failed() == nil {
				e.fail(err)
			}
			return
		}
		if err := e.onRecv(w); err != nil {
			e.fail(err)
			return
		}
		if r := C.tdm_post_recv(e.qp, wrIDRecv, 1); r != 0 && e.failed() == nil {
			e.fail(fmt.Errorf("ibv_post_recv: %w", syscall.Errno(r)))
		}
		return
	}
	op := "write"
	if w.wrID&wrIDSend != 0 {
		op = "send"
	}
	if err := wcError(op, w.status, w.vendor); err != nil {
		if e.failed() == nil {
			e.fail(err)
		}
		return
	}
	seq := w.wrID &^ wrIDKinds
	e.mu.Lock()
	for len(e.groups) > 0 && e.groups[0].seq <= seq {
		g := e.groups[0]
		e.groups = e.groups[1:]
		e.out -= g.n
		if g.done != nil {
			g.done <- nil
		}
	}
	e.cond.Broadcast()
	e.mu.Unlock()
}

// fail ends the endpoint's work with err, once.
func (e *rdmaEndpoint) fail(err error) {
	e.failOnce.Do(func() {
		e.mu.Lock()
		e.err = err
		groups := e.groups
		e.groups = nil
		e.cond.Broadcast()
		e.mu.Unlock()
		for _, g := range groups {
			if g.done != nil {
				g.done <- err
			}
		}
		if e.onFail != nil {
			e.onFail(err)
		}
	})
}

// post posts descs in groups of at most the send queue's depth, each group
// signalled on its last work request only, waiting for room in the queue
// until deadline. It returns the channel on which the last group's
// completion (or the endpoint's failure) arrives.
func (e *rdmaEndpoint) post(kind uint64, descs []rdmaDesc, deadline time.Time) (<-chan error, error) {
	var last chan error
	for len(descs) > 0 {
		n := min(len(descs), e.sqDepth)
		last = make(chan error, 1)
		if err := e.postGroup(kind, descs[:n], last, deadline); err != nil {
			return nil, err
		}
		descs = descs[n:]
	}
	return last, nil
}

func (e *rdmaEndpoint) postGroup(kind uint64, g []rdmaDesc, done chan error, deadline time.Time) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var timedOut bool
	if e.out+len(g) > e.sqDepth && e.err == nil {
		t := time.AfterFunc(time.Until(deadline), func() {
			e.mu.Lock()
			timedOut = true
			e.cond.Broadcast()
			e.mu.Unlock()
		})
		for e.out+len(g) > e.sqDepth && e.err == nil && !timedOut {
			e.cond.Wait()
		}
		t.Stop()
	}
	if e.err != nil {
		return e.err
	}
	if timedOut {
		return errors.New("no room in the send queue: the NIC completes nothing")
	}
	e.seq++
	descs := unsafe.Slice(e.s.desc, e.sqDepth)
	sges := unsafe.Slice(e.s.sge, e.sqDepth*e.maxSGE)
	k := 0
	for i, d := range g {
		if len(d.sges) > e.maxSGE {
			return fmt.Errorf("a work request of %d SGEs on a QP of %d", len(d.sges), e.maxSGE)
		}
		flags := uint32(0)
		if i == len(g)-1 {
			flags = sendSignaled
		}
		descs[i] = C.struct_tdm_wr{
			wr_id: C.uint64_t(kind | e.seq), remote_addr: C.uint64_t(d.remote), rkey: C.uint32_t(d.rkey),
			first_sge: C.uint32_t(k), num_sge: C.uint32_t(len(d.sges)), opcode: C.uint32_t(d.opcode),
			flags: C.uint32_t(flags), imm: C.uint32_t(d.imm),
		}
		for _, s := range d.sges {
			sges[k] = C.struct_ibv_sge{addr: C.uint64_t(s.Addr), length: C.uint32_t(s.Len), lkey: C.uint32_t(s.Key)}
			k++
		}
	}
	if r := C.tdm_post(e.qp, e.s, C.int(len(g))); r != 0 {
		return fmt.Errorf("ibv_post_send (work request %d of %d): %w", int(e.s.bad), len(g), syscall.Errno(r))
	}
	e.out += len(g)
	e.groups = append(e.groups, sendGroup{seq: e.seq, n: len(g), done: done})
	return nil
}

// stop ends the completion goroutine (if started) and waits for it.
func (e *rdmaEndpoint) stop(started bool) {
	if e.wait != nil {
		e.wait.close()
	}
	if started {
		<-e.loopDone
	}
}

// destroy frees the QP, CQ and channel; the completion goroutine must have
// stopped. The rdma_cm id is the caller's.
func (e *rdmaEndpoint) destroy() {
	if e.watch != nil {
		e.dev.unwatch(e.watch)
	}
	if e.qp != nil {
		C.rdma_destroy_qp(e.id)
		e.qp = nil
	}
	if e.cq != nil {
		C.ibv_destroy_cq(e.cq)
		e.cq = nil
	}
	if e.wait != nil {
		e.wait.close()
	}
	if e.ch != nil {
		C.ibv_destroy_comp_channel(e.ch)
		e.ch = nil
	}
	if e.s != nil {
		C.tdm_scratch_free(e.s)
		e.s = nil
	}
}

// --- tandem rdma-devices

// RDMADevices lists the verbs devices of this host and their ports.
func RDMADevices() ([]RDMADevice, error) {
	var n C.int
	list, err := C.ibv_get_device_list(&n)
	if list == nil {
		if errnoOf(err) == syscall.ENOSYS {
			return nil, ErrNoRDMAKernel
		}
		return nil, fmt.Errorf("ibv_get_device_list: %w", errnoOf(err))
	}
	defer C.ibv_free_device_list(list)
	var devs []RDMADevice
	for i := 0; i < int(n); i++ {
		dev := C.tdm_device_at(list, C.int(i))
		name := C.GoString(C.ibv_get_device_name(dev))
		ctx, err := C.ibv_open_device(dev)
		if ctx == nil {
			return devs, fmt.Errorf("%s: ibv_open_device: %w", name, errnoOf(err))
		}
		d, err := describeDevice(ctx)
		C.ibv_close_device(ctx)
		if err != nil {
			return devs, fmt.Errorf("%s: %w", name, err)
		}
		devs = append(devs, d)
	}
	return devs, nil
}

func describeDevice(ctx *C.struct_ibv_context) (RDMADevice, error) {
	var a C.struct_tdm_dev
	if r := C.tdm_query_device(ctx, &a); r != 0 {
		return RDMADevice{}, fmt.Errorf("ibv_query_device: %w", syscall.Errno(r))
	}
	g := uint64(a.guid)
	d := RDMADevice{
		Name: C.GoString(&a.name[0]), NodeType: C.GoString(C.tdm_node_type(a.node_type)),
		GUID: fmt.Sprintf("%04x:%04x:%04x:%04x", g>>48, g>>32&0xffff, g>>16&0xffff, g&0xffff),
		FW:   C.GoString(&a.fw[0]), MaxQP: int(a.max_qp), MaxQPWR: int(a.max_qp_wr), MaxSGE: int(a.max_sge),
		MaxCQE: int(a.max_cqe), MaxMR: int(a.max_mr), MaxMRSize: uint64(a.max_mr_size),
	}
	if uint64(a.odp_general)&uint64(C.IBV_ODP_SUPPORT) != 0 {
		d.ODP = odpCapNames(uint32(a.odp_rc))
	}
	for port := 1; port <= int(a.ports); port++ {
		var p C.struct_tdm_port
		if r := C.tdm_query_port(ctx, C.int(port), &p); r != 0 {
			return d, fmt.Errorf("port %d: ibv_query_port: %w", port, syscall.Errno(r))
		}
		rp := RDMAPort{
			Num: port, State: C.GoString(C.tdm_port_state(p.state)), LinkLayer: linkLayerName(int(p.link_layer)),
			ActiveMTU: mtuBytes(int(p.active_mtu)), MaxMsgSize: uint64(p.max_msg_sz),
		}
		if p.has_gid != 0 {
			rp.GID = net.IP(C.GoBytes(unsafe.Pointer(&p.gid[0]), 16)).String()
		}
		d.Ports = append(d.Ports, rp)
	}
	return d, nil
}

// RDMAForkStatus reports libibverbs' fork support (ibv_is_fork_initialized).
func RDMAForkStatus() string {
	switch C.ibv_is_fork_initialized() {
	case C.IBV_FORK_UNNEEDED:
		return "unneeded (the kernel copies pinned pages at fork)"
	case C.IBV_FORK_ENABLED:
		return "enabled (ibv_fork_init or RDMAV_FORK_SAFE)"
	}
	return "not enabled (tandem does not need it: see the README)"
}

// tdmBuildForTest fills scratch descriptors and links them as a post would,
// without a QP, and reads the resulting work requests back: the cgo side of
// work request building is tested without a device.
func tdmBuildForTest(descs []rdmaDesc, maxSGE int) ([]builtWR, error) {
	s := C.tdm_scratch_new(C.int(len(descs)), C.int(maxSGE))
	if s == nil {
		return nil, errors.New("out of memory")
	}
	defer C.tdm_scratch_free(s)
	e := &rdmaEndpoint{s: s, sqDepth: len(descs), maxSGE: maxSGE}
	d := unsafe.Slice(s.desc, len(descs))
	sg := unsafe.Slice(s.sge, len(descs)*maxSGE)
	k := 0
	for i, x := range descs {
		if len(x.sges) > e.maxSGE {
			return nil, fmt.Errorf("%d SGEs on a QP of %d", len(x.sges), maxSGE)
		}
		d[i] = C.struct_tdm_wr{wr_id: C.uint64_t(i), remote_addr: C.uint64_t(x.remote), rkey: C.uint32_t(x.rkey),
			first_sge: C.uint32_t(k), num_sge: C.uint32_t(len(x.sges)), opcode: C.uint32_t(x.opcode), imm: C.uint32_t(x.imm)}
		for _, v := range x.sges {
			sg[k] = C.struct_ibv_sge{addr: C.uint64_t(v.Addr), length: C.uint32_t(v.Len), lkey: C.uint32_t(v.Key)}
			k++
		}
	}
	C.tdm_build(s, C.int(len(descs)))
	out := make([]builtWR, len(descs))
	for i := range out {
		ci := C.int(i)
		w := builtWR{
			WRID: uint64(C.tdm_wr_id(s, ci)), Next: int(C.tdm_wr_next(s, ci)), Opcode: uint32(C.tdm_wr_opcode(s, ci)),
			Flags: uint32(C.tdm_wr_flags(s, ci)), Imm: uint32(C.tdm_wr_imm(s, ci)), Remote: uint64(C.tdm_wr_remote(s, ci)),
			RKey: uint32(C.tdm_wr_rkey(s, ci)),
		}
		if first := int(C.tdm_wr_sge(s, ci)); first >= 0 {
			for j := 0; j < int(C.tdm_wr_num_sge(s, ci)); j++ {
				v := sg[first+j]
				w.SGEs = append(w.SGEs, rdmaSGE{Addr: uint64(v.addr), Len: uint32(v.length), Key: uint32(v.lkey)})
			}
		}
		out[i] = w
	}
	return out, nil
}

// builtWR is a work request as tdm_build laid it out.
type builtWR struct {
	WRID   uint64
	Next   int // index of the next work request, -1 for none
	Opcode uint32
	Flags  uint32
	Imm    uint32
	Remote uint64
	RKey   uint32
	SGEs   []rdmaSGE
}
