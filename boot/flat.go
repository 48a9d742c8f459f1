package boot

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tandemvm/tandem/kvm"
)

// Guest-physical layout of a flat guest; see the package documentation.
const (
	GDTAddr        = 0x500
	TSSAddr        = 0x600
	ParamPageGPA   = 0x7000
	StatusPageGPA  = 0x8000
	PML4Addr       = 0x9000
	PDPTAddr       = 0xA000
	PDAddr         = 0xB000 // first page directory; one per GiB mapped
	StackTop       = 0x80000
	StackBytes     = 0x2000
	FlatLoadAddr   = 0x100000
	Real16LoadAddr = 0x10000

	// MaxFlatVCPUs is how many 8 KiB stacks fit below StackTop without
	// reaching the page directories.
	MaxFlatVCPUs = 32
	// MaxIdentityMapped is the most guest RAM a long64 guest can address
	// through the identity map the loader builds.
	MaxIdentityMapped = 32 << 30

	// ParamMagic is "TANDEMP1" read as a little-endian u64.
	ParamMagic   = 0x3150_4d45_444e_4154
	ParamVersion = 1
	// MaxArgs is the number of guest-specific argument words.
	MaxArgs = 24

	tssLimit       = 0x67
	maxReal16Image = 0xFFF0 - 0x100 // leave room for a small stack in the segment
)

// Parameter page field offsets.
const (
	ParamOffMagic     = 0x00
	ParamOffVersion   = 0x08
	ParamOffVCPUs     = 0x0C
	ParamOffMemBytes  = 0x10
	ParamOffTSCKHz    = 0x18
	ParamOffStatusGPA = 0x20
	ParamOffImageEnd  = 0x28
	ParamOffArgs      = 0x40
)

// Control-register and page-table bits the loader uses.
const (
	cr0PE = 1 << 0
	cr0MP = 1 << 1
	cr0ET = 1 << 4
	cr0NE = 1 << 5
	cr0WP = 1 << 16
	cr0PG = 1 << 31

	cr4PAE        = 1 << 5
	cr4OSFXSR     = 1 << 9
	cr4OSXMMEXCPT = 1 << 10

	eferLME = 1 << 8
	eferLMA = 1 << 10

	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	pteAccessed = 1 << 5
	pteDirty    = 1 << 6
	ptePageSize = 1 << 7
)

// ErrImage reports an image the loader cannot place in guest memory.
var ErrImage = errors.New("boot: bad image")

// FlatConfig describes a flat test guest to load.
type FlatConfig struct {
	Image  []byte
	Mode   Mode
	VCPUs  int
	TSCKHz uint64
	// Args are the guest-specific words of the parameter page (long64 only).
	Args []uint64
}

// Entry is the initial state of the vCPUs after a load.
type Entry struct {
	// Regs holds the general-purpose registers of each vCPU, by index.
	Regs []kvm.Regs
	mode Mode
}

// ApplySregs sets in s the segment, descriptor-table and control registers
// the entry mode needs and leaves the rest (APIC base, interrupt bitmap) as
// KVM reported them.
func (e *Entry) ApplySregs(s *kvm.Sregs) {
	switch e.mode {
	case ModeLong64:
		code := kvm.Segment{Base: 0, Limit: 0xFFFFFFFF, Selector: 0x08, Type: 0xB, Present: 1, S: 1, L: 1, G: 1}
		data := kvm.Segment{Base: 0, Limit: 0xFFFFFFFF, Selector: 0x10, Type: 0x3, Present: 1, S: 1, DB: 1, G: 1}
		s.CS = code
		s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
		s.TR = kvm.Segment{Base: TSSAddr, Limit: tssLimit, Selector: 0x18, Type: 0xB, Present: 1}
		s.LDT = kvm.Segment{Type: 0x2, Present: 1, Unusable: 1}
		s.GDT = kvm.DTable{Base: GDTAddr, Limit: gdtEntries*8 - 1}
		s.IDT = kvm.DTable{}
		s.CR0 = cr0PE | cr0MP | cr0ET | cr0NE | cr0WP | cr0PG
		s.CR3 = PML4Addr
		s.CR4 = cr4PAE | cr4OSFXSR | cr4OSXMMEXCPT
		s.EFER = eferLME | eferLMA
	case ModeReal16:
		seg := kvm.Segment{Base: Real16LoadAddr, Limit: 0xFFFF, Selector: Real16LoadAddr >> 4, Type: 0x3, Present: 1, S: 1}
		code := seg
		code.Type = 0xB
		s.CS = code
		s.DS, s.ES, s.FS, s.GS, s.SS = seg, seg, seg, seg, seg
		s.CR0 &^= cr0PE | cr0PG
		s.EFER = 0
	}
}

// LoadFlat copies a flat test guest into mem (guest RAM from GPA 0), writes
// the tables its entry mode needs, and returns the vCPUs' initial registers.
func LoadFlat(mem []byte, cfg FlatConfig) (*Entry, error) {
	if cfg.VCPUs < 1 {
		return nil, fmt.Errorf("boot: %d vCPUs: need at least one", cfg.VCPUs)
	}
	if len(cfg.Image) == 0 {
		return nil, fmt.Errorf("%w: empty image", ErrImage)
	}
	switch cfg.Mode {
	case ModeLong64:
		return loadLong64(mem, cfg)
	case ModeReal16:
		return loadReal16(mem, cfg)
	}
	return nil, fmt.Errorf("boot: unknown entry mode %d", cfg.Mode)
}

