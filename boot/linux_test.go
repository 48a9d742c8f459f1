package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/tandemvm/tandem/kvm"
)

const testMem = 64 << 20

func testRAM(size uint64) []Range { return []Range{{0, size}} }

// bzImageSpec describes a synthetic bzImage.
type bzImageSpec struct {
	setupSects  uint8
	version     uint16
	xloadflags  uint16
	relocatable uint8
	align       uint32
	pref        uint64
	initSize    uint32
	payload     []byte
	sysSize     uint32 // 0: derived from payload
}

func defaultBz() bzImageSpec {
	payload := make([]byte, 0x3000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	return bzImageSpec{setupSects: 4, version: 0x020F, xloadflags: XLFKernel64 | XLFCanBeLoadedAbove4G,
		relocatable: 1, align: 0x200000, pref: 0x1000000, initSize: 0x10000, payload: payload}
}

// build lays out a bzImage as the kernel's build does: boot sector and
// setup code in (setup_sects+1) sectors with the header at 0x1F1, then the
// protected-mode payload.
func (s bzImageSpec) build() []byte {
	setup := (int(s.setupSects) + 1) * 512
	b := make([]byte, setup+len(s.payload))
	h := SetupHeader{
		SetupSects: s.setupSects, BootFlag: BootFlagMagic, Header: HeaderMagic,
		Jump:    0x6AEB, // jmp short past the header: 0x202 + 0x6A = 0x26C
		Version: s.version, KernelAlignment: s.align, RelocatableKernel: s.relocatable,
		XLoadFlags: s.xloadflags, CmdlineSize: 2047, InitrdAddrMax: 0x7FFFFFFF,
		PrefAddress: s.pref, InitSize: s.initSize, VidMode: 0xFFFF,
		SysSize: uint32((len(s.payload) + 15) / 16),
	}
	if s.sysSize != 0 {
		h.SysSize = s.sysSize
	}
	encodeLE(b[SetupHeaderOffset:SetupHeaderOffset+setupHeaderSize], &h)
	copy(b[setup:], s.payload)
	return b
}

func TestLoadBzImage(t *testing.T) {
	spec := defaultBz()
	mem := make([]byte, testMem)
	initrd := bytes.Repeat([]byte("initrd!"), 1000)
	cmdline := "console=ttyS0 root=/dev/vda"
	b, err := LoadLinux(mem, LinuxConfig{Kernel: spec.build(), Initrd: initrd, Cmdline: cmdline, VCPUs: 2, RAM: testRAM(testMem)})
	if err != nil {
		t.Fatal(err)
	}
	if b.Format != FormatBzImage || b.Entry != Entry64 || b.Protocol != 0x020F {
		t.Fatalf("loaded as %v / %v / %#x", b.Format, b.Entry, b.Protocol)
	}
	if b.Kernel != (Range{0x1000000, 0x10000}) || b.EntryPoint != 0x1000200 {
		t.Fatalf("kernel at %+v, entry %#x", b.Kernel, b.EntryPoint)
	}
	if !bytes.Equal(mem[0x1000000:0x1000000+len(spec.payload)], spec.payload) {
		t.Fatal("payload not at the load address")
	}
	if b.BSP.RIP != 0x1000200 || b.BSP.RSI != ZeroPageAddr || b.BSP.RFLAGS != 2 {
		t.Fatalf("BSP registers %+v", b.BSP)
	}

	// Initrd: page-aligned, at the top of RAM.
	if b.Initrd.Start%PageSize != 0 || b.Initrd.End() > testMem || testMem-b.Initrd.End() >= PageSize {
		t.Fatalf("initrd at %+v", b.Initrd)
	}
	if !bytes.Equal(mem[b.Initrd.Start:b.Initrd.End()], initrd) {
		t.Fatal("initrd contents differ")
	}

	// Command line, NUL-terminated.
	if got := string(mem[CmdlineAddr : CmdlineAddr+len(cmdline)+1]); got != cmdline+"\x00" {
		t.Fatalf("command line in memory: %q", got)
	}

	// Zero page.
	var bp BootParams
	if err := decodeLE(mem[ZeroPageAddr:ZeroPageAddr+bootParamsSize], &bp); err != nil {
		t.Fatal(err)
	}
	h := bp.Hdr
	if h.BootFlag != BootFlagMagic || h.Header != HeaderMagic || h.Version != 0x020F || h.VidMode != 0xFFFF {
		t.Errorf("setup header not copied from the image: %+v", h)
	}
	if h.TypeOfLoader != LoaderTypeUndefined || h.LoadFlags&LoadedHigh == 0 || h.CmdLinePtr != CmdlineAddr {
		t.Errorf("loader fields: type %#x, loadflags %#x, cmd_line_ptr %#x", h.TypeOfLoader, h.LoadFlags, h.CmdLinePtr)
	}
	if uint64(h.RamdiskImage) != b.Initrd.Start || uint64(h.RamdiskSize) != b.Initrd.Size || bp.ExtRamdiskImage != 0 {
		t.Errorf("ramdisk fields %#x+%#x", h.RamdiskImage, h.RamdiskSize)
	}
	if int(bp.E820Entries) != len(b.E820) || bp.Sentinel != 0 {
		t.Fatalf("%d e820 entries in the zero page, want %d", bp.E820Entries, len(b.E820))
	}
	for i, e := range b.E820 {
		if bp.E820Table[i] != e {
			t.Errorf("zero page e820[%d] = %v, want %v", i, bp.E820Table[i], e)
		}
	}

	// 64-bit entry state.
	var s kvm.Sregs
	b.ApplySregs(&s)
	if s.CS.Selector != 0x10 || s.CS.L != 1 || s.DS.Selector != 0x18 || s.SS.Selector != 0x18 {
		t.Errorf("segments: CS %+v, DS %+v", s.CS, s.DS)
	}
	if s.CR0&(cr0PE|cr0PG) != cr0PE|cr0PG || s.CR4&cr4PAE == 0 || s.EFER != eferLME|eferLMA || s.CR3 != PML4Addr {
		t.Errorf("CR0 %#x CR4 %#x EFER %#x CR3 %#x", s.CR0, s.CR4, s.EFER, s.CR3)
	}
	// __BOOT_CS and __BOOT_DS in the GDT: flat 4 GiB code (64-bit) and data.
	if g := binary.LittleEndian.Uint64(mem[LinuxGDTAddr+0x10:]); g != 0x00AF9B000000FFFF {
		t.Errorf("GDT 0x10 = %#x", g)
	}
	if g := binary.LittleEndian.Uint64(mem[LinuxGDTAddr+0x18:]); g != 0x00CF93000000FFFF {
		t.Errorf("GDT 0x18 = %#x", g)
	}
	// The identity map covers the kernel, the zero page and the command line.
	for _, va := range []uint64{ZeroPageAddr, CmdlineAddr, 0x1000000, b.Initrd.Start} {
		if pa, ok := walk(mem, PML4Addr, va); !ok || pa != va {
			t.Errorf("address %#x maps to %#x (%v)", va, pa, ok)
		}
	}
}

// walk translates va through 4-level page tables with 2 MiB pages.
func walk(mem []byte, cr3, va uint64) (uint64, bool) {
	le := binary.LittleEndian
	pml4e := le.Uint64(mem[cr3+8*(va>>39&511):])
	if pml4e&1 == 0 {
		return 0, false
	}
	pdpte := le.Uint64(mem[pml4e&^0xFFF+8*(va>>30&511):])
	if pdpte&1 == 0 {
		return 0, false
	}
	pde := le.Uint64(mem[pdpte&^0xFFF+8*(va>>21&511):])
	if pde&1 == 0 || pde&ptePageSize == 0 {
		return 0, false
	}
	return pde&^0x1FFFFF | va&0x1FFFFF, true
}

func TestLoadBzImageNonRelocatable(t *testing.T) {
	spec := defaultBz()
	spec.relocatable = 0
	spec.pref = 0x2000000
	mem := make([]byte, testMem)
	b, err := LoadLinux(mem, LinuxConfig{Kernel: spec.build(), VCPUs: 1, RAM: testRAM(testMem)})
	if err != nil {
		t.Fatal(err)
	}
	if b.Kernel.Start != 0x2000000 || b.Initrd.Size != 0 {
		t.Fatalf("kernel at %#x, initrd %+v", b.Kernel.Start, b.Initrd)
	}
}

func TestBzImageRejections(t *testing.T) {
	good := defaultBz()
	tests := []struct {
		name   string
		image  func() []byte
		mem    uint64
		entry  LinuxEntry
		errStr string
	}{
		{"truncated header", func() []byte { return good.build()[:0x220] }, testMem, EntryAuto, "truncated"},
		{"truncated payload", func() []byte { b := good.build(); return b[:len(b)-0x100] }, testMem, EntryAuto, "truncated"},
		{"only the setup code", func() []byte { return good.build()[:5*512] }, testMem, EntryAuto, "truncated"},
		{"bad boot flag", func() []byte { b := good.build(); b[0x1FE] = 0; return b }, testMem, EntryAuto, "boot flag"},
		{"old protocol", func() []byte { s := good; s.version = 0x0209; return s.build() }, testMem, EntryAuto, "older than 2.12"},
		{"32-bit kernel", func() []byte { s := good; s.xloadflags = 0; return s.build() }, testMem, EntryAuto, "XLF_KERNEL_64"},
		{"odd alignment", func() []byte { s := good; s.align = 0x30000; return s.build() }, testMem, EntryAuto, "power of two"},
		{"init_size too small", func() []byte { s := good; s.initSize = 0x100; return s.build() }, testMem, EntryAuto, "init_size"},
		{"zero syssize", func() []byte {
			s := good
			s.sysSize = 0
			b := s.build()
			binary.LittleEndian.PutUint32(b[0x1F4:], 0)
			return b
		}, testMem, EntryAuto, "0 bytes"},
		{"PVH requested", good.build, testMem, EntryPVH, "no PVH entry"},
		{"RAM too small", good.build, 16 << 20, EntryAuto, "give the VM more memory"},
		{"below 1 MiB", func() []byte { s := good; s.relocatable = 0; s.pref = 0x10000; return s.build() }, testMem, EntryAuto, "below 1 MiB"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := make([]byte, tc.mem)
			_, err := LoadLinux(mem, LinuxConfig{Kernel: tc.image(), VCPUs: 1, RAM: testRAM(tc.mem), Entry: tc.entry})
			if !errors.Is(err, ErrImage) || !strings.Contains(err.Error(), tc.errStr) {
				t.Fatalf("error %v, want ErrImage mentioning %q", err, tc.errStr)
			}
		})
	}
}

