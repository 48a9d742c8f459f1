package boot

// The PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h,
// version 1): the kernel is entered at its XEN_ELFNOTE_PHYS32_ENTRY in
// 32-bit protected mode with paging off and EBX holding the address of an
// hvm_start_info. Linux (arch/x86/platform/pvh/enlighten.c) turns it into
// its own boot_params: memory map from the memmap table, command line,
// initrd from module 0, and it appends [0xA0000, 0x100000) as reserved to
// the map, which LinuxE820's reserved range already covers.

// HVMStartInfoMagic is hvm_start_info.magic: "xEn3" with the top bit set.
const HVMStartInfoMagic = 0x336ec578

// HVMStartInfo is struct hvm_start_info.
type HVMStartInfo struct {
	Magic         uint32
	Version       uint32 // 1: has the memory map fields
	Flags         uint32
	NrModules     uint32
	ModlistPaddr  uint64
	CmdlinePaddr  uint64
	RSDPPaddr     uint64
	MemmapPaddr   uint64
	MemmapEntries uint32
	Reserved      uint32
}

// HVMModlistEntry is struct hvm_modlist_entry.
type HVMModlistEntry struct {
	Paddr        uint64
	Size         uint64
	CmdlinePaddr uint64
	Reserved     uint64
}

// HVMMemmapEntry is struct hvm_memmap_table_entry; its Type uses the e820
// values.
type HVMMemmapEntry struct {
	Addr     uint64
	Size     uint64
	Type     uint32
	Reserved uint32
}

// Where the PVH structures go inside the page at PVHStartInfoAddr.
const (
	pvhStartInfoSize = 56
	pvhModlistAddr   = PVHStartInfoAddr + 0x40
	pvhMemmapAddr    = PVHStartInfoAddr + 0x80
	pvhMemmapMax     = (0x1000 - 0x80) / 24
)

// writePVHStartInfo writes hvm_start_info, the module list (the initrd, if
// any) and the memory map.
func writePVHStartInfo(mem []byte, b *LinuxBoot) {
	page := mem[PVHStartInfoAddr : PVHStartInfoAddr+0x1000]
	clear(page)
	si := HVMStartInfo{
		Magic:         HVMStartInfoMagic,
		Version:       1,
		CmdlinePaddr:  b.CmdlineAddr,
		MemmapPaddr:   pvhMemmapAddr,
		MemmapEntries: uint32(min(len(b.E820), pvhMemmapMax)),
	}
	if b.Initrd.Size > 0 {
		si.NrModules = 1
		si.ModlistPaddr = pvhModlistAddr
		encodeLE(mem[pvhModlistAddr:pvhModlistAddr+32], &HVMModlistEntry{Paddr: b.Initrd.Start, Size: b.Initrd.Size})
	}
	encodeLE(mem[PVHStartInfoAddr:PVHStartInfoAddr+pvhStartInfoSize], &si)
	for i, e := range b.E820[:si.MemmapEntries] {
		at := pvhMemmapAddr + 24*i
		encodeLE(mem[at:at+24], &HVMMemmapEntry{Addr: e.Addr, Size: e.Size, Type: uint32(e.Type)})
	}
}
