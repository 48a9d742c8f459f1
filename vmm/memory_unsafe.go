package vmm

import "unsafe"

// sliceAddr is the host virtual address of b's first byte, which KVM needs
// for a memory slot. b is an mmap'd region, never moved by the Go runtime.
func sliceAddr(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
