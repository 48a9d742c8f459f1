package replicate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/pagecodec"
)

// fakeShadow is a Shadow whose "guest" is step, called at every Stop to
// write its memory as the guest would have and return the pages written.
type fakeShadow struct {
	mu      sync.Mutex
	mem     []byte
	runs    int
	running bool
	closed  bool
	step    func(mem []byte, dst []uint64) []uint64
	states  [][]byte
}

func newFakeShadow(t testing.TB, memBytes uint64, step func(mem []byte, dst []uint64) []uint64) *fakeShadow {
	mem, err := syscall.Mmap(-1, 0, int(memBytes), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(mem) })
	return &fakeShadow{mem: mem, step: step}
}

func (s *fakeShadow) Memory() []byte { return s.mem }

func (s *fakeShadow) Run(state []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running || s.closed {
		return errors.New("fake shadow: Run while running or closed")
	}
	s.running, s.runs = true, s.runs+1
	s.states = append(s.states, bytes.Clone(state))
	return nil
}

func (s *fakeShadow) Stop(dst []uint64) ([]uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return dst, nil
	}
	s.running = false
	if s.step != nil {
		dst = s.step(s.mem, dst)
	}
	return dst, nil
}

func (s *fakeShadow) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed, s.running = true, false
	return nil
}

// mimic is a shadow step that writes what the primary's guest vm wrote
// (the primary is paused when the leader stops its shadow), except on
// every third page it writes, where it diverges: a guest that is partly
// deterministic.
func mimic(vm *fakeVM) func(mem []byte, dst []uint64) []uint64 {
	return func(mem []byte, dst []uint64) []uint64 {
		vm.mu.Lock()
		defer vm.mu.Unlock()
		for p := 0; p < len(mem)/PageSize; p++ {
			want := vm.mem[p*PageSize : (p+1)*PageSize]
			have := mem[p*PageSize : (p+1)*PageSize]
			if bytes.Equal(have, want) {
				continue
			}
			copy(have, want)
			if p%3 == 1 {
				have[PageSize-1] ^= 0x5A
			}
			dst = append(dst, uint64(p))
		}
		return dst
	}
}

// TestActiveBackup: with a leader that runs a (partly wrong) shadow and
// is also a link, ft keeps many pages off that link, sends every page the
// shadow got wrong, and recovery, also after the other replica is lost,
// gives exactly the guest's memory, with no protocol error anywhere. The
// replica without a shadow says so at once and gets no more hashes.
func TestActiveBackup(t *testing.T) {
	for _, tc := range []struct {
		red *Reduction
		// twice: the leader carries two links, which compare the one
		// shadow.
		twice bool
	}{
		{&Reduction{}, false},
		{&Reduction{Zero: true, CacheBytes: 1 << 20, Similar: true, Compress: true}, false},
		{&Reduction{Zero: true}, true},
	} {
		red := tc.red
		name := red.String()
		if tc.twice {
			name += "/two links to the shadow"
		}
		t.Run(name, func(t *testing.T) {
			vm := newFakeVM(t, 256)
			var shadows []*fakeShadow
			var smu sync.Mutex
			leader, leadAddr, stopLeader := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: 2 * time.Second,
				Shadow: func(memBytes uint64, vcpus int, state []byte) (Shadow, error) {
					s := newFakeShadow(t, memBytes, mimic(vm))
					smu.Lock()
					shadows = append(shadows, s)
					smu.Unlock()
					return s, nil
				}})
			plain, plainAddr, stopPlain := startReplica(t, ReplicaConfig{})
			c := &cluster{t: t, replicas: []*Replica{leader, plain}, addrs: []string{leadAddr, plainAddr},
				cancels: []context.CancelFunc{stopLeader, stopPlain}, leader: leader, leadAddr: leadAddr, stopLeader: stopLeader}
			if tc.twice {
				c.addrs = append(c.addrs, leadAddr)
			}
			epochs := loseAReplicaAndRecover(t, c, vm, vm, func(ctx context.Context) { vm.run(ctx, 9) }, 20, PrimaryConfig{
				VMID: 0xAC71, Epoch: 5 * time.Millisecond, Policy: PolicyFT, Reduce: red, ActiveBackup: ActiveBackupOn,
			})
			var pages, kept uint64
			for _, e := range epochs {
				if e.Active != nil {
					pages += e.Active.Pages
					kept += e.Active.Kept
					if e.Active.Links > 1+btoi(tc.twice) && e.Epoch > epochs[0].Epoch+1 {
						t.Errorf("epoch %d hashed on %d links: the replica without a shadow is asked again", e.Epoch, e.Active.Links)
					}
				}
			}
			st := leader.ShadowStats()
			t.Logf("%d of %d hashed pages kept; leader: %+v", kept, pages, st)
			if kept == 0 || kept == pages {
				t.Fatalf("%d of %d pages kept: want some kept and the diverged ones sent", kept, pages)
			}
			if tc.twice && st.Restarts > st.Compared {
				t.Errorf("the shadow restarted %d times: once per epoch, not per link", st.Restarts)
			}
			if st.Restarts < 10 || st.Equal != kept {
				t.Errorf("shadow restarted %d times, found %d pages equal; the primary kept %d", st.Restarts, st.Equal, kept)
			}
			smu.Lock()
			defer smu.Unlock()
			if len(shadows) != 1 || !shadows[0].closed {
				t.Errorf("%d shadows made; want one, closed once the primary failed", len(shadows))
			}
		})
	}
}

