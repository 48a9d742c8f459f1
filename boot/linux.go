package boot

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/tandemvm/tandem/kvm"
)

// Linux guests.
//
// [LoadLinux] boots a Linux kernel the way firmware-less microVM monitors
// do: it loads the kernel and initrd straight into guest RAM, writes the
// structures the kernel reads at entry, and returns the boot vCPU's
// registers. The other vCPUs stay in wait-for-SIPI; the kernel starts them
// through their local APICs once it finds them in the MP table.
//
// Three ways in:
//
//   - a bzImage, through the 64-bit boot protocol (boot.rst, "64-bit boot
//     protocol"): the protected-mode kernel is loaded at its preferred
//     address and entered at load address + 0x200 in 64-bit mode, with RSI
//     pointing at the zero page ([BootParams]);
//   - an ELF vmlinux through its PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY):
//     entered in 32-bit protected mode, paging off, with EBX pointing at an
//     hvm_start_info ([HVMStartInfo]) that carries the memory map, the
//     command line and the initrd as module 0;
//   - an ELF vmlinux at its ELF entry point (startup_64), in 64-bit mode
//     like a bzImage, with RSI pointing at a zero page.
//
// Guest-physical layout below 1 MiB (all of it inside RAM slot 0):
//
//	0x00500  GDT: 0x08 32-bit code (PVH entry), 0x10 64-bit code (__BOOT_CS),
//	         0x18 data (__BOOT_DS), 0x20 64-bit TSS; accessed bits preset
//	0x00600  TSS (104 bytes)
//	0x06000  hvm_start_info, then the module list and the memory map (PVH)
//	0x07000  zero page (boot_params)
//	0x08FF0  initial stack pointer
//	0x09000  PML4, PDPT and four page directories: the first 4 GiB
//	         identity-mapped with 2 MiB pages (64-bit entries)
//	0x20000  kernel command line, NUL-terminated
//	0xF0000  MP floating pointer and MP configuration table
//
// The kernel goes to its preferred address (normally 16 MiB) and the
// initrd as high in RAM below 3 GiB as the kernel's initrd_addr_max allows.
// The e820 map ([LinuxE820]) lists RAM, reserves [0x9FC00, 0x100000) (the
// EBDA, VGA and BIOS areas, where the MP table lives) and leaves the hole
// below 4 GiB, where the LAPIC, IOAPIC and virtio-mmio windows sit, out.
const (
	LinuxGDTAddr     = GDTAddr
	LinuxTSSAddr     = TSSAddr
	PVHStartInfoAddr = 0x6000
	ZeroPageAddr     = 0x7000
	LinuxStackTop    = 0x8FF0
	CmdlineAddr      = 0x20000
	// CmdlineMax bounds the command line Tandem writes, whatever the
	// kernel accepts: it must fit below MPTableAddr.
	CmdlineMax  = 0x10000
	MPTableAddr = 0xF0000
	// EBDAStart is where usable low memory ends in the e820 map.
	EBDAStart = 0x9FC00
	// HighMemStart is 1 MiB, where the kernel's part of RAM starts.
	HighMemStart = 0x100000
	// DefaultKernelAddr is where a kernel that names no preferred address
	// is loaded (the x86 default CONFIG_PHYSICAL_START).
	DefaultKernelAddr = 0x1000000

	// LinuxMaxVCPUs is the most vCPUs the MP table can describe: APIC IDs
	// are 8 bits and the IOAPIC takes the ID after the last vCPU's.
	LinuxMaxVCPUs = 254

	// Segment selectors of the Linux GDT.
	linuxCode32Sel = 0x08
	linuxCode64Sel = 0x10 // __BOOT_CS
	linuxDataSel   = 0x18 // __BOOT_DS
	linuxTSSSel    = 0x20
	linuxGDTBytes  = 6 * 8 // null, code32, code64, data, TSS (two slots)
)

// LinuxEntry selects how an ELF vmlinux is entered.
type LinuxEntry int

const (
	// EntryAuto uses the PVH entry when the ELF has one, else the 64-bit
	// entry. A bzImage always uses the 64-bit boot protocol.
	EntryAuto LinuxEntry = iota
	// EntryPVH enters an ELF vmlinux through its PVH note.
	EntryPVH
	// Entry64 enters the kernel in 64-bit mode: a bzImage at load address
	// + 0x200, an ELF vmlinux at its ELF entry point.
	Entry64
)

