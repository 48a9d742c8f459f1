package kvm_test

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/kvm/kvmtest"
)

const (
	guestMemSize = 2 << 20 // one 2 MiB slot at guest physical 0
	codeAddr     = 0x1000  // where the test guests' code is loaded
	tssAddr      = 0xfffbd000
)

// Hand-assembled real-mode guests.
var (
	// mov al, 0x42; out 0x10, al; hlt
	guestOutHLT = []byte{0xb0, 0x42, 0xe6, 0x10, 0xf4}
	// mov byte [0x5000], 1; mov al, 0x42; out 0x10, al; hlt
	guestDirtyPage5 = []byte{0xc6, 0x06, 0x00, 0x50, 0x01, 0xb0, 0x42, 0xe6, 0x10, 0xf4}
)

type guest struct {
	sys  *kvm.System
	vm   *kvm.VM
	mem  []byte
	vcpu *kvm.VCPU
}

type guestConfig struct {
	irqchip    bool          // create the in-kernel irqchip and PIT
	memFlags   uint32        // flags of the memory slot
	beforeVCPU func(*kvm.VM) // runs after the slot is set, before the vCPU exists
}

// newGuest builds a VM with one 2 MiB slot, code at 0x1000, and one vCPU
// in real mode with CS base 0 and RIP at the code. It locks the test
// goroutine to its thread, as KVM wants vCPU ioctls from one thread.
func newGuest(t *testing.T, cfg guestConfig, code []byte) *guest {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)

	g := &guest{sys: kvmtest.Open(t)}
	g.vm = kvmtest.VM(t, g.sys)
	if err := g.vm.SetTSSAddr(tssAddr); err != nil {
		t.Fatal(err)
	}
	if cfg.irqchip {
		if err := g.vm.CreateIRQChip(); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.CreatePIT2(kvm.PITSpeakerDummy); err != nil {
			t.Fatal(err)
		}
	}
	mem, err := unix.Mmap(-1, 0, guestMemSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	g.mem = mem
	copy(mem[codeAddr:], code)
	err = g.vm.SetUserMemoryRegion(kvm.UserspaceMemoryRegion{
		Slot:          0,
		Flags:         cfg.memFlags,
		GuestPhysAddr: 0,
		MemorySize:    guestMemSize,
		UserspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))),
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.beforeVCPU != nil {
		cfg.beforeVCPU(g.vm)
	}
	size, err := g.sys.VCPUMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	g.vcpu, err = g.vm.CreateVCPU(0, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.vcpu.Close(); err != nil {
			t.Errorf("close vCPU: %v", err)
		}
	})
	g.resetRealMode(t)
	return g
}

// resetRealMode points the vCPU at the code in flat real mode.
func (g *guest) resetRealMode(t *testing.T) {
	t.Helper()
	var sregs kvm.Sregs
	if err := g.vcpu.GetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*kvm.Segment{&sregs.CS, &sregs.DS, &sregs.ES, &sregs.FS, &sregs.GS, &sregs.SS} {
		s.Base, s.Selector = 0, 0
	}
	if err := g.vcpu.SetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	regs := kvm.Regs{RIP: codeAddr, RFLAGS: 2}
	if err := g.vcpu.SetRegs(&regs); err != nil {
		t.Fatal(err)
	}
}

// run runs the vCPU to its next exit and returns the exit reason.
func (g *guest) run(t *testing.T) kvm.ExitReason {
	t.Helper()
	for {
		err := g.vcpu.Run()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
		r := g.vcpu.RunData()
		if r.ExitReason == kvm.ExitInternalError {
			ie := r.InternalError()
			t.Fatalf("internal error exit: %v, data %x", ie.Suberror, ie.Data[:min(ie.NData, 16)])
		}
		return r.ExitReason
	}
}

