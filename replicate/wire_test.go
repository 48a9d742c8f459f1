package replicate

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestHeaderRoundTripAndRejects(t *testing.T) {
	h := Header{Generation: 1, Type: MsgMap, VMID: 42, Epoch: 7, Length: 28}
	b := appendHeader(nil, h)
	if len(b) != headerSize {
		t.Fatalf("header is %d bytes, want %d", len(b), headerSize)
	}
	got, err := parseHeader(b, 42)
	if err != nil || got != h {
		t.Fatalf("parseHeader = %+v, %v", got, err)
	}
	for _, tc := range []struct {
		name   string
		mutate func([]byte)
		vmID   uint64
		want   string
	}{
		{"bad magic", func(b []byte) { b[0] ^= 1 }, 42, "bad magic"},
		{"future version", func(b []byte) { b[4] = 9 }, 42, "protocol version 9"},
		{"unknown type", func(b []byte) { b[6] = 200 }, 42, "unknown message type"},
		{"type zero", func(b []byte) { b[6], b[7] = 0, 0 }, 42, "unknown message type"},
		{"other VM", func([]byte) {}, 43, "VM 000000000000002a"},
		{"payload over bound", func(b []byte) { b[6] = byte(MsgAck); b[24] = 1 }, 42, "payload"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := bytes.Clone(b)
			tc.mutate(c)
			_, err := parseHeader(c, tc.vmID)
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want ErrProtocol mentioning %q", err, tc.want)
			}
		})
	}
}

func TestMapRoundTripAndRejects(t *testing.T) {
	m := &MapRecord{Epoch: 9, Committed: 8, Regions: []Region{{First: 0, Pages: 3}, {First: 10, Pages: 1}, {First: 20, Pages: 12}}}
	b := appendMap(nil, 5, 1, m)
	h, err := parseHeader(b, 5)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseMap(h, b[headerSize:], 64)
	if err != nil || !reflect.DeepEqual(got, m) {
		t.Fatalf("parseMap = %+v, %v; want %+v", got, err, m)
	}
	if got.Pages() != 16 {
		t.Errorf("Pages() = %d, want 16", got.Pages())
	}
	for _, tc := range []struct {
		name    string
		regions []Region
		want    string
	}{
		{"beyond the guest", []Region{{First: 60, Pages: 5}}, "outside"},
		{"empty region", []Region{{First: 3, Pages: 0}}, "outside"},
		{"overlap", []Region{{First: 0, Pages: 4}, {First: 3, Pages: 1}}, "overlaps"},
		{"descending", []Region{{First: 10, Pages: 1}, {First: 2, Pages: 1}}, "overlaps"},
		{"wraps around", []Region{{First: 1, Pages: ^uint64(0)}}, "outside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := appendMap(nil, 5, 1, &MapRecord{Epoch: 1, Regions: tc.regions})
			h, _ := parseHeader(b, 5)
			if _, err := parseMap(h, b[headerSize:], 64); !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want ErrProtocol mentioning %q", err, tc.want)
			}
		})
	}
	b = appendMap(nil, 5, 1, m)
	h, _ = parseHeader(b, 5)
	for n := 0; n < len(b)-headerSize; n++ {
		if _, err := parseMap(h, b[headerSize:headerSize+n], 64); err == nil {
			t.Fatalf("a map truncated to %d bytes parsed", n)
		}
	}
}

func TestHelloStateReportRoundTrip(t *testing.T) {
	h := Hello{Role: RoleLink, Link: 2, Links: 3, MemBytes: 1 << 20, VCPUs: 2, Policy: PolicyFT, Guest: "counter"}
	var h2 Hello
	if err := h2.unmarshal(h.marshal()); err != nil || h2 != h {
		t.Errorf("hello round trip: %+v, %v", h2, err)
	}
	bad := h
	bad.Link = 3
	if err := h2.unmarshal(bad.marshal()); !errors.Is(err, ErrProtocol) {
		t.Errorf("hello for link 3 of 3 accepted: %v", err)
	}
	s := &StateRecord{Epoch: 4, Within: 3 * time.Second, Interval: 5 * time.Millisecond, Links: []uint32{0, 2}, Blob: []byte("state")}
	s2, err := parseState(Header{Epoch: 4}, s.marshal())
	if err != nil || !reflect.DeepEqual(s2, s) {
		t.Errorf("state round trip: %+v, %v", s2, err)
	}
	r := &Report{Applied: 6, Staged: []Staged{{Link: 1, Epoch: 7, Complete: true, Applied: 6}, {Link: 0, Applied: 6}}}
	r2, err := parseReport(r.marshal())
	if err != nil || !reflect.DeepEqual(r2, r) {
		t.Errorf("report round trip: %+v, %v", r2, err)
	}
}

