package kvm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl issues an ioctl whose argument is a plain integer. It returns the
// ioctl's return value and, on failure, the raw unix.Errno.
func ioctl(fd int, req, arg uintptr) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlPtr issues an ioctl whose argument points at memory the kernel reads
// or writes. arg stays a pointer (so the GC keeps it alive and a stack move
// updates it) until the conversion inside the unix.Syscall call expression.
func ioctlPtr(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ioctlEntries issues an ioctl on a structure of the form
//
//	struct { __u32 n; __u32 pad; E entries[]; }
//
// (kvm_msrs, kvm_cpuid2). The 8-byte header is written with n; entries are
// copied into the buffer after it, and copied back after the call whatever
// its result, together with the n the kernel left in the header.
//
// E must contain no Go pointers and have a size that is a multiple of 4.
func ioctlEntries[E any](fd int, req uintptr, n uint32, entries []E) (ret uintptr, nOut uint32, err error) {
	var zero E
	size := int(unsafe.Sizeof(zero))
	words := 1 + (len(entries)*size+7)/8
	buf := make([]uint64, words)
	*(*uint32)(unsafe.Pointer(&buf[0])) = n
	var view []E
	if len(entries) > 0 {
		view = unsafe.Slice((*E)(unsafe.Pointer(&buf[1])), len(entries))
		copy(view, entries)
	}
	ret, err = ioctlPtr(fd, req, unsafe.Pointer(&buf[0]))
	copy(entries, view)
	return ret, *(*uint32)(unsafe.Pointer(&buf[0])), err
}

// ioctlRef issues an ioctl whose argument is a pointer to one T.
func ioctlRef[T any](fd int, req uintptr, p *T) (uintptr, error) {
	return ioctlPtr(fd, req, unsafe.Pointer(p))
}

// ioctlSlice issues an ioctl whose argument points at the first element of
// buf, which must not be empty.
func ioctlSlice[T any](fd int, req uintptr, buf []T) (uintptr, error) {
	return ioctlPtr(fd, req, unsafe.Pointer(unsafe.SliceData(buf)))
}