// runToOutHLT runs a guest that ends in "out 0x10, al; hlt" and checks both
// exits.
func (g *guest) runToOutHLT(t *testing.T) {
	t.Helper()
	if got := g.run(t); got != kvm.ExitIO {
		t.Fatalf("first exit %v, want KVM_EXIT_IO", got)
	}
	io := g.vcpu.RunData().IO()
	if io.Port != 0x10 || io.Direction != kvm.ExitIOOut || io.Size != 1 || io.Count != 1 {
		t.Fatalf("IO exit %+v, want out of 1 byte to port 0x10", *io)
	}
	data := g.vcpu.IOData()
	if len(data) != 1 || data[0] != 0x42 {
		t.Fatalf("IOData() = % x, want 42", data)
	}
	if got := g.run(t); got != kvm.ExitHLT {
		t.Fatalf("second exit %v, want KVM_EXIT_HLT", got)
	}
}

func TestRealModeGuest(t *testing.T) {
	g := newGuest(t, guestConfig{}, guestOutHLT)

	// immediate_exit makes KVM_RUN return EINTR without entering the guest.
	g.vcpu.SetImmediateExit(true)
	if got := g.vcpu.RunData().ImmediateExit; got != 1 {
		t.Fatalf("kvm_run.immediate_exit = %d after SetImmediateExit(true)", got)
	}
	err := g.vcpu.Run()
	if err != unix.EINTR || !errors.Is(err, unix.EINTR) {
		t.Fatalf("Run with immediate_exit = %v, want bare EINTR", err)
	}
	var regs kvm.Regs
	if err := g.vcpu.GetRegs(&regs); err != nil {
		t.Fatal(err)
	}
	if regs.RIP != codeAddr {
		t.Fatalf("RIP = %#x after an immediate exit, want %#x", regs.RIP, codeAddr)
	}
	if allocs := testing.AllocsPerRun(100, func() { _ = g.vcpu.Run() }); allocs != 0 {
		t.Errorf("Run allocates %v times per call on the EINTR path", allocs)
	}
	g.vcpu.SetImmediateExit(false)
	if got := g.vcpu.RunData().ImmediateExit; got != 0 {
		t.Fatalf("kvm_run.immediate_exit = %d after SetImmediateExit(false)", got)
	}

	// Without the in-kernel irqchip there is no LAPIC: the error wraps the
	// errno and names the ioctl.
	var lapic kvm.LAPICState
	err = g.vcpu.GetLAPIC(&lapic)
	var errno unix.Errno
	if err == nil || !errors.As(err, &errno) || !strings.Contains(err.Error(), "KVM_GET_LAPIC") {
		t.Errorf("GetLAPIC without irqchip: %v, want a wrapped errno naming KVM_GET_LAPIC", err)
	}

	g.runToOutHLT(t)
	if err := g.vcpu.GetRegs(&regs); err != nil {
		t.Fatal(err)
	}
	if want := uint64(codeAddr + len(guestOutHLT)); regs.RIP != want || regs.RAX&0xff != 0x42 {
		t.Errorf("after HLT: RIP %#x RAX %#x, want RIP %#x AL 0x42", regs.RIP, regs.RAX, want)
	}
}

// cpuidKey names one CPUID leaf and subleaf; the subleaf only counts for
// entries whose index is significant.
type cpuidKey struct{ function, index uint32 }

func keyOf(e kvm.CPUIDEntry) cpuidKey {
	if e.Flags&kvm.CPUIDFlagSignificantIndex == 0 {
		return cpuidKey{e.Function, 0}
	}
	return cpuidKey{e.Function, e.Index}
}