// TestActiveBackupNeedsFT: active backup is refused where the node with
// the shadow would not be sent every page at the pause.
func TestActiveBackupNeedsFT(t *testing.T) {
	base := PrimaryConfig{Links: []string{"a:1"}, Leader: "a:1", VMID: 1, Epoch: time.Millisecond, Auth: testCreds, ActiveBackup: ActiveBackupAuto}
	for name, mutate := range map[string]func(*PrimaryConfig){
		"fast":        func(c *PrimaryConfig) { c.Policy = PolicyFast },
		"async":       func(c *PrimaryConfig) { c.Policy, c.Mode = PolicyFT, ModeAsync },
		"speculating": func(c *PrimaryConfig) { c.Policy, c.Speculate = PolicyFT, 0.5 },
	} {
		cfg := base
		mutate(&cfg)
		if _, err := NewPrimary(cfg, newFakeVM(t, 4), NewOutputGate(io.Discard, 1)); !errors.Is(err, errActiveBackup) {
			t.Errorf("%s: %v, want errActiveBackup", name, err)
		}
	}
	cfg := base
	cfg.Policy = PolicyFT
	if _, err := NewPrimary(cfg, newFakeVM(t, 4), NewOutputGate(io.Discard, 1)); err != nil {
		t.Errorf("ft, sync: %v", err)
	}
}

