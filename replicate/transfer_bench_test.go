package replicate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
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
// a 64 MiB guest, sent raw (Reduction none) as tandem bench's data path
// sends it, grouped into seed 003's 32 regions as tandem bench groups it,
// or (by-cost) by cost for the links, the default, which on this pattern
// makes a region of every run; MB/s counts the bytes on all links
// together. Every case runs with the connections encrypted (TLS 1.3, the
// default) and in plaintext mode (authenticated, then in clear), so one
// run gives the cost of encryption.
func BenchmarkTransfer(b *testing.B) {
	const memPages = 16384
	dirty := scatteredPages(rand.New(rand.NewPCG(42, 44)), 4096)
	for _, creds := range []*auth.Credentials{testCreds, testPlainCreds} {
		for _, c := range []struct {
			name   string
			policy Policy
			links  int
			sgMax  int
		}{
			{"fast/links=1", PolicyFast, 1, 32},
			{"fast/links=2", PolicyFast, 2, 32},
			{"fast/links=4", PolicyFast, 4, 32},
			{"ft/links=4", PolicyFT, 4, 32},
			{"fast/links=4/by-cost", PolicyFast, 4, 0},
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
				p := staticPrimary(ctx, b, PrimaryConfig{Auth: creds, Links: links, Leader: leader, VMID: 0xBE7C, Policy: c.policy, SGMax: c.sgMax, Reduce: &Reduction{}}, src)
				// A first epoch measures the links, which grouping by
				// cost asks, and says what the epochs send.
				if err := p.runEpoch(ctx); err != nil {
					b.Fatal(err)
				}
				sent := p.lastEpoch.TransferredPages
				wire := sent * PageSize
				if c.policy == PolicyFT {
					wire *= uint64(c.links)
				}
				b.SetBytes(int64(wire))
				b.ReportAllocs()
				cpu := processCPU(b)
				for b.Loop() {
					if err := p.runEpoch(ctx); err != nil {
						b.Fatal(err)
					}
					if n := p.lastEpoch.TransferredPages; n != sent {
						b.Fatalf("epoch %d sent %d pages, the first %d", p.epoch, n, sent)
					}
				}
				reportCPU(b, cpu, wire)
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

// BenchmarkLoopbackTCP is BenchmarkTransfer's ceiling: per op, the bytes
// of one fast epoch of BenchmarkTransfer, split evenly over streams
// loopback TCP connections written at once in 1 MiB writes (as tandem
// bench measures loopback). plain is bare TCP, the baseline tandem bench
// compares the data path with; encrypted runs the same streams through the
// replication handshake of testCreds (TLS 1.3), the ceiling of an
// encrypted data path.
func BenchmarkLoopbackTCP(b *testing.B) {
	dirty := scatteredPages(rand.New(rand.NewPCG(42, 44)), 4096)
	wire := int(Transferred(Group(nil, dirty, 32)) * PageSize)
	for _, encrypted := range []bool{false, true} {
		mode := "plain"
		if encrypted {
			mode = "encrypted"
		}
		for _, streams := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("%s/streams=%d", mode, streams), func(b *testing.B) {
				pairs := loopbackPairs(b, streams, encrypted)
				share := wire / streams
				wbuf := make([]byte, 1<<20)
				for i := range wbuf {
					wbuf[i] = byte(i)
				}
				rbufs := make([][]byte, streams)
				for i := range rbufs {
					rbufs[i] = make([]byte, 1<<20)
				}
				b.SetBytes(int64(share * streams))
				errs := make([]error, 2*streams)
				cpu := processCPU(b)
				for b.Loop() {
					var wg sync.WaitGroup
					for i, pr := range pairs {
						wg.Add(2)
						go func() {
							defer wg.Done()
							for left := share; left > 0 && errs[i] == nil; left -= min(left, len(wbuf)) {
								_, errs[i] = pr.send.Write(wbuf[:min(left, len(wbuf))])
							}
						}()
						go func() {
							defer wg.Done()
							rbuf := rbufs[i]
							for left := share; left > 0 && errs[streams+i] == nil; {
								var n int
								n, errs[streams+i] = pr.recv.Read(rbuf[:min(left, len(rbuf))])
								left -= n
							}
						}()
					}
					wg.Wait()
					if err := errors.Join(errs...); err != nil {
						b.Fatal(err)
					}
				}
				reportCPU(b, cpu, uint64(share*streams))
			})
		}
	}
}

// loopbackPair is one loopback TCP connection: its dialled and accepted
// ends.
type loopbackPair struct{ send, recv net.Conn }

// loopbackPairs connects n loopback TCP connections, through the
// replication handshake of testCreds when encrypted; they close with the
// benchmark.
func loopbackPairs(b *testing.B, n int, encrypted bool) []loopbackPair {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pairs := make([]loopbackPair, n)
	for i := range pairs {
		accepted := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil && encrypted {
				c, _, err = testCreds.Server(ctx, c)
			}
			pairs[i].recv = c
			accepted <- err
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err == nil && encrypted {
			c, err = testCreds.Client(ctx, c, auth.Role(RoleLink))
		}
		if err == nil {
			err = <-accepted
		}
		if err != nil {
			b.Fatal(err)
		}
		pairs[i].send = c
		b.Cleanup(func() { pairs[i].send.Close(); pairs[i].recv.Close() })
	}
	return pairs
}

// processCPU is the CPU time the process has used so far, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process's CPU time since start per MB of the
// bytes every op moves (cpu-us/MB): on a host whose other work competes
// for the CPUs, a steadier comparison of two paths than their MB/s.
func reportCPU(b *testing.B, start time.Duration, bytesPerOp uint64) {
	used := processCPU(b) - start
	b.ReportMetric(float64(used.Microseconds())/(float64(b.N)*float64(bytesPerOp)/1e6), "cpu-us/MB")
}
