package kvm_test

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/kvm/kvmtest"
)

func TestOpenPathErrors(t *testing.T) {
	_, err := kvm.OpenPath("/nonexistent/kvm")
	if err == nil {
		t.Fatal("OpenPath of a missing device succeeded")
	}
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("error %v does not wrap ENOENT", err)
	}
	if !strings.Contains(err.Error(), "/nonexistent/kvm") || !strings.Contains(err.Error(), "module") {
		t.Errorf("error %q should name the path and hint at the module", err)
	}
}

func TestSystem(t *testing.T) {
	s := kvmtest.Open(t)

	v, err := s.APIVersion()
	if err != nil || v != kvm.StableAPIVersion {
		t.Fatalf("APIVersion() = %d, %v; want %d", v, err, kvm.StableAPIVersion)
	}
	if n, err := s.CheckExtension(kvm.CapUserMemory); err != nil || n <= 0 {
		t.Errorf("CheckExtension(CapUserMemory) = %d, %v", n, err)
	}
	size, err := s.VCPUMmapSize()
	if err != nil {
		t.Fatal(err)
	}
	if size < kvm.PageSize || size < int(unsafe.Sizeof(kvm.Run{})) {
		t.Errorf("VCPUMmapSize() = %d, want >= %d and >= sizeof(kvm_run)", size, kvm.PageSize)
	}

	cpuid, err := s.SupportedCPUID()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpuid) == 0 || !slices.ContainsFunc(cpuid, func(e kvm.CPUIDEntry) bool { return e.Function == 0 }) {
		t.Errorf("SupportedCPUID() has %d entries and no leaf 0", len(cpuid))
	}

	msrs, err := s.MSRIndexList()
	if err != nil {
		t.Fatal(err)
	}
	if len(msrs) == 0 || !(slices.Contains(msrs, 0x10) || slices.Contains(msrs, 0xC0000080)) {
		t.Errorf("MSRIndexList() = %d indices without TSC (0x10) or EFER (0xC0000080)", len(msrs))
	}
	t.Logf("API %d, vCPU mmap %d bytes, %d CPUID entries, %d MSRs", v, size, len(cpuid), len(msrs))
}

func TestCreateManyVMs(t *testing.T) {
	s := kvmtest.Open(t)
	for i := 0; i < 5; i++ {
		vm, err := s.CreateVM()
		if err != nil {
			t.Fatalf("CreateVM #%d: %v", i, err)
		}
		if err := vm.Close(); err != nil {
			t.Fatal(err)
		}
		if err := vm.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
}

// TestCapabilities logs what the host's KVM reports, for the record, and
// checks the handful the VMM cannot do without.
func TestCapabilities(t *testing.T) {
	s := kvmtest.Open(t)
	vm := kvmtest.VM(t, s)
	caps := []kvm.Cap{
		kvm.CapIRQChip, kvm.CapHLT, kvm.CapUserMemory, kvm.CapSetTSSAddr, kvm.CapExtCPUID,
		kvm.CapNrVCPUs, kvm.CapMaxVCPUs, kvm.CapMaxVCPUID, kvm.CapNrMemslots, kvm.CapPIT,
		kvm.CapMPState, kvm.CapCoalescedMMIO, kvm.CapSyncMMU, kvm.CapIRQRouting, kvm.CapIRQFD,
		kvm.CapPIT2, kvm.CapPITState2, kvm.CapIOEventFD, kvm.CapSetIdentityMapAddr,
		kvm.CapAdjustClock, kvm.CapVCPUEvents, kvm.CapXSave, kvm.CapXCRs, kvm.CapTSCControl,
		kvm.CapGetTSCKHz, kvm.CapSyncRegs, kvm.CapReadonlyMem, kvm.CapIRQFDResample,
		kvm.CapSplitIRQChip, kvm.CapIOEventFDAnyLength, kvm.CapX2APICAPI, kvm.CapImmediateExit,
		kvm.CapX86DisableExits, kvm.CapCoalescedPIO, kvm.CapManualDirtyLogProtect2,
		kvm.CapX86UserSpaceMSR, kvm.CapDirtyLogRing, kvm.CapExitHypercall,
		kvm.CapExitOnEmulationFailure, kvm.CapXSave2, kvm.CapVMTSCControl,
		kvm.CapDirtyLogRingAcqRel, kvm.CapDirtyLogRingWithBitmap,
	}
	var b strings.Builder
	for _, c := range caps {
		sv, serr := s.CheckExtension(c)
		vv, verr := vm.CheckExtension(c)
		if serr != nil || verr != nil {
			t.Errorf("CheckExtension(%v): system %v, VM %v", c, serr, verr)
		}
		b.WriteString("\n  " + c.String() + ": system " + strconv.Itoa(sv) + ", vm " + strconv.Itoa(vv))
	}
	t.Log("capabilities:" + b.String())
	for _, c := range []kvm.Cap{kvm.CapUserMemory, kvm.CapImmediateExit, kvm.CapIRQFD, kvm.CapIOEventFD} {
		if n, _ := vm.CheckExtension(c); n <= 0 {
			t.Errorf("%v = %d, the VMM needs it", c, n)
		}
	}
}
