package replicate

import (
	"errors"
	"fmt"
	"syscall"
)

// The verbs and rdma_cm enums tandem interprets, mirrored here so that the
// error mapping is tested without the C library; the rdma build checks at
// compile time that every value matches the C headers.

// wcStatus is enum ibv_wc_status.
type wcStatus uint32

const (
	wcSuccess wcStatus = iota
	wcLocLenErr
	wcLocQPOpErr
	wcLocEECOpErr
	wcLocProtErr
	wcWRFlushErr
	wcMWBindErr
	wcBadRespErr
	wcLocAccessErr
	wcRemInvReqErr
	wcRemAccessErr
	wcRemOpErr
	wcRetryExcErr
	wcRNRRetryExcErr
	wcLocRDDViolErr
	wcRemInvRdReqErr
	wcRemAbortErr
	wcInvEECNErr
	wcInvEECStateErr
	wcFatalErr
	wcRespTimeoutErr
	wcGeneralErr
	wcTMErr
	wcTMRndvIncomplete
	wcStatusEnd
)

var wcStatusNames = [...]string{
	"success", "local length error", "local QP operation error", "local EE context operation error",
	"local protection error", "work request flushed", "memory window bind error", "bad response",
	"local access error", "remote invalid request", "remote access error", "remote operation error",
	"transport retry counter exceeded", "RNR retry counter exceeded", "local RDD violation",
	"remote invalid RD request", "remote aborted", "invalid EE context number",
	"invalid EE context state", "fatal error", "response timeout", "general error",
	"tag matching error", "tag matching rendezvous incomplete",
}

func (s wcStatus) String() string {
	if s < wcStatusEnd {
		return wcStatusNames[s]
	}
	return fmt.Sprintf("status %d", uint32(s))
}

// hint says what a failed completion most likely means for a link.
func (s wcStatus) hint() string {
	switch s {
	case wcRetryExcErr, wcRespTimeoutErr:
		return "the replica stopped answering: its host, NIC or the path to it is down"
	case wcRNRRetryExcErr:
		return "the replica posted no receive in time: it is stuck or gone"
	case wcRemAccessErr, wcRemInvReqErr:
		return "the replica refused the write: its buffers are gone or no longer registered (replica restarted?)"
	case wcRemOpErr, wcRemAbortErr:
		return "the replica's NIC failed the operation"
	case wcLocProtErr, wcLocAccessErr, wcLocLenErr:
		return "a local buffer was not registered as sent: a bug in tandem"
	case wcWRFlushErr:
		return "the queue pair had already failed or was closed"
	case wcFatalErr, wcGeneralErr:
		return "the local RDMA device failed"
	}
	return ""
}

// RDMAError is a failed RDMA operation on a link.
type RDMAError struct {
	Op     string // what was being done: "write", "send", "receive", ...
	Status uint32 // ibv_wc_status
	Vendor uint32 // the provider's syndrome
}

func (e *RDMAError) Error() string {
	s := wcStatus(e.Status)
	msg := fmt.Sprintf("rdma %s failed: %v (vendor error %#x)", e.Op, s, e.Vendor)
	if h := s.hint(); h != "" {
		msg += ": " + h
	}
	return msg
}

// wcError maps a work completion's status to the error that ends its
// link, nil for success.
func wcError(op string, status, vendor uint32) error {
	if wcStatus(status) == wcSuccess {
		return nil
	}
	return &RDMAError{Op: op, Status: status, Vendor: vendor}
}

// asyncEvent is enum ibv_event_type.
type asyncEvent uint32

const (
	evCQErr asyncEvent = iota
	evQPFatal
	evQPReqErr
	evQPAccessErr
	evCommEst
	evSQDrained
	evPathMig
	evPathMigErr
	evDeviceFatal
	evPortActive
	evPortErr
	evLIDChange
	evPKeyChange
	evSMChange
	evSRQErr
	evSRQLimitReached
	evQPLastWQEReached
	evClientReregister
	evGIDChange
	evWQFatal
	asyncEventEnd
)

var asyncEventNames = [...]string{
	"CQ error (overrun)", "QP fatal error", "QP invalid request", "QP access violation",
	"communication established", "send queue drained", "path migrated", "path migration failed",
	"device fatal error", "port active", "port down", "LID changed", "P_Key table changed",
	"subnet manager changed", "SRQ error", "SRQ limit reached", "last WQE reached",
	"client reregister", "GID table changed", "WQ fatal error",
}

func (e asyncEvent) String() string {
	if e < asyncEventEnd {
		return asyncEventNames[e]
	}
	return fmt.Sprintf("async event %d", uint32(e))
}

// eventScope says what an async event takes down.
type eventScope int

