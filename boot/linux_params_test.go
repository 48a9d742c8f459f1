package boot

import (
	"encoding/binary"
	"reflect"
	"testing"
)

// fieldOffsets returns the packed offset of every named field of the
// struct v (as encoding/binary lays it out), starting at base.
func fieldOffsets(t *testing.T, v any, base int) map[string][2]int {
	t.Helper()
	rt := reflect.TypeOf(v)
	out := map[string][2]int{}
	off := base
	for i := 0; i < rt.NumField(); i++ {
		size := binary.Size(reflect.Zero(rt.Field(i).Type).Interface())
		if size < 0 {
			t.Fatalf("field %s of %s has no fixed size", rt.Field(i).Name, rt.Name())
		}
		if name := rt.Field(i).Name; name != "_" {
			out[name] = [2]int{off, size}
		}
		off += size
	}
	out["<end>"] = [2]int{off, 0}
	return out
}

// TestSetupHeaderLayout checks every setup_header field against the table
// in Documentation/arch/x86/boot.rst ("THE REAL-MODE KERNEL HEADER").
func TestSetupHeaderLayout(t *testing.T) {
	doc := []struct {
		name      string
		off, size int
	}{
		{"SetupSects", 0x1F1, 1}, {"RootFlags", 0x1F2, 2}, {"SysSize", 0x1F4, 4},
		{"RAMSize", 0x1F8, 2}, {"VidMode", 0x1FA, 2}, {"RootDev", 0x1FC, 2},
		{"BootFlag", 0x1FE, 2}, {"Jump", 0x200, 2}, {"Header", 0x202, 4},
		{"Version", 0x206, 2}, {"RealmodeSwtch", 0x208, 4}, {"StartSysSeg", 0x20C, 2},
		{"KernelVersion", 0x20E, 2}, {"TypeOfLoader", 0x210, 1}, {"LoadFlags", 0x211, 1},
		{"SetupMoveSize", 0x212, 2}, {"Code32Start", 0x214, 4}, {"RamdiskImage", 0x218, 4},
		{"RamdiskSize", 0x21C, 4}, {"BootsectKludge", 0x220, 4}, {"HeapEndPtr", 0x224, 2},
		{"ExtLoaderVer", 0x226, 1}, {"ExtLoaderType", 0x227, 1}, {"CmdLinePtr", 0x228, 4},
		{"InitrdAddrMax", 0x22C, 4}, {"KernelAlignment", 0x230, 4}, {"RelocatableKernel", 0x234, 1},
		{"MinAlignment", 0x235, 1}, {"XLoadFlags", 0x236, 2}, {"CmdlineSize", 0x238, 4},
		{"HardwareSubarch", 0x23C, 4}, {"HardwareSubarchData", 0x240, 8}, {"PayloadOffset", 0x248, 4},
		{"PayloadLength", 0x24C, 4}, {"SetupData", 0x250, 8}, {"PrefAddress", 0x258, 8},
		{"InitSize", 0x260, 4}, {"HandoverOffset", 0x264, 4}, {"KernelInfoOffset", 0x268, 4},
	}
	got := fieldOffsets(t, SetupHeader{}, SetupHeaderOffset)
	if len(got)-1 != len(doc) {
		t.Errorf("SetupHeader has %d fields, the documentation %d", len(got)-1, len(doc))
	}
	for _, f := range doc {
		if g, ok := got[f.name]; !ok || g != [2]int{f.off, f.size} {
			t.Errorf("%s at %#x (%d bytes), documented at %#x (%d bytes)", f.name, g[0], g[1], f.off, f.size)
		}
	}
	if end := got["<end>"][0]; end != 0x26C {
		t.Errorf("setup header ends at %#x, want 0x26C", end)
	}
}

// TestBootParamsLayout checks struct boot_params against
// Documentation/arch/x86/zero-page.rst.
func TestBootParamsLayout(t *testing.T) {
	doc := []struct {
		name      string
		off, size int
	}{
		{"ScreenInfo", 0x000, 0x40}, {"APMBIOSInfo", 0x040, 0x14}, {"TbootAddr", 0x058, 8},
		{"ISTInfo", 0x060, 0x10}, {"ACPIRSDPAddr", 0x070, 8}, {"HD0Info", 0x080, 0x10},
		{"HD1Info", 0x090, 0x10}, {"SysDescTable", 0x0A0, 0x10}, {"OLPCOFWHeader", 0x0B0, 0x10},
		{"ExtRamdiskImage", 0x0C0, 4}, {"ExtRamdiskSize", 0x0C4, 4}, {"ExtCmdLinePtr", 0x0C8, 4},
		{"CCBlobAddress", 0x13C, 4}, {"EDIDInfo", 0x140, 0x80}, {"EFIInfo", 0x1C0, 0x20},
		{"AltMemK", 0x1E0, 4}, {"Scratch", 0x1E4, 4}, {"E820Entries", 0x1E8, 1},
		{"EDDBufEntries", 0x1E9, 1}, {"EDDMBRSigBufEntries", 0x1EA, 1}, {"KbdStatus", 0x1EB, 1},
		{"SecureBoot", 0x1EC, 1}, {"Sentinel", 0x1EF, 1}, {"Hdr", 0x1F1, 0x26C - 0x1F1},
		{"EDDMBRSigBuffer", 0x290, 0x40}, {"E820Table", 0x2D0, 0xA00}, {"EDDBuf", 0xD00, 0x1EC},
	}
	got := fieldOffsets(t, BootParams{}, 0)
	for _, f := range doc {
		if g, ok := got[f.name]; !ok || g != [2]int{f.off, f.size} {
			t.Errorf("%s at %#x (%d bytes), documented at %#x (%d bytes)", f.name, g[0], g[1], f.off, f.size)
		}
	}
	if end := got["<end>"][0]; end != 4096 || bootParamsSize != 4096 {
		t.Errorf("boot_params is %d bytes, want 4096", end)
	}
	if n := binary.Size(E820Entry{}); n != 20 {
		t.Errorf("boot_e820_entry is %d bytes, want 20", n)
	}
}

// TestPVHLayout checks the PVH structures against
// xen/include/public/arch-x86/hvm/start_info.h.
func TestPVHLayout(t *testing.T) {
	si := fieldOffsets(t, HVMStartInfo{}, 0)
	for name, off := range map[string]int{
		"Magic": 0, "Version": 4, "Flags": 8, "NrModules": 12, "ModlistPaddr": 16,
		"CmdlinePaddr": 24, "RSDPPaddr": 32, "MemmapPaddr": 40, "MemmapEntries": 48, "<end>": 56,
	} {
		if si[name][0] != off {
			t.Errorf("hvm_start_info.%s at %d, want %d", name, si[name][0], off)
		}
	}
	if n := binary.Size(HVMModlistEntry{}); n != 32 {
		t.Errorf("hvm_modlist_entry is %d bytes, want 32", n)
	}
	if n := binary.Size(HVMMemmapEntry{}); n != 24 {
		t.Errorf("hvm_memmap_table_entry is %d bytes, want 24", n)
	}
}

func TestE820String(t *testing.T) {
	e := E820Entry{Addr: 0x9FC00, Size: 0x60400, Type: E820Reserved}
	if got, want := e.String(), "[mem 0x000000000009fc00-0x00000000000fffff] reserved"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
