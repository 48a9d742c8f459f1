package vmm

import (
	"bytes"
	"fmt"
	"os"
	"slices"
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
	// and, on hosts that emulate guest code, "noxsave" (see LoadLinux).
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
// parameter of every device added with AddVirtio, and "noxsave" when guest
// code runs in KVM's instruction emulator (GuestCodeEmulated) and the
// vCPUs still report XSAVE: the emulator cannot execute XSAVE/XRSTOR, and
// PVM's KVM_SET_CPUID2 keeps the host's XSAVE bit whatever the VMM asks,
// so without it the guest stops at its first XRSTOR. The returned
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
	if emulated && !slices.Contains(strings.Fields(cfg.Cmdline), "noxsave") {
		xsave, xerr := v.vcpuHasXSAVE()
		if xerr != nil {
			return nil, xerr
		}
		if xsave {
			params = append(params, "noxsave")
			defer func() {
				if err == nil {
					v.log.Info("guest code runs in KVM's instruction emulator, which cannot run XSAVE: booting Linux with noxsave")
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

// vcpuHasXSAVE reports whether vCPU 0's effective CPUID has XSAVE.
func (v *VM) vcpuHasXSAVE() (bool, error) {
	entries, err := v.vcpus[0].k.GetCPUID2()
	if err != nil {
		return false, fmt.Errorf("vmm: vCPU 0: %w", err)
	}
	for _, e := range entries {
		if e.Function == 1 {
			return e.ECX&(1<<26) != 0, nil
		}
	}
	return false, nil
}

// GuestCodeEmulated reports whether this host runs guest code in KVM's
// instruction emulator rather than with hardware virtualization: true when
// /proc/cpuinfo shows neither vmx nor svm (a PVM host, see the README).
// There, LoadLinux hides XSAVE from the guest's CPUID, because the
// emulator cannot execute XSAVE or XRSTOR.
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
