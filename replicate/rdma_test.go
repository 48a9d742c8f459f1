package replicate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests cover the RDMA transport without a device: they run in the
// default suite, with or without -tags rdma.

func TestParseLinkAddr(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LinkAddr
	}{
		{"10.0.0.2:7070", LinkAddr{Transport: TransportTCP, Host: "10.0.0.2", Port: "7070"}},
		{"tcp://replica-a:7070", LinkAddr{Transport: TransportTCP, Host: "replica-a", Port: "7070"}},
		{"rdma://10.0.0.2:7471", LinkAddr{Transport: TransportRDMA, Host: "10.0.0.2", Port: "7471"}},
		{"RDMA://[fe80::1]:7471", LinkAddr{Transport: TransportRDMA, Host: "fe80::1", Port: "7471"}},
		{"rdma://10.0.1.2:7471?src=10.0.1.1", LinkAddr{Transport: TransportRDMA, Host: "10.0.1.2", Port: "7471", Source: "10.0.1.1"}},
		{"rdma://10.0.1.2:7471?auth=10.0.1.2:7070", LinkAddr{Transport: TransportRDMA, Host: "10.0.1.2", Port: "7471", Auth: "10.0.1.2:7070"}},
		{"rdma://10.0.1.2:7471?src=10.0.1.1&auth=[fe80::2]:7070", LinkAddr{Transport: TransportRDMA, Host: "10.0.1.2", Port: "7471", Source: "10.0.1.1", Auth: "[fe80::2]:7070"}},
	} {
		got, err := ParseLinkAddr(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseLinkAddr(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if again, err := ParseLinkAddr(got.String()); err != nil || again != got {
			t.Errorf("%q: String %q does not parse back: %+v, %v", tc.in, got.String(), again, err)
		}
	}
	for _, bad := range []string{
		"", "10.0.0.2", "rdma://10.0.0.2", "rdma://:7471", "rdma://h:0", "rdma://h:99999", "rdma://h:port",
		"udp://h:1", "rdma://h:1?src=notanip", "rdma://h:1?via=1.2.3.4", "tcp://h:1?src=1.2.3.4", "rdma://h:1?src=1.1.1.1&src=2.2.2.2", "rdma://h:1?auth=nohost", "rdma://h:1?auth=:7070",
	} {
		if a, err := ParseLinkAddr(bad); err == nil {
			t.Errorf("ParseLinkAddr(%q) = %+v, want an error", bad, a)
		}
	}
}

// TestRDMALinkWithoutSupport checks that a primary refuses an rdma:// link
// with a clear error when it cannot run one: without the rdma build tag it
// says so; with it, on a host without an RDMA device, it says that.
func TestRDMALinkWithoutSupport(t *testing.T) {
	c := newCluster(t, 1)
	p, err := NewPrimary(PrimaryConfig{Auth: testCreds, Links: []string{c.addrs[0], "rdma://127.0.0.1:7471?auth=" + c.addrs[0]}, Leader: c.leadAddr, VMID: 5, Epoch: time.Millisecond, Log: quietLog()},
		newFakeVM(t, 16), NewOutputGate(io.Discard, 1))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.Connect(ctx)
	if err == nil {
		t.Skip("this host has an RDMA device answering on 127.0.0.1:7471")
	}
	if !strings.Contains(err.Error(), "rdma://127.0.0.1:7471") {
		t.Errorf("error %q does not name the link", err)
	}
	if !RDMAEnabled && !errors.Is(err, ErrNoRDMA) {
		t.Errorf("error %v does not wrap ErrNoRDMA", err)
	}
	if !RDMAEnabled && !strings.Contains(err.Error(), "-tags rdma") {
		t.Errorf("error %q does not say how to get RDMA support", err)
	}
	if RDMAEnabled {
		if _, derr := RDMADevices(); errors.Is(derr, ErrNoRDMAKernel) && !strings.Contains(err.Error(), "no RDMA device") {
			t.Errorf("no verbs device here, but the error %q does not say so", err)
		}
	}
	t.Log(err)
}

// checkPlan checks that a plan carries exactly spans, in order, back to
// back from remote, within the limits.
func checkPlan(t *testing.T, wrs []rdmaWR, sges []rdmaSGE, spans []rdmaSpan, maxSGE int, maxMsg, remote uint64) {
	t.Helper()
	if len(wrs) == 0 {
		t.Fatal("empty plan")
	}
	next := remote
	k := 0
	for i, w := range wrs {
		if w.N > maxSGE || w.Bytes > maxMsg || (w.N == 0 && len(spans) > 0) {
			t.Fatalf("write %d: %d SGEs, %d bytes (max %d, %d)", i, w.N, w.Bytes, maxSGE, maxMsg)
		}
		if w.First != k || w.Remote != next {
			t.Fatalf("write %d starts at SGE %d remote %#x, want %d %#x", i, w.First, w.Remote, k, next)
		}
		var n uint64
		for _, s := range sges[w.First : w.First+w.N] {
			if s.Len == 0 || uint64(s.Len) > min(maxMsg, maxSGEBytes) {
				t.Fatalf("write %d: SGE of %d bytes", i, s.Len)
			}
			n += uint64(s.Len)
		}
		if n != w.Bytes {
			t.Fatalf("write %d: SGEs hold %d bytes, the write says %d", i, n, w.Bytes)
		}
		k += w.N
		next += w.Bytes
	}
	if k != len(sges) {
		t.Fatalf("%d SGEs used of %d", k, len(sges))
	}
	// The SGEs, byte for byte, are the spans.
	type piece struct {
		addr, n uint64
		key     uint32
	}
	var want, got []piece
	for _, s := range spans {
		if s.Len > 0 {
			want = append(want, piece{s.Addr, s.Len, s.Key})
		}
	}
	for _, s := range sges {
		got = append(got, piece{s.Addr, uint64(s.Len), s.Key})
	}
	merge := func(ps []piece) []piece {
		var out []piece
		for _, p := range ps {
			if n := len(out); n > 0 && out[n-1].key == p.key && out[n-1].addr+out[n-1].n == p.addr {
				out[n-1].n += p.n
				continue
			}
			out = append(out, p)
		}
		return out
	}
	if w, g := merge(want), merge(got); !slices.Equal(w, g) {
		t.Fatalf("plan carries %v, want %v", g, w)
	}
}

func TestPlanWritesSplitsToMaxSGE(t *testing.T) {
	// 100 separate regions on a QP with 30 SGEs (not the 32 seed 003 had):
	// 4 writes of 30, 30, 30 and 10.
	var spans []rdmaSpan
	for i := range 100 {
		spans = append(spans, rdmaSpan{Addr: uint64(1<<20 + 2*i*PageSize), Len: PageSize, Key: 9})
	}
	wrs, sges, err := planWrites(nil, nil, spans, 30, 1<<31, 0x5000)
	if err != nil {
		t.Fatal(err)
	}
	var ns []int
	for _, w := range wrs {
		ns = append(ns, w.N)
	}
	if !slices.Equal(ns, []int{30, 30, 30, 10}) {
		t.Errorf("SGEs per write %v, want [30 30 30 10]", ns)
	}
	checkPlan(t, wrs, sges, spans, 30, 1<<31, 0x5000)

	// Contiguous spans with one key become one SGE (the async staging copy).
	contig := []rdmaSpan{{Addr: 0x10000, Len: 3 * PageSize, Key: 1}, {Addr: 0x13000, Len: PageSize, Key: 1}, {Addr: 0x14000, Len: PageSize, Key: 2}}
	wrs, sges, _ = planWrites(wrs, sges, contig, 4, 1<<31, 0)
	if len(wrs) != 1 || len(sges) != 2 || sges[0].Len != 4*PageSize {
		t.Errorf("contiguous spans: %v %v, want one write of a 16 KiB and a 4 KiB SGE", wrs, sges)
	}

	// Nothing to send: one empty write, which carries the immediate.
	wrs, sges, _ = planWrites(wrs, sges, nil, 4, 1<<31, 0x9000)
	if len(wrs) != 1 || wrs[0].N != 0 || wrs[0].Bytes != 0 || wrs[0].Remote != 0x9000 || len(sges) != 0 {
		t.Errorf("empty epoch: %v %v", wrs, sges)
	}

	// A region larger than a message is split across writes.
	big := []rdmaSpan{{Addr: 0, Len: 10 << 20, Key: 1}}
	wrs, sges, _ = planWrites(wrs, sges, big, 2, 3<<20, 0)
	if len(wrs) != 4 || wrs[3].Bytes != 1<<20 {
		t.Errorf("10 MiB at 3 MiB a message: %v", wrs)
	}
	checkPlan(t, wrs, sges, big, 2, 3<<20, 0)

	if _, _, err := planWrites(nil, nil, spans, 0, 1<<31, 0); err == nil {
		t.Error("max_sge 0 accepted")
	}
	if _, _, err := planWrites(nil, nil, spans, 4, 0, 0); err == nil {
		t.Error("max_msg_sz 0 accepted")
	}
}

func TestPlanWritesRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var wrs []rdmaWR
	var sges []rdmaSGE
	for iter := range 2000 {
		var spans []rdmaSpan
		addr := uint64(r.IntN(1 << 20))
		for range r.IntN(70) {
			if r.IntN(3) > 0 {
				addr += uint64(r.IntN(3 * PageSize)) // a gap, or none
			}
			n := uint64(r.IntN(5*PageSize + 1))
			spans = append(spans, rdmaSpan{Addr: addr, Len: n, Key: uint32(r.IntN(2))})
			addr += n
		}
		maxSGE := 1 + r.IntN(33)
		maxMsg := uint64(1 + r.IntN(6*PageSize))
		if r.IntN(4) == 0 {
			maxMsg = 1 << 31
		}
		var err error
		wrs, sges, err = planWrites(wrs, sges, spans, maxSGE, maxMsg, uint64(iter)<<32)
		if err != nil {
			t.Fatal(err)
		}
		checkPlan(t, wrs, sges, spans, maxSGE, maxMsg, uint64(iter)<<32)
	}
}

