//go:build rdma

package replicate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// rdmaResolveTimeout bounds address and route resolution.
	rdmaResolveTimeout = 2 * time.Second
	// rdmaConnectTimeout bounds a link's set-up when the caller's context
	// has no deadline.
	rdmaConnectTimeout = 15 * time.Second
	// rdmaOpTimeout bounds the wait for an epoch's writes to complete
	// locally, beyond the time the bytes need at 100 MB/s; the transport
	// itself gives up much sooner on a dead peer (ACK timeout 14: about
	// 67 ms, seven retries).
	rdmaOpTimeout  = 10 * time.Second
	rdmaACKTimeout = 14
	// Queue depths of a primary's link: sends carry the epoch's writes,
	// receives catch acknowledgements.
	rdmaLinkSendDepth = 128
	rdmaLinkRecvDepth = 32
)

// rdmaLink is the primary's end of an RDMA link.
type rdmaLink struct {
	index int
	addr  LinkAddr
	vmID  uint64
	acks  chan<- Ack
	mem   []byte

	cm      *cmChannel
	id      cmID
	dev     *verbsDevice
	ep      *rdmaEndpoint
	guest   *memReg
	mapBuf  []byte
	mapReg  *memReg
	remote  rdmaAcceptData
	maxMsg  uint64
	started bool
	cmDone  chan struct{}
	stopCh  chan struct{}

	chunk    int
	progress func(epoch uint64, n int)

	// The epoch being queued (WriteMap, WriteSG) and sent (WriteImm).
	m       *MapRecord
	sg      [][]byte
	epoch   atomic.Uint64 // the last epoch written, to expand acks
	spans   []rdmaSpan
	plan    rdmaEpochPlan
	foreign []*memReg

	mu     sync.Mutex
	users  int
	closed bool
}

// dialRDMA connects a link: address and route resolution, guest RAM
// registered (or its registration shared), QP created, connect with the
// hello, and the replica's buffers learnt from its accept.
func dialRDMA(ctx context.Context, d rdmaDial) (Link, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, rdmaConnectTimeout)
		defer cancel()
	}
	ip, err := resolveIP(ctx, d.addr.Host)
	if err != nil {
		return nil, err
	}
	port, _ := strconv.Atoi(d.addr.Port)
	l := &rdmaLink{
		index: d.index, addr: d.addr, vmID: d.vmID, acks: d.acks, mem: d.mem,
		chunk: d.chunk, progress: d.progress, cmDone: make(chan struct{}), stopCh: make(chan struct{}),
	}
	ok := false
	defer func() {
		if !ok {
			l.teardown()
		}
	}()
	if l.cm, err = newCMChannel(); err != nil {
		return nil, err
	}
	if l.id, err = l.cm.createID(); err != nil {
		return nil, err
	}
	if err := cmResolve(l.id, d.addr.Source, ip, port, rdmaResolveTimeout); err != nil {
		return nil, err
	}
	if err := l.expect(ctx, cmAddrResolved); err != nil {
		return nil, err
	}
	cmAckTimeout(l.id, rdmaACKTimeout)
	if err := cmResolveRoute(l.id, rdmaResolveTimeout); err != nil {
		return nil, err
	}
	if err := l.expect(ctx, cmRouteResolved); err != nil {
		return nil, err
	}
	if l.dev, err = acquireDevice(cmVerbs(l.id)); err != nil {
		return nil, err
	}
	if l.guest, err = l.dev.acquire(d.mem, "guest memory"); err != nil {
		return nil, err
	}
	l.mapBuf = make([]byte, rdmaMapCapacity(uint64(len(d.mem))/PageSize))
	if l.mapReg, err = l.dev.register(l.mapBuf, "a link's map buffer", true, false); err != nil {
		return nil, err
	}
	if l.ep, err = newEndpoint(l.id, l.dev, rdmaLinkSendDepth, rdmaLinkRecvDepth, l.onRecv, l.onFail); err != nil {
		return nil, err
	}
	if err := cmConnect(l.id, marshalRDMAConnect(d.ticket), false); err != nil {
		return nil, err
	}
	ev, err := l.cm.next(ctx)
	if err != nil {
		return nil, fmt.Errorf("waiting for the replica to accept: %w", err)
	}
	switch ev.ev {
	case cmEstablished:
	case cmRejected:
		return nil, cmError(ev.ev, ev.status, parseRDMAReject(ev.pdata))
	default:
		return nil, cmError(ev.ev, ev.status, "")
	}
	if l.remote, err = parseRDMAAccept(ev.pdata, uint64(len(d.mem)), d.confirm); err != nil {
		return nil, err
	}
	l.maxMsg = min(l.ep.maxMsg, l.remote.MaxMsg)
	l.ep.start()
	l.started = true
	go l.watchCM()
	ok = true
	if d.log != nil {
		d.log.Info("rdma link up", "link", d.index, "addr", d.addr.String(), "device", l.dev.name, "port", l.ep.port,
			"max_sge", l.ep.maxSGE, "max_msg", l.maxMsg, "guest_odp", l.guest.odp)
	}
	return l, nil
}

