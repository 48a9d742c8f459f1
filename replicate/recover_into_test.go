package replicate

import (
	"bytes"
	"context"
	"encoding/binary"
	"syscall"
	"testing"
	"time"
)

// TestRecoverIntoCallerMemory recovers with StartRecovery and FetchInto
// into a mapping the test owns, as the leader fills the new VM's guest
// RAM: the pages land there (no image of its own), exactly the memory of
// the recovered state, and Info told the epoch and state beforehand.
func TestRecoverIntoCallerMemory(t *testing.T) {
	c, links, _ := tcpLinks(t, 2)
	const pages = 512
	vm := newFakeVM(t, pages)
	p := c.primary(vm, PolicyFT, ModeSync, []string{links[0], links[1]})
	ctx, cancel := context.WithCancel(context.Background())
	guest := make(chan struct{})
	go func() { defer close(guest); vm.run(ctx, 3) }()
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 10, 20*time.Second, nil)
	cancel() // the primary dies
	<-runErr
	vm.Resume() // a VM left paused would hold its guest goroutine
	<-guest
	select {
	case <-c.leader.Failed():
	case <-time.After(10 * time.Second):
		t.Fatal("the leader did not notice the primary's failure")
	}

	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	rc, err := c.leader.StartRecovery(rctx, c.addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	info := rc.Info()
	if info.Memory != nil || info.MemBytes != pages*PageSize || info.Epoch < p.Committed() || info.State == nil {
		t.Fatalf("Info before the fetch: epoch %d (committed %d), %d bytes, memory %v, state %x", info.Epoch, p.Committed(), info.MemBytes, info.Memory != nil, info.State)
	}
	if _, err := rc.FetchInto(rctx, make([]byte, PageSize)); err == nil {
		t.Fatal("FetchInto took memory of the wrong size")
	}
	mem, err := syscall.Mmap(-1, 0, pages*PageSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(mem)
	rec, err := rc.FetchInto(rctx, mem)
	if err != nil {
		t.Fatal(err)
	}
	if &rec.Memory[0] != &mem[0] || len(rec.Memory) != len(mem) {
		t.Fatal("the recovered memory is not the caller's")
	}
	if rec.Epoch != info.Epoch || !bytes.Equal(rec.State, info.State) {
		t.Errorf("FetchInto recovered epoch %d, Info said %d", rec.Epoch, info.Epoch)
	}
	vm.mu.Lock()
	want, ok := vm.snaps[binary.LittleEndian.Uint64(rec.State)]
	vm.mu.Unlock()
	if !ok {
		t.Fatalf("recovered state %x matches no captured state", rec.State)
	}
	if !bytes.Equal(mem, want) {
		t.Fatalf("the memory recovered into differs from the memory of epoch %d", rec.Epoch)
	}
}