// FuzzDecoders feeds arbitrary bytes to every decoder: none may panic, and
// whatever parses must respect the limits it was given.
func FuzzDecoders(f *testing.F) {
	f.Add(appendMap(nil, 1, 1, &MapRecord{Epoch: 2, Regions: []Region{{First: 1, Pages: 2}}}))
	f.Add(appendHeader(nil, Header{Generation: 1, Type: MsgHello, VMID: 1, Length: 30}))
	f.Add((&Report{Applied: 1, Staged: []Staged{{Link: 0, Epoch: 2}}}).marshal())
	f.Add((&StateRecord{Links: []uint32{1}, Blob: []byte{1}}).marshal())
	f.Add(marshalRDMAConnect(rdmaTicket{1}))
	f.Add((&rdmaAcceptData{StagingHalf: PageSize, MapLen: 4096, Receives: 2, MaxMsg: 1}).marshal([32]byte{}))
	f.Add(appendMapAs(nil, MsgMapMore, 1, 1, &MapRecord{Epoch: 2, Regions: []Region{{First: 1, Pages: 2}}}))
	f.Add((&Cluster{Links: []string{"a:1"}, Leader: "b:2", Epoch: 1, AckTimeout: 1, Heartbeat: 1, Reduce: &Reduction{Zero: true}}).marshal())
	var rec bytes.Buffer
	w := NewEpochRecorder(&rec)
	w.Record(3, []uint64{1}, make([]byte, 4*PageSize))
	w.Flush()
	f.Add(rec.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		// Recordings: whatever the bytes, epochs come out ascending and
		// inside the guest, or the read fails.
		ReadRecording(bytes.NewReader(b), func(mem uint64, e *RecordedEpoch) error {
			for i, p := range e.Dirty {
				if p >= mem/PageSize || (i > 0 && p <= e.Dirty[i-1]) || len(e.Contents) != len(e.Dirty)*PageSize {
					t.Fatalf("recording epoch %d: page %d of %d bytes of guest, %d bytes of contents", e.Epoch, p, mem, len(e.Contents))
				}
			}
			return nil
		})
		if c, err := parseCluster(b); err == nil && c.Reduce != nil && c.Reduce.Similar && c.Reduce.CacheBytes < PageSize {
			t.Fatalf("cluster with similar pages and no cache accepted: %+v", c.Reduce)
		}
		if len(b) >= headerSize {
			if h, err := parseHeader(b[:headerSize], 0); err == nil && uint64(h.Length) > maxPayload(h.Type) {
				t.Fatalf("header with a %d-byte %v payload accepted", h.Length, h.Type)
			}
		}
		if m, err := parseMap(Header{}, b, 100); err == nil {
			for _, r := range m.Regions {
				if r.Pages == 0 || r.End() > 100 {
					t.Fatalf("region %+v accepted outside a 100-page guest", r)
				}
			}
		}
		var h Hello
		h.unmarshal(b)
		parseReport(b)
		parseState(Header{}, b)
		parseRegions(b, 1<<20)
		// The RDMA set-up's decoders: the connect request a peer sends
		// before any key check, and the accept a primary checks.
		if tk, err := parseRDMAConnect(b); err == nil && !bytes.Equal(marshalRDMAConnect(tk), b[:rdmaConnectSize]) {
			t.Fatalf("rdma connect %x decodes as ticket %x", b, tk)
		}
		if _, err := parseRDMAAccept(b, PageSize, [32]byte{}); err == nil && !bytes.Equal(b[56:rdmaAcceptSize], rdmaAcceptMAC([32]byte{}, b[:56])) {
			t.Fatalf("rdma accept %x passed without its MAC", b)
		}
		parseRDMAReject(b)
	})
}

// linkClient speaks the link protocol by hand, to exercise a replica's
// commit rule one message at a time.
type linkClient struct {
	t *testing.T
	c *conn
}

func dialAs(t *testing.T, addr string, vmID uint64, h Hello) *linkClient {
	t.Helper()
	return dialAsGen(t, addr, vmID, 1, h)
}

// dialAsGen is dialAs for a primary of generation gen.
func dialAsGen(t *testing.T, addr string, vmID, gen uint64, h Hello) *linkClient {
	t.Helper()
	c, err := dialHello(context.Background(), testCreds, addr, vmID, gen, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.c.Close() })
	return &linkClient{t: t, c: c}
}