func TestRDMAMapRecord(t *testing.T) {
	const pages = 1024
	m := &MapRecord{Epoch: 0x1_0000_0007, Committed: 0x1_0000_0006, Regions: []Region{{First: 3, Pages: 2}, {First: 100, Pages: 1}, {First: 1000, Pages: 24}}}
	buf := make([]byte, rdmaMapCapacity(pages))
	n, err := putRDMAMap(buf, 0xABC, m, 12345)
	if err != nil || n != rdmaMapSize(3) {
		t.Fatalf("putRDMAMap: %d, %v", n, err)
	}
	got, tail, err := parseRDMAMap(buf, 0xABC, pages)
	if err != nil || tail != 12345 || got.Epoch != m.Epoch || got.Committed != m.Committed || !slices.Equal(got.Regions, m.Regions) {
		t.Fatalf("round trip: %+v %d %v", got, tail, err)
	}
	// Any corrupted byte of the record is caught.
	for i := 0; i < n; i++ {
		c := bytes.Clone(buf)
		c[i] ^= 0x40
		if _, _, err := parseRDMAMap(c, 0xABC, pages); !errors.Is(err, ErrProtocol) {
			t.Errorf("byte %d flipped: %v", i, err)
		}
	}
	if _, _, err := parseRDMAMap(buf, 0xABD, pages); err == nil {
		t.Error("map of another VM accepted")
	}
	if _, _, err := parseRDMAMap(buf, 0xABC, 1000); err == nil {
		t.Error("region past the guest accepted")
	}
	if _, _, err := parseRDMAMap(buf[:20], 0xABC, pages); err == nil {
		t.Error("short buffer accepted")
	}
	// A map larger than the replica's buffer is refused by the primary.
	if _, err := putRDMAMap(buf[:rdmaMapSize(2)], 0xABC, m, 0); err == nil {
		t.Error("map larger than the buffer encoded")
	}
	// The capacity holds one region per page, up to the protocol's bound.
	if rdmaMapCapacity(pages) != rdmaMapSize(pages) || rdmaMapCapacity(1<<40) != rdmaMapSize(maxMapRegions) {
		t.Error("rdmaMapCapacity")
	}
	// The layout is fixed: spot-check offsets.
	le := binary.LittleEndian
	if le.Uint32(buf) != rdmaMapMagic || le.Uint64(buf[16:]) != m.Epoch || le.Uint64(buf[32:]) != 27*PageSize || le.Uint32(buf[48:]) != 3 || le.Uint64(buf[52:]) != 3 {
		t.Error("map record layout changed")
	}
}

