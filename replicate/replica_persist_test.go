package replicate

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/replicadir"
)

// persistedNode is a replica serving from a directory, as after a start
// of tandem replica --persist.
type persistedNode struct {
	r    *Replica
	addr string
	stop func() // the power cut: serving ends, the directory closes
}

func startPersisted(t *testing.T, cfg ReplicaConfig, dir, addr string) *persistedNode {
	t.Helper()
	d, c, err := replicadir.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Log, cfg.Auth = quietLog(), testCreds
	r, err := OpenReplica(cfg, d, c)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Serve(ctx, ln)
	}()
	n := &persistedNode{r: r, addr: ln.Addr().String()}
	stopped := false
	n.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			d.Close()
		}
	}
	t.Cleanup(n.stop)
	return n
}

// TestReplicaPersistSurvivesClusterPowerCut: two persisted replicas and a
// persisted leader protect a VM (fast over both links, each mode); the
// whole cluster stops at once, primary included; the nodes start again
// from their directories, and the leader recovers, from them alone, an
// epoch no older than the last committed with exactly its memory. The
// checkpoint bound is small so that the logs start again several times
// on the way (async), or never do (sync: the log alone holds the VM).
func TestReplicaPersistSurvivesClusterPowerCut(t *testing.T) {
	old := persistCheckpointMin
	defer func() { persistCheckpointMin = old }()
	for _, mode := range []Mode{ModeSync, ModeAsync} {
		t.Run(mode.String(), func(t *testing.T) {
			checkpoints := mode == ModeAsync
			persistCheckpointMin = 1 << 40
			if checkpoints {
				persistCheckpointMin = 2 << 20
			}
			root := t.TempDir()
			dirs := []string{filepath.Join(root, "r0"), filepath.Join(root, "r1"), filepath.Join(root, "leader")}
			nodes := []*persistedNode{
				startPersisted(t, ReplicaConfig{}, dirs[0], "127.0.0.1:0"),
				startPersisted(t, ReplicaConfig{}, dirs[1], "127.0.0.1:0"),
				startPersisted(t, ReplicaConfig{Leader: true, HeartbeatTimeout: time.Hour}, dirs[2], "127.0.0.1:0"),
			}
			vm := newFakeVM(t, 2048) // more pages than an epoch writes
			p := mustConnectPrimary(t, PrimaryConfig{Links: []string{nodes[0].addr, nodes[1].addr}, Leader: nodes[2].addr, VMID: 0xD15C, Guest: "fake", VCPUs: 1,
				Epoch: 2 * time.Millisecond, Policy: PolicyFast, Mode: mode}, vm, nil)
			ctx, cancel := context.WithCancel(context.Background())
			go vm.run(ctx, 3)
			runErr := make(chan error, 1)
			go func() { runErr <- p.Run(ctx) }()
			waitCommitted(t, p, 150, 30*time.Second, nil)
			// The power fails everywhere: the replicas stop first, so that
			// nothing the primary counts as committed is newer than what
			// they acknowledged.
			for _, n := range nodes {
				n.stop()
			}
			committed := p.Committed()
			cancel()
			<-runErr
			p.Close()
			for _, d := range dirs[:2] {
				if snaps, _ := filepath.Glob(filepath.Join(d, "snap-*")); (len(snaps) > 0) != checkpoints {
					t.Errorf("%s: checkpoints %v in %d epochs, want %v", d, snaps, committed, checkpoints)
				}
			}
			// The cluster comes back on the same addresses.
			var again []*persistedNode
			for i, n := range nodes {
				cfg := ReplicaConfig{}
				if i == 2 {
					cfg = ReplicaConfig{Leader: true, HeartbeatTimeout: time.Hour}
				}
				again = append(again, startPersisted(t, cfg, dirs[i], n.addr))
			}
			rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer rcancel()
			rec, err := again[2].r.Recover(rctx, []string{again[0].addr, again[1].addr})
			if err != nil {
				t.Fatal(err)
			}
			checkRecovered(t, vm, rec, committed)
			t.Logf("committed %d before the power cut, recovered epoch %d from the directories", committed, rec.Epoch)
		})
	}
}

// TestReplicaPersistRefuses: a persisted replica runs no shadow, and
// refuses a directory that is not a replica's.
func TestReplicaPersistRefuses(t *testing.T) {
	dir := t.TempDir()
	d, c, err := replicadir.Open(filepath.Join(dir, "r"))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := OpenReplica(ReplicaConfig{Shadow: func(uint64, int, []byte) (Shadow, error) { return nil, nil }, Auth: testCreds}, d, c); err == nil {
		t.Error("a persisted replica with a shadow")
	}
	junk := filepath.Join(dir, "junk")
	os.MkdirAll(junk, 0o700)
	os.WriteFile(filepath.Join(junk, "data"), []byte("x"), 0o600)
	if _, _, err := replicadir.Open(junk); err == nil {
		t.Error("a foreign directory opened")
	}
}

