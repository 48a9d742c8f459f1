package virtio

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// diskFile writes a disk image of sectors sectors, each filled with fill,
// and opens it.
func diskFile(t *testing.T, name string, sectors int, fill byte, readOnly bool) *FileBackend {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, bytes.Repeat([]byte{fill}, sectors*SectorSize), 0o600); err != nil {
		t.Fatal(err)
	}
	be, err := OpenFileBackend(path, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

// capacityRegister reads the capacity from configuration space as Linux
// does, inside a generation check.
func capacityRegister(d *mmioDriver) (capacity uint64, generation uint32) {
	generation = d.read(RegConfigGeneration)
	capacity = uint64(d.read(RegConfig)) | uint64(d.read(RegConfig+4))<<32
	return capacity, generation
}

// TestReplaceBlockBackend: after the swap the device serves reads and
// writes from the new file, configuration space has the new capacity
// under a new generation, and the driver got a configuration-change
// interrupt; the old file is left as it was and handed back.
func TestReplaceBlockBackend(t *testing.T) {
	oldDisk, newDisk := diskFile(t, "old.img", 8, 0x11, false), diskFile(t, "new.img", 32, 0x22, false)
	d, irq := newMMIODriver(t, NewBlock(oldDisk, "tandem-disk-1"))
	d.setup(^uint64(0), 16)
	q := d.qs[0]
	capBefore, genBefore := capacityRegister(d)
	if capBefore != 8 {
		t.Fatalf("capacity before the swap: %d sectors, want 8", capBefore)
	}
	irqsBefore := irq.count()

	old, err := d.m.ReplaceBlockBackend(newDisk)
	if err != nil {
		t.Fatal(err)
	}
	if old != oldDisk {
		t.Fatalf("ReplaceBlockBackend returned %v, want the old backend", old)
	}
	capAfter, genAfter := capacityRegister(d)
	if capAfter != 32 || genAfter == genBefore {
		t.Fatalf("after the swap: capacity %d sectors, generation %d (was %d); want 32 and a new generation", capAfter, genAfter, genBefore)
	}
	if irq.count() != irqsBefore+1 || d.read(RegInterruptStatus)&IntConfigChanged == 0 {
		t.Fatalf("after the swap: %d interrupts (was %d), status %#x; want one more, with the config-change bit", irq.count(), irqsBefore, d.read(RegInterruptStatus))
	}
	d.write(RegInterruptACK, IntConfigChanged)

	// A read past the old end is served from the new file.
	_, data, status := blkRequest(q, blkTIn, 20, nil, SectorSize)
	d.write(RegQueueNotify, 0)
	if got := d.mem.get(status, 1)[0]; got != blkSOK {
		t.Fatalf("read of sector 20 after the swap: status %d", got)
	}
	if got := d.mem.get(data, SectorSize); !bytes.Equal(got, bytes.Repeat([]byte{0x22}, SectorSize)) {
		t.Fatalf("read after the swap: % x..., want the new file's 0x22", got[:8])
	}
	// A write lands in the new file, not the old.
	payload := bytes.Repeat([]byte{0xAB}, SectorSize)
	_, _, status = blkRequest(q, blkTOut, 0, payload, 0)
	d.write(RegQueueNotify, 0)
	if got := d.mem.get(status, 1)[0]; got != blkSOK {
		t.Fatalf("write after the swap: status %d", got)
	}
	inNew, inOld := make([]byte, SectorSize), make([]byte, SectorSize)
	newDisk.ReadAt(inNew, 0)
	oldDisk.ReadAt(inOld, 0)
	if !bytes.Equal(inNew, payload) || !bytes.Equal(inOld, bytes.Repeat([]byte{0x11}, SectorSize)) {
		t.Fatalf("the write went to the wrong file: new % x..., old % x...", inNew[:4], inOld[:4])
	}
}

// TestReplaceBlockBackendRefusals: the replacement keeps the device's
// read-only-ness and holds a sector, and only a virtio-blk device has a
// backend; a refused swap changes nothing.
func TestReplaceBlockBackendRefusals(t *testing.T) {
	writable := diskFile(t, "rw.img", 8, 0, false)
	d, irq := newMMIODriver(t, NewBlock(writable, ""))
	d.setup(^uint64(0), 16)
	_, gen := capacityRegister(d)
	for _, tc := range []struct {
		name    string
		backend BlockBackend
		want    string
	}{
		{"read-only for writable", diskFile(t, "ro.img", 8, 0, true), "writable and the replacement read-only"},
		{"under a sector", &memBackend{data: make([]byte, 100)}, "smaller than one 512-byte sector"},
	} {
		if _, err := d.m.ReplaceBlockBackend(tc.backend); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", tc.name, err, tc.want)
		}
	}
	if capacity, g := capacityRegister(d); capacity != 8 || g != gen || irq.count() != 0 {
		t.Errorf("refused swaps changed the device: capacity %d, generation %d (was %d), %d interrupts", capacity, g, gen, irq.count())
	}
	ro, _ := newMMIODriver(t, NewBlock(diskFile(t, "ro2.img", 8, 0, true), ""))
	if _, err := ro.m.ReplaceBlockBackend(writable); err == nil || !strings.Contains(err.Error(), "read-only and the replacement writable") {
		t.Errorf("writable for read-only: %v", err)
	}
	rng, _ := newMMIODriver(t, NewRNG())
	if _, err := rng.m.ReplaceBlockBackend(writable); err == nil || !strings.Contains(err.Error(), "not virtio-blk") {
		t.Errorf("a virtio-rng device: %v", err)
	}
}