func (e LinuxEntry) String() string {
	switch e {
	case EntryAuto:
		return "auto"
	case EntryPVH:
		return "pvh"
	case Entry64:
		return "64bit"
	}
	return fmt.Sprintf("LinuxEntry(%d)", int(e))
}

// ParseLinuxEntry parses "auto", "pvh" or "64bit".
func ParseLinuxEntry(s string) (LinuxEntry, error) {
	for _, e := range []LinuxEntry{EntryAuto, EntryPVH, Entry64} {
		if s == e.String() {
			return e, nil
		}
	}
	return 0, fmt.Errorf("boot: unknown Linux entry %q (want auto, pvh or 64bit)", s)
}

// KernelFormat is the file format of a kernel image.
type KernelFormat int

const (
	FormatUnknown KernelFormat = iota
	FormatBzImage
	FormatELF
)

func (f KernelFormat) String() string {
	switch f {
	case FormatBzImage:
		return "bzImage"
	case FormatELF:
		return "ELF vmlinux"
	}
	return "unknown"
}

// DetectKernelFormat tells a bzImage from an ELF vmlinux by their magic
// numbers, without validating the rest.
func DetectKernelFormat(b []byte) KernelFormat {
	switch {
	case bytes.HasPrefix(b, []byte("\x7fELF")):
		return FormatELF
	case len(b) >= 0x206 && le16(b[0x1FE:]) == BootFlagMagic && le32(b[0x202:]) == HeaderMagic:
		return FormatBzImage
	}
	return FormatUnknown
}

// Range is a range of guest-physical addresses.
type Range struct {
	Start, Size uint64
}

// End is the first address after the range.
func (r Range) End() uint64 { return r.Start + r.Size }

// LinuxConfig describes a Linux boot.
type LinuxConfig struct {
	// Kernel is a bzImage or an ELF vmlinux.
	Kernel []byte
	// Initrd is an initramfs or initrd image; empty for none.
	Initrd []byte
	// Cmdline is the kernel command line, passed exactly as given.
	Cmdline string
	VCPUs   int
	// RAM lists the guest's RAM ranges in address order; the first starts
	// at 0 and is the one LoadLinux's mem argument holds.
	RAM   []Range
	Entry LinuxEntry
}

// LinuxBoot describes a loaded kernel: where everything went and how the
// boot vCPU starts.
type LinuxBoot struct {
	Format KernelFormat
	// Entry is the entry actually used (never EntryAuto).
	Entry LinuxEntry
	// Protocol is a bzImage's boot protocol version (major<<8 | minor).
	Protocol uint16
	// Kernel is the memory the kernel occupies from its load address
	// (for a bzImage, init_size bytes).
	Kernel      Range
	EntryPoint  uint64
	Initrd      Range // zero Size when there is none
	Cmdline     string
	CmdlineAddr uint64
	// E820 is the memory map given to the kernel.
	E820 []E820Entry
	// BSP holds the boot vCPU's general-purpose registers.
	BSP kvm.Regs
}

