package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/kvm"
)

// DirtyTracking selects how KVM reports the pages the guest writes.
type DirtyTracking int

const (
	// DirtyOff disables dirty logging: no write-protection faults, no harvest.
	DirtyOff DirtyTracking = iota
	// DirtyBitmap uses KVM_GET_DIRTY_LOG with manual protection
	// (KVM_CLEAR_DIRTY_LOG re-protects only what was harvested).
	DirtyBitmap
	// DirtyRing uses the per-vCPU dirty rings.
	DirtyRing
)

func (d DirtyTracking) String() string {
	switch d {
	case DirtyOff:
		return "off"
	case DirtyBitmap:
		return "bitmap"
	case DirtyRing:
		return "ring"
	}
	return fmt.Sprintf("DirtyTracking(%d)", int(d))
}

// ParseDirtyTracking parses "off", "bitmap" or "ring".
func ParseDirtyTracking(s string) (DirtyTracking, error) {
	switch s {
	case "off", "":
		return DirtyOff, nil
	case "bitmap":
		return DirtyBitmap, nil
	case "ring":
		return DirtyRing, nil
	}
	return 0, fmt.Errorf("vmm: unknown dirty tracker %q (want off, bitmap or ring)", s)
}

// DefaultDirtyRingBytes is the per-vCPU dirty ring size: 4096 entries.
const DefaultDirtyRingBytes = 64 << 10

// Config describes a VM to create.
type Config struct {
	Memory MemoryConfig
	VCPUs  int
	Dirty  DirtyTracking
	// DirtyRingBytes is the per-vCPU ring size (a power of two); 0 means
	// DefaultDirtyRingBytes.
	DirtyRingBytes int
	// SerialOut receives what the guest writes to COM1; nil discards it.
	SerialOut io.Writer
	// Logger is used for the VM's diagnostics; nil means slog.Default().
	Logger *slog.Logger
}

// Fixed guest-physical addresses of KVM's own x86 structures, inside the
// hole below 4 GiB.
const tssGPA = 0xFFFB_D000

// VM is a virtual machine.
type VM struct {
	cfg   Config
	log   *slog.Logger
	sys   *kvm.System
	vm    *kvm.VM
	mem   *Memory
	vcpus []*vcpu
	bus   *devices.Bus
	uart  *devices.UART

	// run control: see pause.go.
	ctl runControl

	// Scratch buffers for harvesting the dirty bitmap, one per slot.
	logBuf [][]uint64
	// ringOverflow: a dirty ring lost entries since the last harvest.
	ringOverflow atomic.Bool

	msrIndices []uint32 // the MSRs state capture saves; probed on first use
	xsaveSize  int      // KVM_GET_XSAVE2 buffer size; 0 uses KVM_GET_XSAVE

	virtio virtioDevices // see virtio.go

	closeOnce sync.Once
}

// New creates a VM: KVM VM with in-kernel irqchip and PIT, guest memory,
// vCPUs, and the standard PC devices (COM1, i8042, debug-exit port). The
// guest is not loaded and no vCPU runs until Run.
func New(cfg Config) (_ *VM, err error) {
	if cfg.VCPUs < 1 {
		return nil, fmt.Errorf("vmm: %d vCPUs: need at least one", cfg.VCPUs)
	}
	if cfg.DirtyRingBytes == 0 {
		cfg.DirtyRingBytes = DefaultDirtyRingBytes
	}
	v := &VM{cfg: cfg, log: cfg.Logger}
	if v.log == nil {
		v.log = slog.Default()
	}
	defer func() {
		if err != nil {
			v.Close()
		}
	}()
	if v.sys, err = kvm.Open(); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	if maxv, err := v.sys.CheckExtension(kvm.CapMaxVCPUs); err == nil && maxv > 0 && cfg.VCPUs > maxv {
		return nil, fmt.Errorf("vmm: %d vCPUs: this KVM allows at most %d", cfg.VCPUs, maxv)
	}
	if v.vm, err = v.sys.CreateVM(); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	if err = v.vm.SetTSSAddr(tssGPA); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	if err = v.vm.CreateIRQChip(); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	if err = v.vm.CreatePIT2(kvm.PITSpeakerDummy); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	if err = v.enableDirtyTracking(); err != nil {
		return nil, err
	}
	if v.mem, err = NewMemory(cfg.Memory); err != nil {
		return nil, err
	}
	if err = v.registerMemory(); err != nil {
		return nil, err
	}
	v.bus = devices.NewBus()
	v.uart = devices.NewUART(devices.COM1Base, irqLine{v.vm, devices.COM1IRQ}, cfg.SerialOut)
	kbd := devices.NewI8042()
	for _, d := range []struct {
		base, n uint16
		dev     devices.PortDevice
	}{
		{devices.COM1Base, 8, v.uart},
		{0x60, 1, kbd}, // i8042 data
		{0x64, 1, kbd}, // i8042 status and command
		{devices.DebugExitPort, 1, devices.NewDebugExit()},
	} {
		if err = v.bus.RegisterPorts(d.base, d.n, d.dev); err != nil {
			return nil, fmt.Errorf("vmm: %w", err)
		}
	}
	if err = v.createVCPUs(); err != nil {
		return nil, err
	}
	v.ctl.init(len(v.vcpus))
	return v, nil
}

