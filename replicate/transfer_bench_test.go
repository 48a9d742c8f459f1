package replicate

import (
	"context"
	"io"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// staticSource is a Source whose memory holds data in every page and whose
// every harvest returns the same dirty pages: the data path at the speed of
// the host alone, with no guest.
type staticSource struct {
	mem   []byte
	dirty []uint64
	state []byte
}

func newStaticSource(tb testing.TB, pages int, dirty []uint64) *staticSource {
	mem, err := syscall.Mmap(-1, 0, pages*PageSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { syscall.Munmap(mem) })
	for p := 0; p < pages; p++ {
		mem[p*PageSize] = byte(p) | 1
	}
	return &staticSource{mem: mem, dirty: dirty, state: make([]byte, 4096)}
}

func (s *staticSource) Pause() error                  { return nil }
func (s *staticSource) Resume()                       {}
func (s *staticSource) Memory() []byte                { return s.mem }
func (s *staticSource) CaptureState() ([]byte, error) { return s.state, nil }
func (s *staticSource) HarvestDirty(dst []uint64) ([]uint64, error) {
	return append(dst, s.dirty...), nil
}

// BenchmarkTransfer measures one synchronous epoch of the whole data path
// over loopback TCP: harvest (static), grouping, assignment, the transfer
// on every link, the replicas' staging and acknowledgement, the commit, and
// the replicas' apply of the previous epoch. The dirty set is the scattered
// pattern seed 003 observed (runs of 1-2 pages, gaps of 1-2), 4096 pages in
// a 64 MiB guest; MB/s counts the bytes on all links together. Every case
// runs with the connections encrypted (TLS 1.3, the default) and in
// plaintext mode (authenticated, then in clear), so one run gives the cost
// of encryption.
func BenchmarkTransfer(b *testing.B) {
	const memPages = 16384
	const sgMax = 32
	dirty := scatteredPages(rand.New(rand.NewPCG(42, 44)), 4096)
	sent := Transferred(Group(nil, dirty, sgMax))
	for _, creds := range []*auth.Credentials{testCreds, testPlainCreds} {
		for _, c := range []struct {
			name   string
			policy Policy
			links  int
		}{
			{"fast/links=1", PolicyFast, 1},
			{"fast/links=2", PolicyFast, 2},
			{"fast/links=4", PolicyFast, 4},
			{"ft/links=4", PolicyFT, 4},
		} {
			b.Run(creds.Mode().String()+"/"+c.name, func(b *testing.B) {
				src := newStaticSource(b, memPages, dirty)
				var links []string
				for range c.links {
					links = append(links, replicaAddr(b, ReplicaConfig{Auth: creds}))
				}
				leader := replicaAddr(b, ReplicaConfig{Auth: creds, Leader: true, HeartbeatTimeout: time.Hour})
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				p := staticPrimary(ctx, b, PrimaryConfig{Auth: creds, Links: links, Leader: leader, VMID: 0xBE7C, Policy: c.policy, SGMax: sgMax}, src)
				wire := sent * PageSize
				if c.policy == PolicyFT {
					wire *= uint64(c.links)
				}
				b.SetBytes(int64(wire))
				b.ReportAllocs()
				for b.Loop() {
					if err := p.runEpoch(ctx); err != nil {
						b.Fatal(err)
					}
				}
				if p.Committed() != p.epoch {
					b.Fatalf("committed epoch %d, last epoch %d: an epoch failed", p.Committed(), p.epoch)
				}
				b.ReportMetric(float64(sent)/float64(len(dirty)), "sent/dirty")
			})
		}
	}
}

// staticPrimary connects a synchronous primary of src with cfg (the rest
// filled in for a benchmark) and sends its initial copy; it closes with
// the benchmark.
func staticPrimary(ctx context.Context, b *testing.B, cfg PrimaryConfig, src Source) *Primary {
	cfg.Guest, cfg.VCPUs, cfg.Epoch, cfg.Mode, cfg.Log = "static", 1, time.Hour, ModeSync, quietLog()
	p, err := NewPrimary(cfg, src, NewOutputGate(io.Discard, 1<<20))
	if err != nil {
		b.Fatal(err)
	}
	if err := p.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	if err := p.initialSync(ctx); err != nil {
		b.Fatal(err)
	}
	return p
}
