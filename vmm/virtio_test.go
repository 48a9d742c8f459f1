package vmm

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/kvm"
)

// notifyGuest is a flat long64 guest that notifies queue 0 of the virtio
// device at VirtioMMIOBase and exits 0:
//
//	mov rbx, VirtioMMIOBase + QueueNotify
//	mov dword [rbx], 0
//	mov al, 0
//	out 0xf4, al
var notifyGuest = []byte{
	0x48, 0xBB, 0x50, 0x00, 0x00, 0xD0, 0x00, 0x00, 0x00, 0x00,
	0xC7, 0x03, 0x00, 0x00, 0x00, 0x00,
	0xB0, 0x00,
	0xE6, 0xF4,
}

// TestVirtioWiring checks what the VMM adds around a virtio device, with a
// guest that only rings the doorbell: the guest's write to QueueNotify
// reaches the device through the ioeventfd, the device's interrupt reaches
// the in-kernel irqchip through the irqfd, and every byte the device wrote
// into guest memory shows up in the dirty-page harvest.
func TestVirtioWiring(t *testing.T) {
	tv := newTestVM(t, Config{Dirty: DirtyBitmap, Memory: MemoryConfig{Bytes: 32 << 20}}, "", nil)
	if err := tv.LoadFlat(notifyGuest, boot.ModeLong64, nil); err != nil {
		t.Fatal(err)
	}
	diskPath := filepath.Join(t.TempDir(), "disk")
	disk := bytes.Repeat([]byte("tandem!\n"), 64) // one sector
	os.WriteFile(diskPath, disk, 0o600)
	be, err := virtio.OpenFileBackend(diskPath, true)
	if err != nil {
		t.Fatal(err)
	}
	d, err := tv.AddVirtio(virtio.NewBlock(be, "wiring"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Addr != VirtioMMIOBase || d.IRQ != 5 || d.KernelParam() != "virtio_mmio.device=4K@0xd0000000:5" {
		t.Fatalf("device at %#x IRQ %d: %s", d.Addr, d.IRQ, d.KernelParam())
	}

	// Play the driver from the host, through the bus as a vCPU would.
	reg := func(off uint64, v uint32) {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], v)
		if err := tv.Bus().WriteMMIO(d.Addr+off, b[:]); err != nil {
			t.Fatal(err)
		}
	}
	const desc, avail, used, hdr, data, status = 0x400000, 0x401000, 0x402000, 0x403000, 0x404000, 0x405000
	mem := tv.Memory()
	put := func(gpa uint64, b []byte) { copy(mem.Bytes()[gpa:], b) } // the guest's own writes
	reg(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver)
	reg(virtio.RegDriverFeaturesSel, 1)
	reg(virtio.RegDriverFeatures, 1) // VIRTIO_F_VERSION_1
	reg(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK)
	reg(virtio.RegQueueSel, 0)
	reg(virtio.RegQueueNum, 8)
	reg(virtio.RegQueueDescLow, desc)
	reg(virtio.RegQueueDriverLow, avail)
	reg(virtio.RegQueueDeviceLow, used)
	reg(virtio.RegQueueReady, 1)
	reg(virtio.RegStatus, virtio.StatusAcknowledge|virtio.StatusDriver|virtio.StatusFeaturesOK|virtio.StatusDriverOK)
	descs := make([]byte, 48)
	le := binary.LittleEndian
	le.PutUint64(descs[0:], hdr)
	le.PutUint32(descs[8:], 16)
	le.PutUint16(descs[12:], 1) // NEXT
	le.PutUint16(descs[14:], 1)
	le.PutUint64(descs[16:], data)
	le.PutUint32(descs[24:], 512)
	le.PutUint16(descs[28:], 3) // WRITE | NEXT
	le.PutUint16(descs[30:], 2)
	le.PutUint64(descs[32:], status)
	le.PutUint32(descs[40:], 1)
	le.PutUint16(descs[44:], 2) // WRITE
	put(desc, descs)
	put(hdr, make([]byte, 16)) // VIRTIO_BLK_T_IN, sector 0
	put(status, []byte{0xFF})
	put(avail, []byte{0, 0, 1, 0, 0, 0}) // flags 0, idx 1, ring[0] = 0

	dirty := NewDirtySet(mem.Pages())
	if err := tv.HarvestDirty(dirty); err != nil { // start clean
		t.Fatal(err)
	}
	tv.start(t)
	if res, err := tv.wait(t, 30*time.Second); err != nil || res.Kind != ExitGuest || res.Code != 0 {
		t.Fatalf("guest ended with %v, %v", res, err)
	}
	poll(t, "the device to complete the request", 5*time.Second, func() bool {
		return le.Uint16(mem.Bytes()[used+2:]) == 1
	})
	if !bytes.Equal(mem.Bytes()[data:data+512], disk) || mem.Bytes()[status] != 0 {
		t.Fatalf("request not served: status %d", mem.Bytes()[status])
	}

	// The interrupt: irqfd on GSI 5 also pulses the master PIC's IRQ 5,
	// whose request register keeps the edge.
	// KVM injects an irqfd's interrupt from a work queue: wait for it.
	poll(t, "IRQ 5 in the PIC's request register (irqfd)", 5*time.Second, func() bool {
		pic := kvm.IRQChip{ChipID: kvm.IRQChipPICMaster}
		if err := tv.vm.GetIRQChip(&pic); err != nil {
			t.Fatal(err)
		}
		return pic.Chip[1]&(1<<5) != 0
	})

	if err := tv.HarvestDirty(dirty); err != nil {
		t.Fatal(err)
	}
	pages := dirty.AppendPages(nil)
	for _, want := range []uint64{used / PageSize, data / PageSize, status / PageSize} {
		found := false
		for _, p := range pages {
			found = found || p == want
		}
		if !found {
			t.Errorf("page %#x written by the device is not in the dirty harvest %#x", want, pages)
		}
	}
}

func TestAddVirtioLimits(t *testing.T) {
	tv := newTestVM(t, Config{}, "", nil)
	for i := range VirtioIRQs {
		if _, err := tv.AddVirtio(virtio.NewRNG()); err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
	}
	if _, err := tv.AddVirtio(virtio.NewRNG()); err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("one device too many: %v", err)
	}
	if got := len(strings.Fields(tv.virtioCmdline())); got != len(VirtioIRQs) {
		t.Fatalf("%d kernel parameters for %d devices", got, len(VirtioIRQs))
	}
}