func (v *VM) enableDirtyTracking() error {
	switch v.cfg.Dirty {
	case DirtyOff:
		return nil
	case DirtyBitmap:
		if n, _ := v.vm.CheckExtension(kvm.CapManualDirtyLogProtect2); n&kvm.DirtyLogManualProtectEnable == 0 {
			return errors.New("vmm: dirty bitmap: KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
		}
		if err := v.vm.EnableCap(kvm.CapManualDirtyLogProtect2, 0, kvm.DirtyLogManualProtectEnable); err != nil {
			return fmt.Errorf("vmm: dirty bitmap: %w", err)
		}
		return nil
	case DirtyRing:
		size := v.cfg.DirtyRingBytes
		if size < kvm.PageSize || size&(size-1) != 0 {
			return fmt.Errorf("vmm: dirty ring of %d bytes: must be a power of two of at least 4 KiB", size)
		}
		// Prefer the acquire/release flavour: it is the one that is correct
		// on weakly ordered hosts, and the same on x86.
		for _, c := range []kvm.Cap{kvm.CapDirtyLogRingAcqRel, kvm.CapDirtyLogRing} {
			maxBytes, _ := v.vm.CheckExtension(c)
			if maxBytes <= 0 {
				continue
			}
			if size > maxBytes {
				return fmt.Errorf("vmm: dirty ring of %d bytes: KVM allows at most %d", size, maxBytes)
			}
			if err := v.vm.EnableCap(c, 0, uint64(size)); err != nil {
				return fmt.Errorf("vmm: enable %v: %w", c, err)
			}
			return nil
		}
		return errors.New("vmm: dirty ring: KVM lacks KVM_CAP_DIRTY_LOG_RING")
	}
	return fmt.Errorf("vmm: unknown dirty tracker %v", v.cfg.Dirty)
}

func (v *VM) registerMemory() error {
	base := sliceAddr(v.mem.Bytes())
	for i, s := range v.mem.slots {
		var flags uint32
		if v.cfg.Dirty != DirtyOff {
			flags |= kvm.MemLogDirtyPages
			v.mem.slots[i].Log = true
		}
		r := kvm.UserspaceMemoryRegion{
			Slot:          s.ID,
			Flags:         flags,
			GuestPhysAddr: s.GPA,
			MemorySize:    s.Size,
			UserspaceAddr: base + s.Offset,
		}
		if err := v.vm.SetUserMemoryRegion(r); err != nil {
			return fmt.Errorf("vmm: memory slot %d (%d MiB at %#x): %w", s.ID, s.Size>>20, s.GPA, err)
		}
		if v.cfg.Dirty == DirtyBitmap {
			v.logBuf = append(v.logBuf, make([]uint64, (s.npages+63)/64))
		}
	}
	return nil
}

// Memory is the VM's guest RAM.
func (v *VM) Memory() *Memory { return v.mem }

// Bus is the VM's device bus; devices may be added before Run.
func (v *VM) Bus() *devices.Bus { return v.bus }

// Serial is COM1. Writing to it types into the guest.
func (v *VM) Serial() *devices.UART { return v.uart }

// NumVCPUs is the number of vCPUs.
func (v *VM) NumVCPUs() int { return len(v.vcpus) }

// Config is the configuration the VM was created with.
func (v *VM) Config() Config { return v.cfg }

// Close stops the VM if it runs and releases every resource. It is safe to
// call more than once.
func (v *VM) Close() error {
	v.closeOnce.Do(func() {
		if len(v.vcpus) > 0 {
			v.Stop()
			v.ctl.waitExited()
		}
		// A VM closed while paused still holds its devices: let them go,
		// so that closing them does not wait for a Resume that will not
		// come.
		v.ctl.mu.Lock()
		if v.ctl.pauseDepth > 0 {
			v.ctl.pauseDepth = 0
			v.resumeDevices()
		}
		v.ctl.mu.Unlock()
		if v.uart != nil {
			v.uart.Close()
		}
		v.closeVirtio() // before guest memory goes away
		for _, c := range v.vcpus {
			c.close()
		}
		if v.vm != nil {
			v.vm.Close()
		}
		if v.mem != nil {
			v.mem.Close()
		}
		if v.sys != nil {
			v.sys.Close()
		}
	})
	return nil
}

// irqLine drives one in-kernel irqchip input with KVM_IRQ_LINE.
type irqLine struct {
	vm  *kvm.VM
	irq uint32
}

func (l irqLine) SetLevel(high bool) error { return l.vm.IRQLine(l.irq, high) }