func TestNotAKernel(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":   nil,
		"short":   []byte("hello"),
		"text":    []byte(strings.Repeat("#!/bin/sh\necho hi\n", 100)),
		"zeroes":  make([]byte, 8192),
		"no flag": func() []byte { b := defaultBz().build(); b[0x1FE], b[0x1FF] = 1, 2; return b }(),
	} {
		mem := make([]byte, testMem)
		_, err := LoadLinux(mem, LinuxConfig{Kernel: b, VCPUs: 1, RAM: testRAM(testMem)})
		if !errors.Is(err, ErrImage) {
			t.Errorf("%s: error %v, want ErrImage", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
}

func TestCmdlineAndInitrdLimits(t *testing.T) {
	mem := make([]byte, testMem)
	cfg := LinuxConfig{Kernel: defaultBz().build(), VCPUs: 1, RAM: testRAM(testMem)}
	cfg.Cmdline = strings.Repeat("x", 2048)
	if _, err := LoadLinux(mem, cfg); err == nil || !strings.Contains(err.Error(), "command line") {
		t.Errorf("2048-byte command line: %v", err)
	}
	cfg.Cmdline = "a\x00b"
	if _, err := LoadLinux(mem, cfg); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("NUL in command line: %v", err)
	}
	cfg.Cmdline = ""
	cfg.Initrd = make([]byte, 60<<20) // cannot fit above the kernel at 16 MiB
	if _, err := LoadLinux(mem, cfg); !errors.Is(err, ErrImage) || !strings.Contains(err.Error(), "initrd") {
		t.Errorf("huge initrd: %v", err)
	}
	cfg.Initrd = nil
	cfg.VCPUs = LinuxMaxVCPUs + 1
	if _, err := LoadLinux(mem, cfg); err == nil {
		t.Errorf("%d vCPUs accepted", cfg.VCPUs)
	}
}

func TestPlaceInitrd(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		size, top, max, kernelEnd uint64
		want                      uint64
		wantErr                   bool
	}{
		{"top of RAM", 0x1800, 0x8000000, 0x7FFFFFFF, 0x2000000, 0x8000000 - 0x2000, false},
		{"page aligned down", 0x1000, 0x8000000, 0x7FFFFFFF, 0x2000000, 0x7FFF000, false},
		{"limited by initrd_addr_max", 0x1000, 0x100000000, 0x37FFFFFF, 0x2000000, 0x37FFF000, false},
		{"exactly fits", 0x1000, 0x3000000, 0x7FFFFFFF, 0x2FFF000, 0x2FFF000, false},
		{"overlaps the kernel", 0x2000, 0x3000000, 0x7FFFFFFF, 0x2FFF000, 0, true},
		{"larger than RAM", 0x10000000, 0x8000000, 0x7FFFFFFF, 0, 0, true},
		{"empty", 0, 0x8000000, 0x7FFFFFFF, 0, 0, true},
	} {
		got, err := PlaceInitrd(tc.size, tc.top, tc.max, tc.kernelEnd)
		if (err != nil) != tc.wantErr || (!tc.wantErr && got != tc.want) {
			t.Errorf("%s: PlaceInitrd = %#x, %v; want %#x (error %v)", tc.name, got, err, tc.want, tc.wantErr)
		}
		if err == nil && (got%PageSize != 0 || got+tc.size > min(tc.top, tc.max+1) || got < tc.kernelEnd) {
			t.Errorf("%s: %#x violates the placement rules", tc.name, got)
		}
	}
}

