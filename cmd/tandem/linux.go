package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/vmm"
)

// defaultLinuxCmdline is the command line a Linux guest gets without
// --cmdline: the console on COM1, and a reboot (which stops the VM: the
// i8042 reset) instead of a hang on panic or shutdown.
const defaultLinuxCmdline = "console=ttyS0 reboot=k panic=-1"

// defaultLinuxMem is the guest RAM of a Linux guest without --mem.
const defaultLinuxMem = "256M"

// linuxFlags are `tandem run`'s flags for booting a Linux kernel.
type linuxFlags struct {
	kernel, initrd, cmdline, entry, channel *string
	rng                                     *bool
	disks, nets                             listFlag
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func addLinuxFlags(fs *flag.FlagSet) *linuxFlags {
	l := &linuxFlags{
		kernel:  fs.String("kernel", "", "boot this Linux kernel (bzImage or ELF vmlinux) instead of --guest; --mem defaults to "+defaultLinuxMem),
		initrd:  fs.String("initrd", "", "initramfs or initrd for --kernel"),
		cmdline: fs.String("cmdline", defaultLinuxCmdline, "kernel command line; Tandem appends its virtio_mmio.device= parameters"),
		entry:   fs.String("kernel-entry", "auto", "how to enter an ELF vmlinux: auto, pvh or 64bit (a bzImage always uses the 64-bit boot protocol)"),
		channel: fs.String("channel", "", "virtio-console (the guest's /dev/hvc0) to unix:PATH, tcp:ADDR or file:PATH"),
		rng:     fs.Bool("rng", true, "give a --kernel guest a virtio-rng device"),
	}
	fs.Var(&l.disks, "disk", "virtio-blk disk backed by PATH[,ro] (repeatable; the first is /dev/vda)")
	fs.Var(&l.nets, "net", "virtio-net interface on a TAP device, tap:NAME (repeatable)")
	return l
}

// used reports whether the command line asks for a Linux boot.
func (l *linuxFlags) used(set map[string]bool) bool {
	for _, name := range []string{"kernel", "initrd", "cmdline", "kernel-entry", "channel", "rng", "disk", "net"} {
		if set[name] {
			return true
		}
	}
	return false
}

// configure checks the Linux flags against the rest and makes spec boot
// the kernel.
func (l *linuxFlags) configure(spec *vmSpec, set map[string]bool, memFlag string, vcpus int) error {
	if *l.kernel == "" {
		for _, name := range []string{"initrd", "cmdline", "kernel-entry", "channel", "rng", "disk", "net"} {
			if set[name] {
				return usagef("--%s needs --kernel", name)
			}
		}
	}
	for _, other := range []string{"guest", "restore"} {
		if set[other] {
			return usagef("--kernel and --%s exclude each other: say what to run one way", other)
		}
	}
	for _, name := range []string{"entry", "args", "ha"} {
		if set[name] {
			return usagef("--%s does not apply to --kernel", name)
		}
	}
	if !set["mem"] {
		memFlag = defaultLinuxMem
	}
	var err error
	if spec.memBytes, err = vmm.ParseMemSize(memFlag); err != nil {
		return usagef("--mem: %v", err)
	}
	if vcpus < 1 || vcpus > boot.LinuxMaxVCPUs {
		return usagef("--vcpus %d: want 1 to %d", vcpus, boot.LinuxMaxVCPUs)
	}
	spec.vcpus = vcpus
	entry, err := boot.ParseLinuxEntry(*l.entry)
	if err != nil {
		return usagef("--kernel-entry: %v", err)
	}
	kernel, err := os.ReadFile(*l.kernel)
	if err != nil {
		return usagef("--kernel: %v", err)
	}
	var initrd []byte
	if *l.initrd != "" {
		if initrd, err = os.ReadFile(*l.initrd); err != nil {
			return usagef("--initrd: %v", err)
		}
	}
	disks, err := parseDisks(l.disks)
	if err != nil {
		return err
	}
	for _, n := range l.nets {
		if name, ok := strings.CutPrefix(n, "tap:"); !ok || name == "" {
			return usagef("--net %q: want tap:NAME", n)
		}
	}
	if *l.channel == "stdio" {
		return usagef("--channel stdio: the terminal belongs to --serial; use unix:PATH, tcp:ADDR or file:PATH")
	}
	spec.guestName = "linux:" + *l.kernel
	cfg := vmm.LinuxConfig{Kernel: kernel, Initrd: initrd, Cmdline: *l.cmdline, Entry: entry}
	spec.load = func(vm *vmm.VM) error {
		if err := addLinuxDevices(vm, disks, l.nets, *l.channel, *l.rng, spec); err != nil {
			return err
		}
		b, err := vm.LoadLinux(cfg)
		if err != nil {
			return err
		}
		spec.log.Info("loaded Linux", "kernel", *l.kernel, "format", b.Format, "entry", b.Entry,
			"at", fmt.Sprintf("%#x", b.Kernel.Start), "initrd_bytes", b.Initrd.Size, "cmdline", b.Cmdline)
		return nil
	}
	return nil
}

type diskSpec struct {
	path     string
	readOnly bool
}

// parseDisks parses --disk PATH[,ro] values.
func parseDisks(specs []string) ([]diskSpec, error) {
	var out []diskSpec
	for _, s := range specs {
		path, opts, _ := strings.Cut(s, ",")
		d := diskSpec{path: path}
		if path == "" {
			return nil, usagef("--disk %q: no path", s)
		}
		switch opts {
		case "":
		case "ro":
			d.readOnly = true
		default:
			return nil, usagef("--disk %q: unknown option %q (want PATH or PATH,ro)", s, opts)
		}
		out = append(out, d)
	}
	return out, nil
}

// addLinuxDevices opens the backends and adds the virtio devices: disks
// first (so that the first is /dev/vda), then network interfaces, the
// console channel and the RNG. The VM owns each device once added.
func addLinuxDevices(vm *vmm.VM, disks []diskSpec, nets []string, channel string, rng bool, spec *vmSpec) error {
	add := func(dev virtio.Device, what string) error {
		d, err := vm.AddVirtio(dev)
		if err != nil {
			if c, ok := dev.(interface{ Close() error }); ok {
				c.Close()
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		spec.log.Info("virtio device", "what", what, "type", dev.Type(), "addr", fmt.Sprintf("%#x", d.Addr), "irq", d.IRQ)
		return nil
	}
	for i, ds := range disks {
		be, err := virtio.OpenFileBackend(ds.path, ds.readOnly)
		if err != nil {
			return usagef("--disk %s: %v", ds.path, err)
		}
		if err := add(virtio.NewBlock(be, fmt.Sprintf("tandem-disk-%d", i)), "disk "+ds.path); err != nil {
			return err
		}
	}
	for i, n := range nets {
		be, name, err := virtio.OpenTAP(strings.TrimPrefix(n, "tap:"))
		if err != nil {
			return usagef("--net %s: %v", n, err)
		}
		// A locally administered, unicast MAC: 02:54:4E:44:4D:<index>.
		mac := net.HardwareAddr{0x02, 0x54, 0x4E, 0x44, 0x4D, byte(i)}
		dev, err := virtio.NewNet(be, mac, spec.log)
		if err != nil {
			be.Close()
			return err
		}
		if err := add(dev, "net tap:"+name); err != nil {
			return err
		}
	}
	if channel != "" {
		host, err := devices.OpenConsole(channel)
		if err != nil {
			return usagef("--channel: %v", err)
		}
		if a, ok := host.(devices.Addresser); ok {
			spec.log.Info("virtio-console channel listening", "addr", a.Addr())
		}
		if err := add(virtio.NewConsole(host, spec.log), "channel "+channel); err != nil {
			return err
		}
	}
	if rng {
		if err := add(virtio.NewRNG(), "rng"); err != nil {
			return err
		}
	}
	return nil
}