func TestImmEncoding(t *testing.T) {
	// imm_data is big endian in memory, whatever the host.
	v := encodeImm(0xAABBCCDD_01020304)
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	if b != [4]byte{1, 2, 3, 4} {
		t.Errorf("imm bytes %x, want 01020304", b)
	}
	if decodeImm(v) != 0x01020304 {
		t.Errorf("decodeImm = %#x", decodeImm(v))
	}
	for _, tc := range []struct {
		low  uint32
		ref  uint64
		want uint64
	}{
		{5, 0, 5},
		{1, 1, 1},
		{0, 0xFFFF_FFFF, 0x1_0000_0000}, // the wrap, forwards
		{0xFFFF_FFFF, 0x1_0000_0000, 0xFFFF_FFFF}, // and backwards
		{2, 0x1_FFFF_FFFE, 0x2_0000_0002},
		{0xFFFF_FFF0, 0x2_0000_0003, 0x1_FFFF_FFF0},
		{0xFFFF_FFFE, 3, 0xFFFF_FFFE}, // never below epoch 0
		{0x8000_0000, 0, 0x8000_0000},
	} {
		if got := expandEpoch(tc.low, tc.ref); got != tc.want {
			t.Errorf("expandEpoch(%#x, %#x) = %#x, want %#x", tc.low, tc.ref, got, tc.want)
		}
	}
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		ref := r.Uint64N(1 << 50)
		e := ref + uint64(r.Int64N(1<<31)) - uint64(r.Int64N(min(1<<31-1, int64(ref)+1)))
		if got := expandEpoch(decodeImm(encodeImm(e)), ref); got != e {
			t.Fatalf("epoch %#x near %#x came back as %#x", e, ref, got)
		}
	}
}