func TestLinuxE820(t *testing.T) {
	m, err := LinuxE820([]Range{{0, 256 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	want := []E820Entry{
		{0, 0x9FC00, E820RAM},
		{0x9FC00, 0x100000 - 0x9FC00, E820Reserved},
		{0x100000, 256<<20 - 0x100000, E820RAM},
	}
	if !equalE820(m, want) {
		t.Fatalf("256 MiB: %v", m)
	}
	// RAM split around the hole below 4 GiB.
	m, err = LinuxE820([]Range{{0, 3 << 30}, {4 << 30, 1 << 30}})
	if err != nil {
		t.Fatal(err)
	}
	if len(m) != 4 || m[3] != (E820Entry{4 << 30, 1 << 30, E820RAM}) || m[2].End() != 3<<30 {
		t.Fatalf("split RAM: %v", m)
	}
	// Contiguous ranges merge, so the kernel prints the map unchanged.
	m, _ = LinuxE820([]Range{{0, 64 << 20}, {64 << 20, 64 << 20}})
	if len(m) != 3 || m[2].End() != 128<<20 {
		t.Fatalf("contiguous RAM: %v", m)
	}
	for i := 1; i < len(m); i++ {
		if m[i-1].Type == m[i].Type && m[i-1].End() == m[i].Addr {
			t.Errorf("adjacent entries %v and %v have the same type", m[i-1], m[i])
		}
	}
	for _, bad := range [][]Range{nil, {{0x1000, 64 << 20}}, {{0, 1 << 20}}, {{0, 64 << 20}, {32 << 20, 1 << 20}}, {{0, 64 << 20}, {128 << 20, 0}}} {
		if _, err := LinuxE820(bad); err == nil {
			t.Errorf("LinuxE820(%v) accepted", bad)
		}
	}
}

func equalE820(a, b []E820Entry) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMPTable(t *testing.T) {
	mem := make([]byte, testMem)
	const vcpus = 3
	if _, err := LoadLinux(mem, LinuxConfig{Kernel: defaultBz().build(), VCPUs: vcpus, RAM: testRAM(testMem)}); err != nil {
		t.Fatal(err)
	}
	fp := mem[MPTableAddr : MPTableAddr+16]
	if string(fp[:4]) != "_MP_" || sum(fp) != 0 || fp[9] != 4 {
		t.Fatalf("floating pointer % x", fp)
	}
	cfgAddr := binary.LittleEndian.Uint32(fp[4:])
	length := binary.LittleEndian.Uint16(mem[cfgAddr+4:])
	cfg := mem[cfgAddr : cfgAddr+uint32(length)]
	if string(cfg[:4]) != "PCMP" || sum(cfg) != 0 || binary.LittleEndian.Uint32(cfg[36:]) != LAPICAddr {
		t.Fatalf("configuration table header % x", cfg[:44])
	}
	counts := map[byte]int{}
	for e := cfg[44:]; len(e) > 0; {
		counts[e[0]]++
		switch e[0] {
		case mpEntryProcessor:
			if id := e[1]; id >= vcpus || (e[3]&mpCPUBootstrap != 0) != (id == 0) || e[3]&mpCPUEnabled == 0 {
				t.Errorf("processor entry % x", e[:20])
			}
			e = e[20:]
		case mpEntryIOAPIC:
			if e[1] != vcpus || binary.LittleEndian.Uint32(e[4:]) != IOAPICAddr {
				t.Errorf("IOAPIC entry % x", e[:8])
			}
			e = e[8:]
		default:
			e = e[8:]
		}
	}
	if counts[mpEntryProcessor] != vcpus || counts[mpEntryBus] != 1 || counts[mpEntryIOAPIC] != 1 ||
		counts[mpEntryIntSrc] != IOAPICPins || counts[mpEntryLIntSrc] != 2 {
		t.Fatalf("entry counts %v", counts)
	}
	if int(binary.LittleEndian.Uint16(cfg[34:])) != vcpus+1+1+IOAPICPins+2 {
		t.Fatal("entry count field wrong")
	}
}

func sum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// elfSeg is one PT_LOAD or PT_NOTE segment of a synthetic vmlinux.
type elfSeg struct {
	typ   elf.ProgType
	paddr uint64
	data  []byte
	mem   uint64
}

// buildELF lays out an x86-64 ELF executable with the given segments.
func buildELF(entry uint64, segs []elfSeg, mod func(h *elf.Header64)) []byte {
	const ehsize, phsize = 64, 56
	off := uint64(ehsize + phsize*len(segs))
	var phdrs []elf.Prog64
	var body []byte
	for _, s := range segs {
		phdrs = append(phdrs, elf.Prog64{
			Type: uint32(s.typ), Flags: uint32(elf.PF_R | elf.PF_X), Off: off + uint64(len(body)),
			Vaddr: 0xFFFFFFFF80000000 + s.paddr, Paddr: s.paddr,
			Filesz: uint64(len(s.data)), Memsz: max(s.mem, uint64(len(s.data))), Align: 0x1000,
		})
		body = append(body, s.data...)
	}
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Entry: entry, Phoff: ehsize, Ehsize: ehsize, Phentsize: phsize, Phnum: uint16(len(segs)),
		Shentsize: 64,
	}
	copy(h.Ident[:], "\x7fELF")
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	if mod != nil {
		mod(&h)
	}
	var buf bytes.Buffer
	binary.Write(&buf, binary.LittleEndian, &h)
	for _, p := range phdrs {
		binary.Write(&buf, binary.LittleEndian, &p)
	}
	buf.Write(body)
	return buf.Bytes()
}

// note encodes one ELF note.
func note(name string, typ uint32, desc []byte) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, uint32(len(name)+1))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(desc)))
	b = binary.LittleEndian.AppendUint32(b, typ)
	b = append(b, name...)
	b = append(b, 0)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	b = append(b, desc...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func testVmlinux(withPVH bool) []byte {
	text := bytes.Repeat([]byte{0xF4}, 0x200)
	data := []byte("kernel data")
	segs := []elfSeg{
		{typ: elf.PT_LOAD, paddr: 0x1000000, data: text},
		{typ: elf.PT_LOAD, paddr: 0x1200000, data: data, mem: 0x3000}, // .data + .bss
	}
	notes := note("Linux", 6, []byte("6.12"))
	if withPVH {
		notes = append(notes, note("Xen", XenElfNotePhys32Entry, binary.LittleEndian.AppendUint64(nil, 0x1000100))...)
	}
	segs = append(segs, elfSeg{typ: elf.PT_NOTE, paddr: 0x1000000, data: notes})
	return buildELF(0x1000000, segs, nil)
}

func TestLoadVmlinuxPVH(t *testing.T) {
	mem := make([]byte, testMem)
	for i := 0x1200000; i < 0x1203000; i++ {
		mem[i] = 0xEE // stale memory where .bss goes
	}
	initrd := []byte("an initrd")
	b, err := LoadLinux(mem, LinuxConfig{Kernel: testVmlinux(true), Initrd: initrd, Cmdline: "console=ttyS0", VCPUs: 1, RAM: testRAM(testMem)})
	if err != nil {
		t.Fatal(err)
	}
	if b.Format != FormatELF || b.Entry != EntryPVH || b.EntryPoint != 0x1000100 || b.Kernel != (Range{0x1000000, 0x203000}) {
		t.Fatalf("loaded %+v", b)
	}
	if mem[0x10001FF] != 0xF4 || string(mem[0x1200000:0x120000B]) != "kernel data" {
		t.Fatal("segments not at their physical addresses")
	}
	for i := 0x120000B; i < 0x1203000; i++ {
		if mem[i] != 0 {
			t.Fatalf(".bss not cleared at %#x", i)
		}
	}
	if b.BSP.RBX != PVHStartInfoAddr || b.BSP.RIP != 0x1000100 {
		t.Fatalf("BSP registers %+v", b.BSP)
	}
	var si HVMStartInfo
	decodeLE(mem[PVHStartInfoAddr:PVHStartInfoAddr+pvhStartInfoSize], &si)
	if si.Magic != HVMStartInfoMagic || si.Version != 1 || si.CmdlinePaddr != CmdlineAddr ||
		si.NrModules != 1 || int(si.MemmapEntries) != len(b.E820) {
		t.Fatalf("start info %+v", si)
	}
	var mod HVMModlistEntry
	decodeLE(mem[si.ModlistPaddr:si.ModlistPaddr+32], &mod)
	if mod.Paddr != b.Initrd.Start || mod.Size != uint64(len(initrd)) {
		t.Fatalf("module 0 %+v, initrd %+v", mod, b.Initrd)
	}
	for i, e := range b.E820 {
		var m HVMMemmapEntry
		at := si.MemmapPaddr + uint64(24*i)
		decodeLE(mem[at:at+24], &m)
		if m.Addr != e.Addr || m.Size != e.Size || E820Type(m.Type) != e.Type {
			t.Errorf("memmap[%d] = %+v, want %v", i, m, e)
		}
	}
	var s kvm.Sregs
	b.ApplySregs(&s)
	if s.CS.Selector != 0x08 || s.CS.L != 0 || s.CS.DB != 1 || s.CR0&cr0PG != 0 || s.CR0&cr0PE == 0 || s.EFER != 0 || s.CR4 != 0 {
		t.Errorf("PVH entry state: CS %+v CR0 %#x EFER %#x", s.CS, s.CR0, s.EFER)
	}
	if g := binary.LittleEndian.Uint64(mem[LinuxGDTAddr+8:]); g != 0x00CF9B000000FFFF {
		t.Errorf("GDT 0x08 = %#x, want a 32-bit flat code segment", g)
	}
}

func TestLoadVmlinux64(t *testing.T) {
	for _, tc := range []struct {
		pvh   bool
		entry LinuxEntry
	}{{true, Entry64}, {false, EntryAuto}, {false, Entry64}} {
		mem := make([]byte, testMem)
		b, err := LoadLinux(mem, LinuxConfig{Kernel: testVmlinux(tc.pvh), Cmdline: "x", VCPUs: 1, RAM: testRAM(testMem), Entry: tc.entry})
		if err != nil {
			t.Fatal(err)
		}
		if b.Entry != Entry64 || b.BSP.RIP != 0x1000000 || b.BSP.RSI != ZeroPageAddr {
			t.Fatalf("pvh note %v, entry %v: %v at %#x", tc.pvh, tc.entry, b.Entry, b.BSP.RIP)
		}
		var bp BootParams
		decodeLE(mem[ZeroPageAddr:ZeroPageAddr+bootParamsSize], &bp)
		if bp.Hdr.BootFlag != BootFlagMagic || bp.Hdr.Header != HeaderMagic || bp.Hdr.CmdLinePtr != CmdlineAddr || int(bp.E820Entries) != len(b.E820) {
			t.Fatalf("zero page for a vmlinux: %+v", bp.Hdr)
		}
	}
}

func TestVmlinuxRejections(t *testing.T) {
	load := []elfSeg{{typ: elf.PT_LOAD, paddr: 0x1000000, data: []byte{0xF4}}}
	tests := []struct {
		name   string
		image  []byte
		entry  LinuxEntry
		errStr string
	}{
		{"32-bit", buildELF(0x1000000, load, func(h *elf.Header64) { h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS32) }), EntryAuto, "ELF"},
		{"wrong machine", buildELF(0x1000000, load, func(h *elf.Header64) { h.Machine = uint16(elf.EM_AARCH64) }), EntryAuto, "not a 64-bit x86 kernel"},
		{"shared object", buildELF(0x1000000, load, func(h *elf.Header64) { h.Type = uint16(elf.ET_DYN) }), EntryAuto, "not an executable"},
		{"truncated", testVmlinux(true)[:0x150], EntryAuto, "truncated"},
		{"no PT_LOAD", buildELF(0x1000000, []elfSeg{{typ: elf.PT_NOTE, data: note("Linux", 1, nil)}}, nil), EntryAuto, "no loadable segment"},
		{"below 1 MiB", buildELF(0x1000, []elfSeg{{typ: elf.PT_LOAD, paddr: 0x1000, data: []byte{1}}}, nil), EntryAuto, "below 1 MiB"},
		{"no PVH note", testVmlinux(false), EntryPVH, "no PVH entry note"},
		{"entry outside", buildELF(0x5000000, load, nil), Entry64, "outside the loaded kernel"},
		{"too big for RAM", buildELF(0x1000000, []elfSeg{{typ: elf.PT_LOAD, paddr: 0x1000000, data: []byte{1}, mem: 1 << 30}}, nil), EntryAuto, "more memory"},
		{"bad note", buildELF(0x1000000, append(load, elfSeg{typ: elf.PT_NOTE, data: []byte{8, 0, 0, 0, 0xFF, 0xFF, 0, 0, 1, 0, 0, 0}}), nil), EntryAuto, "note"},
		{"PVH note of odd size", buildELF(0x1000000, append(load, elfSeg{typ: elf.PT_NOTE, data: note("Xen", XenElfNotePhys32Entry, []byte{1, 2})}), nil), EntryAuto, "PVH entry note"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := make([]byte, testMem)
			_, err := LoadLinux(mem, LinuxConfig{Kernel: tc.image, VCPUs: 1, RAM: testRAM(testMem), Entry: tc.entry})
			if !errors.Is(err, ErrImage) || !strings.Contains(err.Error(), tc.errStr) {
				t.Fatalf("error %v, want ErrImage mentioning %q", err, tc.errStr)
			}
		})
	}
}