// TestHashesMessageByMessage walks a node's rules for active backup one
// message at a time: hashes follow a map, before its data, once; the want
// asks for exactly the pages whose hash differs from the shadow's; a kept
// record takes the shadow's page; a kept record for a page the node asked
// for, and hashes out of place, fail the link.
func TestHashesMessageByMessage(t *testing.T) {
	const vmID, pages = 0xAC72, 16
	hello := Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize, VCPUs: 1}
	shadowPage := func(p uint64) []byte { return bytes.Repeat([]byte{byte(0x40 + p)}, PageSize) }
	// start serves a node whose shadow runs from epoch 1, which the link
	// carried and committed.
	start := func(t *testing.T) (*Replica, *linkClient) {
		r, addr, _ := startReplica(t, ReplicaConfig{Shadow: func(uint64, int, []byte) (Shadow, error) {
			return nil, errors.New("not used")
		}})
		l := dialAs(t, addr, vmID, hello)
		l.epoch(1, 0, []Region{{First: 0, Pages: pages}}, 0x11, true)
		s := newFakeShadow(t, pages*PageSize, nil)
		for p := range uint64(pages) {
			copy(s.mem[p*PageSize:], shadowPage(p))
		}
		s.running = true
		r.active.mu.Lock()
		r.active.shadow, r.active.running = s, true
		r.active.mu.Unlock()
		return r, l
	}
	hashes := func(pagesData ...[]byte) []byte {
		var b []byte
		for _, d := range pagesData {
			h := pageHash(d)
			b = append(b, h[:]...)
		}
		return b
	}
	msg := func(l *linkClient, typ MsgType, e uint64, payload []byte) []byte {
		return append(appendHeader(nil, Header{Generation: l.c.gen, Type: typ, VMID: l.c.vmID, Epoch: e, Length: uint32(len(payload))}), payload...)
	}
	send := func(t *testing.T, l *linkClient, b []byte) {
		t.Helper()
		if _, err := l.c.c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	other := bytes.Repeat([]byte{0x99}, PageSize)
	regions := []Region{{First: 2, Pages: 3}} // pages 2, 3, 4
	mapOf := func(l *linkClient) []byte {
		return appendMap(nil, l.c.vmID, l.c.gen, &MapRecord{Epoch: 2, Committed: 1, Regions: regions})
	}

	t.Run("accepted", func(t *testing.T) {
		r, l := start(t)
		// The primary's pages 2 and 4 are what the shadow wrote; 3 is not.
		send(t, l, append(mapOf(l), msg(l, MsgHashes, 2, hashes(shadowPage(2), other, shadowPage(4)))...))
		h, err := l.c.readHeader()
		if err != nil || h.Type != MsgWant || h.Epoch != 2 {
			t.Fatalf("after the hashes: %+v, %v; want a want of epoch 2", h, err)
		}
		p, err := readPayload(l.c.r, h)
		if err != nil {
			t.Fatal(err)
		}
		w, err := parseWant(p, 3)
		if err != nil || w.reason != wantCompared || w.wanted(0) || !w.wanted(1) || w.wanted(2) {
			t.Fatalf("want %+v, %v: want page 3 only, compared", w, err)
		}
		enc, _ := pagecodec.NewEncoder(pagecodec.Options{})
		enc.AddKept(shadowPage(2))
		enc.Add(other, nil)
		enc.AddKept(shadowPage(4))
		b := msg(l, MsgPages, 2, enc.Flush(nil))
		send(t, l, append(b, appendHeader(nil, Header{Generation: l.c.gen, Type: MsgDone, VMID: l.c.vmID, Epoch: 2})...))
		if h, err := l.c.readHeader(); err != nil || h.Type != MsgAck || h.Epoch != 2 {
			t.Fatalf("after the pages: %+v, %v; want the ack of epoch 2", h, err)
		}
		if err := l.c.send(MsgCommit, 2, nil); err != nil {
			t.Fatal(err)
		}
		want := map[uint64][]byte{2: shadowPage(2), 3: other, 4: shadowPage(4), 5: bytes.Repeat([]byte{0x11}, PageSize)}
		waitFor(t, "epoch 2 applied", func() bool {
			r.waitApplies()
			r.store.mu.RLock()
			defer r.store.mu.RUnlock()
			for pg, d := range want {
				if !bytes.Equal(r.store.pages[pg*PageSize:(pg+1)*PageSize], d) {
					return false
				}
			}
			return r.store.epochs[4] == 2
		})
		if n := r.ProtocolErrors(); n != 0 {
			t.Fatalf("%d protocol errors", n)
		}
	})

	refused := []struct {
		name string
		msgs func(l *linkClient) []byte
		// answered: the hashes are answered before the failure.
		answered bool
	}{
		{"hashes without a map", func(l *linkClient) []byte {
			return msg(l, MsgHashes, 2, hashes(other, other, other))
		}, false},
		{"hashes of too few pages", func(l *linkClient) []byte {
			return append(mapOf(l), msg(l, MsgHashes, 2, hashes(other, other))...)
		}, false},
		{"hashes of another epoch", func(l *linkClient) []byte {
			return append(mapOf(l), msg(l, MsgHashes, 3, hashes(other, other, other))...)
		}, false},
		{"hashes twice", func(l *linkClient) []byte {
			b := append(mapOf(l), msg(l, MsgHashes, 2, hashes(other, other, other))...)
			return append(b, msg(l, MsgHashes, 2, hashes(other, other, other))...)
		}, true},
		{"hashes after data", func(l *linkClient) []byte {
			enc, _ := pagecodec.NewEncoder(pagecodec.Options{})
			enc.Add(other, nil)
			b := append(mapOf(l), msg(l, MsgPages, 2, enc.Flush(nil))...)
			return append(b, msg(l, MsgHashes, 2, hashes(other, other, other))...)
		}, false},
		{"kept record for a wanted page", func(l *linkClient) []byte {
			b := append(mapOf(l), msg(l, MsgHashes, 2, hashes(shadowPage(2), other, shadowPage(4)))...)
			enc, _ := pagecodec.NewEncoder(pagecodec.Options{})
			enc.AddKept(shadowPage(2))
			enc.AddKept(shadowPage(3)) // the node asked for page 3
			enc.AddKept(shadowPage(4))
			return append(b, msg(l, MsgPages, 2, enc.Flush(nil))...)
		}, true},
		{"kept record without hashes", func(l *linkClient) []byte {
			enc, _ := pagecodec.NewEncoder(pagecodec.Options{})
			enc.AddKept(shadowPage(2))
			return append(mapOf(l), msg(l, MsgPages, 2, enc.Flush(nil))...)
		}, false},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			r, l := start(t)
			send(t, l, tt.msgs(l))
			if tt.answered {
				if h, err := l.c.readHeader(); err != nil || h.Type != MsgWant {
					t.Fatalf("%+v, %v: want the answer to the hashes first", h, err)
				} else if _, err := readPayload(l.c.r, h); err != nil {
					t.Fatal(err)
				}
			}
			l.c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				h, err := l.c.readHeader()
				if err != nil {
					break // the node closed the link
				}
				if h.Type == MsgAck || h.Type == MsgWant {
					t.Fatalf("the node answered %v: it accepted what it must refuse", h.Type)
				}
				if _, err := io.CopyN(io.Discard, l.c.r, int64(h.Length)); err != nil {
					break
				}
			}
			waitFor(t, "the protocol error counted", func() bool { return r.ProtocolErrors() == 1 })
		})
	}
}

