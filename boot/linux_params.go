package boot

import (
	"encoding/binary"
	"fmt"
)

// The structures of the x86 Linux boot protocol, laid out exactly as the
// kernel documents them (Documentation/arch/x86/boot.rst and zero-page.rst,
// arch/x86/include/uapi/asm/bootparam.h). They are encoded with
// encoding/binary, which packs fields without padding, so each struct's
// field order and sizes are its byte layout; linux_params_test.go checks
// every field's offset against the documentation.

// SetupHeader is struct setup_header: the part of a bzImage's real-mode
// setup code (at file offset 0x1F1) that a boot loader reads and fills in.
// It lives at offset 0x1F1 of [BootParams] too.
type SetupHeader struct {
	SetupSects          uint8  // 0x1F1 size of the setup code in 512-byte sectors (0 means 4)
	RootFlags           uint16 // 0x1F2
	SysSize             uint32 // 0x1F4 size of the protected-mode code in 16-byte paragraphs
	RAMSize             uint16 // 0x1F8 obsolete
	VidMode             uint16 // 0x1FA
	RootDev             uint16 // 0x1FC
	BootFlag            uint16 // 0x1FE 0xAA55
	Jump                uint16 // 0x200 x86 jump over the header; its second byte sizes the header
	Header              uint32 // 0x202 "HdrS"
	Version             uint16 // 0x206 boot protocol version, major<<8 | minor
	RealmodeSwtch       uint32 // 0x208
	StartSysSeg         uint16 // 0x20C obsolete
	KernelVersion       uint16 // 0x20E offset of the version string, minus 0x200
	TypeOfLoader        uint8  // 0x210 written by the loader
	LoadFlags           uint8  // 0x211
	SetupMoveSize       uint16 // 0x212
	Code32Start         uint32 // 0x214
	RamdiskImage        uint32 // 0x218 initrd address, written by the loader
	RamdiskSize         uint32 // 0x21C initrd size, written by the loader
	BootsectKludge      uint32 // 0x220 obsolete
	HeapEndPtr          uint16 // 0x224
	ExtLoaderVer        uint8  // 0x226
	ExtLoaderType       uint8  // 0x227
	CmdLinePtr          uint32 // 0x228 command line address, written by the loader
	InitrdAddrMax       uint32 // 0x22C highest address the initrd may occupy
	KernelAlignment     uint32 // 0x230 alignment a relocatable kernel needs
	RelocatableKernel   uint8  // 0x234 nonzero: may be loaded at any aligned address
	MinAlignment        uint8  // 0x235 log2 of the smallest usable alignment
	XLoadFlags          uint16 // 0x236
	CmdlineSize         uint32 // 0x238 longest command line, without its NUL
	HardwareSubarch     uint32 // 0x23C
	HardwareSubarchData uint64 // 0x240
	PayloadOffset       uint32 // 0x248
	PayloadLength       uint32 // 0x24C
	SetupData           uint64 // 0x250
	PrefAddress         uint64 // 0x258 preferred load address
	InitSize            uint32 // 0x260 memory the kernel needs from its load address
	HandoverOffset      uint32 // 0x264
	KernelInfoOffset    uint32 // 0x268
}

// E820Entry is struct boot_e820_entry: one range of the physical memory
// map.
type E820Entry struct {
	Addr uint64
	Size uint64
	Type E820Type
}

// BootParams is struct boot_params, the "zero page" a 64-bit or 32-bit
// boot-protocol kernel receives (in RSI / ESI). Fields Tandem never sets
// are kept as opaque byte ranges so that the layout stays exact.
type BootParams struct {
	ScreenInfo          [0x40]byte                // 0x000
	APMBIOSInfo         [0x14]byte                // 0x040
	_                   [4]byte                   // 0x054
	TbootAddr           uint64                    // 0x058
	ISTInfo             [0x10]byte                // 0x060
	ACPIRSDPAddr        uint64                    // 0x070
	_                   [8]byte                   // 0x078
	HD0Info             [0x10]byte                // 0x080
	HD1Info             [0x10]byte                // 0x090
	SysDescTable        [0x10]byte                // 0x0A0
	OLPCOFWHeader       [0x10]byte                // 0x0B0
	ExtRamdiskImage     uint32                    // 0x0C0 initrd address bits 63:32
	ExtRamdiskSize      uint32                    // 0x0C4 initrd size bits 63:32
	ExtCmdLinePtr       uint32                    // 0x0C8 command line address bits 63:32
	_                   [0x70]byte                // 0x0CC
	CCBlobAddress       uint32                    // 0x13C
	EDIDInfo            [0x80]byte                // 0x140
	EFIInfo             [0x20]byte                // 0x1C0
	AltMemK             uint32                    // 0x1E0
	Scratch             uint32                    // 0x1E4
	E820Entries         uint8                     // 0x1E8 number of valid E820Table entries
	EDDBufEntries       uint8                     // 0x1E9
	EDDMBRSigBufEntries uint8                     // 0x1EA
	KbdStatus           uint8                     // 0x1EB
	SecureBoot          uint8                     // 0x1EC
	_                   [2]byte                   // 0x1ED
	Sentinel            uint8                     // 0x1EF must stay 0 (see boot.rst, "sentinel")
	_                   [1]byte                   // 0x1F0
	Hdr                 SetupHeader               // 0x1F1
	_                   [0x290 - 0x26C]byte       // 0x26C
	EDDMBRSigBuffer     [16]uint32                // 0x290
	E820Table           [E820MaxEntries]E820Entry // 0x2D0
	_                   [0x30]byte                // 0xCD0
	EDDBuf              [0x1EC]byte               // 0xD00
	_                   [0x114]byte               // 0xEEC
}