// ApplySregs sets in s the segment, descriptor-table and control registers
// the entry needs, leaving the rest (APIC base, interrupt bitmap) as KVM
// reported them.
func (b *LinuxBoot) ApplySregs(s *kvm.Sregs) {
	data := kvm.Segment{Base: 0, Limit: 0xFFFFFFFF, Selector: linuxDataSel, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = kvm.Segment{Base: LinuxTSSAddr, Limit: tssLimit, Selector: linuxTSSSel, Type: 0xB, Present: 1}
	s.LDT = kvm.Segment{Type: 0x2, Present: 1, Unusable: 1}
	s.GDT = kvm.DTable{Base: LinuxGDTAddr, Limit: linuxGDTBytes - 1}
	s.IDT = kvm.DTable{}
	switch b.Entry {
	case EntryPVH:
		// 32-bit protected mode, paging off (the PVH boot ABI).
		s.CS = kvm.Segment{Base: 0, Limit: 0xFFFFFFFF, Selector: linuxCode32Sel, Type: 0xB, Present: 1, S: 1, DB: 1, G: 1}
		s.CR0 = cr0PE | cr0ET
		s.CR3 = 0
		s.CR4 = 0
		s.EFER = 0
	default:
		s.CS = kvm.Segment{Base: 0, Limit: 0xFFFFFFFF, Selector: linuxCode64Sel, Type: 0xB, Present: 1, S: 1, L: 1, G: 1}
		s.CR0 = cr0PE | cr0ET | cr0PG
		s.CR3 = PML4Addr
		s.CR4 = cr4PAE
		s.EFER = eferLME | eferLMA
	}
}

// LoadLinux loads a kernel, its initrd and command line into mem (guest RAM
// from GPA 0, the first of cfg.RAM) and writes the boot structures: GDT,
// page tables, zero page or PVH start info, e820 map and MP table. The boot
// vCPU's registers are in the result; the caller applies them and the
// result's ApplySregs to vCPU 0 only.
//
// A file that is neither a bzImage nor an x86-64 ELF, a truncated one, or a
// kernel, initrd or command line that does not fit is refused with an
// error wrapping [ErrImage] that says which.
func LoadLinux(mem []byte, cfg LinuxConfig) (*LinuxBoot, error) {
	if cfg.VCPUs < 1 || cfg.VCPUs > LinuxMaxVCPUs {
		return nil, fmt.Errorf("boot: %d vCPUs: a Linux guest takes 1 to %d", cfg.VCPUs, LinuxMaxVCPUs)
	}
	if len(cfg.RAM) == 0 || cfg.RAM[0].Start != 0 || cfg.RAM[0].Size != uint64(len(mem)) {
		return nil, errors.New("boot: the first RAM range must start at 0 and be the memory passed in")
	}
	e820, err := LinuxE820(cfg.RAM)
	if err != nil {
		return nil, err
	}
	if strings.IndexByte(cfg.Cmdline, 0) >= 0 {
		return nil, errors.New("boot: the kernel command line contains a NUL byte")
	}

	var k kernelImage
	switch DetectKernelFormat(cfg.Kernel) {
	case FormatBzImage:
		if cfg.Entry == EntryPVH {
			return nil, fmt.Errorf("%w: a bzImage has no PVH entry; boot the ELF vmlinux for PVH", ErrImage)
		}
		k, err = parseBzImage(cfg.Kernel)
	case FormatELF:
		k, err = parseVmlinux(cfg.Kernel, cfg.Entry)
	default:
		err = notAKernel(cfg.Kernel)
	}
	if err != nil {
		return nil, err
	}
	b := &LinuxBoot{Format: k.format, Entry: k.entry, Protocol: k.protocol, E820: e820}

	// Place the kernel.
	load, err := k.placement(uint64(len(mem)))
	if err != nil {
		return nil, err
	}
	b.Kernel = Range{Start: load, Size: k.memSize}
	b.EntryPoint = k.entryPoint(load)

	// Command line.
	if uint64(len(cfg.Cmdline)) > uint64(k.cmdlineMax) {
		return nil, fmt.Errorf("boot: the %d-byte command line is longer than the %d bytes the kernel accepts", len(cfg.Cmdline), k.cmdlineMax)
	}
	if len(cfg.Cmdline) >= CmdlineMax {
		return nil, fmt.Errorf("boot: the %d-byte command line is longer than the %d bytes Tandem reserves", len(cfg.Cmdline), CmdlineMax-1)
	}
	b.Cmdline, b.CmdlineAddr = cfg.Cmdline, CmdlineAddr

	// Initrd: as high as the kernel allows, above the kernel.
	if len(cfg.Initrd) > 0 {
		addr, err := PlaceInitrd(uint64(len(cfg.Initrd)), uint64(len(mem)), uint64(k.initrdAddrMax), b.Kernel.End())
		if err != nil {
			return nil, err
		}
		b.Initrd = Range{Start: addr, Size: uint64(len(cfg.Initrd))}
	}

	// Everything is checked; write guest memory.
	k.load(mem, load)
	copy(mem[b.Initrd.Start:], cfg.Initrd)
	clear(mem[CmdlineAddr : CmdlineAddr+CmdlineMax])
	copy(mem[CmdlineAddr:], cfg.Cmdline)
	writeLinuxGDT(mem)
	writeIdentityMap(mem, 4<<30)
	if err := writeMPTable(mem, MPTableAddr, cfg.VCPUs); err != nil {
		return nil, err
	}
	clear(mem[LinuxStackTop&^0xFFF : (LinuxStackTop&^0xFFF)+0x1000])

	switch b.Entry {
	case EntryPVH:
		writePVHStartInfo(mem, b)
		b.BSP = kvm.Regs{RIP: b.EntryPoint, RBX: PVHStartInfoAddr, RFLAGS: 0x2}
	default:
		writeZeroPage(mem, b, k.setupHeader)
		b.BSP = kvm.Regs{RIP: b.EntryPoint, RSI: ZeroPageAddr, RSP: LinuxStackTop, RBP: LinuxStackTop, RFLAGS: 0x2}
	}
	return b, nil
}

// notAKernel explains why b is not a kernel Tandem can boot.
func notAKernel(b []byte) error {
	switch {
	case len(b) == 0:
		return fmt.Errorf("%w: the kernel file is empty", ErrImage)
	case len(b) < 0x206:
		return fmt.Errorf("%w: not a Linux kernel: %d bytes is too short for a bzImage or an ELF vmlinux", ErrImage, len(b))
	case le32(b[0x202:]) == HeaderMagic:
		return fmt.Errorf("%w: not a bzImage: boot flag %#04x at 0x1FE, want 0xAA55", ErrImage, le16(b[0x1FE:]))
	}
	return fmt.Errorf("%w: not a Linux kernel: no ELF magic and no \"HdrS\" boot-protocol header at 0x202", ErrImage)
}

// kernelImage is a parsed kernel, ready to be placed and copied.
type kernelImage struct {
	format   KernelFormat
	entry    LinuxEntry
	protocol uint16
	// memSize is the memory the kernel needs from its load address.
	memSize uint64
	// fixedAddr, when nonzero, is the only load address allowed;
	// otherwise prefAddr aligned to align is used.
	fixedAddr, prefAddr, align uint64
	initrdAddrMax              uint32
	cmdlineMax                 uint32
	// entryOff is the entry point's offset from the load address (bzImage,
	// 64-bit ELF entry) or its absolute address (PVH: see entryPoint).
	entryOff    uint64
	entryAbs    bool
	setupHeader []byte // bzImage: the file's setup header, to copy to the zero page
	load        func(mem []byte, at uint64)
}

func (k *kernelImage) entryPoint(load uint64) uint64 {
	if k.entryAbs {
		return k.entryOff
	}
	return load + k.entryOff
}

// placement returns the kernel's load address in memBytes of low RAM.
func (k *kernelImage) placement(memBytes uint64) (uint64, error) {
	at := k.fixedAddr
	if at == 0 {
		at = k.prefAddr
		if at < HighMemStart {
			at = DefaultKernelAddr
		}
		if k.align > 1 {
			at = (at + k.align - 1) &^ (k.align - 1)
		}
	}
	if at < HighMemStart {
		return 0, fmt.Errorf("%w: the kernel wants to be loaded at %#x, below 1 MiB", ErrImage, at)
	}
	if at > memBytes || k.memSize > memBytes-at {
		return 0, fmt.Errorf("%w: the kernel needs [%#x, %#x) but guest RAM below the 3 GiB hole ends at %#x (%d MiB); give the VM more memory",
			ErrImage, at, at+k.memSize, memBytes, memBytes>>20)
	}
	return at, nil
}

// PlaceInitrd returns where an initrd of size bytes goes: page-aligned, as
// high as possible below ramTop and at or below addrMax (the kernel's
// initrd_addr_max, the initrd's highest allowed byte), and above kernelEnd.
func PlaceInitrd(size, ramTop, addrMax, kernelEnd uint64) (uint64, error) {
	if size == 0 {
		return 0, errors.New("boot: empty initrd")
	}
	top := ramTop
	if addrMax < ^uint64(0) && addrMax+1 < top {
		top = addrMax + 1
	}
	if size > top {
		return 0, fmt.Errorf("%w: the %d MiB initrd does not fit below %#x", ErrImage, size>>20, top)
	}
	addr := (top - size) &^ (PageSize - 1)
	if addr < kernelEnd {
		return 0, fmt.Errorf("%w: the %d MiB initrd does not fit between the kernel's end (%#x) and %#x; give the VM more memory",
			ErrImage, size>>20, kernelEnd, top)
	}
	return addr, nil
}

// PageSize is the x86 base page size.
const PageSize = 4096

// LinuxE820 builds the e820 map for the given RAM ranges (address order,
// the first at 0 and at least 2 MiB): low RAM up to the EBDA, the reserved
// EBDA/VGA/BIOS area up to 1 MiB, then every RAM range as usable. Adjacent
// entries never have the same type, so the kernel prints the map exactly
// as given.
func LinuxE820(ram []Range) ([]E820Entry, error) {
	if len(ram) == 0 || ram[0].Start != 0 {
		return nil, errors.New("boot: e820: RAM must start at address 0")
	}
	if ram[0].Size < 2<<20 {
		return nil, fmt.Errorf("boot: e820: %d KiB of low RAM is too little for Linux (at least 2 MiB)", ram[0].Size>>10)
	}
	m := []E820Entry{
		{Addr: 0, Size: EBDAStart, Type: E820RAM},
		{Addr: EBDAStart, Size: HighMemStart - EBDAStart, Type: E820Reserved},
		{Addr: HighMemStart, Size: ram[0].Size - HighMemStart, Type: E820RAM},
	}
	prevEnd := ram[0].End()
	for _, r := range ram[1:] {
		if r.Size == 0 || r.Start < prevEnd || r.Start+r.Size < r.Start {
			return nil, fmt.Errorf("boot: e820: RAM range [%#x, +%#x) overlaps, is empty or out of order", r.Start, r.Size)
		}
		if r.Start == prevEnd {
			m[len(m)-1].Size += r.Size
		} else {
			m = append(m, E820Entry{Addr: r.Start, Size: r.Size, Type: E820RAM})
		}
		prevEnd = r.End()
	}
	if len(m) > E820MaxEntries {
		return nil, fmt.Errorf("boot: e820: %d entries, the zero page holds %d", len(m), E820MaxEntries)
	}
	return m, nil
}

// writeLinuxGDT writes the GDT and TSS the Linux entries use.
func writeLinuxGDT(mem []byte) {
	g := mem[LinuxGDTAddr : LinuxGDTAddr+linuxGDTBytes]
	put64(g[0:], 0)
	put64(g[linuxCode32Sel:], 0x00CF9B000000FFFF) // 32-bit code, 4 GiB, accessed
	put64(g[linuxCode64Sel:], 0x00AF9B000000FFFF) // 64-bit code, accessed
	put64(g[linuxDataSel:], 0x00CF93000000FFFF)   // data, 4 GiB, accessed
	tss := uint64(tssLimit) | uint64(LinuxTSSAddr&0xFFFFFF)<<16 | uint64(0x8B)<<40 | uint64(LinuxTSSAddr>>24&0xFF)<<56
	put64(g[linuxTSSSel:], tss)
	put64(g[linuxTSSSel+8:], uint64(LinuxTSSAddr)>>32)
	clear(mem[LinuxTSSAddr : LinuxTSSAddr+tssLimit+1])
	put16(mem[LinuxTSSAddr+0x66:], tssLimit+1) // no I/O permission bitmap
}

// writeZeroPage writes boot_params for a 64-bit entry. hdr is the bzImage's
// own setup header (nil for an ELF vmlinux), copied in first as the boot
// protocol asks.
func writeZeroPage(mem []byte, b *LinuxBoot, hdr []byte) {
	zp := mem[ZeroPageAddr : ZeroPageAddr+bootParamsSize]
	clear(zp)
	copy(zp[SetupHeaderOffset:], hdr)
	var bp BootParams
	_ = decodeLE(zp, &bp) // zp is exactly bootParamsSize bytes
	h := &bp.Hdr
	if hdr == nil {
		// An ELF vmlinux has no setup header: describe what the kernel
		// reads from one.
		h.BootFlag = BootFlagMagic
		h.Header = HeaderMagic
		h.Version = MinBootProtocol
		h.KernelAlignment = DefaultKernelAddr
		h.CmdlineSize = DefaultCmdlineSize
	}
	h.TypeOfLoader = LoaderTypeUndefined
	h.LoadFlags |= LoadedHigh
	h.CmdLinePtr = uint32(b.CmdlineAddr)
	bp.ExtCmdLinePtr = uint32(b.CmdlineAddr >> 32)
	if b.Initrd.Size > 0 {
		h.RamdiskImage = uint32(b.Initrd.Start)
		h.RamdiskSize = uint32(b.Initrd.Size)
		bp.ExtRamdiskImage = uint32(b.Initrd.Start >> 32)
		bp.ExtRamdiskSize = uint32(b.Initrd.Size >> 32)
	}
	bp.E820Entries = uint8(len(b.E820))
	copy(bp.E820Table[:], b.E820)
	encodeLE(zp, &bp)
}

func le16(b []byte) uint16 { return uint16(b[0]) | uint16(b[1])<<8 }
func le32(b []byte) uint32 { return uint32(le16(b)) | uint32(le16(b[2:]))<<16 }

func put16(b []byte, v uint16) { b[0], b[1] = byte(v), byte(v>>8) }
func put32(b []byte, v uint32) { put16(b, uint16(v)); put16(b[2:], uint16(v>>16)) }
func put64(b []byte, v uint64) { put32(b, uint32(v)); put32(b[4:], uint32(v>>32)) }
