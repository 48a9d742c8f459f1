package vmm

import "fmt"

// ReplicationSource is a VM as the replication engine sees it
// (replicate.Source): pause and resume, the pages dirtied since the last
// harvest, guest memory, and the encoded machine state.
type ReplicationSource struct {
	vm  *VM
	set *DirtySet
}

// NewReplicationSource adapts vm, which must track dirty pages.
func NewReplicationSource(vm *VM) (*ReplicationSource, error) {
	if vm.cfg.Dirty == DirtyOff {
		return nil, fmt.Errorf("vmm: replication needs dirty page tracking (bitmap or ring)")
	}
	return &ReplicationSource{vm: vm, set: NewDirtySet(vm.mem.Pages())}, nil
}

// Pause stops the vCPUs.
func (s *ReplicationSource) Pause() error { return s.vm.Pause() }

// Resume restarts them.
func (s *ReplicationSource) Resume() { s.vm.Resume() }

// Memory is guest RAM.
func (s *ReplicationSource) Memory() []byte { return s.vm.mem.Bytes() }

// HarvestDirtyRunning is HarvestDirty while the VM runs (see
// VM.HarvestDirtyRunning): replication's speculative transfer.
func (s *ReplicationSource) HarvestDirtyRunning(dst []uint64) ([]uint64, error) {
	s.set.Reset()
	if err := s.vm.HarvestDirtyRunning(s.set); err != nil {
		return dst, err
	}
	return s.set.AppendPages(dst), nil
}

// HarvestDirty appends the pages written since the last harvest to dst.
func (s *ReplicationSource) HarvestDirty(dst []uint64) ([]uint64, error) {
	s.set.Reset()
	if err := s.vm.HarvestDirty(s.set); err != nil {
		return dst, err
	}
	return s.set.AppendPages(dst), nil
}

// CaptureState encodes the paused VM's state.
func (s *ReplicationSource) CaptureState() ([]byte, error) {
	st, err := s.vm.CaptureState()
	if err != nil {
		return nil, err
	}
	return st.MarshalBinary()
}

// RestoreImage loads a memory image and an encoded state, as the leader
// rebuilds them after a failover, into vm, which must not have run.
func (v *VM) RestoreImage(mem, state []byte) error {
	if uint64(len(mem)) != v.mem.Size() {
		return fmt.Errorf("vmm: restore: image of %d bytes for a VM of %d", len(mem), v.mem.Size())
	}
	var st State
	if err := st.UnmarshalBinary(state); err != nil {
		return fmt.Errorf("vmm: restore: %w", err)
	}
	copy(v.mem.Bytes(), mem)
	return v.RestoreState(&st)
}
