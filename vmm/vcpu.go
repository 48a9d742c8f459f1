package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/kvm"
)

// kickSignal interrupts a vCPU thread blocked in KVM_RUN. The Go runtime
// already handles SIGURG (it uses it for preemption) and ignores ones it did
// not send, so borrowing it needs no handler of our own.
const kickSignal = unix.SIGURG

type vcpu struct {
	index int
	k     *kvm.VCPU
	ring  *kvm.DirtyRing
	tid   atomic.Int32
	// ringHole: the ring overflowed and a hole may sit at its fetch index.
	// ringStalls counts the hole entries released by consecutive ring-full
	// exits that harvested nothing. Both are touched only by the vCPU's
	// thread or while it is parked.
	ringHole   bool
	ringStalls int64
	// exits counts the returns from KVM_RUN by exit reason; only the
	// vCPU's thread adds, anyone reads (VM.Exits).
	exits [exitReasons]atomic.Uint64
}

// exitReasons bounds the exit reasons counted one by one; a larger one
// (a kernel newer than package kvm) counts in the last slot.
const exitReasons = int(kvm.ExitMemoryFault) + 2

// countExit counts one return from KVM_RUN.
func (c *vcpu) countExit(r kvm.ExitReason) {
	c.exits[min(int(r), exitReasons-1)].Add(1)
}

// kick makes the vCPU leave KVM_RUN soon: immediate_exit covers a thread about
// to enter, the signal one already inside.
func (c *vcpu) kick() {
	c.k.SetImmediateExit(true)
	if tid := c.tid.Load(); tid != 0 {
		_ = unix.Tgkill(os.Getpid(), int(tid), kickSignal)
	}
}

func (c *vcpu) close() {
	if c.ring != nil {
		c.ring.Close()
	}
	if c.k != nil {
		c.k.Close()
	}
}

func (v *VM) createVCPUs() error {
	mmapSize, err := v.sys.VCPUMmapSize()
	if err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	cpuid, err := v.sys.SupportedCPUID()
	if err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	for i := 0; i < v.cfg.VCPUs; i++ {
		k, err := v.vm.CreateVCPU(i, mmapSize)
		if err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		c := &vcpu{index: i, k: k}
		v.vcpus = append(v.vcpus, c)
		if err := k.SetCPUID2(vcpuCPUID(cpuid, i, v.cfg.VCPUs)); err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		if err := setupLAPIC(k); err != nil {
			return fmt.Errorf("vmm: vCPU %d: %w", i, err)
		}
		if v.cfg.Dirty == DirtyRing {
			if c.ring, err = k.MapDirtyRing(v.cfg.DirtyRingBytes); err != nil {
				return fmt.Errorf("vmm: vCPU %d: %w", i, err)
			}
		}
	}
	return nil
}

// CPUID bits and leaves the VMM adjusts per vCPU.
const (
	cpuidHypervisor = 1 << 31 // leaf 1 ECX
)

// vcpuCPUID derives vCPU index's CPUID from what KVM supports: its APIC ID in
// leaves 1 and 0xB, the logical processor count, and the hypervisor bit.
func vcpuCPUID(supported []kvm.CPUIDEntry, index, count int) []kvm.CPUIDEntry {
	out := make([]kvm.CPUIDEntry, len(supported))
	copy(out, supported)
	for i := range out {
		e := &out[i]
		switch e.Function {
		case 1:
			e.EBX = e.EBX&0x0000FFFF | uint32(count&0xFF)<<16 | uint32(index&0xFF)<<24
			e.ECX |= cpuidHypervisor
		case 0xB, 0x1F:
			e.EDX = uint32(index)
		}
	}
	return out
}

// LAPIC local vector table registers and delivery modes.
const (
	apicLVT0       = 0x350
	apicLVT1       = 0x360
	apicModeMask   = 0x700
	apicModeExtINT = 0x700
	apicModeNMI    = 0x400
	apicLVTMasked  = 1 << 16
)

// setupLAPIC wires LINT0 to the 8259 PIC (ExtINT) and LINT1 to NMI, as PC
// firmware does, so legacy interrupts reach the guest.
func setupLAPIC(k *kvm.VCPU) error {
	var l kvm.LAPICState
	if err := k.GetLAPIC(&l); err != nil {
		return err
	}
	l.Set32(apicLVT0, l.Get32(apicLVT0)&^(apicModeMask|apicLVTMasked)|apicModeExtINT)
	l.Set32(apicLVT1, l.Get32(apicLVT1)&^(apicModeMask|apicLVTMasked)|apicModeNMI)
	return k.SetLAPIC(&l)
}

// ExitKind says why a VM stopped.
type ExitKind int

const (
	// ExitGuest: the guest wrote its status to the debug-exit port.
	ExitGuest ExitKind = iota
	// ExitReset: the guest asked for a reset (i8042 or KVM system event).
	ExitReset
	// ExitPowerOff: the guest powered off (KVM system event).
	ExitPowerOff
	// ExitStopped: the host stopped the VM (Stop or context cancelled).
	ExitStopped
)

func (k ExitKind) String() string {
	switch k {
	case ExitGuest:
		return "guest exit"
	case ExitReset:
		return "reset"
	case ExitPowerOff:
		return "power off"
	case ExitStopped:
		return "stopped"
	}
	return fmt.Sprintf("ExitKind(%d)", int(k))
}

// Result is how a VM's run ended.
type Result struct {
	Kind ExitKind
	// Code is the status the guest wrote to the debug-exit port (ExitGuest).
	Code uint32
}

