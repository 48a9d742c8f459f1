package boot

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
)

// XenElfNotePhys32Entry is the ELF note type (owner "Xen") that holds a
// kernel's PVH entry point: XEN_ELFNOTE_PHYS32_ENTRY.
const XenElfNotePhys32Entry = 18

// maxELFSegments bounds the program headers LoadLinux accepts; vmlinux has
// a handful.
const maxELFSegments = 64

// ELFNote is one note of an ELF file.
type ELFNote struct {
	Name string // owner, without its NUL
	Type uint32
	Desc []byte
}

// ParseELFNotes parses the notes in the contents of a PT_NOTE segment or
// SHT_NOTE section (4-byte aligned fields, as x86-64 kernels emit them).
// Malformed input gives an error, never a panic.
func ParseELFNotes(b []byte) ([]ELFNote, error) {
	var notes []ELFNote
	for off := 0; off < len(b); {
		if len(b)-off < 12 {
			return notes, fmt.Errorf("ELF note at offset %d: %d bytes left, a note header takes 12", off, len(b)-off)
		}
		namesz, descsz, typ := uint64(le32(b[off:])), uint64(le32(b[off+4:])), le32(b[off+8:])
		nameOff := uint64(off) + 12
		descOff := nameOff + align4(namesz)
		end := descOff + align4(descsz)
		if end > uint64(len(b)) {
			return notes, fmt.Errorf("ELF note at offset %d: name %d and description %d bytes run past the %d-byte segment", off, namesz, descsz, len(b))
		}
		name := b[nameOff : nameOff+namesz]
		name = bytes.TrimRight(name, "\x00")
		notes = append(notes, ELFNote{Name: string(name), Type: typ, Desc: b[descOff : descOff+descsz]})
		off = int(end)
	}
	return notes, nil
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// PVHEntry returns the PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY) among
// notes, and whether there is one.
func PVHEntry(notes []ELFNote) (uint64, bool, error) {
	for _, n := range notes {
		if n.Name != "Xen" || n.Type != XenElfNotePhys32Entry {
			continue
		}
		switch len(n.Desc) {
		case 4:
			return uint64(le32(n.Desc)), true, nil
		case 8:
			return uint64(le32(n.Desc)) | uint64(le32(n.Desc[4:]))<<32, true, nil
		}
		return 0, false, fmt.Errorf("the PVH entry note has a %d-byte description, want 4 or 8", len(n.Desc))
	}
	return 0, false, nil
}

// parseVmlinux checks an ELF vmlinux and returns the kernel to load: its
// PT_LOAD segments at their physical addresses, entered through the PVH
// note or at the ELF entry point.
func parseVmlinux(b []byte, want LinuxEntry) (k kernelImage, err error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return k, fmt.Errorf("%w: ELF file truncated: its headers run past the end of the %d-byte file", ErrImage, len(b))
	}
	if err != nil {
		return k, fmt.Errorf("%w: not a valid ELF file: %v", ErrImage, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return k, fmt.Errorf("%w: ELF file is %v %v, not a 64-bit x86 kernel", ErrImage, f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC {
		return k, fmt.Errorf("%w: ELF file is of type %v, not an executable (vmlinux is ET_EXEC)", ErrImage, f.Type)
	}
	if len(f.Progs) > maxELFSegments {
		return k, fmt.Errorf("%w: ELF file has %d program headers (at most %d)", ErrImage, len(f.Progs), maxELFSegments)
	}

	type seg struct {
		paddr uint64
		data  []byte
		mem   uint64
	}
	var segs []seg
	lo, hi := ^uint64(0), uint64(0)
	var notes []ELFNote
	for i, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			if p.Memsz == 0 {
				continue
			}
			if p.Filesz > p.Memsz {
				return k, fmt.Errorf("%w: ELF segment %d: %d bytes in the file but %d in memory", ErrImage, i, p.Filesz, p.Memsz)
			}
			if p.Off > uint64(len(b)) || p.Filesz > uint64(len(b))-p.Off {
				return k, fmt.Errorf("%w: ELF file truncated: segment %d wants bytes [%d, %d), the file has %d",
					ErrImage, i, p.Off, p.Off+p.Filesz, len(b))
			}
			if p.Paddr+p.Memsz < p.Paddr {
				return k, fmt.Errorf("%w: ELF segment %d wraps around the address space", ErrImage, i)
			}
			segs = append(segs, seg{paddr: p.Paddr, data: b[p.Off : p.Off+p.Filesz], mem: p.Memsz})
			lo, hi = min(lo, p.Paddr), max(hi, p.Paddr+p.Memsz)
		case elf.PT_NOTE:
			if p.Off > uint64(len(b)) || p.Filesz > uint64(len(b))-p.Off {
				return k, fmt.Errorf("%w: ELF file truncated: note segment %d runs past its end", ErrImage, i)
			}
			n, err := ParseELFNotes(b[p.Off : p.Off+p.Filesz])
			if err != nil {
				return k, fmt.Errorf("%w: %v", ErrImage, err)
			}
			notes = append(notes, n...)
		}
	}
	if len(segs) == 0 {
		return k, fmt.Errorf("%w: ELF file has no loadable segment", ErrImage)
	}
	if lo < HighMemStart {
		return k, fmt.Errorf("%w: ELF segment at physical address %#x, below 1 MiB where Tandem keeps its boot structures", ErrImage, lo)
	}

	pvh, hasPVH, err := PVHEntry(notes)
	if err != nil {
		return k, fmt.Errorf("%w: %v", ErrImage, err)
	}
	k = kernelImage{
		format:        FormatELF,
		memSize:       hi - lo,
		fixedAddr:     lo,
		initrdAddrMax: DefaultInitrdAddrMax,
		cmdlineMax:    DefaultCmdlineSize,
		entryAbs:      true,
	}
	switch {
	case want == EntryPVH && !hasPVH:
		return k, fmt.Errorf("%w: the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): build it with CONFIG_PVH=y or use the 64-bit entry", ErrImage)
	case want == EntryPVH, want == EntryAuto && hasPVH:
		k.entry, k.entryOff = EntryPVH, pvh
	default:
		k.entry, k.entryOff = Entry64, f.Entry
	}
	if k.entryOff < lo || k.entryOff >= hi {
		return k, fmt.Errorf("%w: %v entry point %#x lies outside the loaded kernel [%#x, %#x)", ErrImage, k.entry, k.entryOff, lo, hi)
	}
	k.load = func(mem []byte, at uint64) {
		for _, s := range segs {
			copy(mem[s.paddr:], s.data)
			clear(mem[s.paddr+uint64(len(s.data)) : s.paddr+s.mem])
		}
	}
	return k, nil
}