// checkCPUIDRoundTrip asserts what KVM_GET_CPUID2 promises after
// KVM_SET_CPUID2, and no more. KVM may legitimately leave out entries it
// has no use for (a host trimmed 56 set entries to 54) and rewrites
// feature bits that depend on runtime state (OSXSAVE, the APIC bit, leaf
// 0xD's XSAVE sizes; PVM hosts even report their own leaf 1 ECX and leaf
// 7 feature bits), so neither the count nor those registers can be
// compared. What holds everywhere: every entry returned is one that was
// set, the leaves Tandem relies on are all returned, the paravirtual
// leaves come back verbatim, and leaf 1 keeps the CPU signature and the
// hypervisor bit.
func checkCPUIDRoundTrip(t *testing.T, set, got []kvm.CPUIDEntry) {
	t.Helper()
	sent := make(map[cpuidKey]kvm.CPUIDEntry, len(set))
	for _, e := range set {
		sent[keyOf(e)] = e
	}
	back := make(map[cpuidKey]kvm.CPUIDEntry, len(got))
	for _, e := range got {
		k := keyOf(e)
		if _, ok := sent[k]; !ok {
			t.Errorf("GetCPUID2 returned leaf %#x subleaf %d, which was not set", e.Function, e.Index)
		}
		back[k] = e
	}
	const hypervisorBit = 1 << 31 // leaf 1 ECX
	for _, k := range []cpuidKey{{0x1, 0}, {0x7, 0}, {0x40000000, 0}, {0x40000001, 0}} {
		want, ok := sent[k]
		if !ok {
			t.Fatalf("KVM_GET_SUPPORTED_CPUID has no leaf %#x subleaf %d", k.function, k.index)
		}
		have, ok := back[k]
		if !ok {
			t.Errorf("GetCPUID2 left out leaf %#x subleaf %d, which Tandem relies on", k.function, k.index)
			continue
		}
		switch k.function {
		case 0x40000000, 0x40000001:
			if have != want {
				t.Errorf("leaf %#x: got %+v, set %+v", k.function, have, want)
			}
		case 0x1:
			if have.EAX != want.EAX {
				t.Errorf("leaf 1 EAX (signature): got %#x, set %#x", have.EAX, want.EAX)
			}
			if want.ECX&hypervisorBit != 0 && have.ECX&hypervisorBit == 0 {
				t.Errorf("leaf 1 ECX lost the hypervisor bit: got %#x, set %#x", have.ECX, want.ECX)
			}
		}
	}
}