func loadLong64(mem []byte, cfg FlatConfig) (*Entry, error) {
	memBytes := uint64(len(mem))
	if cfg.VCPUs > MaxFlatVCPUs {
		return nil, fmt.Errorf("boot: %d vCPUs: a flat guest supports at most %d", cfg.VCPUs, MaxFlatVCPUs)
	}
	if memBytes > MaxIdentityMapped {
		return nil, fmt.Errorf("boot: %d MiB of RAM: a flat long64 guest can address at most %d MiB", memBytes>>20, MaxIdentityMapped>>20)
	}
	imageEnd := pageAlign(FlatLoadAddr + uint64(len(cfg.Image)))
	if imageEnd > memBytes {
		return nil, fmt.Errorf("%w: %d-byte image at %#x does not fit in %d MiB of RAM", ErrImage, len(cfg.Image), FlatLoadAddr, memBytes>>20)
	}
	if len(cfg.Args) > MaxArgs {
		return nil, fmt.Errorf("boot: %d guest arguments: at most %d fit the parameter page", len(cfg.Args), MaxArgs)
	}

	copy(mem[FlatLoadAddr:], cfg.Image)
	writeGDT(mem)
	writeIdentityMap(mem, max(memBytes, 4<<30))

	// The status page starts zeroed: guests read each other's slots in it,
	// and a stale "done" from an earlier boot must not be seen.
	clear(mem[StatusPageGPA : StatusPageGPA+4096])
	p := mem[ParamPageGPA : ParamPageGPA+4096]
	clear(p)
	le := binary.LittleEndian
	le.PutUint64(p[ParamOffMagic:], ParamMagic)
	le.PutUint32(p[ParamOffVersion:], ParamVersion)
	le.PutUint32(p[ParamOffVCPUs:], uint32(cfg.VCPUs))
	le.PutUint64(p[ParamOffMemBytes:], memBytes)
	le.PutUint64(p[ParamOffTSCKHz:], cfg.TSCKHz)
	le.PutUint64(p[ParamOffStatusGPA:], StatusPageGPA)
	le.PutUint64(p[ParamOffImageEnd:], imageEnd)
	for i, a := range cfg.Args {
		le.PutUint64(p[ParamOffArgs+8*i:], a)
	}

	e := &Entry{mode: ModeLong64, Regs: make([]kvm.Regs, cfg.VCPUs)}
	for i := range e.Regs {
		e.Regs[i] = kvm.Regs{
			RIP:    FlatLoadAddr,
			RSP:    StackTop - uint64(i)*StackBytes,
			RDI:    ParamPageGPA,
			RSI:    uint64(i),
			RFLAGS: 0x2,
		}
	}
	return e, nil
}

func loadReal16(mem []byte, cfg FlatConfig) (*Entry, error) {
	if len(cfg.Image) > maxReal16Image {
		return nil, fmt.Errorf("%w: %d-byte real-mode image: at most %d bytes fit its 64 KiB segment", ErrImage, len(cfg.Image), maxReal16Image)
	}
	if uint64(len(mem)) < Real16LoadAddr+0x10000 {
		return nil, fmt.Errorf("boot: %d KiB of RAM is too small for a real-mode guest", len(mem)>>10)
	}
	copy(mem[Real16LoadAddr:], cfg.Image)
	e := &Entry{mode: ModeReal16, Regs: make([]kvm.Regs, cfg.VCPUs)}
	for i := range e.Regs {
		e.Regs[i] = kvm.Regs{RIP: 0, RSP: 0xFFF0, RFLAGS: 0x2}
	}
	return e, nil
}

const gdtEntries = 5 // null, code, data, and the two halves of the TSS descriptor

func writeGDT(mem []byte) {
	le := binary.LittleEndian
	g := mem[GDTAddr : GDTAddr+gdtEntries*8]
	le.PutUint64(g[0:], 0)
	// Accessed bits are preset so the CPU never writes the GDT back.
	le.PutUint64(g[8:], 0x00AF9B000000FFFF)  // 64-bit code, DPL 0
	le.PutUint64(g[16:], 0x00CF93000000FFFF) // data, DPL 0
	// 64-bit TSS descriptor (type 0xB, busy), base TSSAddr.
	tss := uint64(tssLimit) | uint64(TSSAddr&0xFFFFFF)<<16 | uint64(0x8B)<<40 | uint64(TSSAddr>>24&0xFF)<<56
	le.PutUint64(g[24:], tss)
	le.PutUint64(g[32:], uint64(TSSAddr)>>32)
	clear(mem[TSSAddr : TSSAddr+tssLimit+1])
	// I/O map base beyond the limit: no I/O permission bitmap.
	le.PutUint16(mem[TSSAddr+0x66:], tssLimit+1)
}

// writeIdentityMap maps [0, span) 1:1 with 2 MiB pages.
func writeIdentityMap(mem []byte, span uint64) {
	le := binary.LittleEndian
	gib := int((span + (1<<30 - 1)) >> 30)
	clear(mem[PML4Addr : PDAddr+gib*4096])
	const table = ptePresent | pteWritable | pteAccessed
	le.PutUint64(mem[PML4Addr:], PDPTAddr|table)
	for g := 0; g < gib; g++ {
		pd := uint64(PDAddr + g*4096)
		le.PutUint64(mem[PDPTAddr+8*g:], pd|table)
		for i := 0; i < 512; i++ {
			addr := uint64(g)<<30 | uint64(i)<<21
			le.PutUint64(mem[pd+uint64(8*i):], addr|table|pteDirty|ptePageSize)
		}
	}
}

func pageAlign(x uint64) uint64 { return (x + 4095) &^ 4095 }