// resolveIP returns host as a numeric address, preferring IPv4.
func resolveIP(ctx context.Context, host string) (string, error) {
	if ip := net.ParseIP(host); ip != nil {
		return ip.String(), nil
	}
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if a.IP.To4() != nil {
			return a.IP.String(), nil
		}
	}
	if len(addrs) == 0 {
		return "", fmt.Errorf("%s has no address", host)
	}
	return addrs[0].IP.String(), nil
}

// expect waits for one rdma_cm event during set-up.
func (l *rdmaLink) expect(ctx context.Context, want cmEvent) error {
	ev, err := l.cm.next(ctx)
	if err != nil {
		return fmt.Errorf("waiting for %v: %w", want, err)
	}
	if ev.ev != want {
		return cmError(ev.ev, ev.status, "")
	}
	return nil
}

// watchCM turns a disconnect or a device removal into a link failure.
func (l *rdmaLink) watchCM() {
	defer close(l.cmDone)
	for {
		ev, err := l.cm.next(context.Background())
		if err != nil {
			return // closed
		}
		switch ev.ev {
		case cmDisconnected, cmDeviceRemoval, cmConnectError, cmUnreachable:
			l.ep.fail(cmError(ev.ev, ev.status, ""))
		}
	}
}

func (l *rdmaLink) String() string { return fmt.Sprintf("link %d (%s)", l.index, l.addr) }

func (l *rdmaLink) sendAck(a Ack) {
	select {
	case l.acks <- a:
	case <-l.stopCh:
	}
}

// onRecv handles the replica's acknowledgements: SEND_WITH_IMM of the
// epoch's low 32 bits.
func (l *rdmaLink) onRecv(w wcInfo) error {
	if w.opcode != wcOpRecv || w.flags&wcFlagWithImm == 0 {
		return fmt.Errorf("%w: unexpected RDMA message from the replica (completion opcode %d)", ErrProtocol, w.opcode)
	}
	l.sendAck(Ack{from: l, Link: l.index, Epoch: expandEpoch(decodeImm(w.imm), l.epoch.Load())})
	return nil
}

// onFail reports the link's failure to the primary, unless it closed the
// link itself.
func (l *rdmaLink) onFail(err error) {
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if !closed {
		l.sendAck(Ack{from: l, Link: l.index, Err: fmt.Errorf("replicate: %v: %w", l, err)})
	}
}

func (l *rdmaLink) WriteMap(m *MapRecord) error {
	l.m = m
	return nil
}

func (l *rdmaLink) WriteSG(sg [][]byte) error {
	l.sg = sg
	return nil
}

// WriteImm sends the queued epoch: the map record into the replica's map
// buffer, then the data into the staging half of the epoch, the last write
// carrying the immediate. It returns once the NIC has completed them all.
func (l *rdmaLink) WriteImm(epoch uint64) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	m, sg := l.m, l.sg
	l.m, l.sg = nil, nil
	if m == nil || m.Epoch != epoch {
		return fmt.Errorf("replicate: %v: completion of epoch %d without its map", l, epoch)
	}
	defer l.releaseForeign()
	if err := l.collectSpans(sg); err != nil {
		return fmt.Errorf("replicate: %v: %w", l, err)
	}
	maxMsg := l.maxMsg
	if l.chunk > 0 {
		maxMsg = min(maxMsg, uint64(l.chunk))
	}
	if err := l.plan.build(l.vmID, m, l.spans, l.mapBuf, uint64(addrOf(l.mapBuf)), l.mapReg.lkey, l.remote, l.ep.maxSGE, maxMsg); err != nil {
		return fmt.Errorf("replicate: %v: %w", l, err)
	}
	descs, total := l.plan.descs, l.plan.total
	l.epoch.Store(epoch)
	deadline := time.Now().Add(rdmaOpTimeout + time.Duration(total/100e6)*time.Second)
	if l.chunk == 0 {
		done, err := l.ep.post(wrIDWrite, descs, deadline)
		if err != nil {
			return fmt.Errorf("replicate: %v: %w", l, err)
		}
		return l.await(done, deadline)
	}
	// Fault injection: one write at a time, reporting progress after each.
	for i := range descs {
		done, err := l.ep.post(wrIDWrite, descs[i:i+1], deadline)
		if err != nil {
			return fmt.Errorf("replicate: %v: %w", l, err)
		}
		if err := l.await(done, deadline); err != nil {
			return err
		}
		l.progress(epoch, int(descBytes(descs[i])))
	}
	return nil
}

