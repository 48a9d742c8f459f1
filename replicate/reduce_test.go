package replicate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/pagecodec"
)

// loseAReplicaAndRecover replicates vm (as src) with cfg (links, leader
// and the rest filled in) to c while guest runs, loses replica 1 after n
// committed epochs, runs n more, stops, recovers and checks the image, and
// checks that no replica saw a protocol error. It returns the trace.
func loseAReplicaAndRecover(t *testing.T, c *cluster, vm *fakeVM, src Source, guest func(context.Context), n uint64, cfg PrimaryConfig) []EpochTrace {
	t.Helper()
	var trace syncBuffer
	cfg.Links, cfg.Leader, cfg.Guest, cfg.VCPUs, cfg.Mode, cfg.Log = c.addrs, c.leadAddr, "fake", 1, ModeSync, quietLog()
	cfg.Trace = NewTraceWriter(&trace)
	p := mustConnectPrimary(t, cfg, src, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	guestDone := make(chan struct{})
	go func() { defer close(guestDone); guest(ctx) }()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, n, 20*time.Second, nil)
	c.cancels[1]()
	lost := p.Committed()
	waitCommitted(t, p, lost+n, 20*time.Second, nil)
	cancel()
	<-runErr
	<-guestDone
	c.recoverAndCheck(vm, p.Committed())
	for i, r := range c.replicas {
		if n := r.ProtocolErrors(); n != 0 {
			t.Errorf("replica %d dropped %d connections for protocol errors", i, n)
		}
	}
	epochs, err := ReadTrace(strings.NewReader(trace.String()))
	if err != nil {
		t.Fatal(err)
	}
	return epochs
}

// TestReductionKeepsEveryPage: whatever the reduction, a replica that
// is lost mid-run (its links' cached copies no longer count) and the
// recovery afterwards give exactly the guest's memory, and the encoded
// links send far fewer bytes than raw ones.
func TestReductionKeepsEveryPage(t *testing.T) {
	reductions := []struct {
		name string
		red  *Reduction
	}{
		{"none", &Reduction{}},
		{"default", nil},
		// A cache of 32 pages for a guest writing 256: evictions all the
		// time.
		{"all, small cache", &Reduction{Zero: true, CacheBytes: 32 * PageSize, Similar: true, Compress: true}},
		{"delta", &Reduction{CacheBytes: 1 << 20}},
	}
	for _, rd := range reductions {
		for _, policy := range []Policy{PolicyFast, PolicyFT} {
			t.Run(rd.name+"/"+policy.String(), func(t *testing.T) {
				c := newCluster(t, 2)
				vm := newFakeVM(t, 256)
				epochs := loseAReplicaAndRecover(t, c, vm, vm, func(ctx context.Context) { vm.run(ctx, 4) }, 20, PrimaryConfig{
					VMID: 0x7E58, Epoch: 5 * time.Millisecond, Policy: policy, Reduce: rd.red,
				})
				// carried is what the encoded links would have sent raw,
				// wire what they sent; raw is the epochs sent raw.
				var wire, carried, deltas uint64
				ordinary, raw := 0, 0
				for _, e := range epochs {
					if e.Failed != "" || e.DirtyPages == 0 || e.DirtyPages == 256 {
						continue // full copies and failed epochs aside
					}
					ordinary++
					if e.Reduce == nil {
						raw++
						continue
					}
					wire += e.Reduce.WireBytes
					carried += e.Reduce.Pages * PageSize
					deltas += e.Reduce.Delta
				}
				if ordinary == 0 {
					t.Fatal("no ordinary epoch in the trace")
				}
				if rd.red == nil && raw == 0 {
					// The fake guest's pages are seldom zero: zero pages
					// save nothing, and must switch themselves off.
					t.Error("zero pages that saved nothing were never switched off")
				}
				if rd.red != nil && !rd.red.any() {
					if carried != 0 {
						t.Error("links without reduction sent encoded pages")
					}
					return
				}
				ratio := float64(wire) / float64(carried)
				t.Logf("bytes on the wire / bytes raw: %.3f (%d deltas)", ratio, deltas)
				switch {
				case rd.red == nil && ratio > 1.01:
					t.Errorf("zero pages: the links sent %.3f of the raw bytes", ratio)
				case rd.red != nil && ratio > 0.5:
					// One word changes per store: deltas send far less.
					t.Errorf("the links sent %.3f of the raw bytes", ratio)
				}
				if rd.red != nil && rd.red.CacheBytes > 0 && deltas == 0 {
					t.Error("a page cache but no page went as a delta")
				}
			})
		}
	}
}

