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
	for _, name := range []string{"entry", "args"} {
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
	devs, err := l.devices()
	if err != nil {
		return err
	}
	spec.guestName = "linux:" + *l.kernel
	spec.virtio = devs.meta()
	cfg := vmm.LinuxConfig{Kernel: kernel, Initrd: initrd, Cmdline: *l.cmdline, Entry: entry}
	spec.load = func(vm *vmm.VM) error {
		if err := devs.add(vm, spec); err != nil {
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

type netSpec struct {
	tap string
	mac net.HardwareAddr
}

// linuxDevices are a Linux guest's virtio devices, in the order they are
// added: disks first (so that the first is /dev/vda), then network
// interfaces, the console channel and the RNG. The order fixes each
// device's address and IRQ, so a restore adds them in the same order.
type linuxDevices struct {
	disks   []diskSpec
	nets    []netSpec
	channel string
	rng     bool
}

// netMAC is the MAC of interface i: locally administered, unicast,
// 02:54:4E:44:4D:<i>.
func netMAC(i int) net.HardwareAddr { return net.HardwareAddr{0x02, 0x54, 0x4E, 0x44, 0x4D, byte(i)} }

// devices checks the device flags.
func (l *linuxFlags) devices() (linuxDevices, error) {
	disks, err := parseDisks(l.disks)
	if err != nil {
		return linuxDevices{}, err
	}
	nets, err := parseNets(l.nets)
	if err != nil {
		return linuxDevices{}, err
	}
	if err := checkChannel(*l.channel); err != nil {
		return linuxDevices{}, err
	}
	return linuxDevices{disks: disks, nets: nets, channel: *l.channel, rng: *l.rng}, nil
}

func parseNets(specs []string) ([]netSpec, error) {
	var out []netSpec
	for i, n := range specs {
		name, ok := strings.CutPrefix(n, "tap:")
		if !ok || name == "" {
			return nil, usagef("--net %q: want tap:NAME", n)
		}
		out = append(out, netSpec{tap: name, mac: netMAC(i)})
	}
	return out, nil
}

func checkChannel(channel string) error {
	if channel == "stdio" {
		return usagef("--channel stdio: the terminal belongs to --serial; use unix:PATH, tcp:ADDR or file:PATH")
	}
	return nil
}

// meta describes the devices for a snapshot.
func (d linuxDevices) meta() []vmm.VirtioConfig {
	var out []vmm.VirtioConfig
	for _, ds := range d.disks {
		out = append(out, vmm.VirtioConfig{Type: "blk", Path: ds.path, ReadOnly: ds.readOnly})
	}
	for _, n := range d.nets {
		out = append(out, vmm.VirtioConfig{Type: "net", TAP: n.tap, MAC: n.mac.String()})
	}
	if d.channel != "" {
		out = append(out, vmm.VirtioConfig{Type: "console", Console: d.channel})
	}
	if d.rng {
		out = append(out, vmm.VirtioConfig{Type: "rng"})
	}
	return out
}

// devicesFromMeta reads the devices a snapshot names. They must be in the
// order linuxDevices adds them, as Tandem writes them.
func devicesFromMeta(cfgs []vmm.VirtioConfig) (linuxDevices, error) {
	var d linuxDevices
	rank := map[string]int{"blk": 0, "net": 1, "console": 2, "rng": 3}
	last := 0
	for i, c := range cfgs {
		r, ok := rank[c.Type]
		if !ok {
			return linuxDevices{}, fmt.Errorf("%w: virtio device %d has unknown type %q", vmm.ErrSnapshot, i, c.Type)
		}
		if r < last {
			return linuxDevices{}, fmt.Errorf("%w: virtio device %d (%s) is out of order", vmm.ErrSnapshot, i, c.Type)
		}
		if (c.Type == "console" && d.channel != "") || (c.Type == "rng" && d.rng) {
			return linuxDevices{}, fmt.Errorf("%w: more than one virtio-%s", vmm.ErrSnapshot, c.Type)
		}
		last = r
		switch c.Type {
		case "blk":
			if c.Path == "" {
				return linuxDevices{}, fmt.Errorf("%w: virtio disk %d has no path", vmm.ErrSnapshot, len(d.disks))
			}
			d.disks = append(d.disks, diskSpec{path: c.Path, readOnly: c.ReadOnly})
		case "net":
			mac, err := net.ParseMAC(c.MAC)
			if err != nil || c.TAP == "" || len(mac) != 6 {
				return linuxDevices{}, fmt.Errorf("%w: virtio-net %d: TAP %q, MAC %q", vmm.ErrSnapshot, len(d.nets), c.TAP, c.MAC)
			}
			d.nets = append(d.nets, netSpec{tap: c.TAP, mac: mac})
		case "console":
			if c.Console == "" {
				return linuxDevices{}, fmt.Errorf("%w: virtio-console has no host side", vmm.ErrSnapshot)
			}
			d.channel = c.Console
		case "rng":
			d.rng = true
		}
	}
	return d, nil
}

// override replaces the host side of restored devices with the ones given
// on the command line: each given list must name as many devices as the
// snapshot has, in the same order.
func (d *linuxDevices) override(l *linuxFlags, set map[string]bool) error {
	if set["disk"] {
		disks, err := parseDisks(l.disks)
		if err != nil {
			return err
		}
		if len(disks) != len(d.disks) {
			return usagef("--disk: the snapshot has %d disks, %d given", len(d.disks), len(disks))
		}
		d.disks = disks
	}
	if set["net"] {
		nets, err := parseNets(l.nets)
		if err != nil {
			return err
		}
		if len(nets) != len(d.nets) {
			return usagef("--net: the snapshot has %d network interfaces, %d given", len(d.nets), len(nets))
		}
		for i := range nets {
			nets[i].mac = d.nets[i].mac // the guest knows its MAC
		}
		d.nets = nets
	}
	if set["channel"] {
		if d.channel == "" {
			return usagef("--channel: the snapshot has no virtio-console")
		}
		if err := checkChannel(*l.channel); err != nil {
			return err
		}
		d.channel = *l.channel
	}
	return nil
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

// add opens the backends and adds the virtio devices in their order. The
// VM owns each device once added.
func (d linuxDevices) add(vm *vmm.VM, spec *vmSpec) error {
	add := func(dev virtio.Device, what string) error {
		vd, err := vm.AddVirtio(dev)
		if err != nil {
			if c, ok := dev.(interface{ Close() error }); ok {
				c.Close()
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		spec.log.Info("virtio device", "what", what, "type", dev.Type(), "addr", fmt.Sprintf("%#x", vd.Addr), "irq", vd.IRQ)
		return nil
	}
	for i, ds := range d.disks {
		var be virtio.BlockBackend
		be, err := virtio.OpenFileBackend(ds.path, ds.readOnly)
		if err != nil {
			return fmt.Errorf("disk %s: %w", ds.path, err)
		}
		if spec.haDevs != nil {
			// Replicated: each epoch's writes travel with it.
			be = spec.haDevs.trackDisk(be, ds.path)
		}
		if err := add(virtio.NewBlock(be, fmt.Sprintf("tandem-disk-%d", i)), "disk "+ds.path); err != nil {
			return err
		}
	}
	for _, n := range d.nets {
		be, name, err := virtio.OpenTAP(n.tap)
		if err != nil {
			return fmt.Errorf("network interface tap:%s: %w", n.tap, err)
		}
		var backend virtio.NetBackend = be
		if spec.haDevs != nil {
			// Replicated: transmitted frames leave with their epoch.
			backend = spec.haDevs.gateNet(be)
		}
		dev, err := virtio.NewNet(backend, n.mac, spec.log)
		if err != nil {
			backend.Close()
			return err
		}
		if err := add(dev, "net tap:"+name); err != nil {
			return err
		}
	}
	if d.channel != "" {
		host, err := devices.OpenConsole(d.channel)
		if err != nil {
			return fmt.Errorf("virtio-console %s: %w", d.channel, err)
		}
		if a, ok := host.(devices.Addresser); ok {
			spec.log.Info("virtio-console channel listening", "addr", a.Addr())
		}
		if spec.haDevs != nil {
			// Replicated: what the guest writes leaves with its epoch.
			host = spec.haDevs.gateConsole(host)
		}
		if err := add(virtio.NewConsole(host, spec.log), "channel "+d.channel); err != nil {
			return err
		}
	}
	if d.rng {
		if err := add(virtio.NewRNG(), "rng"); err != nil {
			return err
		}
	}
	return nil
}
