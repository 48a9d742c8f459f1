package persist

import (
	"github.com/tandemvm/tandem/replicate/disk"
	"github.com/tandemvm/tandem/replicate/pagecodec"
)

// Epochs feeds a Dir the epochs of a running VM, as the replication
// engine's local persister (replicate.LocalPersister) or its only
// protection (replicate.Local): Stage with the VM paused, Sync after.
type Epochs struct {
	Dir *Dir
	// Full makes the next record hold every page that is not zero, not
	// only the dirty ones: a new directory's first epoch (the guest was
	// loaded without the dirty log seeing it).
	Full bool
	// Split, when set, takes an epoch's disk writes out of its state (a
	// Linux guest's carries them), for the record to hold them itself.
	Split func(state []byte) ([]byte, []*disk.Writes, error)
	pages []uint64
}

// Stage stages epoch e: its dirty pages (or, with Full, every page that
// is not zero) of mem, and its state.
func (p *Epochs) Stage(e uint64, pages []uint64, mem []byte, state []byte) error {
	if p.Full {
		p.pages = p.pages[:0]
		for i := range uint64(len(mem) / PageSize) {
			if !pagecodec.IsZero(mem[i*PageSize : (i+1)*PageSize]) {
				p.pages = append(p.pages, i)
			}
		}
		pages = p.pages
	}
	var writes []*disk.Writes
	if p.Split != nil {
		var err error
		if state, writes, err = p.Split(state); err != nil {
			return err
		}
	}
	if err := p.Dir.Stage(e, pages, mem, state, writes...); err != nil {
		return err
	}
	p.Full = false // the record holds them; a failed Sync ends the run
	return nil
}

// Sync makes the staged epoch durable, and checkpoints once the log has
// grown past max(64 MiB, half the VM's memory).
func (p *Epochs) Sync() error {
	if err := p.Dir.Sync(); err != nil {
		return err
	}
	if p.Dir.LogBytes() > max(64<<20, int64(p.Dir.VM().MemBytes/2)) {
		return p.Dir.Checkpoint()
	}
	return nil
}