// replayEpochs makes n epochs of a guest of pages pages: each dirties
// dirty pages (random pattern), some zero, some a word changed in place,
// some copies of another page's content.
func replayEpochs(pages, dirty, n int, seed uint64) (dirties [][]uint64, contents [][]byte) {
	r := rand.New(rand.NewPCG(seed, 3))
	mem := make([]byte, pages*PageSize)
	for i := range mem {
		if i%PageSize < 256 {
			mem[i] = byte(r.Uint32())
		}
	}
	for range n {
		set := map[uint64]bool{}
		for len(set) < dirty {
			set[r.Uint64N(uint64(pages))] = true
		}
		var d []uint64
		for p := range set {
			d = append(d, p)
		}
		slices.Sort(d)
		var c []byte
		for _, p := range d {
			page := mem[p*PageSize : (p+1)*PageSize]
			switch r.IntN(4) {
			case 0:
				clear(page)
			case 1:
				copy(page, mem[r.Uint64N(uint64(pages))*PageSize:][:PageSize])
			default:
				binary.LittleEndian.PutUint64(page[8*r.IntN(PageSize/8):], r.Uint64())
			}
			c = append(c, page...)
		}
		dirties, contents = append(dirties, d), append(contents, c)
	}
	return dirties, contents
}

// TestReplayTechniques replays the same epochs through each technique:
// every page decodes to its content (Epoch checks), grouping by cost
// removes the fixed grouping's overhead on a random dirty set (issue 18:
// at most 1.2 bytes per dirty byte), and each technique cuts what it
// should.
func TestReplayTechniques(t *testing.T) {
	const pages, dirty, epochs = 16384, 263, 30
	dirties, contents := replayEpochs(pages, dirty, epochs, 1)
	run := func(sgMax int, red Reduction, policy Policy, links int) (wire, dirtyBytes uint64, sum ReduceTrace) {
		t.Helper()
		rp, err := NewTrafficReplay(pages*PageSize, policy, links, sgMax, red)
		if err != nil {
			t.Fatal(err)
		}
		defer rp.Close()
		for i := range dirties {
			e, err := rp.Epoch(dirties[i], contents[i])
			if err != nil {
				t.Fatalf("epoch %d: %v", i, err)
			}
			if i < 5 {
				continue // the cache fills
			}
			wire += e.WireBytes
			dirtyBytes += uint64(e.DirtyPages) * PageSize
			sum.Zero += e.Reduce.Zero
			sum.Delta += e.Reduce.Delta
			sum.Similar += e.Reduce.Similar
		}
		return wire, dirtyBytes, sum
	}
	ratio := func(w, d uint64) float64 { return float64(w) / float64(d) }

	w, d, _ := run(32, Reduction{}, PolicyFast, 1)
	fixed := ratio(w, d)
	w, d, _ = run(0, Reduction{}, PolicyFast, 1)
	byCost := ratio(w, d)
	t.Logf("random pattern, raw: sg-max 32 sends %.1f× the dirty bytes, by cost %.3f×", fixed, byCost)
	if fixed < 10 {
		t.Errorf("sg-max 32 on a random set sent only %.1f×: the replay does not group as the primary", fixed)
	}
	if byCost > 1.2 {
		t.Errorf("grouping by cost sent %.3f× the dirty bytes, want at most 1.2", byCost)
	}

	_, _, z := run(0, Reduction{Zero: true}, PolicyFT, 2)
	if z.Zero == 0 || z.Delta != 0 {
		t.Errorf("zero pages only: %+v", z)
	}
	wz, dz, _ := run(0, Reduction{Zero: true}, PolicyFast, 2)
	wa, da, all := run(0, Reduction{Zero: true, CacheBytes: 64 << 20, Similar: true, Compress: true}, PolicyFast, 2)
	t.Logf("zero only %.3f×, all techniques %.3f× (%+v)", ratio(wz, dz), ratio(wa, da), all)
	if all.Delta == 0 || all.Similar == 0 {
		t.Errorf("all techniques: no delta or no similar page: %+v", all)
	}
	if ratio(wa, da) > ratio(wz, dz)/2 {
		t.Errorf("all techniques sent %.3f×, zero pages alone %.3f×: deltas and references should halve it", ratio(wa, da), ratio(wz, dz))
	}
}

