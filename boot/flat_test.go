package boot

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/tandemvm/tandem/kvm"
)

func TestLoadFlatLong64(t *testing.T) {
	mem := make([]byte, 8<<20)
	image := []byte{0x90, 0x90, 0xF4}
	e, err := LoadFlat(mem, FlatConfig{Image: image, Mode: ModeLong64, VCPUs: 3, TSCKHz: 2500000, Args: []uint64{7, 8}})
	if err != nil {
		t.Fatal(err)
	}
	if string(mem[FlatLoadAddr:FlatLoadAddr+3]) != string(image) {
		t.Error("image not at the load address")
	}
	le := binary.LittleEndian
	p := mem[ParamPageGPA:]
	if string(p[:8]) != "TANDEMP1" || le.Uint64(p) != ParamMagic {
		t.Errorf("magic %q", p[:8])
	}
	for _, f := range []struct {
		name      string
		got, want uint64
	}{
		{"version", uint64(le.Uint32(p[ParamOffVersion:])), ParamVersion},
		{"vcpus", uint64(le.Uint32(p[ParamOffVCPUs:])), 3},
		{"mem", le.Uint64(p[ParamOffMemBytes:]), 8 << 20},
		{"tsc", le.Uint64(p[ParamOffTSCKHz:]), 2500000},
		{"status", le.Uint64(p[ParamOffStatusGPA:]), StatusPageGPA},
		{"image end", le.Uint64(p[ParamOffImageEnd:]), FlatLoadAddr + 4096},
		{"arg0", le.Uint64(p[ParamOffArgs:]), 7},
		{"arg1", le.Uint64(p[ParamOffArgs+8:]), 8},
		{"arg2", le.Uint64(p[ParamOffArgs+16:]), 0},
	} {
		if f.got != f.want {
			t.Errorf("parameter %s = %#x, want %#x", f.name, f.got, f.want)
		}
	}
	for i, r := range e.Regs {
		want := kvm.Regs{RIP: FlatLoadAddr, RSP: StackTop - uint64(i)*StackBytes, RDI: ParamPageGPA, RSI: uint64(i), RFLAGS: 2}
		if r != want {
			t.Errorf("vCPU %d regs %+v, want %+v", i, r, want)
		}
	}
	// Identity map: 4 GiB with 2 MiB pages, Accessed and Dirty preset.
	if got := le.Uint64(mem[PML4Addr:]); got != PDPTAddr|0x23 {
		t.Errorf("PML4[0] = %#x", got)
	}
	for g := uint64(0); g < 4; g++ {
		pd := le.Uint64(mem[PDPTAddr+8*g:]) &^ 0xFFF
		for _, i := range []uint64{0, 1, 511} {
			want := g<<30 | i<<21 | 0xE3
			if got := le.Uint64(mem[pd+8*i:]); got != want {
				t.Errorf("GiB %d PDE %d = %#x, want %#x", g, i, got, want)
			}
		}
	}
	// GDT descriptors carry their accessed bit, so no selector load writes.
	for _, sel := range []int{8, 16} {
		if d := le.Uint64(mem[GDTAddr+sel:]); d>>40&1 == 0 {
			t.Errorf("descriptor %#x lacks the accessed bit: %#x", sel, d)
		}
	}
	var s kvm.Sregs
	e.ApplySregs(&s)
	if s.CR3 != PML4Addr || s.EFER&(eferLME|eferLMA) != eferLME|eferLMA || s.CR0&cr0PG == 0 || s.CS.L != 1 || s.CS.Selector != 8 {
		t.Errorf("long mode sregs %+v", s)
	}
}

func TestLoadFlatReal16(t *testing.T) {
	mem := make([]byte, 1<<20)
	e, err := LoadFlat(mem, FlatConfig{Image: []byte{0xF4}, Mode: ModeReal16, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if mem[Real16LoadAddr] != 0xF4 {
		t.Error("image not at the real-mode load address")
	}
	s := kvm.Sregs{CR0: cr0PE | cr0PG, EFER: eferLME}
	e.ApplySregs(&s)
	if s.CS.Base != Real16LoadAddr || s.CS.Selector != 0x1000 || s.CR0&cr0PE != 0 || s.EFER != 0 {
		t.Errorf("real mode sregs %+v", s)
	}
	if e.Regs[0].RIP != 0 || e.Regs[0].RSP != 0xFFF0 {
		t.Errorf("regs %+v", e.Regs[0])
	}
}

func TestLoadFlatRejects(t *testing.T) {
	small := make([]byte, 2<<20)
	for _, tc := range []struct {
		name string
		mem  []byte
		cfg  FlatConfig
		want string
	}{
		{"empty image", small, FlatConfig{VCPUs: 1}, "empty image"},
		{"no vCPU", small, FlatConfig{Image: []byte{1}}, "at least one"},
		{"image too large", small, FlatConfig{Image: make([]byte, 1<<20+1), VCPUs: 1}, "does not fit"},
		{"too many vCPUs", small, FlatConfig{Image: []byte{1}, VCPUs: MaxFlatVCPUs + 1}, "at most"},
		{"too many args", small, FlatConfig{Image: []byte{1}, VCPUs: 1, Args: make([]uint64, MaxArgs+1)}, "at most"},
		{"real16 too large", small, FlatConfig{Image: make([]byte, 0x10000), VCPUs: 1, Mode: ModeReal16}, "64 KiB"},
		{"unknown mode", small, FlatConfig{Image: []byte{1}, VCPUs: 1, Mode: 9}, "unknown entry mode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadFlat(tc.mem, tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
			if strings.Contains(tc.want, "image") && !errors.Is(err, ErrImage) {
				t.Errorf("error %v is not ErrImage", err)
			}
		})
	}
}
