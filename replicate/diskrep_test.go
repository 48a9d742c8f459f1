package replicate

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate/disk"
)

// diskFile makes a sparse disk of size bytes with chunk i holding fill[i].
func diskFile(t *testing.T, size int64, fill map[int]byte) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	f.Truncate(size)
	for i, b := range fill {
		f.WriteAt(bytes.Repeat([]byte{b}, disk.ChunkSize), int64(i)*disk.ChunkSize)
	}
	return f
}

// countingCopy counts the chunk writes a disk copy gets.
type countingCopy struct {
	*os.File
	mu     sync.Mutex
	writes int
}

func (c *countingCopy) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.writes++
	c.mu.Unlock()
	return c.File.WriteAt(p, off)
}

// committedLog records what the leader hands ReplicaConfig.Committed.
type committedLog struct {
	mu     sync.Mutex
	epochs []uint64
}

func (l *committedLog) add(e uint64, _ []byte) error {
	l.mu.Lock()
	l.epochs = append(l.epochs, e)
	l.mu.Unlock()
	return nil
}

func (l *committedLog) get() []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint64(nil), l.epochs...)
}

// diskCluster is one replica and a leader holding copies of disks.
func diskCluster(t *testing.T, copies []DiskCopy, log *committedLog) *cluster {
	c := &cluster{t: t}
	r, addr, cancel := startReplica(t, ReplicaConfig{})
	c.replicas, c.addrs, c.cancels = []*Replica{r}, []string{addr}, []context.CancelFunc{cancel}
	c.leader, c.leadAddr, _ = startReplica(t, ReplicaConfig{Leader: true, HeartbeatTimeout: 2 * time.Second, Disks: copies, Committed: log.add})
	return c
}

func diskPrimary(c *cluster, src Source, disks []DiskImage) (*Primary, error) {
	return connectPrimary(PrimaryConfig{Links: c.addrs, Leader: c.leadAddr, VMID: 0xD15C, Guest: "fake", VCPUs: 1,
		Epoch: 5 * time.Millisecond, SGMax: 8, Disks: disks}, src, nil)
}

// TestDiskSyncSendsOnlyWhatDiffers: connecting brings the leader's copy
// to the primary's disk, writing only the chunks that differed, and makes
// it durable before the first epoch.
func TestDiskSyncSendsOnlyWhatDiffers(t *testing.T) {
	const size = 16 * disk.ChunkSize
	primaryDisk := diskFile(t, size, map[int]byte{0: 1, 2: 2, 9: 9, 15: 15})
	copyFile := &countingCopy{File: diskFile(t, size, map[int]byte{0: 1, 2: 7, 4: 4, 15: 15})}
	var log committedLog
	c := diskCluster(t, []DiskCopy{{Name: "vda", Size: size, F: copyFile}}, &log)
	p, err := diskPrimary(c, newFakeVM(t, 64), []DiskImage{{Name: "vda", Size: size, R: primaryDisk}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if copyFile.writes != 3 {
		t.Errorf("the copy got %d chunk writes, want the 3 that differed (2, 4, 9)", copyFile.writes)
	}
	want, _ := disk.Hashes(primaryDisk, size, nil)
	got, _ := disk.Hashes(copyFile, size, nil)
	if d, _ := disk.Diff(want, got); len(d) != 0 {
		t.Errorf("chunks %v still differ after the sync", d)
	}
}

// TestDiskSyncRefusals: a copy of another size, a primary disk the leader
// has no copy of, and a copy the primary never syncs, each stop
// replication with an error that says what to do.
func TestDiskSyncRefusals(t *testing.T) {
	const size = 4 * disk.ChunkSize
	t.Run("size", func(t *testing.T) {
		c := diskCluster(t, []DiskCopy{{Name: "vda", Size: size * 2, F: diskFile(t, size*2, nil)}}, &committedLog{})
		_, err := diskPrimary(c, newFakeVM(t, 16), []DiskImage{{Name: "vda", Size: size, R: diskFile(t, size, nil)}})
		if err == nil || !strings.Contains(err.Error(), "copy of the same size") {
			t.Errorf("connect: %v, want a refusal of the copy's size", err)
		}
	})
	t.Run("no copy", func(t *testing.T) {
		c := diskCluster(t, nil, &committedLog{})
		_, err := diskPrimary(c, newFakeVM(t, 16), []DiskImage{{Name: "vda", Size: size, R: diskFile(t, size, nil)}})
		if err == nil || !strings.Contains(err.Error(), "one --disk per disk") {
			t.Errorf("connect: %v, want a refusal naming --disk", err)
		}
	})
	t.Run("never synced", func(t *testing.T) {
		c := diskCluster(t, []DiskCopy{{Name: "vda", Size: size, F: diskFile(t, size, nil)}}, &committedLog{})
		p, err := diskPrimary(c, newFakeVM(t, 16), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := p.Run(ctx); err == nil || !strings.Contains(err.Error(), "before synchronising disk vda") {
			t.Errorf("run: %v, want the leader's refusal of unsynchronised disks", err)
		}
	})
}

// TestCommittedStatesInEpochOrder: the leader hands every committed
// epoch's state to Committed once, in order, never one not committed; at
// recovery, those up to the recovered epoch and none after it.
func TestCommittedStatesInEpochOrder(t *testing.T) {
	var log committedLog
	c := diskCluster(t, nil, &log)
	vm := newFakeVM(t, 64)
	p, err := diskPrimary(c, vm, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go vm.run(ctx, 3)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 12, 20*time.Second, nil)
	cancel()
	<-runErr
	p.Close() // the primary dies
	got := log.get()
	for i, e := range got {
		if e != uint64(i)+2 { // epoch 1 is the initial copy, without state
			t.Fatalf("epochs handed %v: want 2, 3, ... in order, each once", got)
		}
	}
	if len(got) == 0 || got[len(got)-1] > p.Committed() {
		t.Fatalf("epochs handed %v, committed %d", got, p.Committed())
	}
	rec := c.recoverAndCheck(vm, p.Committed())
	got = log.get()
	if last := got[len(got)-1]; last != rec.Epoch {
		t.Errorf("after recovering epoch %d the last epoch handed is %d", rec.Epoch, last)
	}
	for i, e := range got {
		if e != uint64(i)+2 {
			t.Fatalf("epochs handed %v after recovery: want each once, in order", got)
		}
	}
}