// TestReplicaPersistMessageByMessage drives a persisted replica's link by
// hand: every acknowledged epoch's pages are in its log when the ack
// arrives; reopened after a power cut, it holds exactly what it held
// (applied epochs applied, a dropped epoch dropped, the last complete one
// staged, not applied), and it still fences the generations it fenced.
func TestReplicaPersistMessageByMessage(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "r")
	n := startPersisted(t, ReplicaConfig{}, dir, "127.0.0.1:0")
	const vm, pages = 77, 16
	hello := Hello{Role: RoleLink, Link: 0, Links: 1, MemBytes: pages * PageSize}
	link := dialAs(t, n.addr, vm, hello)
	inLog := func(fill byte) bool {
		b, err := os.ReadFile(filepath.Join(dir, "log-0"))
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Contains(b, bytes.Repeat([]byte{fill}, PageSize))
	}
	for _, step := range []struct {
		e, committed uint64
		r            Region
		fill         byte
	}{
		{1, 0, Region{First: 0, Pages: 4}, 0x11},
		{2, 1, Region{First: 2, Pages: 4}, 0x22}, // never committed: epoch 3's map says 1
		{3, 1, Region{First: 8, Pages: 2}, 0x33},
		{4, 3, Region{First: 12, Pages: 1}, 0x44}, // complete, its commit never comes
	} {
		link.epoch(step.e, step.committed, []Region{step.r}, step.fill, true)
		if !inLog(step.fill) {
			t.Fatalf("epoch %d acknowledged before its pages were in the log", step.e)
		}
		if step.e == 1 {
			if err := link.c.send(MsgCommit, 1, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A newer term's hello fences the first.
	dialAsGen(t, n.addr, vm, 5, Hello{Role: RoleRecovery, MemBytes: pages * PageSize})
	n.stop()

	n = startPersisted(t, ReplicaConfig{}, dir, n.addr)
	r := n.r
	r.mu.Lock()
	got := slices.Clone(r.store.epochs)
	page2 := r.store.pages[2*PageSize]
	r.mu.Unlock()
	want := []uint64{1, 1, 1, 1, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0}
	if !slices.Equal(got, want) || page2 != 0x11 {
		t.Fatalf("reopened store: page epochs %v (want %v), page 2 holds %#x", got, want, page2)
	}
	rep := r.report()
	if len(rep.Staged) != 1 || rep.Staged[0] != (Staged{Link: 0, Epoch: 4, Complete: true, Applied: 3}) || rep.Applied != 3 {
		t.Fatalf("reopened report %+v", rep)
	}
	if _, err := dialHello(context.Background(), testCreds, n.addr, vm, 4, hello); err == nil || !strings.Contains(err.Error(), "generation") {
		t.Fatalf("a hello of generation 4 after one of 5: %v, want it fenced", err)
	}
}

// BenchmarkReplicaPersist measures one synchronous epoch (fast over two
// links, 1024 scattered dirty pages of a 64 MiB guest, loopback, the
// default encryption) with the replicas and the leader in memory and with
// each persisting into a directory under the test's temporary directory:
// the difference is the log's write and fdatasync before each ack.
func BenchmarkReplicaPersist(b *testing.B) {
	dirty := scatteredPages(rand.New(rand.NewPCG(42, 45)), 1024)
	for _, persisted := range []bool{false, true} {
		b.Run(map[bool]string{false: "memory", true: "persisted"}[persisted], func(b *testing.B) {
			src := newStaticSource(b, 16384, dirty)
			start := func(cfg ReplicaConfig) string {
				if !persisted {
					return replicaAddr(b, cfg)
				}
				d, c, err := replicadir.Open(filepath.Join(b.TempDir(), "r"))
				if err != nil {
					b.Fatal(err)
				}
				cfg.Auth, cfg.Log = testCreds, quietLog()
				r, err := OpenReplica(cfg, d, c)
				if err != nil {
					b.Fatal(err)
				}
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { r.Serve(ctx, ln); close(done) }()
				b.Cleanup(func() { cancel(); <-done; d.Close() })
				return ln.Addr().String()
			}
			links := []string{start(ReplicaConfig{Auth: testCreds}), start(ReplicaConfig{Auth: testCreds})}
			leader := start(ReplicaConfig{Auth: testCreds, Leader: true, HeartbeatTimeout: time.Hour})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			p := staticPrimary(ctx, b, PrimaryConfig{Auth: testCreds, Links: links, Leader: leader, VMID: 0xBE7D, Policy: PolicyFast}, src)
			for b.Loop() {
				if err := p.runEpoch(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestReplicaPersistDiskCopies: a persisted leader remembers which disk
// copies hold the primary's content and up to which epoch they hold its
// writes (synchronised first), and refuses to reopen without its copies.
func TestReplicaPersistDiskCopies(t *testing.T) {
	root := t.TempDir()
	f, err := os.Create(filepath.Join(root, "copy.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(1 << 20)
	cfg := ReplicaConfig{Leader: true, Auth: testCreds, Log: quietLog(), Disks: []DiskCopy{{Name: f.Name(), Size: 1 << 20, F: f}}}
	open := func(cfg ReplicaConfig) (*Replica, *replicadir.Dir, error) {
		d, c, err := replicadir.Open(filepath.Join(root, "leader"))
		if err != nil {
			t.Fatal(err)
		}
		r, err := OpenReplica(cfg, d, c)
		if err != nil {
			d.Close()
		}
		return r, d, err
	}
	r, d, err := open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.persistDiskSynced(0); err != nil {
		t.Fatal(err)
	}
	if err := r.persistDelivered(7); err != nil {
		t.Fatal(err)
	}
	d.Close()
	r, d, err = open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !r.disks.synced[0] || r.disks.delivered != 7 {
		t.Fatalf("reopened: synced %v, delivered %d", r.disks.synced, r.disks.delivered)
	}
	d.Close()
	cfg.Disks = nil
	if _, _, err := open(cfg); err == nil || !strings.Contains(err.Error(), "give it the --disk it had") {
		t.Fatalf("reopened without its disk copy: %v", err)
	}
}