// epoch sends a whole epoch whose pages are filled with fill.
func (l *linkClient) epoch(e, committed uint64, regions []Region, fill byte, complete bool) {
	l.t.Helper()
	m := &MapRecord{Epoch: e, Committed: committed, Regions: regions}
	b := appendMap(nil, l.c.vmID, l.c.gen, m)
	data := bytes.Repeat([]byte{fill}, int(m.Pages()*PageSize))
	b = appendHeader(b, Header{Generation: l.c.gen, Type: MsgData, VMID: l.c.vmID, Epoch: e, Length: uint32(len(data))})
	b = append(b, data...)
	if !complete {
		b = b[:len(b)-100] // the primary dies before the end of the data
	}
	if complete {
		b = appendHeader(b, Header{Generation: l.c.gen, Type: MsgDone, VMID: l.c.vmID, Epoch: e})
	}
	if _, err := l.c.c.Write(b); err != nil {
		l.t.Fatal(err)
	}
	if complete {
		h, err := l.c.readHeader()
		if err != nil || h.Type != MsgAck || h.Epoch != e {
			l.t.Fatalf("after epoch %d: %+v, %v; want its ack", e, h, err)
		}
	}
}

func TestCommitRule(t *testing.T) {
	r, addr, _ := startReplica(t, ReplicaConfig{})
	const vm, pages = 77, 16
	link := dialAs(t, addr, vm, Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize})
	store := func() []uint64 {
		r.waitApplies()
		r.store.mu.RLock()
		defer r.store.mu.RUnlock()
		return append([]uint64(nil), r.store.epochs...)
	}
	waitStore := func(page int, epoch uint64) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for store()[page] != epoch {
			if time.Now().After(deadline) {
				t.Fatalf("page %d never reached epoch %d: %v", page, epoch, store())
			}
			time.Sleep(time.Millisecond)
		}
	}

	// Epoch 1 complete but not committed: acknowledged, not applied.
	link.epoch(1, 0, []Region{{First: 0, Pages: 4}}, 0x11, true)
	if e := store(); e[0] != 0 {
		t.Fatalf("epoch 1 applied before its commit: %v", e)
	}
	// Commit 1: applied.
	if err := link.c.send(MsgCommit, 1, nil); err != nil {
		t.Fatal(err)
	}
	waitStore(0, 1)
	// Epoch 2 complete, never committed; epoch 3's map says the newest
	// commit is 1, so epoch 2 is dropped and never reaches the store.
	link.epoch(2, 1, []Region{{First: 2, Pages: 4}}, 0x22, true)
	link.epoch(3, 1, []Region{{First: 8, Pages: 2}}, 0x33, true)
	if e := store(); e[2] != 1 || e[4] != 0 || e[8] != 0 {
		t.Fatalf("store after an uncommitted epoch was superseded: %v", e)
	}
	// A map that carries the commit of its predecessor applies it.
	link.epoch(4, 3, []Region{{First: 12, Pages: 1}}, 0x44, true)
	waitStore(8, 3)
	// Epoch 5 dies mid-data.
	link.epoch(5, 4, []Region{{First: 0, Pages: 16}}, 0x55, false)
	link.c.c.Close()

	// Recovery: epoch 4 is complete (staged), 5 is not.
	rec := dialAs(t, addr, vm, Hello{Role: RoleRecovery, MemBytes: pages * PageSize})
	var rep *Report
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if rep, err = query(rec.c); err != nil {
			t.Fatal(err)
		}
		if len(rep.Staged) == 1 && rep.Staged[0].Epoch == 5 || time.Now().After(deadline) {
			break
		}
	}
	if rep.Applied != 4 || len(rep.Staged) != 1 || rep.Staged[0].Complete || !rep.Staged[0].Completed(4) || rep.Staged[0].Completed(5) {
		t.Fatalf("report %+v", rep)
	}
	epochs, err := resolve(rec.c, 4, pages)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{1, 1, 1, 1, 0, 0, 0, 0, 3, 3, 0, 0, 4, 0, 0, 0}
	if !reflect.DeepEqual(epochs, want) {
		t.Errorf("page epochs after resolving to 4: %v, want %v", epochs, want)
	}
	mem := make([]byte, pages*PageSize)
	if err := fetchPages(rec.c, []Region{{First: 0, Pages: pages}}, mem, time.Second); err != nil {
		t.Fatal(err)
	}
	for p, e := range want {
		fill := map[uint64]byte{0: 0, 1: 0x11, 3: 0x33, 4: 0x44}[e]
		if mem[p*PageSize] != fill || mem[p*PageSize+PageSize-1] != fill {
			t.Errorf("page %d holds %#x, want %#x (epoch %d)", p, mem[p*PageSize], fill, e)
		}
	}
}
