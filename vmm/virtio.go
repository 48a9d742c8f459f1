package vmm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/kvm"
)

// Placement of virtio-mmio devices: device i's registers are the 4 KiB at
// VirtioMMIOBase + i*virtio.MMIOSize, inside the hole below 4 GiB, and its
// interrupt is the i-th of VirtioIRQs.
const VirtioMMIOBase = 0xD000_0000

// VirtioIRQs are the IOAPIC pins given to virtio devices, in order: the ISA
// interrupts no emulated PC device uses (COM1 has 4; 8 and 13 are left to
// the RTC and FPU by convention), then the IOAPIC's pins 16-23.
var VirtioIRQs = []uint32{5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23}

// VirtioDevice is a virtio device added to a VM with AddVirtio.
type VirtioDevice struct {
	// Addr is the guest-physical address of its register window.
	Addr uint64
	// IRQ is its IOAPIC pin.
	IRQ uint32
	// Transport is its virtio-mmio transport (registered on the bus).
	Transport *virtio.MMIO

	dev      virtio.Device
	vm       *kvm.VM
	irqFD    int
	irqBound bool
	notify   []*os.File      // one ioeventfd per queue
	bound    []kvm.IOEventFD // the registrations, to undo
	readers  sync.WaitGroup
}

// KernelParam is the kernel command-line parameter that announces the
// device to Linux's virtio_mmio driver.
func (d *VirtioDevice) KernelParam() string {
	return fmt.Sprintf("virtio_mmio.device=%dK@%#x:%d", virtio.MMIOSize>>10, d.Addr, d.IRQ)
}

// Trigger implements virtio.Interrupt: one write to the irqfd, which KVM
// turns into an edge on the device's IOAPIC pin.
func (d *VirtioDevice) Trigger() error {
	one := [8]byte{1}
	if _, err := unix.Write(d.irqFD, one[:]); err != nil && !errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("vmm: irqfd for IRQ %d: %w", d.IRQ, err)
	}
	return nil
}

// virtioDevices is the VM's list of virtio devices.
type virtioDevices struct {
	mu   sync.Mutex
	devs []*VirtioDevice
}

// AddVirtio gives the VM a virtio device: it places a virtio-mmio
// transport for dev at the next free window and IRQ, registers it on the
// bus, binds an irqfd to its IRQ and one ioeventfd per queue to its
// QueueNotify register (so that notifications reach the device without a
// vCPU exit to userspace), and starts a goroutine per queue that delivers
// them. Device memory accesses go through the VM's Memory, which records
// the pages devices write as dirty.
//
// On success the VM owns dev: Close resets it and, if it has a Close
// method, closes it. On failure dev is left to the caller. Add devices
// before LoadLinux, which announces them on the kernel command line.
func (v *VM) AddVirtio(dev virtio.Device) (*VirtioDevice, error) {
	v.virtio.mu.Lock()
	defer v.virtio.mu.Unlock()
	i := len(v.virtio.devs)
	if i >= len(VirtioIRQs) {
		return nil, fmt.Errorf("vmm: virtio-%v: at most %d virtio devices", dev.Type(), len(VirtioIRQs))
	}
	d := &VirtioDevice{Addr: VirtioMMIOBase + uint64(i)*virtio.MMIOSize, IRQ: VirtioIRQs[i], dev: dev, vm: v.vm, irqFD: -1}
	ok := false
	defer func() {
		if !ok {
			d.release()
		}
	}()
	var err error
	if d.irqFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("vmm: virtio-%v: eventfd: %w", dev.Type(), err)
	}
	if err := v.vm.IRQFD(d.irqFD, d.IRQ, 0); err != nil {
		return nil, fmt.Errorf("vmm: virtio-%v: %w", dev.Type(), err)
	}
	d.irqBound = true
	d.Transport = virtio.NewMMIO(d.Addr, dev, v.mem, d, v.log)
	for q := range dev.QueueSizes() {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return nil, fmt.Errorf("vmm: virtio-%v: eventfd: %w", dev.Type(), err)
		}
		f := os.NewFile(uintptr(fd), fmt.Sprintf("virtio-%v-notify-%d", dev.Type(), q))
		d.notify = append(d.notify, f)
		e := kvm.IOEventFD{
			Addr:      d.Addr + virtio.RegQueueNotify,
			Len:       4,
			Datamatch: uint64(q),
			FD:        int32(fd),
			Flags:     kvm.IOEventFDDatamatch,
		}
		if err := v.vm.IOEventFD(e); err != nil {
			return nil, fmt.Errorf("vmm: virtio-%v queue %d: %w", dev.Type(), q, err)
		}
		d.bound = append(d.bound, e)
	}
	if err := v.bus.RegisterMMIO(d.Addr, virtio.MMIOSize, d.Transport); err != nil {
		return nil, fmt.Errorf("vmm: %w", err)
	}
	for q, f := range d.notify {
		d.readers.Add(1)
		go d.deliverNotifications(q, f)
	}
	v.virtio.devs = append(v.virtio.devs, d)
	ok = true
	return d, nil
}

// deliverNotifications passes queue q's ioeventfd signals to the
// transport until the eventfd is closed.
func (d *VirtioDevice) deliverNotifications(q int, f *os.File) {
	defer d.readers.Done()
	var b [8]byte
	for {
		if _, err := f.Read(b[:]); err != nil {
			return
		}
		d.Transport.Notify(q)
	}
}

// release stops the device's transport and releases the file descriptors
// the VMM opened for it, leaving the device itself alone. The vCPUs must
// have stopped.
func (d *VirtioDevice) release() {
	if d.Transport != nil {
		d.Transport.Close()
	}
	for _, e := range d.bound {
		e.Flags |= kvm.IOEventFDDeassign
		_ = d.vm.IOEventFD(e) // only fails if the VM is gone, which undoes it too
	}
	for _, f := range d.notify {
		f.Close()
	}
	d.readers.Wait()
	if d.irqBound {
		_ = d.vm.IRQFD(d.irqFD, d.IRQ, kvm.IRQFDDeassign)
	}
	if d.irqFD >= 0 {
		unix.Close(d.irqFD)
	}
}

// close releases the device and closes it (its backend).
func (d *VirtioDevice) close() {
	d.release()
	if c, ok := d.dev.(io.Closer); ok {
		c.Close()
	}
}

// Device is the device behind the transport.
func (d *VirtioDevice) Device() virtio.Device { return d.dev }

// VirtioDevices lists the virtio devices in the order they were added.
func (v *VM) VirtioDevices() []*VirtioDevice {
	v.virtio.mu.Lock()
	defer v.virtio.mu.Unlock()
	return append([]*VirtioDevice(nil), v.virtio.devs...)
}

// virtioCmdline is the kernel parameters announcing every virtio device.
func (v *VM) virtioCmdline() string {
	var p []string
	for _, d := range v.VirtioDevices() {
		p = append(p, d.KernelParam())
	}
	return strings.Join(p, " ")
}

// closeVirtio stops and releases every virtio device; VM.Close calls it
// after the vCPUs have stopped and before guest memory goes away.
func (v *VM) closeVirtio() {
	v.virtio.mu.Lock()
	devs := v.virtio.devs
	v.virtio.devs = nil
	v.virtio.mu.Unlock()
	for _, d := range devs {
		d.close()
	}
}