// TestParseWant: a want must have one bit per page and a known reason.
func TestParseWant(t *testing.T) {
	for _, tt := range []struct {
		name string
		b    []byte
		n    int
		ok   bool
	}{
		{"compared", []byte{wantCompared, 0b101}, 3, true},
		{"nine pages", []byte{wantNotReady, 0xff, 1}, 9, true},
		{"empty", nil, 3, false},
		{"short", []byte{wantCompared}, 3, false},
		{"long", []byte{wantCompared, 0, 0}, 3, false},
		{"unknown reason", []byte{7, 0}, 3, false},
	} {
		_, err := parseWant(tt.b, tt.n)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrProtocol)) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
	w := allWanted(wantNotReady, 9)
	for i := range 9 {
		if !w.wanted(i) {
			t.Fatalf("allWanted leaves page %d out", i)
		}
	}
	if len(w.marshal()) != 3 || binary.LittleEndian.Uint16(w.bits) != 0x1ff {
		t.Fatalf("allWanted(9) = %x", w.marshal())
	}
}

// TestActiveBackupSwitchesOff: with ActiveBackupAuto, a shadow that never
// writes a page as the guest does saves nothing, and after a window of
// epochs the primary stops hashing for a while; recovery is still exact.
func TestActiveBackupSwitchesOff(t *testing.T) {
	vm := newFakeVM(t, 64)
	diverge := func(mem []byte, dst []uint64) []uint64 {
		for p := 0; p < len(mem)/PageSize; p++ {
			mem[p*PageSize]++
			dst = append(dst, uint64(p))
		}
		return dst
	}
	leader, leadAddr, stopLeader := startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: 2 * time.Second,
		Shadow: func(memBytes uint64, _ int, _ []byte) (Shadow, error) {
			return newFakeShadow(t, memBytes, diverge), nil
		}})
	plain, plainAddr, stopPlain := startReplica(t, ReplicaConfig{})
	c := &cluster{t: t, replicas: []*Replica{leader, plain}, addrs: []string{leadAddr, plainAddr},
		cancels: []context.CancelFunc{stopLeader, stopPlain}, leader: leader, leadAddr: leadAddr, stopLeader: stopLeader}
	epochs := loseAReplicaAndRecover(t, c, vm, vm, func(ctx context.Context) { vm.run(ctx, 10) }, 25, PrimaryConfig{
		VMID: 0xAC73, Epoch: 5 * time.Millisecond, Policy: PolicyFT, Reduce: &Reduction{}, ActiveBackup: ActiveBackupAuto,
	})
	compared, last := 0, -1
	for i, e := range epochs {
		if e.Active != nil && e.Active.Compared > 0 {
			compared++
			last = i
			if e.Active.Kept != 0 {
				t.Fatalf("epoch %d kept %d pages of a shadow that never matches", e.Epoch, e.Active.Kept)
			}
		}
	}
	if compared == 0 || last == len(epochs)-1 || compared > payEpochs+2 {
		t.Fatalf("%d epochs compared, the last at %d of %d: want active backup off after a window of %d", compared, last, len(epochs), payEpochs)
	}
	// Unused, the shadow idles: restarted only while hashes came.
	if st := leader.ShadowStats(); st.Restarts > uint64(compared)+2 {
		t.Errorf("the shadow restarted %d times for %d epochs compared: it kept running once unused", st.Restarts, compared)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
