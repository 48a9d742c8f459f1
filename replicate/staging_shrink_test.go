package replicate

import (
	"context"
	"testing"
	"time"
)

// TestReplicaStagingShrinks: a link's staging buffer grows to a full copy
// (8 MiB, the initial copy) and must not stay that size once the epochs
// are small again: the replica releases a buffer over four times what the
// link recently needed.
func TestReplicaStagingShrinks(t *testing.T) {
	c := newCluster(t, 1)
	const pages = 2048
	vm := newFakeVM(t, pages)
	for p := 0; p < pages; p++ {
		vm.mem[p*PageSize+1] = 1
	}
	p := c.primary(vm, PolicyFT, ModeSync, c.addrs)
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	defer func() { cancel(); <-runErr }()
	staged := func() int {
		r := c.replicas[0]
		r.mu.Lock()
		defer r.mu.Unlock()
		st := r.stages[0]
		if st == nil || st.data == nil {
			return -1 // none yet, or lent to a background apply
		}
		return cap(st.data)
	}
	waitCommitted(t, p, 1, 20*time.Second, nil)
	// The buffer comes back from the background apply of the copy.
	for deadline := time.Now().Add(10 * time.Second); staged() < pages*PageSize; {
		if time.Now().After(deadline) {
			t.Fatalf("after the initial copy the link stages %d bytes, want the %d of the copy", staged(), pages*PageSize)
		}
		time.Sleep(time.Millisecond)
	}
	// Small epochs: a page now and then.
	for deadline := time.Now().Add(20 * time.Second); ; {
		if n := staged(); n >= 0 && n <= stagingKeep {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the link still holds %d bytes of staging after %d small epochs", staged(), p.Committed())
		}
		vm.write(uint64(p.Committed())%pages, 1)
		waitCommitted(t, p, p.Committed()+1, 10*time.Second, nil)
	}
	t.Logf("staging released by epoch %d", p.Committed())
}
