package kvm

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// kvmDirtyLog is struct kvm_dirty_log. The bitmap is an unsafe.Pointer so
// the Go runtime keeps tracking the memory it refers to.
type kvmDirtyLog struct {
	Slot   uint32
	_      uint32
	Bitmap unsafe.Pointer
}

// kvmClearDirtyLog is struct kvm_clear_dirty_log.
type kvmClearDirtyLog struct {
	Slot      uint32
	NumPages  uint32
	FirstPage uint64
	Bitmap    unsafe.Pointer
}

// GetDirtyLog issues KVM_GET_DIRTY_LOG for slot: bit i of the bitmap
// (bitmap[i/64] bit i%64) is set when guest page i of the slot was written
// since the previous call (or, with DirtyLogManualProtectEnable, since the
// page was last cleared with ClearDirtyLog). The kernel writes ceil(pages/64)
// words, pages being the slot size over PageSize; bitmap must hold at least
// that many. For a slot created through SetUserMemoryRegion on this VM the
// length is checked (EINVAL); for a slot created through the raw descriptor
// it is the caller's responsibility.
//
// Without DirtyLogManualProtectEnable, the call also write-protects the
// reported pages again and clears their bits. Only guest writes are logged,
// not writes through the host mapping.
func (vm *VM) GetDirtyLog(slot uint32, bitmap []uint64) error {
	if size, ok := vm.slotSize(slot); ok {
		pages := size / PageSize
		if need := (pages + 63) / 64; uint64(len(bitmap)) < need {
			return fmt.Errorf("kvm: KVM_GET_DIRTY_LOG(slot %d): bitmap has %d words, slot of %d pages needs %d: %w",
				slot, len(bitmap), pages, need, unix.EINVAL)
		}
	}
	dl := kvmDirtyLog{Slot: slot, Bitmap: unsafe.Pointer(unsafe.SliceData(bitmap))}
	if _, err := ioctlRef(vm.fd, kvmGetDirtyLog, &dl); err != nil {
		return fmt.Errorf("kvm: KVM_GET_DIRTY_LOG(slot %d): %w", slot, err)
	}
	return nil
}

// ClearDirtyLog issues KVM_CLEAR_DIRTY_LOG (needs CapManualDirtyLogProtect2
// enabled with DirtyLogManualProtectEnable): for every set bit i of bitmap,
// page firstPage+i of slot is write-protected again and its dirty bit
// cleared. firstPage must be a multiple of 64, and numPages a multiple of 64
// unless firstPage+numPages is exactly the end of the slot; the kernel
// answers EINVAL otherwise. bitmap must hold ceil(numPages/64) words (checked
// here: EINVAL).
func (vm *VM) ClearDirtyLog(slot uint32, firstPage uint64, numPages uint32, bitmap []uint64) error {
	if need := (uint64(numPages) + 63) / 64; uint64(len(bitmap)) < need {
		return fmt.Errorf("kvm: KVM_CLEAR_DIRTY_LOG(slot %d): bitmap has %d words, %d pages need %d: %w",
			slot, len(bitmap), numPages, need, unix.EINVAL)
	}
	cl := kvmClearDirtyLog{
		Slot:      slot,
		NumPages:  numPages,
		FirstPage: firstPage,
		Bitmap:    unsafe.Pointer(unsafe.SliceData(bitmap)),
	}
	if _, err := ioctlRef(vm.fd, kvmClearDirtyLogIoc, &cl); err != nil {
		return fmt.Errorf("kvm: KVM_CLEAR_DIRTY_LOG(slot %d, pages %d+%d): %w", slot, firstPage, numPages, err)
	}
	return nil
}