func TestParseELFNotes(t *testing.T) {
	b := append(note("Linux", 6, []byte("6.12.0")), note("Xen", XenElfNotePhys32Entry, []byte{0x00, 0x01, 0x00, 0x01})...)
	notes, err := ParseELFNotes(b)
	if err != nil || len(notes) != 2 || notes[0].Name != "Linux" || string(notes[0].Desc) != "6.12.0" || notes[1].Type != XenElfNotePhys32Entry {
		t.Fatalf("notes %+v, %v", notes, err)
	}
	if e, ok, err := PVHEntry(notes); !ok || err != nil || e != 0x01000100 {
		t.Fatalf("PVH entry %#x %v %v", e, ok, err)
	}
	if _, ok, _ := PVHEntry(notes[:1]); ok {
		t.Fatal("PVH entry found without a Xen note")
	}
	for _, bad := range [][]byte{b[:10], b[:len(b)-2], {0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0}} {
		if _, err := ParseELFNotes(bad); err == nil {
			t.Errorf("ParseELFNotes(% x) accepted", bad)
		}
	}
}

func TestParseLinuxEntry(t *testing.T) {
	for _, e := range []LinuxEntry{EntryAuto, EntryPVH, Entry64} {
		if got, err := ParseLinuxEntry(e.String()); err != nil || got != e {
			t.Errorf("ParseLinuxEntry(%q) = %v, %v", e, got, err)
		}
	}
	if _, err := ParseLinuxEntry("uefi"); err == nil {
		t.Error("uefi accepted")
	}
}

// FuzzLoadLinux feeds arbitrary kernels to the loader: it must return an
// error or load, never panic or write outside guest memory.
func FuzzLoadLinux(f *testing.F) {
	f.Add(defaultBz().build(), []byte("initrd"), "console=ttyS0")
	f.Add(testVmlinux(true), []byte{}, "")
	f.Add(testVmlinux(false), []byte{1}, "x")
	const size = 20 << 20
	mem := make([]byte, size)
	f.Fuzz(func(t *testing.T, kernel, initrd []byte, cmdline string) {
		for _, e := range []LinuxEntry{EntryAuto, EntryPVH, Entry64} {
			_, _ = LoadLinux(mem, LinuxConfig{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, VCPUs: 2, RAM: testRAM(size), Entry: e})
		}
	})
}
