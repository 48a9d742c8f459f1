package replicate

// prepareStaging gives an async primary its staging buffer at the size of
// the largest epoch, all of guest memory, and writes every page of it once,
// right after the initial copy while the VM runs.
//
// Grown on demand instead, the buffer was reallocated whenever an epoch's
// dirty set outgrew it, and the first touch of each new page then happened
// inside the staging copy, with the VM paused: tandem bench measured such
// copies at a few hundred MB/s against 15-20 GB/s for memcpy on a PVM host,
// where a page fault costs microseconds. The price is guest-RAM-sized
// memory on the primary, which a Remus-style async replication needs for
// its largest epoch anyway. Sync mode has no staging copy.
func (p *Primary) prepareStaging(memBytes int) {
	if p.cfg.Mode != ModeAsync || cap(p.staging) >= memBytes {
		return
	}
	p.staging = make([]byte, memBytes)
	for i := 0; i < memBytes; i += PageSize {
		p.staging[i] = 1 // fault the page in now, not during a pause
	}
}