// Boot protocol constants.
const (
	// SetupHeaderOffset is where the setup header starts, in a bzImage
	// file and in the zero page.
	SetupHeaderOffset = 0x1F1
	// BootFlagMagic is SetupHeader.BootFlag's required value.
	BootFlagMagic = 0xAA55
	// HeaderMagic is "HdrS" read as a little-endian u32.
	HeaderMagic = 0x53726448
	// MinBootProtocol is the oldest boot protocol Tandem loads: 2.12, the
	// first with xloadflags and the 64-bit entry point.
	MinBootProtocol = 0x020C
	// E820MaxEntries is how many entries the zero page's table holds.
	E820MaxEntries = 128

	// LoaderTypeUndefined is SetupHeader.TypeOfLoader for a loader without
	// an assigned ID.
	LoaderTypeUndefined = 0xFF

	// LoadFlags bits.
	LoadedHigh   = 1 << 0 // the protected-mode code is loaded at 0x100000 or above
	KeepSegments = 1 << 6
	CanUseHeap   = 1 << 7

	// XLoadFlags bits.
	XLFKernel64           = 1 << 0 // has the 64-bit entry point at load address + 0x200
	XLFCanBeLoadedAbove4G = 1 << 1

	// Entry64Offset is the 64-bit entry point's offset from the load
	// address of a bzImage's protected-mode kernel.
	Entry64Offset = 0x200

	// DefaultInitrdAddrMax is the highest initrd address Tandem assumes
	// for a kernel that does not say (an ELF vmlinux).
	DefaultInitrdAddrMax = 0x7FFFFFFF
	// DefaultCmdlineSize is the longest command line (without its NUL) a
	// kernel that does not say accepts: x86's COMMAND_LINE_SIZE - 1.
	DefaultCmdlineSize = 2047
)

// E820Type is the type of an e820 memory range.
type E820Type uint32

// E820 range types.
const (
	E820RAM      E820Type = 1
	E820Reserved E820Type = 2
	E820ACPI     E820Type = 3
	E820NVS      E820Type = 4
	E820Unusable E820Type = 5
)

// String is the name the kernel prints for the type in its "BIOS-e820"
// lines (arch/x86/kernel/e820.c, e820_print_type).
func (t E820Type) String() string {
	switch t {
	case E820RAM:
		return "usable"
	case E820Reserved:
		return "reserved"
	case E820ACPI:
		return "ACPI data"
	case E820NVS:
		return "ACPI NVS"
	case E820Unusable:
		return "unusable"
	}
	return fmt.Sprintf("type %d", uint32(t))
}

// End is the first address after the entry.
func (e E820Entry) End() uint64 { return e.Addr + e.Size }

// String formats the entry the way the kernel prints it after
// "BIOS-e820: ": "[mem 0x0000000000000000-0x000000000009fbff] usable".
func (e E820Entry) String() string {
	return fmt.Sprintf("[mem 0x%016x-0x%016x] %v", e.Addr, e.Addr+e.Size-1, e.Type)
}

// encodeLE encodes a fixed-size struct little endian into b, which must be
// exactly its size.
func encodeLE(b []byte, v any) {
	if _, err := binary.Encode(b, binary.LittleEndian, v); err != nil {
		// Only a programming error (a wrong buffer size or a non-fixed
		// type) gets here; the types are this package's own.
		panic(fmt.Sprintf("boot: encode %T: %v", v, err))
	}
}

// decodeLE decodes a fixed-size struct little endian from b.
func decodeLE(b []byte, v any) error {
	_, err := binary.Decode(b, binary.LittleEndian, v)
	return err
}

// Sizes of the encoded structures.
var (
	setupHeaderSize = binary.Size(SetupHeader{})
	bootParamsSize  = binary.Size(BootParams{})
)
