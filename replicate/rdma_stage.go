package replicate

import "fmt"

// The replica side of an RDMA link that needs no verbs: staging in the
// link's registered buffer and the checks made when an epoch's immediate
// arrives. rdma_replica.go calls it from the completion goroutine; tests
// drive it with a software stand-in for the NIC.

// attachRDMAStaging makes an RDMA link's registered buffer the staging
// area of its link: epoch e is staged in half e%2 (see rdma.go). A link
// of a newer generation gets a fresh stage, as in beginEpoch.
func (r *Replica) attachRDMAStaging(link uint32, gen uint64, buf []byte, half uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.stages[link]
	if st == nil || st.gen < gen {
		st = &stage{link: link, gen: gen}
		if old := r.stages[link]; old != nil {
			st.appliedEpoch = old.appliedEpoch
		}
		r.stages[link] = st
	}
	st.buf = func(e, need uint64) []byte {
		o := (e % 2) * half
		return buf[o : o+need : o+need]
	}
}

// stageRDMAEpoch handles the immediate of an epoch whose map record
// (in mapBuf) and data (in its staging half) the primary has written: it
// checks the map against the immediate's low 32 bits and the final write's
// byte count, then the TCP replica's own logic applies or drops the
// previous epoch and stages this one, complete. The caller acknowledges it.
func (r *Replica) stageRDMAEpoch(link uint32, vmID, gen uint64, mapBuf []byte, low, finalBytes uint32) (*MapRecord, error) {
	r.mu.Lock()
	pages := uint64(len(r.store.epochs))
	r.mu.Unlock()
	m, tail, err := parseRDMAMap(mapBuf, vmID, pages)
	if err != nil {
		return nil, fmt.Errorf("link %d: %w", link, err)
	}
	if uint32(m.Epoch) != low {
		return nil, fmt.Errorf("%w: link %d: immediate %#x for a map of epoch %d", ErrProtocol, link, low, m.Epoch)
	}
	if finalBytes != tail {
		return nil, fmt.Errorf("%w: link %d: epoch %d's final write carried %d bytes, its map announces %d", ErrProtocol, link, m.Epoch, finalBytes, tail)
	}
	r.mu.Lock()
	attached := r.stages[link] != nil && r.stages[link].buf != nil
	r.mu.Unlock()
	if !attached {
		return nil, fmt.Errorf("link %d: no RDMA staging buffer attached", link)
	}
	if err := r.beginEpoch(link, gen, m); err != nil {
		return nil, err
	}
	r.mu.Lock()
	st := r.stages[link]
	st.received, st.complete = uint64(len(st.data)), true
	st.acked = max(st.acked, m.Epoch) // the caller acknowledges it
	r.mu.Unlock()
	return m, nil
}