const (
	scopeNone   eventScope = iota // informational
	scopeQP                       // the link of that QP
	scopeCQ                       // the link of that CQ
	scopePort                     // every link on that port
	scopeDevice                   // every link on the device
)

// scope classifies an async event. A port going down ends its links at
// once rather than after the transport's retries: the primary resends to
// the others (fast) or goes on without it (ft), which it would do anyway.
func (e asyncEvent) scope() eventScope {
	switch e {
	case evQPFatal, evQPReqErr, evQPAccessErr, evPathMigErr, evWQFatal:
		return scopeQP
	case evCQErr:
		return scopeCQ
	case evPortErr:
		return scopePort
	case evDeviceFatal:
		return scopeDevice
	}
	return scopeNone
}

// cmEvent is enum rdma_cm_event_type.
type cmEvent uint32

const (
	cmAddrResolved cmEvent = iota
	cmAddrError
	cmRouteResolved
	cmRouteError
	cmConnectRequest
	cmConnectResponse
	cmConnectError
	cmUnreachable
	cmRejected
	cmEstablished
	cmDisconnected
	cmDeviceRemoval
	cmMulticastJoin
	cmMulticastError
	cmAddrChange
	cmTimewaitExit
	cmEventEnd
)

var cmEventNames = [...]string{
	"address resolved", "address resolution failed", "route resolved", "route resolution failed",
	"connect request", "connect response", "connection error", "unreachable", "rejected",
	"established", "disconnected", "device removed", "multicast join", "multicast error",
	"address changed", "timewait exit",
}

func (e cmEvent) String() string {
	if e < cmEventEnd {
		return cmEventNames[e]
	}
	return fmt.Sprintf("rdma_cm event %d", uint32(e))
}

// cmError explains an rdma_cm event that ends a connection attempt or a
// connection. status is the event's status (a negative errno or a
// transport-specific reason); reason is a Tandem replica's reject text.
func cmError(ev cmEvent, status int32, reason string) error {
	switch ev {
	case cmRejected:
		if reason != "" {
			return fmt.Errorf("the replica refused the link: %s", reason)
		}
		return fmt.Errorf("connection rejected (reason %d): no Tandem replica listens for RDMA there (tandem replica --rdma-listen)", status)
	case cmUnreachable, cmConnectError:
		return fmt.Errorf("rdma_cm: %v (status %d): the replica host or its RDMA listener is unreachable", ev, status)
	case cmAddrError:
		return fmt.Errorf("rdma_cm: %v%s: no RDMA device serves the route to that address (is there an RNIC, or Soft-RoCE on the interface?)", ev, errnoSuffix(status))
	case cmRouteError:
		return fmt.Errorf("rdma_cm: %v%s", ev, errnoSuffix(status))
	case cmDisconnected:
		return errors.New("the replica disconnected the link (see the replica's log)")
	case cmDeviceRemoval:
		return errors.New("the RDMA device under the link was removed")
	case cmAddrChange:
		return errors.New("the network device under the link changed its address")
	}
	return fmt.Errorf("rdma_cm: unexpected %v (status %d)", ev, status)
}

func errnoSuffix(status int32) string {
	if status < 0 {
		return ": " + syscall.Errno(-status).Error()
	}
	if status > 0 {
		return fmt.Sprintf(" (status %d)", status)
	}
	return ""
}

// memlockError explains a failed memory registration. errno is what
// ibv_reg_mr set, limit the RLIMIT_MEMLOCK soft limit (RLIM_INFINITY: none)
// and need the bytes being registered.
func memlockError(what, device string, need uint64, errno syscall.Errno, limit uint64) error {
	base := fmt.Errorf("registering %s (%s) with RDMA device %s: %w", what, sizeString(need), device, errno)
	switch errno {
	case syscall.ENOMEM, syscall.EPERM, syscall.EAGAIN:
	default:
		return base
	}
	if limit == ^uint64(0) {
		return fmt.Errorf("%w: the pages cannot be pinned although RLIMIT_MEMLOCK is unlimited: the host is short of memory, or a cgroup limits it", base)
	}
	return fmt.Errorf("%w: the pages must be pinned (the device offers no on-demand paging) and RLIMIT_MEMLOCK is %s: "+
		"raise the locked-memory limit of the tandem process to at least %s more than it already locks "+
		"(ulimit -l unlimited; LimitMEMLOCK=infinity in a systemd unit; --ulimit memlock=-1 for docker; "+
		"or a memlock line in /etc/security/limits.conf), or run it as root",
		base, sizeString(limit), sizeString(need))
}

// sizeString prints a byte count in the largest binary unit that divides it
// to one decimal.
func sizeString(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