// TestBadPagesFailTheLink: a MsgPages that does not decode (a delta
// against a base the replica's store does not hold as the primary said)
// fails the link and is counted, and the store is unchanged.
func TestBadPagesFailTheLink(t *testing.T) {
	r, addr, _ := startReplica(t, ReplicaConfig{})
	const vm, pages = 78, 16
	link := dialAs(t, addr, vm, Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize})
	link.epoch(1, 0, []Region{{First: 0, Pages: pages}}, 0xAB, true)
	m := &MapRecord{Epoch: 2, Committed: 1, Regions: []Region{{First: 3, Pages: 1}}}
	b := appendMap(nil, link.c.vmID, link.c.gen, m)
	enc, _ := pagecodec.NewEncoder(pagecodec.Options{})
	wrong := bytes.Repeat([]byte{0xCD}, PageSize) // not what the store holds
	page := bytes.Clone(wrong)
	page[100] = 1
	enc.Add(page, &pagecodec.Base{Data: wrong, Page: 3, CRC: pagecodec.Checksum(wrong), Same: true})
	msg := enc.Flush(nil)
	b = appendHeader(b, Header{Generation: link.c.gen, Type: MsgPages, VMID: link.c.vmID, Epoch: 2, Length: uint32(len(msg))})
	b = append(b, msg...)
	b = appendHeader(b, Header{Generation: link.c.gen, Type: MsgDone, VMID: link.c.vmID, Epoch: 2})
	if _, err := link.c.c.Write(b); err != nil {
		t.Fatal(err)
	}
	if _, err := link.c.readHeader(); err == nil {
		t.Fatal("the replica acknowledged an epoch whose delta does not apply")
	}
	waitFor(t, "the protocol error to be counted", func() bool { return r.ProtocolErrors() == 1 })
	r.waitApplies()
	r.store.mu.RLock()
	defer r.store.mu.RUnlock()
	if !bytes.Equal(r.store.pages[3*PageSize:4*PageSize], bytes.Repeat([]byte{0xAB}, PageSize)) || r.store.epochs[3] != 1 {
		t.Fatalf("the store's page 3 changed (epoch %d)", r.store.epochs[3])
	}
}

func TestParseReduction(t *testing.T) {
	tests := []struct {
		in   string
		want Reduction
		err  bool
	}{
		{"none", Reduction{}, false},
		{"zero", Reduction{Zero: true}, false},
		{"zero,zstd", Reduction{Zero: true, Compress: true}, false},
		{"delta", Reduction{CacheBytes: 1 << 20}, false},
		{"all", Reduction{Zero: true, CacheBytes: 1 << 20, Similar: true, Compress: true}, false},
		{"lz4", Reduction{}, true},
	}
	for _, tt := range tests {
		got, err := ParseReduction(tt.in, 1<<20)
		if (err != nil) != tt.err || (err == nil && got != tt.want) {
			t.Errorf("ParseReduction(%q) = %+v, %v; want %+v (error %v)", tt.in, got, err, tt.want, tt.err)
		}
		if err == nil && got.String() != tt.in && tt.in != "all" {
			t.Errorf("%+v prints as %q, want %q", got, got.String(), tt.in)
		}
	}
	if _, err := ParseReduction("delta", 0); err == nil {
		t.Error("delta without a page cache accepted")
	}
	if _, err := NewPrimary(PrimaryConfig{Links: []string{"x"}, Leader: "x", Epoch: time.Millisecond, VMID: 1, Auth: testCreds,
		Reduce: &Reduction{Similar: true}}, nil, nil); err == nil || errors.Is(err, ErrProtocol) {
		t.Errorf("similar pages without a cache: %v", err)
	}
}