func TestRDMAPrivateData(t *testing.T) {
	tk := rdmaTicket{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	b := marshalRDMAConnect(tk)
	if len(b) > rdmaMaxConnectData {
		t.Fatalf("connect private data of %d bytes, the IB CM carries %d", len(b), rdmaMaxConnectData)
	}
	padded := append(bytes.Clone(b), make([]byte, rdmaMaxConnectData-len(b))...) // as the CM delivers it
	got, err := parseRDMAConnect(padded)
	if err != nil || got != tk {
		t.Fatalf("connect round trip: %x %v", got, err)
	}
	old := binary.LittleEndian.AppendUint32(nil, rdmaConnectMagic)
	old = binary.LittleEndian.AppendUint16(old, 1) // version 1 carried a hello in clear
	old = append(old, make([]byte, 40)...)
	for name, bad := range map[string][]byte{
		"empty":        nil,
		"not ours":     bytes.Repeat([]byte{0xEE}, 56),
		"version 1":    old,
		"truncated":    b[:20],
		"trailing":     append(bytes.Clone(b), 1),
		"reserved set": append(append(bytes.Clone(b[:6]), 1, 0), b[8:]...),
	} {
		if _, err := parseRDMAConnect(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	key := [32]byte{7}
	a := rdmaAcceptData{StagingAddr: 0x7f00_0000_0000, StagingHalf: 64 << 20, StagingKey: 0x11, MapKey: 0x22, MapAddr: 0x7f00_1000_0000, MapLen: 4096, Receives: 32, MaxMsg: 1 << 31}
	ab := a.marshal(key)
	if len(ab) != rdmaAcceptSize {
		t.Fatalf("accept private data of %d bytes", len(ab))
	}
	if got, err := parseRDMAAccept(append(ab, 0, 0), 64<<20, key); err != nil || got != a {
		t.Fatalf("accept round trip: %+v %v", got, err)
	}
	if _, err := parseRDMAAccept(ab, 128<<20, key); err == nil {
		t.Error("staging smaller than the guest accepted")
	}
	if _, err := parseRDMAAccept(ab[:30], 64<<20, key); err == nil {
		t.Error("short accept accepted")
	}
	// An accept from anyone who does not hold the ticket's confirmation
	// key, or one whose keys or addresses were changed, is refused.
	if _, err := parseRDMAAccept(ab, 64<<20, [32]byte{8}); err == nil {
		t.Error("accept under another confirmation key accepted")
	}
	forged := bytes.Clone(ab)
	forged[24] ^= 1 // the staging rkey
	if _, err := parseRDMAAccept(forged, 64<<20, key); err == nil {
		t.Error("accept with a changed rkey accepted")
	}

	long := strings.Repeat("x", 300)
	rj := marshalRDMAReject(long)
	if len(rj) > rdmaMaxRejectData {
		t.Errorf("reject of %d bytes", len(rj))
	}
	if got := parseRDMAReject(append(marshalRDMAReject("this replica serves VM 1"), 0, 0, 0)); got != "this replica serves VM 1" {
		t.Errorf("reject reason %q", got)
	}
	if got := parseRDMAReject([]byte{1, 2, 3, 4, 5}); got != "" {
		t.Errorf("foreign reject read as %q", got)
	}
}

func TestRDMAErrorMapping(t *testing.T) {
	if wcError("write", uint32(wcSuccess), 0) != nil {
		t.Error("success is an error")
	}
	err := wcError("write", uint32(wcRetryExcErr), 0x81)
	var re *RDMAError
	if !errors.As(err, &re) || re.Status != uint32(wcRetryExcErr) {
		t.Fatalf("wcError = %v", err)
	}
	for _, want := range []string{"write", "transport retry counter exceeded", "0x81", "stopped answering"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if !strings.Contains(wcError("write", uint32(wcRemAccessErr), 0).Error(), "refused the write") {
		t.Error("remote access error not explained")
	}
	if !strings.Contains(wcError("send", 99, 0).Error(), "status 99") {
		t.Error("unknown status not printed")
	}
	for s := wcSuccess; s < wcStatusEnd; s++ {
		if s.String() == "" {
			t.Errorf("status %d has no name", s)
		}
	}
	scopes := map[asyncEvent]eventScope{
		evQPFatal: scopeQP, evQPAccessErr: scopeQP, evCQErr: scopeCQ, evPortErr: scopePort,
		evDeviceFatal: scopeDevice, evPortActive: scopeNone, evCommEst: scopeNone, evGIDChange: scopeNone,
	}
	for ev, want := range scopes {
		if ev.scope() != want {
			t.Errorf("%v: scope %v, want %v", ev, ev.scope(), want)
		}
	}
	if evPortErr.String() != "port down" {
		t.Errorf("port error reads %q", evPortErr)
	}
	for _, tc := range []struct {
		ev     cmEvent
		status int32
		reason string
		want   string
	}{
		{cmRejected, 28, "this replica serves VM 0000000000000001, not 0000000000000002", "refused the link: this replica serves"},
		{cmRejected, 28, "", "no Tandem replica listens"},
		{cmAddrError, -int32(syscall.ENODEV), "", "no RDMA device serves the route"},
		{cmUnreachable, 0, "", "unreachable"},
		{cmDisconnected, 0, "", "disconnected"},
		{cmEvent(77), 0, "", "rdma_cm event 77"},
	} {
		if got := cmError(tc.ev, tc.status, tc.reason).Error(); !strings.Contains(got, tc.want) {
			t.Errorf("cmError(%v) = %q, want %q in it", tc.ev, got, tc.want)
		}
	}
}

func TestMemlockError(t *testing.T) {
	err := memlockError("guest memory", "mlx5_0", 64<<20, syscall.ENOMEM, 8<<20)
	if !errors.Is(err, syscall.ENOMEM) {
		t.Errorf("%v does not wrap ENOMEM", err)
	}
	for _, want := range []string{"guest memory", "64.0 MiB", "mlx5_0", "RLIMIT_MEMLOCK is 8.0 MiB", "ulimit -l", "LimitMEMLOCK", "limits.conf"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
	if err := memlockError("x", "d", 1<<30, syscall.EPERM, ^uint64(0)); !strings.Contains(err.Error(), "unlimited") {
		t.Errorf("unlimited limit: %v", err)
	}
	if err := memlockError("x", "d", 4096, syscall.EINVAL, 0); strings.Contains(err.Error(), "RLIMIT_MEMLOCK") {
		t.Errorf("EINVAL blamed on the memlock limit: %v", err)
	}
}

func TestFDWaiter(t *testing.T) {
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	defer syscall.Close(p[1])
	w, err := newFDWaiter(p[0], "pipe")
	if err != nil {
		t.Fatal(err)
	}
	read := func() (string, error) {
		var got string
		err := w.wait(func() bool {
			var b [16]byte
			n, err := syscall.Read(p[0], b[:]) // the "library's" read, on its own fd
			if err == syscall.EAGAIN {
				return false
			}
			got = string(b[:max(n, 0)])
			return true
		})
		return got, err
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		syscall.Write(p[1], []byte("event"))
	}()
	if got, err := read(); err != nil || got != "event" {
		t.Fatalf("wait = %q, %v", got, err)
	}
	// The library's fd became non-blocking.
	var b [1]byte
	if _, err := syscall.Read(p[0], b[:]); err != syscall.EAGAIN {
		t.Errorf("read on an empty pipe: %v, want EAGAIN", err)
	}
	w.setDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("wait past its deadline: %v", err)
	}
	w.setDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := read()
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	w.close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("wait returned no error after close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("close did not end the wait")
	}
	// Closing the waiter left the library's descriptor open.
	if _, err := syscall.Write(p[1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := syscall.Read(p[0], b[:]); n != 1 || err != nil {
		t.Errorf("the library's fd was closed with the waiter: %d, %v", n, err)
	}
}

// softNIC executes work requests in software: it copies each SGE from
// local memory (found by lkey) to remote memory (found by rkey) at the
// write's remote address, as an RC QP would, in order.
type softNIC struct {
	local, remote map[uint32][]byte
}

// run executes descs and returns the immediate and the byte count of the
// RDMA_WRITE_WITH_IMM that ends them; stopAfter, if not negative, stops
// after that many bytes (a primary dying mid-epoch).
func (n *softNIC) run(t *testing.T, descs []rdmaDesc, stopAfter int) (imm, final uint32, done bool) {
	t.Helper()
	for _, d := range descs {
		dst := n.remote[d.rkey]
		off := d.remote - uint64(addrOf(dst))
		if d.remote < uint64(addrOf(dst)) || off+descBytes(d) > uint64(len(dst)) {
			t.Fatalf("write of %d bytes at %#x outside the remote buffer of rkey %d", descBytes(d), d.remote, d.rkey)
		}
		for _, s := range d.sges {
			src := n.local[s.Key]
			so := s.Addr - uint64(addrOf(src))
			c := uint64(s.Len)
			if stopAfter >= 0 {
				c = min(c, uint64(stopAfter))
				stopAfter -= int(c)
			}
			copy(dst[off:off+c], src[so:so+c])
			off += c
			if stopAfter == 0 {
				return 0, 0, false
			}
		}
		if d.opcode == wrWriteImm {
			return d.imm, uint32(descBytes(d)), true
		}
	}
	t.Fatal("no RDMA_WRITE_WITH_IMM ends the epoch")
	return 0, 0, false
}

// TestRDMADataPathSoftNIC drives the RDMA data path end to end with the
// NIC in software: the primary's epoch plans (map record, data split to a
// small max_sge and max_msg, parity halves, immediate), the replica's
// staging in its registered buffer through the TCP replica's own
// beginEpoch/commit, and its recovery report. Pages land exactly as the
// guest had them at each committed epoch.
func TestRDMADataPathSoftNIC(t *testing.T) {
	const pages = 256
	const mem = pages * PageSize
	const vmID = 0x5EED
	rng := rand.New(rand.NewPCG(5, 6))
	guest := make([]byte, mem)
	for i := range guest {
		guest[i] = byte(rng.IntN(256))
	}

	r := NewReplica(ReplicaConfig{Log: quietLog(), Auth: testCreds})
	if err := r.admit(vmID, 1, &Hello{Role: RoleLink, Links: 1, MemBytes: mem, Policy: PolicyFT}, nil); err != nil {
		t.Fatal(err)
	}
	staging := make([]byte, 2*mem)
	mapBuf := make([]byte, rdmaMapCapacity(pages))
	r.attachRDMAStaging(0, 1, staging, mem)
	remote := rdmaAcceptData{
		StagingAddr: uint64(addrOf(staging)), StagingHalf: mem, StagingKey: 0x51, MapKey: 0x52,
		MapAddr: uint64(addrOf(mapBuf)), MapLen: uint32(len(mapBuf)), Receives: 32, MaxMsg: 1 << 31,
	}
	sendMap := make([]byte, rdmaMapCapacity(pages))
	nic := &softNIC{local: map[uint32][]byte{1: guest, 2: sendMap}, remote: map[uint32][]byte{0x51: staging, 0x52: mapBuf}}
	var plan rdmaEpochPlan

	snaps := map[uint64][]byte{}
	var committed uint64
	full := true // the first epoch, and the one after an uncommitted one, sends everything
	var dirty []uint64
	for e := uint64(1); e <= 60; e++ {
		var regions []Region
		if full {
			regions = []Region{{First: 0, Pages: pages}}
		} else {
			slices.Sort(dirty)
			dirty = slices.Compact(dirty)
			regions = Group(nil, dirty, 1+rng.IntN(40))
		}
		var spans []rdmaSpan
		for _, g := range regions {
			spans = append(spans, rdmaSpan{Addr: uint64(addrOf(guest)) + g.First*PageSize, Len: g.Pages * PageSize, Key: 1})
		}
		m := &MapRecord{Epoch: e, Committed: committed, Regions: regions}
		maxSGE := []int{1, 2, 3, 30, 32}[rng.IntN(5)]
		maxMsg := []uint64{3 * PageSize, 64 << 10, 1 << 31}[rng.IntN(3)]
		if err := plan.build(vmID, m, spans, sendMap, uint64(addrOf(sendMap)), 2, remote, maxSGE, maxMsg); err != nil {
			t.Fatal(err)
		}
		for _, d := range plan.descs {
			if len(d.sges) > maxSGE || descBytes(d) > maxMsg {
				t.Fatalf("epoch %d: a work request of %d SGEs, %d bytes", e, len(d.sges), descBytes(d))
			}
		}
		imm, final, _ := nic.run(t, plan.descs, -1)
		snaps[e] = bytes.Clone(guest)
		got, err := r.stageRDMAEpoch(0, vmID, 1, mapBuf, decodeImm(imm), final)
		if err != nil {
			t.Fatalf("epoch %d: %v", e, err)
		}
		if got.Epoch != e {
			t.Fatalf("staged epoch %d, sent %d", got.Epoch, e)
		}
		// Commit most epochs; lose the commit message of some (the next
		// map carries it); leave a few uncommitted (a failed link in fast
		// mode), after which the primary resends everything.
		switch x := rng.IntN(10); {
		case x < 6:
			committed = e
			r.commit(0, 1, e)
			full = false
		case x < 8:
			committed = e // committed, but the message is lost
			full = false
		default:
			full = true
		}
		// The guest runs: dirty some pages for the next epoch.
		dirty = dirty[:0]
		for range rng.IntN(30) {
			p := uint64(rng.IntN(pages))
			guest[p*PageSize+uint64(rng.IntN(PageSize))] = byte(rng.IntN(256))
			dirty = append(dirty, p)
		}
	}

	// The primary dies in the middle of the next epoch: the writes that
	// reached the replica land in the other staging half, no immediate.
	m := &MapRecord{Epoch: 61, Committed: committed, Regions: []Region{{First: 0, Pages: pages}}}
	if err := plan.build(vmID, m, []rdmaSpan{{Addr: uint64(addrOf(guest)), Len: mem, Key: 1}}, sendMap, uint64(addrOf(sendMap)), 2, remote, 8, 1<<31); err != nil {
		t.Fatal(err)
	}
	for i := range guest {
		guest[i] ^= 0xFF // all new content
	}
	if _, _, done := nic.run(t, plan.descs, int(mem/2)); done {
		t.Fatal("the interrupted epoch completed")
	}
	rep := r.report()
	if len(rep.Staged) != 1 {
		t.Fatalf("report %+v", rep)
	}
	s := rep.Staged[0]
	last := uint64(60)
	if !s.Completed(last) {
		t.Fatalf("epoch %d, staged before the primary died, is not complete: %+v", last, s)
	}
	if s.Completed(61) {
		t.Fatal("the interrupted epoch reads as complete")
	}
	// Recovery settles on the last staged epoch: the store must then be
	// the guest as it was at that epoch, untouched by the interrupted one.
	r.resolve(last)
	r.store.mu.RLock()
	defer r.store.mu.RUnlock()
	want := snaps[last]
	for p := 0; p < pages; p++ {
		if r.store.epochs[p] == 0 {
			t.Fatalf("page %d never stored", p)
		}
		if !bytes.Equal(r.store.pages[p*PageSize:(p+1)*PageSize], want[p*PageSize:(p+1)*PageSize]) {
			t.Fatalf("page %d (epoch %d) differs from the guest at epoch %d", p, r.store.epochs[p], last)
		}
	}
}

func TestStageRDMAEpochRejectsMismatches(t *testing.T) {
	const pages = 16
	r := NewReplica(ReplicaConfig{Log: quietLog(), Auth: testCreds})
	if err := r.admit(9, 1, &Hello{Role: RoleLink, Links: 1, MemBytes: pages * PageSize, Policy: PolicyFT}, nil); err != nil {
		t.Fatal(err)
	}
	mapBuf := make([]byte, rdmaMapCapacity(pages))
	m := &MapRecord{Epoch: 7, Regions: []Region{{First: 1, Pages: 2}}}
	if _, err := putRDMAMap(mapBuf, 9, m, 2*PageSize); err != nil {
		t.Fatal(err)
	}
	if _, err := r.stageRDMAEpoch(0, 9, 1, mapBuf, 7, 2*PageSize); err == nil {
		t.Error("epoch staged with no RDMA buffer attached")
	}
	r.attachRDMAStaging(0, 1, make([]byte, 2*pages*PageSize), pages*PageSize)
	if _, err := r.stageRDMAEpoch(0, 9, 1, mapBuf, 8, 2*PageSize); !errors.Is(err, ErrProtocol) {
		t.Errorf("immediate of another epoch: %v", err)
	}
	if _, err := r.stageRDMAEpoch(0, 9, 1, mapBuf, 7, PageSize); !errors.Is(err, ErrProtocol) {
		t.Errorf("final write of the wrong length: %v", err)
	}
	if _, err := r.stageRDMAEpoch(0, 10, 1, mapBuf, 7, 2*PageSize); !errors.Is(err, ErrProtocol) {
		t.Errorf("map of another VM: %v", err)
	}
	if got, err := r.stageRDMAEpoch(0, 9, 1, mapBuf, 7, 2*PageSize); err != nil || got.Epoch != 7 {
		t.Errorf("good epoch: %v, %v", got, err)
	}
}

func TestRDMADeviceHelpers(t *testing.T) {
	if got := odpCapNames(1 | 4); !slices.Equal(got, []string{"send", "write"}) {
		t.Errorf("odpCapNames = %v", got)
	}
	if linkLayerName(2) != "Ethernet" || linkLayerName(1) != "InfiniBand" || linkLayerName(0) != "unspecified" {
		t.Error("linkLayerName")
	}
	if mtuBytes(1) != 256 || mtuBytes(5) != 4096 || mtuBytes(0) != 0 {
		t.Error("mtuBytes")
	}
	if !strings.Contains(RDMASoftRoCEHint(), "rdma link add rxe0 type rxe netdev") {
		t.Error("the Soft-RoCE hint lost its instruction")
	}
}
