// Package kvmtest gives tests a KVM handle with one policy for hosts
// without KVM: a test that needs /dev/kvm is skipped when the device does
// not exist, unless the environment variable TANDEM_REQUIRE_KVM says KVM is
// required, in which case it fails. A device that exists but cannot be
// opened is always a failure.
package kvmtest

import (
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/tandemvm/tandem/kvm"
)

// EnvRequireKVM names the environment variable that makes a missing
// /dev/kvm a test failure instead of a skip. Any value other than empty or
// "0" means required.
const EnvRequireKVM = "TANDEM_REQUIRE_KVM"

// Required reports whether TANDEM_REQUIRE_KVM demands KVM.
func Required() bool {
	v := os.Getenv(EnvRequireKVM)
	return v != "" && v != "0"
}

// Open opens /dev/kvm for the test t and closes it when t finishes. It
// skips t when /dev/kvm does not exist and KVM is not Required, and fails t
// (t.Fatal) when KVM is required or the device exists but cannot be opened.
func Open(t testing.TB) *kvm.System {
	t.Helper()
	return openPath(t, kvm.DevicePath)
}

func openPath(t testing.TB, path string) *kvm.System {
	t.Helper()
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) && !Required() {
		t.Skipf("%s does not exist (set %s=1 to make this a failure)", path, EnvRequireKVM)
	}
	s, err := kvm.OpenPath(path)
	if err != nil {
		if Required() {
			t.Fatalf("KVM required (%s) but unavailable: %v", EnvRequireKVM, err)
		}
		t.Fatalf("%s exists but cannot be opened: %v", path, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close %s: %v", path, err)
		}
	})
	return s
}

// VM creates a VM on s for the test t and closes it when t finishes.
func VM(t testing.TB, s *kvm.System) *kvm.VM {
	t.Helper()
	vm, err := s.CreateVM()
	if err != nil {
		t.Fatalf("create VM: %v", err)
	}
	t.Cleanup(func() {
		if err := vm.Close(); err != nil {
			t.Errorf("close VM: %v", err)
		}
	})
	return vm
}
