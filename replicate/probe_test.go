package replicate

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// TestProbe: a TCP link measures its element cost when it connects, and
// the link carries epochs afterwards as usual; encrypted and plain.
func TestProbe(t *testing.T) {
	for _, creds := range []*auth.Credentials{testCreds, testPlainCreds} {
		t.Run(creds.Mode().String(), func(t *testing.T) { testProbe(t, creds) })
	}
}

func testProbe(t *testing.T, creds *auth.Credentials) {
	r, addr, _ := startReplica(t, ReplicaConfig{Auth: creds})
	const vmID, pages = 0x9B0E, 16
	acks := make(chan Ack, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := dialLink(ctx, creds, addr, 0, vmID, 1, Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize, VCPUs: 1}, acks)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// writev's work per iovec, or a record and a write per slice, is well
	// under a microsecond; a millisecond would measure something else.
	if c := l.elementCost(); c < 0 || c > time.Millisecond {
		t.Fatalf("element cost %v", c)
	}
	t.Logf("element cost %v", l.elementCost())
	if err := l.WriteMap(&MapRecord{Epoch: 1, Regions: []Region{{First: 3, Pages: 2}}}); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteSG([][]byte{make([]byte, 2*PageSize)}); err != nil {
		t.Fatal(err)
	}
	if err := l.WriteImm(1); err != nil {
		t.Fatal(err)
	}
	select {
	case a := <-acks:
		if a.Err != nil || a.Epoch != 1 {
			t.Fatalf("ack %+v", a)
		}
	case <-ctx.Done():
		t.Fatal("no ack of epoch 1 after the probe")
	}
	if n := r.ProtocolErrors(); n != 0 {
		t.Fatalf("%d protocol errors", n)
	}
}

// TestProbeMessageByMessage: a probe is answered with an empty probe of
// its epoch, and refused after the link's first map or above its size.
func TestProbeMessageByMessage(t *testing.T) {
	const vmID, pages = 0x9B0F, 16
	hello := Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize, VCPUs: 1}
	probe := func(l *linkClient, e uint64, n int) []byte {
		return append(appendHeader(nil, Header{Generation: l.c.gen, Type: MsgProbe, VMID: l.c.vmID, Epoch: e, Length: uint32(n)}), make([]byte, n)...)
	}
	t.Run("answered", func(t *testing.T) {
		r, addr, _ := startReplica(t, ReplicaConfig{})
		l := dialAs(t, addr, vmID, hello)
		for e, n := range []int{probeBytes, 0, 100} {
			if _, err := l.c.c.Write(probe(l, uint64(e+7), n)); err != nil {
				t.Fatal(err)
			}
			h, err := l.c.readHeader()
			if err != nil || h.Type != MsgProbe || h.Epoch != uint64(e+7) || h.Length != 0 {
				t.Fatalf("answer to a probe of %d bytes: %+v, %v", n, h, err)
			}
		}
		l.epoch(1, 0, []Region{{First: 0, Pages: 2}}, 0x5A, true)
		if n := r.ProtocolErrors(); n != 0 {
			t.Fatalf("%d protocol errors", n)
		}
	})
	for _, tt := range []struct {
		name string
		send func(l *linkClient) []byte
	}{
		{"after the first map", func(l *linkClient) []byte {
			l.epoch(1, 0, []Region{{First: 0, Pages: 2}}, 0x5A, true)
			return probe(l, 9, 64)
		}},
		{"too large", func(l *linkClient) []byte { return probe(l, 9, probeBytes+1) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, addr, _ := startReplica(t, ReplicaConfig{})
			l := dialAs(t, addr, vmID, hello)
			b := tt.send(l)
			l.c.c.Write(b) // the node may close the link mid-way
			l.c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
			for {
				h, err := l.c.readHeader()
				if err != nil {
					break // the node closed the link
				}
				if h.Type == MsgProbe {
					t.Fatal("the node answered a probe it must refuse")
				}
				if _, err := io.CopyN(io.Discard, l.c.r, int64(h.Length)); err != nil {
					break
				}
			}
			waitFor(t, "the protocol error counted", func() bool { return r.ProtocolErrors() == 1 })
		})
	}
}

// TestMergeableGap: a clean gap is merged only where its bytes at the
// link's rate cost less than the element the link states, and never on a
// link that carries encoded pages.
func TestMergeableGap(t *testing.T) {
	for _, tt := range []struct {
		name     string
		element  time.Duration
		rate     float64
		encoding bool
		want     uint64
	}{
		{"tcp, writev", 50 * time.Nanosecond, 125e6, false, 0},
		{"fast link, dear element", 10 * time.Microsecond, 1.25e9, false, 3}, // 12,516 bytes
		{"not measured yet", 10 * time.Microsecond, 0, false, 30},            // at 100 Gbit/s
		{"encoded pages", 10 * time.Microsecond, 1.25e9, true, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &Primary{links: []*linkState{{Link: &tcpLink{element: tt.element}, alive: true, rate: tt.rate}}}
			if tt.encoding {
				p.red = newReducer(Reduction{Zero: true})
			}
			if got := p.mergeableGap(); got != tt.want {
				t.Fatalf("mergeable gap %d pages, want %d", got, tt.want)
			}
		})
	}
}