// TestPageCacheHolders checks the rule deltas rest on, step by step: a
// link may encode against a cached copy only if its replica holds it.
func TestPageCacheHolders(t *testing.T) {
	r := newReducer(Reduction{CacheBytes: 2 * PageSize, Similar: true})
	mem := make([]byte, 8*PageSize)
	src := func(x Region) []byte { return mem[x.First*PageSize : x.End()*PageSize] }
	fill := func(p uint64, v byte) { copy(mem[p*PageSize:(p+1)*PageSize], bytes.Repeat([]byte{v}, PageSize)) }
	canBase := func(page uint64, link int) (uint64, bool) {
		var b pagecodec.Base
		ok := r.cache.base(page, mem[page*PageSize:(page+1)*PageSize], 1<<link, &b)
		return b.Page, ok
	}
	one := func(p uint64) []Region { return []Region{{First: p, Pages: 1}} }
	want := func(step string, page uint64, link int, ok bool) {
		t.Helper()
		if _, got := canBase(page, link); got != ok {
			t.Fatalf("%s: page %d on link %d has a base: %v, want %v", step, page, link, got, ok)
		}
	}

	fill(1, 1)
	want("before any commit", 1, 0, false)
	r.committed([]int{0}, [][]Region{one(1)}, []uint64{1}, src)
	want("carried on link 0", 1, 0, true)
	want("carried on link 0", 1, 1, false)

	r.committed([]int{1}, [][]Region{one(1)}, nil, src) // clean, carried along on link 1
	want("clean, also on link 1", 1, 1, true)
	want("clean, also on link 1", 1, 0, true)

	fill(1, 2)
	r.committed([]int{1}, [][]Region{one(1)}, []uint64{1}, src)
	want("dirty, only on link 1", 1, 0, false)
	want("dirty, only on link 1", 1, 1, true)
	// Links 0 and 1 sharing one encoding (ft) may only use copies both hold.
	var b pagecodec.Base
	if r.cache.base(1, mem[PageSize:2*PageSize], 0b11, &b) && b.Page == 1 {
		t.Fatal("links 0 and 1 together were given page 1's copy, which only link 1 holds")
	}

	r.linkLost(1)
	want("link 1 lost", 1, 1, false)

	// Similar: page 5 now holds page 1's content, which link 0 holds.
	r.committed([]int{0}, [][]Region{one(1)}, nil, src)
	fill(5, 2)
	if q, ok := canBase(5, 0); !ok || q != 1 {
		t.Fatalf("page 5 with page 1's content: base %d, %v; want page 1", q, ok)
	}

	// Eviction: a cache of two pages forgets the least recently sent (a
	// page of the same bit density may still be offered instead).
	fill(2, 3)
	fill(3, 4)
	r.committed([]int{0}, [][]Region{one(2)}, []uint64{2}, src)
	r.committed([]int{0}, [][]Region{one(3)}, []uint64{3}, src)
	if q, ok := canBase(1, 0); ok && q == 1 {
		t.Fatal("page 1's evicted copy is still a base")
	}
	want("kept", 2, 0, true)
	want("kept", 3, 0, true)

	// Similar, not equal: page 6 is page 3 with three bytes changed (a bit
	// more each): same bit density, so page 3's copy is its base.
	copy(mem[6*PageSize:7*PageSize], mem[3*PageSize:4*PageSize])
	for _, off := range []int{10, 2000, 4000} {
		mem[6*PageSize+off] |= 1
	}
	if q, ok := canBase(6, 0); !ok || q != 3 {
		t.Fatalf("page 6, like page 3: base %d, %v; want page 3", q, ok)
	}
}

