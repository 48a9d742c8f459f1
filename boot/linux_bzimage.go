package boot

import "fmt"

// parseBzImage checks a bzImage's setup header and returns the kernel to
// load: the protected-mode code after the setup sectors, entered in 64-bit
// mode at load address + 0x200.
func parseBzImage(b []byte) (kernelImage, error) {
	hdrEnd := SetupHeaderOffset + setupHeaderSize
	if len(b) < hdrEnd {
		return kernelImage{}, fmt.Errorf("%w: bzImage truncated: %d bytes, shorter than its setup header (%d)", ErrImage, len(b), hdrEnd)
	}
	var h SetupHeader
	if err := decodeLE(b[SetupHeaderOffset:hdrEnd], &h); err != nil {
		return kernelImage{}, fmt.Errorf("%w: bzImage setup header: %v", ErrImage, err)
	}
	if h.BootFlag != BootFlagMagic || h.Header != HeaderMagic {
		return kernelImage{}, fmt.Errorf("%w: not a bzImage: boot flag %#04x, header %#08x", ErrImage, h.BootFlag, h.Header)
	}
	if h.Version < MinBootProtocol {
		return kernelImage{}, fmt.Errorf("%w: bzImage boot protocol %d.%02d is older than 2.12, the first with a 64-bit entry point",
			ErrImage, h.Version>>8, h.Version&0xFF)
	}
	if h.XLoadFlags&XLFKernel64 == 0 {
		return kernelImage{}, fmt.Errorf("%w: the bzImage has no 64-bit entry point (xloadflags %#x lacks XLF_KERNEL_64): a 32-bit kernel?",
			ErrImage, h.XLoadFlags)
	}

	// The header proper ends where the jump at 0x200 lands; what lies
	// beyond it in the file is setup code, not header fields.
	declEnd := 0x202 + int(b[0x201])
	declEnd = max(min(declEnd, hdrEnd), 0x202+4)

	sects := int(h.SetupSects)
	if sects == 0 {
		sects = 4
	}
	setupBytes := (sects + 1) * 512
	if len(b) <= setupBytes {
		return kernelImage{}, fmt.Errorf("%w: bzImage truncated: %d bytes, but its setup code alone takes %d", ErrImage, len(b), setupBytes)
	}
	pm := b[setupBytes:]
	if want := uint64(h.SysSize) * 16; want > uint64(len(pm)) {
		return kernelImage{}, fmt.Errorf("%w: bzImage truncated: the header promises %d bytes of protected-mode kernel after the %d-byte setup, the file has %d",
			ErrImage, want, setupBytes, len(pm))
	}
	if h.SysSize == 0 {
		return kernelImage{}, fmt.Errorf("%w: bzImage header gives a protected-mode kernel of 0 bytes", ErrImage)
	}
	memSize := uint64(h.InitSize)
	if memSize < uint64(len(pm)) {
		return kernelImage{}, fmt.Errorf("%w: bzImage init_size %#x is smaller than its %d-byte kernel", ErrImage, h.InitSize, len(pm))
	}

	k := kernelImage{
		format:        FormatBzImage,
		entry:         Entry64,
		protocol:      h.Version,
		memSize:       memSize,
		initrdAddrMax: h.InitrdAddrMax,
		cmdlineMax:    h.CmdlineSize,
		entryOff:      Entry64Offset,
		setupHeader:   b[SetupHeaderOffset:declEnd],
	}
	if h.RelocatableKernel != 0 {
		align := uint64(h.KernelAlignment)
		if align == 0 || align&(align-1) != 0 {
			return kernelImage{}, fmt.Errorf("%w: bzImage kernel_alignment %#x is not a power of two", ErrImage, h.KernelAlignment)
		}
		k.prefAddr, k.align = h.PrefAddress, align
	} else {
		k.fixedAddr = h.PrefAddress
		if k.fixedAddr == 0 {
			k.fixedAddr = DefaultKernelAddr
		}
	}
	if k.initrdAddrMax == 0 {
		k.initrdAddrMax = DefaultInitrdAddrMax
	}
	if k.cmdlineMax == 0 {
		k.cmdlineMax = 255 // protocols before 2.06
	}
	k.load = func(mem []byte, at uint64) {
		copy(mem[at:], pm)
		clear(mem[at+uint64(len(pm)) : at+memSize])
	}
	return k, nil
}

// ParseSetupHeader decodes a bzImage's setup header without checking it,
// for tools and tests that inspect kernels.
func ParseSetupHeader(b []byte) (SetupHeader, error) {
	var h SetupHeader
	if len(b) < SetupHeaderOffset+setupHeaderSize {
		return h, fmt.Errorf("%w: %d bytes is too short for a bzImage setup header", ErrImage, len(b))
	}
	err := decodeLE(b[SetupHeaderOffset:SetupHeaderOffset+setupHeaderSize], &h)
	return h, err
}
