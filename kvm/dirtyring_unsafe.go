package kvm

import "unsafe"

// newDirtyRing views the mapping mem (page-aligned, a multiple of PageSize)
// as an array of kvm_dirty_gfn.
func newDirtyRing(mem []byte) *DirtyRing {
	n := len(mem) / int(unsafe.Sizeof(DirtyGFN{}))
	return &DirtyRing{
		mem:  mem,
		gfns: unsafe.Slice((*DirtyGFN)(unsafe.Pointer(&mem[0])), n),
	}
}