// TestVCPUState creates a VM with the in-kernel irqchip and PIT, sets the
// supported CPUID, and round-trips the VM and vCPU state ioctls.
func TestVCPUState(t *testing.T) {
	g := newGuest(t, guestConfig{irqchip: true, memFlags: kvm.MemLogDirtyPages}, guestOutHLT)
	c := g.vcpu

	cpuid, err := g.sys.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetCPUID2(cpuid); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetCPUID2()
	if err != nil {
		t.Fatal(err)
	}
	checkCPUIDRoundTrip(t, cpuid, got)

	t.Run("Regs", func(t *testing.T) {
		var r, back kvm.Regs
		if err := c.GetRegs(&r); err != nil {
			t.Fatal(err)
		}
		r.RBX, r.R15, r.RSP = 0x1122334455667788, 0xdeadbeef, 0x7000
		if err := c.SetRegs(&r); err != nil {
			t.Fatal(err)
		}
		if err := c.GetRegs(&back); err != nil {
			t.Fatal(err)
		}
		if back != r {
			t.Errorf("regs round trip: got %+v, want %+v", back, r)
		}
	})
	t.Run("Sregs", func(t *testing.T) {
		var s, back kvm.Sregs
		if err := c.GetSregs(&s); err != nil {
			t.Fatal(err)
		}
		s.GDT.Base, s.GDT.Limit = 0x500, 0x1f
		s.IDT.Base, s.IDT.Limit = 0x600, 0x3ff
		if err := c.SetSregs(&s); err != nil {
			t.Fatal(err)
		}
		if err := c.GetSregs(&back); err != nil {
			t.Fatal(err)
		}
		if back != s {
			t.Errorf("sregs round trip: got %+v, want %+v", back, s)
		}
	})
	t.Run("FPU", func(t *testing.T) {
		var f, back kvm.FPU
		if err := c.GetFPU(&f); err != nil {
			t.Fatal(err)
		}
		f.FCW = 0x27f
		f.MXCSR = 0x9fc0 // FZ, DAZ, all exceptions masked
		f.XMM[3][0] = 0xaa
		if err := c.SetFPU(&f); err != nil {
			t.Fatal(err)
		}
		if err := c.GetFPU(&back); err != nil {
			t.Fatal(err)
		}
		if back.FCW != f.FCW || back.XMM != f.XMM {
			t.Errorf("FPU round trip: FCW %#x XMM3 %x", back.FCW, back.XMM[3])
		}
		// MXCSR is not compared: Linux's KVM_GET_FPU does not report it.
	})
	t.Run("LAPIC", func(t *testing.T) {
		var l, back kvm.LAPICState
		if err := c.GetLAPIC(&l); err != nil {
			t.Fatal(err)
		}
		if id := l.Get32(0x20) >> 24; id != 0 {
			t.Errorf("APIC ID = %d, want 0", id)
		}
		l.Set32(0x80, 0x20) // TPR
		if err := c.SetLAPIC(&l); err != nil {
			t.Fatal(err)
		}
		if err := c.GetLAPIC(&back); err != nil {
			t.Fatal(err)
		}
		if got := back.Get32(0x80); got != 0x20 {
			t.Errorf("TPR after SetLAPIC = %#x, want 0x20", got)
		}
	})
	t.Run("Events", func(t *testing.T) {
		var e, back kvm.VCPUEvents
		if err := c.GetVCPUEvents(&e); err != nil {
			t.Fatal(err)
		}
		if err := c.SetVCPUEvents(&e); err != nil {
			t.Fatal(err)
		}
		if err := c.GetVCPUEvents(&back); err != nil {
			t.Fatal(err)
		}
		if back.Exception != e.Exception || back.Interrupt != e.Interrupt || back.NMI != e.NMI {
			t.Errorf("events round trip: got %+v, want %+v", back, e)
		}
	})
	t.Run("MPState", func(t *testing.T) {
		s, err := c.GetMPState()
		if err != nil {
			t.Fatal(err)
		}
		if s != kvm.MPStateRunnable {
			t.Errorf("BSP MP state %v, want runnable", s)
		}
		if err := c.SetMPState(kvm.MPStateRunnable); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("XCRs", func(t *testing.T) {
		var x, back kvm.XCRs
		if err := c.GetXCRs(&x); err != nil {
			t.Fatal(err)
		}
		if x.NrXCRs == 0 || x.XCRs[0].XCR != 0 || x.XCRs[0].Value&1 == 0 {
			t.Errorf("XCRs = %d, XCR0 %#x: want XCR0 with x87 set", x.NrXCRs, x.XCRs[0].Value)
		}
		if err := c.SetXCRs(&x); err != nil {
			t.Fatal(err)
		}
		if err := c.GetXCRs(&back); err != nil {
			t.Fatal(err)
		}
		if back.XCRs[0] != x.XCRs[0] {
			t.Errorf("XCR0 round trip: got %+v, want %+v", back.XCRs[0], x.XCRs[0])
		}
	})
	t.Run("XSave", func(t *testing.T) {
		var x kvm.XSave
		if err := c.GetXSave(&x); err != nil {
			t.Fatal(err)
		}
		if err := c.SetXSave(&x); err != nil {
			t.Fatal(err)
		}
		size := c.XSave2Size()
		if size == 0 {
			t.Skip("no KVM_CAP_XSAVE2")
		}
		if err := c.GetXSave2(make([]byte, size-1)); !errors.Is(err, unix.EINVAL) {
			t.Errorf("GetXSave2 with a short buffer: %v, want EINVAL", err)
		}
		buf := make([]byte, size)
		if err := c.GetXSave2(buf); err != nil {
			t.Fatal(err)
		}
		if err := c.SetXSave2(buf); err != nil {
			t.Fatal(err)
		}
		t.Logf("XSAVE2 size %d", size)
	})
	t.Run("MSRs", func(t *testing.T) {
		entries := []kvm.MSREntry{{Index: 0x10}, {Index: 0xC0000080}, {Index: 0x174}}
		n, err := c.GetMSRs(entries)
		if err != nil {
			t.Fatal(err)
		}
		if n != len(entries) {
			t.Fatalf("GetMSRs processed %d of %d", n, len(entries))
		}
		set := []kvm.MSREntry{{Index: 0x174, Data: 0x10}} // IA32_SYSENTER_CS
		if n, err := c.SetMSRs(set); err != nil || n != 1 {
			t.Fatalf("SetMSRs = %d, %v", n, err)
		}
		back := []kvm.MSREntry{{Index: 0x174}, {Index: 0xdeadbeef}}
		n, err = c.GetMSRs(back)
		if err != nil {
			t.Fatal(err)
		}
		if n != 1 || back[0].Data != 0x10 {
			t.Errorf("GetMSRs = %d, SYSENTER_CS %#x; want 1 processed (bogus MSR stops it), 0x10", n, back[0].Data)
		}
	})
	t.Run("TSCKHz", func(t *testing.T) {
		khz, err := c.GetTSCKHz()
		if err != nil {
			t.Fatal(err)
		}
		if khz == 0 {
			t.Error("TSC frequency 0")
		}
		t.Logf("guest TSC %d kHz", khz)
	})
	t.Run("IRQChip", func(t *testing.T) {
		for _, id := range []uint32{kvm.IRQChipPICMaster, kvm.IRQChipPICSlave, kvm.IRQChipIOAPIC} {
			chip := kvm.IRQChip{ChipID: id}
			if err := g.vm.GetIRQChip(&chip); err != nil {
				t.Fatal(err)
			}
			if err := g.vm.SetIRQChip(&chip); err != nil {
				t.Fatal(err)
			}
		}
		if err := g.vm.IRQLine(4, true); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.IRQLine(4, false); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("PIT2", func(t *testing.T) {
		var p kvm.PITState2
		if err := g.vm.GetPIT2(&p); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.SetPIT2(&p); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("Clock", func(t *testing.T) {
		var clk kvm.ClockData
		if err := g.vm.GetClock(&clk); err != nil {
			t.Fatal(err)
		}
		set := kvm.ClockData{Clock: clk.Clock + 1e9}
		if err := g.vm.SetClock(&set); err != nil {
			t.Fatal(err)
		}
		var back kvm.ClockData
		if err := g.vm.GetClock(&back); err != nil {
			t.Fatal(err)
		}
		if back.Clock < set.Clock {
			t.Errorf("clock %d after setting %d", back.Clock, set.Clock)
		}
	})
	t.Run("IRQFD+IOEventFD", func(t *testing.T) {
		efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(efd)
		if err := g.vm.IRQFD(efd, 5, 0); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.IRQFD(efd, 5, kvm.IRQFDDeassign); err != nil {
			t.Fatal(err)
		}
		e := kvm.IOEventFD{Addr: 0x10, Len: 1, FD: int32(efd), Flags: kvm.IOEventFDPIO | kvm.IOEventFDDatamatch, Datamatch: 0x42}
		if err := g.vm.IOEventFD(e); err != nil {
			t.Fatal(err)
		}
		e.Flags |= kvm.IOEventFDDeassign
		if err := g.vm.IOEventFD(e); err != nil {
			t.Fatal(err)
		}
		if err := g.vm.IOEventFD(e); !errors.Is(err, unix.ENOENT) {
			t.Errorf("deassigning twice: %v, want ENOENT", err)
		}
	})
	t.Run("EnableCapArgs", func(t *testing.T) {
		if err := g.vm.EnableCap(kvm.CapManualDirtyLogProtect2, 0, 1, 2, 3, 4, 5); !errors.Is(err, unix.EINVAL) {
			t.Errorf("EnableCap with 5 args: %v, want EINVAL", err)
		}
	})
}

// TestIOEventFD registers an ioeventfd on the guest's port write: the write
// signals the eventfd instead of exiting, so the first exit is the HLT.
func TestIOEventFD(t *testing.T) {
	g := newGuest(t, guestConfig{}, guestOutHLT)
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	e := kvm.IOEventFD{Addr: 0x10, Len: 1, FD: int32(efd), Flags: kvm.IOEventFDPIO | kvm.IOEventFDDatamatch, Datamatch: 0x42}
	if err := g.vm.IOEventFD(e); err != nil {
		t.Fatal(err)
	}
	if got := g.run(t); got != kvm.ExitHLT {
		t.Fatalf("exit %v, want KVM_EXIT_HLT (the port write should go to the eventfd)", got)
	}
	var buf [8]byte
	if n, err := unix.Read(efd, buf[:]); err != nil || n != 8 || buf[0] != 1 {
		t.Errorf("eventfd read = %d, %v, % x; want counter 1", n, err, buf)
	}
}

// TestMMIOExits runs a guest whose data segment lies outside guest memory,
// so its accesses exit to userspace as MMIO; the value the VMM supplies for
// the read comes back through a port write.
func TestMMIOExits(t *testing.T) {
	const mmioBase = 0x300000
	code := []byte{
		0xc6, 0x06, 0x00, 0x00, 0x42, // mov byte [0x0000], 0x42
		0xa0, 0x10, 0x00, // mov al, [0x0010]
		0xe6, 0x10, // out 0x10, al
		0xf4, // hlt
	}
	g := newGuest(t, guestConfig{}, code)
	var sregs kvm.Sregs
	if err := g.vcpu.GetSregs(&sregs); err != nil {
		t.Fatal(err)
	}
	sregs.DS.Base = mmioBase
	if err := g.vcpu.SetSregs(&sregs); err != nil {
		t.Fatal(err)
	}

	if got := g.run(t); got != kvm.ExitMMIO {
		t.Fatalf("exit %v, want KVM_EXIT_MMIO", got)
	}
	m := g.vcpu.RunData().MMIO()
	if m.PhysAddr != mmioBase || m.Len != 1 || m.IsWrite != 1 || m.Data[0] != 0x42 {
		t.Fatalf("MMIO write exit %+v, want 1-byte write of 0x42 at %#x", *m, mmioBase)
	}
	if got := g.run(t); got != kvm.ExitMMIO {
		t.Fatalf("exit %v, want KVM_EXIT_MMIO", got)
	}
	if m.PhysAddr != mmioBase+0x10 || m.Len != 1 || m.IsWrite != 0 {
		t.Fatalf("MMIO read exit %+v, want 1-byte read at %#x", *m, mmioBase+0x10)
	}
	m.Data[0] = 0x77
	if got := g.run(t); got != kvm.ExitIO {
		t.Fatalf("exit %v, want KVM_EXIT_IO", got)
	}
	if data := g.vcpu.IOData(); len(data) != 1 || data[0] != 0x77 {
		t.Fatalf("port write of % x, want the MMIO read value 77", data)
	}
	if got := g.run(t); got != kvm.ExitHLT {
		t.Fatalf("exit %v, want KVM_EXIT_HLT", got)
	}
}

// TestSyncRegs checks the kvm_run sync regs view: with KVM_SYNC_X86_REGS
// requested, KVM fills in the general-purpose registers on exit.
func TestSyncRegs(t *testing.T) {
	g := newGuest(t, guestConfig{}, guestOutHLT)
	if n, err := g.vm.CheckExtension(kvm.CapSyncRegs); err != nil || n&kvm.SyncX86Regs == 0 {
		t.Skipf("CapSyncRegs = %d, %v", n, err)
	}
	r := g.vcpu.RunData()
	r.KVMValidRegs = kvm.SyncX86Regs
	if got := g.run(t); got != kvm.ExitIO {
		t.Fatalf("exit %v, want KVM_EXIT_IO", got)
	}
	if r.KVMValidRegs&kvm.SyncX86Regs == 0 {
		t.Fatalf("kvm_valid_regs = %#x", r.KVMValidRegs)
	}
	if s := r.SyncRegs(); s.Regs.RAX&0xff != 0x42 || s.Regs.RIP != codeAddr+4 {
		t.Errorf("sync regs RAX %#x RIP %#x, want AL 0x42 and RIP %#x", s.Regs.RAX, s.Regs.RIP, codeAddr+4)
	}
	r.KVMValidRegs = 0
}
