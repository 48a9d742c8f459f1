//go:build rdma

package replicate

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// Tests of the cgo layer that need no RDMA device.

func TestTDMBuildLinksWorkRequests(t *testing.T) {
	descs := []rdmaDesc{
		{opcode: wrWrite, remote: 0x1000, rkey: 7, sges: []rdmaSGE{{Addr: 0xA000, Len: 100, Key: 1}}},
		{opcode: wrWrite, remote: 0x2000, rkey: 8, sges: []rdmaSGE{{Addr: 0xB000, Len: 4096, Key: 2}, {Addr: 0xD000, Len: 8192, Key: 2}, {Addr: 0xF000, Len: 1, Key: 3}}},
		{opcode: wrWriteImm, remote: 0x5000, rkey: 8, imm: encodeImm(0x1_0000_0002), sges: nil},
		{opcode: wrSendImm, imm: encodeImm(9)},
	}
	got, err := tdmBuildForTest(descs, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range got {
		d := descs[i]
		wantNext := i + 1
		if i == len(descs)-1 {
			wantNext = -1
		}
		if w.WRID != uint64(i) || w.Next != wantNext || w.Opcode != d.opcode || w.Imm != d.imm || w.Remote != d.remote || w.RKey != d.rkey {
			t.Errorf("work request %d: %+v, from %+v", i, w, d)
		}
		if len(w.SGEs) != len(d.sges) {
			t.Errorf("work request %d: %d SGEs, want %d", i, len(w.SGEs), len(d.sges))
			continue
		}
		for j := range w.SGEs {
			if w.SGEs[j] != d.sges[j] {
				t.Errorf("work request %d SGE %d: %+v, want %+v", i, j, w.SGEs[j], d.sges[j])
			}
		}
	}
	if decodeImm(got[2].Imm) != 2 {
		t.Errorf("immediate of the write-with-immediate reads %#x", decodeImm(got[2].Imm))
	}
	if _, err := tdmBuildForTest([]rdmaDesc{{sges: make([]rdmaSGE, 4)}}, 3); err == nil {
		t.Error("a work request with more SGEs than the QP takes was built")
	}
}

// TestRDMAWithoutDevice checks what a host without a verbs device (like
// the development machines) reports: no devices, and listeners and links
// that fail saying there is no device and how to get one.
func TestRDMAWithoutDevice(t *testing.T) {
	devs, err := RDMADevices()
	if err != nil && !errors.Is(err, ErrNoRDMAKernel) {
		t.Fatalf("RDMADevices: %v", err)
	}
	_, sysErr := os.Stat("/sys/class/infiniband")
	if len(devs) > 0 {
		t.Skipf("this host has RDMA devices (%s ...): the integration tests cover it", devs[0].Name)
	}
	if errors.Is(err, ErrNoRDMAKernel) && sysErr == nil {
		t.Errorf("RDMADevices says the kernel has no RDMA, but /sys/class/infiniband exists")
	}
	if RDMAForkStatus() == "" {
		t.Error("no fork status")
	}
	ln, err := ListenRDMA("127.0.0.1:0")
	if err == nil {
		ln.Close()
		t.Fatal("an RDMA listener without a device")
	}
	for _, want := range []string{"no RDMA device", "rdma link add rxe0 type rxe netdev"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ListenRDMA error %q lacks %q", err, want)
		}
	}
}
