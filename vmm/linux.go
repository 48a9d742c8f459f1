package vmm

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/kvm"
)

// LinuxConfig describes a Linux guest to load with LoadLinux.
type LinuxConfig struct {
	// Kernel is a bzImage or an ELF vmlinux.
	Kernel []byte
	// Initrd is an initramfs; empty for none.
	Initrd []byte
	// Cmdline is the kernel command line. LoadLinux appends the
	// virtio_mmio.device= parameters of the devices added with AddVirtio
	// and, on hosts that emulate guest code, what EmulatorCmdline adds.
	Cmdline string
	// Entry chooses between an ELF vmlinux's PVH and 64-bit entries.
	Entry boot.LinuxEntry
}

// LoadLinux loads a Linux kernel, initrd and command line (see package
// boot) and sets the vCPUs up as the kernel expects: vCPU 0 at the kernel's
// entry, the others waiting for the kernel to start them (INIT/SIPI), every
// vCPU with CPUID derived from KVM's supported set (boot.LinuxCPUID) and
// the MSRs firmware would leave (boot.LinuxBootMSRs). Call it before Run,
// after adding virtio devices.
//
// Tandem appends to cfg.Cmdline, in this order: the virtio_mmio.device=
// parameter of every device added with AddVirtio, and, when guest code runs
// in KVM's instruction emulator (GuestCodeEmulated), the parameters
// EmulatorCmdline returns for the vCPUs' effective CPUID, each logged with
// its reason. The returned
// description holds the final command line, the e820 map and where
// everything was loaded.
func (v *VM) LoadLinux(cfg LinuxConfig) (_ *boot.LinuxBoot, err error) {
	supported, err := v.sys.SupportedCPUID()
	if err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	emulated := GuestCodeEmulated()
	for i, c := range v.vcpus {
		cpuid := boot.LinuxCPUID(supported, i, len(v.vcpus), boot.CPUIDOptions{NoXSAVE: emulated})
		if err := c.k.SetCPUID2(cpuid); err != nil {
			return nil, fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
	}

	params := []string{cfg.Cmdline}
	if extra := v.virtioCmdline(); extra != "" {
		params = append(params, extra)
	}
	if emulated {
		effective, err := v.vcpus[0].k.GetCPUID2()
		if err != nil {
			return nil, fmt.Errorf("vmm: vCPU 0: %w", err)
		}
		extra := EmulatorCmdline(cfg.Cmdline, effective)
		for _, p := range extra {
			params = append(params, p.Param)
		}
		if len(extra) > 0 {
			defer func() {
				if err == nil {
					for _, p := range extra {
						v.log.Info("guest ring 0 runs in KVM's instruction emulator: adding "+p.Param+" to the kernel command line", "why", p.Why)
					}
				}
			}()
		}
	}
	var ram []boot.Range
	for _, s := range v.mem.slots {
		ram = append(ram, boot.Range{Start: s.GPA, Size: s.Size})
	}
	b, err := boot.LoadLinux(v.mem.LowBytes(), boot.LinuxConfig{
		Kernel:  cfg.Kernel,
		Initrd:  cfg.Initrd,
		Cmdline: strings.TrimSpace(strings.Join(params, " ")),
		VCPUs:   len(v.vcpus),
		RAM:     ram,
		Entry:   cfg.Entry,
	})
	if err != nil {
		return nil, err
	}

	msrs := boot.LinuxBootMSRs()
	for i, c := range v.vcpus {
		if n, err := c.k.SetMSRs(msrs); err != nil {
			return nil, fmt.Errorf("vmm: vCPU %d: %w", i, err)
		} else if n != len(msrs) {
			return nil, fmt.Errorf("vmm: vCPU %d: KVM refused boot MSR %#x", i, msrs[n].Index)
		}
		fpu := kvm.FPU{FCW: 0x37F, MXCSR: 0x1F80}
		if err := c.k.SetFPU(&fpu); err != nil {
			return nil, fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
	}
	// Only the bootstrap processor starts; the kernel wakes the others.
	bsp := v.vcpus[0].k
	var s kvm.Sregs
	if err := bsp.GetSregs(&s); err != nil {
		return nil, fmt.Errorf("vmm: vCPU 0: %w", err)
	}
	b.ApplySregs(&s)
	if err := bsp.SetSregs(&s); err != nil {
		return nil, fmt.Errorf("vmm: vCPU 0: %w", err)
	}
	regs := b.BSP
	if err := bsp.SetRegs(&regs); err != nil {
		return nil, fmt.Errorf("vmm: vCPU 0: %w", err)
	}
	return b, nil
}

// KernelParam is a kernel command-line parameter Tandem adds, with the
// reason it is needed.
type KernelParam struct {
	Param string
	Why   string
}

// CPUID bits the emulator cannot honour (see EmulatorCmdline).
const (
	cpuid1ECXPOPCNT = 1 << 23
	cpuid1ECXXSAVE  = 1 << 26
	cpuid7EBXSMAP   = 1 << 20
)

// EmulatorCmdline returns the parameters a Linux guest needs when its ring
// 0 runs in KVM's instruction emulator (PVM hosts), given the command line
// the user asked for and the CPUID the vCPUs report after KVM_SET_CPUID2.
// PVM reports the host's leaf 1 ECX and leaf 7 feature bits whatever the
// VMM sets, so features the emulator cannot execute have to be switched
// off in the guest itself:
//
//   - noxsave, while XSAVE is reported: the emulator cannot execute
//     XSAVE/XRSTOR/XGETBV, and the guest stops at its first XRSTOR;
//   - clearcpuid=smap,popcnt (those reported): the kernel's interrupt entry
//     executes clac with SMAP, and alternatives patch in popcnt, neither of
//     which the emulator runs;
//   - noint3selftest, always: the emulator cannot execute int3, which the
//     alternatives self-test does (a parameter of Tandem's guest kernel,
//     images/linux/patches; other kernels ignore it, and print it as
//     unknown).
//
// A parameter the user already gave is not added again.
func EmulatorCmdline(cmdline string, cpuid []kvm.CPUIDEntry) []KernelParam {
	var leaf1ECX, leaf7EBX uint32
	for _, e := range cpuid {
		switch {
		case e.Function == 1:
			leaf1ECX = e.ECX
		case e.Function == 7 && e.Index == 0:
			leaf7EBX = e.EBX
		}
	}
	given := func(name string) bool {
		for _, f := range strings.Fields(cmdline) {
			if f == name || strings.HasPrefix(f, name+"=") {
				return true
			}
		}
		return false
	}
	var out []KernelParam
	if leaf1ECX&cpuid1ECXXSAVE != 0 && !given("noxsave") {
		out = append(out, KernelParam{"noxsave", "the emulator cannot execute XSAVE/XRSTOR and KVM keeps reporting the host's XSAVE bit"})
	}
	var clear []string
	if leaf7EBX&cpuid7EBXSMAP != 0 {
		clear = append(clear, "smap")
	}
	if leaf1ECX&cpuid1ECXPOPCNT != 0 {
		clear = append(clear, "popcnt")
	}
	if len(clear) > 0 && !given("clearcpuid") {
		out = append(out, KernelParam{"clearcpuid=" + strings.Join(clear, ","), "the emulator cannot execute clac/stac (SMAP) or popcnt and KVM keeps reporting the host's bits"})
	}
	if !given("noint3selftest") {
		out = append(out, KernelParam{"noint3selftest", "the emulator cannot execute int3, which the kernel's alternatives self-test runs"})
	}
	return out
}

// GuestCodeEmulated reports whether this host runs guest code in KVM's
// instruction emulator rather than with hardware virtualization: true when
// /proc/cpuinfo shows neither vmx nor svm (a PVM host, see the README).
// There, LoadLinux hides XSAVE from the guest's CPUID and adds the
// parameters of EmulatorCmdline.
func GuestCodeEmulated() bool {
	emulatedOnce.Do(func() {
		info, err := os.ReadFile("/proc/cpuinfo")
		if err != nil {
			return // assume hardware virtualization
		}
		emulated = !HostHasHardwareVirt(info)
	})
	return emulated
}

var (
	emulatedOnce sync.Once
	emulated     bool
)

// HostHasHardwareVirt reports whether a /proc/cpuinfo text lists the vmx
// or svm flag.
func HostHasHardwareVirt(cpuinfo []byte) bool {
	for line := range bytes.Lines(cpuinfo) {
		name, flags, ok := bytes.Cut(line, []byte(":"))
		if !ok || !bytes.Equal(bytes.TrimSpace(name), []byte("flags")) {
			continue
		}
		for _, f := range bytes.Fields(flags) {
			if string(f) == "vmx" || string(f) == "svm" {
				return true
			}
		}
	}
	return false
}