// TestRecordingReplays: a primary's recording reads back epoch by epoch
// and replays through every technique (TrafficReplay checks each decoded
// page); a torn last record ends the read with ErrUnexpectedEOF after the
// whole ones, and a flipped byte is ErrBadRecording.
func TestRecordingReplays(t *testing.T) {
	c := newCluster(t, 1)
	vm := newFakeVM(t, 512)
	var rec bytes.Buffer
	recorder := NewEpochRecorder(&rec)
	p := mustConnectPrimary(t, PrimaryConfig{
		Links: c.addrs, Leader: c.leadAddr, VMID: 0x7E59, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, Policy: PolicyFast, Mode: ModeSync, Log: quietLog(), Record: recorder,
	}, vm, nil)
	ctx, cancel := context.WithCancel(context.Background())
	guestDone := make(chan struct{})
	go func() { defer close(guestDone); vm.run(ctx, 5) }()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 15, 20*time.Second, nil)
	cancel()
	<-runErr
	<-guestDone
	if err := recorder.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, red := range []Reduction{{}, {Zero: true}, {Zero: true, CacheBytes: 1 << 20, Similar: true, Compress: true}} {
		var rp *TrafficReplay
		epochs := 0
		err := ReadRecording(bytes.NewReader(rec.Bytes()), func(mem uint64, e *RecordedEpoch) error {
			if rp == nil {
				var err error
				if rp, err = NewTrafficReplay(mem, PolicyFT, 2, 0, red); err != nil {
					return err
				}
			}
			epochs++
			_, err := rp.Epoch(e.Dirty, e.Contents)
			return err
		})
		if err != nil {
			t.Fatalf("replay with %v: %v", red, err)
		}
		rp.Close()
		if epochs < 14 { // epoch 1 is the initial copy: no dirty set
			t.Fatalf("%d epochs recorded, want at least 14", epochs)
		}
	}
	count := func(b []byte) (int, error) {
		n := 0
		err := ReadRecording(bytes.NewReader(b), func(uint64, *RecordedEpoch) error { n++; return nil })
		return n, err
	}
	all, _ := count(rec.Bytes())
	if n, err := count(rec.Bytes()[:rec.Len()-10]); !errors.Is(err, io.ErrUnexpectedEOF) || n != all-1 {
		t.Errorf("torn recording: %d epochs, %v; want %d and ErrUnexpectedEOF", n, err, all-1)
	}
	bad := bytes.Clone(rec.Bytes())
	bad[len(bad)/2] ^= 1
	if _, err := count(bad); !errors.Is(err, ErrBadRecording) {
		t.Errorf("flipped byte: %v, want ErrBadRecording", err)
	}
	if _, err := count([]byte("not a recording at all")); !errors.Is(err, ErrBadRecording) {
		t.Errorf("not a recording: %v", err)
	}
}

// TestReductionSwitchesOff: encoding that saves nothing (pages that are
// neither zero nor seen before) is switched off after a window and tried
// again later; one that saves stays on.
func TestReductionSwitchesOff(t *testing.T) {
	r := newReducer(Reduction{Zero: true})
	useless := &ReduceTrace{Pages: 100, WireBytes: 100*(PageSize+1) + 12, EncodeMicros: 200}
	for i := range payEpochs {
		if !r.encodingOn() {
			t.Fatalf("encoding off after %d epochs", i)
		}
		r.account(useless, 125e6)
	}
	if r.encodingOn() {
		t.Fatal("encoding that saved nothing is still on after a window")
	}
	for range offEpochs {
		r.account(nil, 0)
	}
	if !r.encodingOn() {
		t.Fatalf("encoding not tried again after %d epochs", offEpochs)
	}
	paying := &ReduceTrace{Pages: 100, Zero: 90, WireBytes: 10*(PageSize+1) + 90 + 12, EncodeMicros: 200}
	for range 3 * payEpochs {
		r.account(paying, 125e6)
	}
	if !r.encodingOn() {
		t.Fatal("encoding that saved 90% of the bytes was switched off")
	}
}

// TestRecordingClaimsCostNothing: a record that claims millions of pages
// in a few bytes fails without allocating what it claims.
func TestRecordingClaimsCostNothing(t *testing.T) {
	b := append([]byte(recordingMagic), binary.LittleEndian.AppendUint64(nil, 1<<40)...)
	b = binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint64(b, 1), maxRecordedPages)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := ReadRecording(bytes.NewReader(b), func(uint64, *RecordedEpoch) error { return nil })
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a record of %d pages in 0 bytes: %v", maxRecordedPages, err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
		t.Fatalf("reading it allocated %d MiB", grew>>20)
	}
}
