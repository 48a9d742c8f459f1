package vmm

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/devices/virtio"
	"github.com/tandemvm/tandem/images"
	"github.com/tandemvm/tandem/kvm/kvmtest"
)

// BenchmarkPauseResume measures one Pause plus Resume of a 2-vCPU guest that
// is busy dirtying memory, and reports the median and 99th percentile.
func BenchmarkPauseResume(b *testing.B) {
	const mem = 64 << 20
	p, err := images.ParseDirtyParams("pattern=sequential,pages=4096,passes=0", mem, 2)
	if err != nil {
		b.Fatal(err)
	}
	tv := newTestVM(b, Config{VCPUs: 2, Memory: MemoryConfig{Bytes: mem}}, "dirty", p.Args())
	tv.start(b)
	ram := tv.Memory().Bytes()
	poll(b, "the guest to start", 10*time.Second, func() bool { n, _ := dirtyStatus(ram, 1); return n > 0 })
	lat := make([]time.Duration, 0, b.N)
	last := [2]uint64{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Time only the pause and resume, with both vCPUs in the guest.
		b.StopTimer()
		poll(b, "both vCPUs to run", 10*time.Second, func() bool {
			for c := range last {
				if n, _ := dirtyStatus(ram, c); n <= last[c] {
					return false
				}
			}
			return true
		})
		b.StartTimer()
		start := time.Now()
		if err := tv.Pause(); err != nil {
			b.Fatal(err)
		}
		tv.Resume()
		lat = append(lat, time.Since(start))
		for c := range last {
			last[c], _ = dirtyStatus(ram, c)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// firstByte records when the guest's first serial byte arrives.
type firstByte chan time.Time

func (f firstByte) Write(p []byte) (int, error) {
	select {
	case f <- time.Now():
	default:
	}
	return len(p), nil
}

// BenchmarkStartToFirstInstruction measures creating a 64 MiB VM, loading a
// guest and running it until its first instruction has executed: the guest's
// first instruction writes COM1, so the time to that exit bounds it from
// above by one instruction.
func BenchmarkStartToFirstInstruction(b *testing.B) {
	kvmtest.Open(b)
	// mov dx, 0x3f8; mov al, '!'; out dx, al; mov al, 0; out 0xf4, al
	image := []byte{0x66, 0xBA, 0xF8, 0x03, 0xB0, '!', 0xEE, 0xB0, 0x00, 0xE6, 0xF4}
	lat := make([]time.Duration, 0, b.N)
	for i := 0; i < b.N; i++ {
		out := make(firstByte, 1)
		start := time.Now()
		vm, err := New(Config{Memory: MemoryConfig{Bytes: 64 << 20}, VCPUs: 1, SerialOut: out})
		if err != nil {
			b.Fatal(err)
		}
		if err := vm.LoadFlat(image, boot.ModeLong64, nil); err != nil {
			b.Fatal(err)
		}
		if _, err := vm.Run(context.Background()); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-out).Sub(start))
		b.StopTimer()
		vm.Close()
		b.StartTimer()
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs-to-first-insn")
}

// BenchmarkLinuxBootToInit boots the images/linux guest (vmlinux through
// its PVH entry, 128 MiB, 1 vCPU, virtio-rng) to its init's first marker
// and reports where the time goes: Tandem's own path (creating the VM with
// its memory, adding the device, loading kernel and initrd) and the
// guest's milestones counted from the start. Where guest ring 0 runs in
// KVM's instruction emulator (PVM hosts) one boot takes tens of seconds:
// run it with -benchtime 1x.
func BenchmarkLinuxBootToInit(b *testing.B) {
	k := testKernel(b)
	initrd := testInitramfs(b)
	kernel, err := os.ReadFile(k.Vmlinux)
	if err != nil {
		b.Fatal(err)
	}
	var newVM, addDev, load, toInit, toMarker time.Duration
	for i := 0; i < b.N; i++ {
		out := newMilestoneClock("Run /init", "tandem-init: up")
		start := time.Now()
		vm, err := New(Config{Memory: MemoryConfig{Bytes: 128 << 20}, VCPUs: 1, SerialOut: out})
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := vm.AddVirtio(virtio.NewRNG()); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		if _, err := vm.LoadLinux(LinuxConfig{Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0 reboot=k panic=-1"}); err != nil {
			b.Fatal(err)
		}
		t3 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		res, err := vm.Run(ctx)
		cancel()
		if err != nil || res.Kind != ExitReset {
			b.Fatalf("run ended with %v, %v; console:\n%s", res, err, out.String())
		}
		initAt, ok1 := out.since(start, "Run /init")
		upAt, ok2 := out.since(start, "tandem-init: up")
		if !ok1 || !ok2 {
			b.Fatalf("the guest did not reach its init; console:\n%s", out.String())
		}
		newVM += t1.Sub(start)
		addDev += t2.Sub(t1)
		load += t3.Sub(t2)
		toInit += initAt
		toMarker += upAt
		b.StopTimer()
		vm.Close()
		b.StartTimer()
	}
	n := float64(b.N)
	b.ReportMetric(float64(newVM.Microseconds())/n/1000, "ms-new-vm")
	b.ReportMetric(float64(addDev.Microseconds())/n/1000, "ms-add-device")
	b.ReportMetric(float64(load.Microseconds())/n/1000, "ms-load-linux")
	b.ReportMetric(toInit.Seconds()/n, "s-to-run-init")
	b.ReportMetric(toMarker.Seconds()/n, "s-to-init-marker")
}
