// Package kvm is Tandem's binding to the Linux KVM API (/dev/kvm).
//
// It owns exactly two things:
//
//   - one-to-one, typed wrappers of the /dev/kvm, VM and vCPU ioctls
//     (System, VM and VCPU methods), and
//   - Go definitions of the kernel's binary layouts that those ioctls and the
//     shared mappings (kvm_run, the dirty ring) exchange, with sizes and field
//     offsets that match include/uapi/linux/kvm.h and the x86
//     arch/x86/include/uapi/asm/kvm.h byte for byte.
//
// It holds no policy: it does not choose guest memory layouts, CPUID values,
// register state or device models, it never logs, and it retries a call only
// where a method's documentation says it retries on EINTR. Everything a VMM
// decides lives in the packages above this one.
//
// Errors are wrapped with the ioctl's name ("kvm: KVM_GET_REGS: ...") around
// the raw unix.Errno, so callers can test them with errors.Is(err, unix.EINTR)
// and similar. The one exception is VCPU.Run, which returns the bare
// unix.Errno so that the exit hot path does not allocate.
//
// Unsafe pointer work (casts over mmapped memory, pointers handed to the
// kernel) is confined to files named *_unsafe.go (*_unsafe_amd64.go for the
// x86-only ones); elsewhere unsafe serves only unsafe.Sizeof in the ioctl
// numbers. Layouts that exist only on x86-64 live in *_amd64.go files;
// x86-64 is the only architecture supported for now.
//
// The ioctl numbers are computed from the _IOC encoding and the sizes of the
// Go structs, and are checked in the tests against the literal values of the
// kernel headers.
package kvm