// TestReplaceBlockBackendWhilePaused: a paused device (its lock held by
// the pause) takes a new backend without waiting for the resume, and
// serves from it once resumed.
func TestReplaceBlockBackendWhilePaused(t *testing.T) {
	d, _ := newMMIODriver(t, NewBlock(diskFile(t, "old.img", 8, 0x11, false), ""))
	d.setup(^uint64(0), 16)
	d.m.Pause()
	swapped := make(chan error, 1)
	go func() {
		_, err := d.m.ReplaceBlockBackend(diskFile(t, "new.img", 16, 0x33, false))
		swapped <- err
	}()
	select {
	case err := <-swapped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReplaceBlockBackend on a paused device did not return")
	}
	if !d.m.Paused() {
		t.Fatal("the device is no longer paused after the swap")
	}
	d.m.Resume()
	_, data, status := blkRequest(d.qs[0], blkTIn, 12, nil, SectorSize)
	d.write(RegQueueNotify, 0)
	if d.mem.get(status, 1)[0] != blkSOK || d.mem.get(data, 1)[0] != 0x33 {
		t.Fatal("the resumed device did not serve the read from the new file")
	}
}

// TestReplaceBlockBackendUnderLoad swaps backends while another goroutine
// keeps the queue busy (run with -race): every request completes, from one
// file or the other, and none is torn between them.
func TestReplaceBlockBackendUnderLoad(t *testing.T) {
	var disks []BlockBackend
	for i := range 4 {
		disks = append(disks, diskFile(t, "disk.img", 8+i, 0xA0+byte(i), false))
	}
	d, _ := newMMIODriver(t, NewBlock(disks[0], ""))
	d.setup(^uint64(0), 256)
	q := d.qs[0]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := d.m.ReplaceBlockBackend(disks[i%len(disks)]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := 0; i < 200; i++ {
		_, data, status := blkRequest(q, blkTIn, 0, nil, 4*SectorSize)
		d.m.Notify(0)
		got := d.mem.get(data, 4*SectorSize)
		if d.mem.get(status, 1)[0] != blkSOK || !bytes.Equal(got, bytes.Repeat(got[:1], len(got))) || got[0]&0xF0 != 0xA0 {
			t.Fatalf("request %d: status %d, data % x...: torn or failed", i, d.mem.get(status, 1)[0], got[:8])
		}
		q.used()
	}
	close(stop)
	wg.Wait()
}