// VCPUError is a vCPU exit the VMM cannot continue from.
type VCPUError struct {
	VCPU   int
	Exit   kvm.ExitReason
	RIP    uint64
	Detail string
}

func (e *VCPUError) Error() string {
	s := fmt.Sprintf("vmm: vCPU %d stopped on %v at RIP %#x", e.VCPU, e.Exit, e.RIP)
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Run starts every vCPU and returns when the guest exits, resets, powers off
// or fails, when Stop is called, or when ctx is done. A VM runs once.
func (v *VM) Run(ctx context.Context) (Result, error) {
	var (
		once   sync.Once
		result = Result{Kind: ExitStopped}
		runErr error
		wg     sync.WaitGroup
	)
	finish := func(r Result, err error) {
		once.Do(func() { result, runErr = r, err })
		v.Stop()
	}
	for _, c := range v.vcpus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err, done := v.runVCPU(c)
			if done {
				finish(r, err)
			}
		}()
	}
	stopWatch := context.AfterFunc(ctx, v.Stop)
	wg.Wait()
	stopWatch()
	return result, runErr
}

// runVCPU is one vCPU's thread. done reports that the vCPU ended the run
// (guest exit, error); it is false when the vCPU returned because of Stop.
func (v *VM) runVCPU(c *vcpu) (r Result, err error, done bool) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c.tid.Store(int32(unix.Gettid()))
	defer func() {
		c.tid.Store(0)
		v.ctl.exited(c.index)
	}()
	if !v.ctl.start(c.index) {
		return Result{}, nil, false
	}
	run := c.k.RunData()
	for {
		if errno := c.k.Run(); errno != nil {
			switch errno {
			case unix.EINTR:
				// A signal or immediate_exit: KVM's API reports it as
				// KVM_EXIT_INTR with -EINTR.
				c.countExit(kvm.ExitIntr)
				if !v.ctl.interrupted(c.index) {
					return Result{}, nil, false
				}
				continue
			case unix.EAGAIN:
				continue
			}
			return Result{}, fmt.Errorf("vmm: vCPU %d: KVM_RUN: %w", c.index, errno), true
		}
		c.countExit(run.ExitReason)
		switch run.ExitReason {
		case kvm.ExitIO:
			err = v.handleIO(c)
		case kvm.ExitMMIO:
			err = v.handleMMIO(c)
		case kvm.ExitIntr:
			if !v.ctl.interrupted(c.index) {
				return Result{}, nil, false
			}
		case kvm.ExitDirtyRingFull:
			if err := v.drainRing(c); err != nil {
				return Result{}, v.vcpuError(c, err.Error()), true
			}
		case kvm.ExitSystemEvent:
			switch ev := run.SystemEvent(); ev.Type {
			case kvm.SystemEventReset:
				return Result{Kind: ExitReset}, nil, true
			case kvm.SystemEventShutdown:
				return Result{Kind: ExitPowerOff}, nil, true
			default:
				return Result{}, v.vcpuError(c, fmt.Sprintf("system event type %d", ev.Type)), true
			}
		case kvm.ExitInternalError:
			ie := run.InternalError()
			detail := fmt.Sprintf("%v", ie.Suberror)
			if n := min(int(ie.NData), len(ie.Data)); n > 0 {
				detail += fmt.Sprintf(", data %#x", ie.Data[:n])
			}
			return Result{}, v.vcpuError(c, detail), true
		case kvm.ExitFailEntry:
			fe := run.FailEntry()
			return Result{}, v.vcpuError(c, fmt.Sprintf("hardware entry failure reason %#x on host CPU %d", fe.HardwareEntryFailureReason, fe.CPU)), true
		case kvm.ExitShutdown:
			return Result{}, v.vcpuError(c, "the guest triple-faulted"), true
		case kvm.ExitHLT:
			return Result{}, v.vcpuError(c, "the guest halted with no interrupt controller to wake it"), true
		default:
			return Result{}, v.vcpuError(c, "unexpected exit"), true
		}
		if err != nil {
			var exit *devices.ExitError
			switch {
			case errors.As(err, &exit):
				return Result{Kind: ExitGuest, Code: exit.Code}, nil, true
			case errors.Is(err, devices.ErrReset):
				return Result{Kind: ExitReset}, nil, true
			}
			return Result{}, fmt.Errorf("vmm: vCPU %d: %w", c.index, err), true
		}
	}
}

func (v *VM) vcpuError(c *vcpu, detail string) error {
	e := &VCPUError{VCPU: c.index, Exit: c.k.RunData().ExitReason, Detail: detail}
	var regs kvm.Regs
	if c.k.GetRegs(&regs) == nil {
		e.RIP = regs.RIP
	}
	return e
}

func (v *VM) handleIO(c *vcpu) error {
	io := c.k.RunData().IO()
	data := c.k.IOData()
	size := int(io.Size)
	if data == nil || size == 0 {
		return fmt.Errorf("port I/O exit with %d bytes of data at port %#x out of range", size, io.Port)
	}
	for off := 0; off+size <= len(data); off += size {
		var err error
		if io.Direction == kvm.ExitIOOut {
			err = v.bus.WritePort(io.Port, data[off:off+size])
		} else {
			err = v.bus.ReadPort(io.Port, data[off:off+size])
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (v *VM) handleMMIO(c *vcpu) error {
	m := c.k.RunData().MMIO()
	n := min(int(m.Len), len(m.Data))
	if m.IsWrite != 0 {
		return v.bus.WriteMMIO(m.PhysAddr, m.Data[:n])
	}
	return v.bus.ReadMMIO(m.PhysAddr, m.Data[:n])
}
