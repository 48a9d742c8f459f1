package kvm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// DevicePath is where the KVM device lives.
const DevicePath = "/dev/kvm"

// StableAPIVersion is the only KVM_GET_API_VERSION value Linux has ever
// returned, and the one this package is written against.
const StableAPIVersion = 12

// PageSize is the x86-64 base page size, the unit of guest frame numbers,
// dirty bitmaps and the vCPU mmap offsets.
const PageSize = 4096

// System is an open /dev/kvm file descriptor. Its methods are safe for
// concurrent use, except Close.
type System struct {
	fd int
}

// Open opens /dev/kvm read-write and close-on-exec.
func Open() (*System, error) {
	return OpenPath(DevicePath)
}

// OpenPath opens the KVM device at path read-write and close-on-exec. The
// open is retried on EINTR. On failure the error names the path, wraps the
// unix.Errno, and hints at the usual cause for ENOENT/ENODEV/ENXIO (module not
// loaded) and EACCES/EPERM (permissions).
func OpenPath(path string) (*System, error) {
	for {
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err == nil {
			return &System{fd: fd}, nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		hint := ""
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ENODEV), errors.Is(err, unix.ENXIO):
			hint = " (is the kvm module loaded, and does this host or VM offer virtualization?)"
		case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
			hint = " (are you in the kvm group, or root? check the permissions of " + path + ")"
		}
		return nil, fmt.Errorf("kvm: open %s: %w%s", path, err, hint)
	}
}

// Close closes the /dev/kvm descriptor. VMs created from it stay usable.
// Closing twice is a no-op.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	if err != nil {
		return fmt.Errorf("kvm: close %s: %w", DevicePath, err)
	}
	return nil
}

// FD returns the /dev/kvm file descriptor (-1 after Close).
func (s *System) FD() int { return s.fd }

// APIVersion returns KVM_GET_API_VERSION (always StableAPIVersion on Linux).
func (s *System) APIVersion() (int, error) {
	r, err := ioctl(s.fd, kvmGetAPIVersion, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_API_VERSION: %w", err)
	}
	return int(r), nil
}

// CheckExtension returns KVM_CHECK_EXTENSION for c on /dev/kvm: 0 when the
// capability is absent, otherwise 1 or a capability-specific value. Prefer
// VM.CheckExtension for capabilities whose answer depends on the VM.
func (s *System) CheckExtension(c Cap) (int, error) {
	r, err := ioctl(s.fd, kvmCheckExtension, uintptr(c))
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_CHECK_EXTENSION(%v): %w", c, err)
	}
	return int(r), nil
}

// VCPUMmapSize returns KVM_GET_VCPU_MMAP_SIZE, the number of bytes to map
// from a vCPU descriptor for kvm_run and its trailing data pages.
func (s *System) VCPUMmapSize() (int, error) {
	r, err := ioctl(s.fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

// CreateVM issues KVM_CREATE_VM with machine type 0, retrying on EINTR. It
// may be called any number of times.
func (s *System) CreateVM() (*VM, error) {
	for {
		r, err := ioctl(s.fd, kvmCreateVM, 0)
		if err == nil {
			return newVM(int(r)), nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return nil, fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
}