// collectSpans finds the registration of every slice: guest RAM, or Go
// memory (the async staging copy) registered on first use.
func (l *rdmaLink) collectSpans(sg [][]byte) error {
	l.spans = l.spans[:0]
	gb := addrOf(l.mem)
	ge := gb + uintptr(len(l.mem))
	for _, s := range sg {
		if len(s) == 0 {
			continue
		}
		a := addrOf(s)
		key := l.guest.lkey
		if a < gb || a+uintptr(len(s)) > ge {
			r, err := l.dev.acquireForeign(s)
			if err != nil {
				return err
			}
			l.foreign = append(l.foreign, r)
			key = r.lkey
		}
		l.spans = append(l.spans, rdmaSpan{Addr: uint64(a), Len: uint64(len(s)), Key: key})
	}
	return nil
}

func (l *rdmaLink) releaseForeign() {
	for _, r := range l.foreign {
		l.dev.releaseReg(r)
	}
	l.foreign = l.foreign[:0]
}

// await waits for a posted group's completion.
func (l *rdmaLink) await(done <-chan error, deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("replicate: %v: %w", l, err)
		}
		return nil
	case <-t.C:
		err := errors.New("the NIC did not complete the epoch's writes")
		l.ep.fail(err)
		return fmt.Errorf("replicate: %v: %w", l, err)
	}
}

// WriteCommit tells the replica that epoch is committed: a SEND_WITH_IMM,
// not waited for (a failure ends the link through its completion).
func (l *rdmaLink) WriteCommit(epoch uint64) error {
	if err := l.enter(); err != nil {
		return err
	}
	defer l.leave()
	_, err := l.ep.post(wrIDSend, []rdmaDesc{{opcode: wrSendImm, imm: encodeImm(epoch)}}, time.Now().Add(rdmaOpTimeout))
	if err != nil {
		return fmt.Errorf("replicate: %v: commit: %w", l, err)
	}
	return nil
}

func (l *rdmaLink) enter() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return fmt.Errorf("replicate: %v: %w", l, errLinkClosed)
	}
	if err := l.ep.failed(); err != nil {
		return fmt.Errorf("replicate: %v: %w", l, err)
	}
	l.users++
	return nil
}

func (l *rdmaLink) leave() {
	l.mu.Lock()
	l.users--
	last := l.closed && l.users == 0
	l.mu.Unlock()
	if last {
		l.teardown()
	}
}

// Close disconnects the link. It may be called from any goroutine, even
// from inside a write (fault injection closes the primary from its
// progress callback): the resources go when the last write returns.
func (l *rdmaLink) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	idle := l.users == 0
	l.mu.Unlock()
	close(l.stopCh)
	cmDisconnect(l.id)
	l.ep.fail(errLinkClosed)
	if idle {
		l.teardown()
	}
	return nil
}

// teardown frees everything the link holds, in reverse order of set-up;
// it also cleans up after a failed dial.
func (l *rdmaLink) teardown() {
	if l.cm != nil {
		l.cm.wait.close()
		if l.started {
			<-l.cmDone
		}
	}
	if l.ep != nil {
		l.ep.stop(l.started)
		l.ep.destroy()
	}
	if l.mapReg != nil {
		l.mapReg.deregister()
	}
	if l.guest != nil {
		l.dev.releaseReg(l.guest)
	}
	l.releaseForeign()
	if l.dev != nil {
		l.dev.release()
	}
	if l.id != nil {
		cmDestroyID(l.id)
	}
	if l.cm != nil {
		l.cm.destroy()
	}
}

// rdmaWRCost is what one more work request costs an RDMA link: posting
// it and its share of completions. An estimate (about 2 µs): nothing here
// has RDMA hardware to measure it on.
const rdmaWRCost = 2 * time.Microsecond

// elementCost implements elementCoster: one more scatter-gather element
// costs the link a work request spread over the max_sge its queue pair
// was created with (queried per link), and grouping merges a clean gap
// only where its bytes cost less than that.
func (l *rdmaLink) elementCost() time.Duration {
	return rdmaWRCost / time.Duration(max(1, l.ep.maxSGE))
}
