package vmm

import (
	"bytes"
	"cmp"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandemvm/tandem/boot"
	"github.com/tandemvm/tandem/devices"
	"github.com/tandemvm/tandem/devices/virtio"
	linuxguest "github.com/tandemvm/tandem/images/linux"
	"github.com/tandemvm/tandem/kvm"
	"github.com/tandemvm/tandem/kvm/kvmtest"
)

// testKernel returns the images/linux kernel, building it if this machine
// has not yet. Without KVM the test skips (kvmtest's policy). Without the
// kernel sources or compilers it skips too, unless TANDEM_REQUIRE_KVM asks
// for every KVM test to run (CI installs them).
func testKernel(t testing.TB) linuxguest.Kernel {
	t.Helper()
	kvmtest.Open(t)
	ctx := context.Background()
	// A test's deadline bounds the build; a benchmark has none.
	if tt, ok := t.(*testing.T); ok {
		if d, ok := tt.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, d.Add(-2*time.Minute))
			defer cancel()
		}
	}
	k, err := linuxguest.BuildKernel(ctx)
	if err != nil {
		if errors.Is(err, linuxguest.ErrToolsMissing) && !kvmtest.Required() {
			t.Skipf("cannot build the guest kernel here: %v", err)
		}
		t.Fatal(err)
	}
	return k
}

func testInitramfs(t testing.TB) []byte {
	t.Helper()
	path, err := linuxguest.BuildInitramfs(context.Background())
	if err != nil {
		if errors.Is(err, linuxguest.ErrToolsMissing) && !kvmtest.Required() {
			t.Skipf("cannot build the initramfs here: %v", err)
		}
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// milestoneClock is a serial sink that notes when each of its marks first
// appears on the console. It looks only at the newly written bytes (and
// enough before them to catch a mark split across writes): the UART
// writes a byte at a time from the vCPU thread, so rescanning the whole
// console on every write would slow the guest it measures.
type milestoneClock struct {
	serialBuffer
	marks   []string
	longest int
	mu      sync.Mutex
	tail    []byte // the last bytes written, up to longest-1
	at      map[string]time.Time
}

// newMilestoneClock returns a sink watching for marks; "Linux version" is
// always among them.
func newMilestoneClock(marks ...string) *milestoneClock {
	m := &milestoneClock{marks: append([]string{"Linux version"}, marks...), at: map[string]time.Time{}}
	for _, mark := range m.marks {
		m.longest = max(m.longest, len(mark))
	}
	return m
}

func (m *milestoneClock) Write(p []byte) (int, error) {
	n, err := m.serialBuffer.Write(p)
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.at) == len(m.marks) {
		return n, err
	}
	window := append(m.tail, p...)
	for _, mark := range m.marks {
		if _, seen := m.at[mark]; !seen && bytes.Contains(window, []byte(mark)) {
			m.at[mark] = now
		}
	}
	keep := min(len(window), m.longest-1)
	m.tail = append(m.tail[:0:0], window[len(window)-keep:]...)
	return n, err
}

// since returns when mark appeared, counted from start, and whether it did.
func (m *milestoneClock) since(start time.Time, mark string) (time.Duration, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	at, ok := m.at[mark]
	return at.Sub(start), ok
}

// report lists the milestones seen, counted from start.
func (m *milestoneClock) report(start time.Time) string {
	var parts []string
	for _, mark := range m.marks {
		if d, ok := m.since(start, mark); ok {
			parts = append(parts, fmt.Sprintf("%q %.1fs", mark, d.Seconds()))
		}
	}
	return strings.Join(parts, ", ")
}

// symbolTable maps kernel addresses to function names.
type symbolTable []elf.Symbol

// kernelSymbols reads the function symbols of an ELF vmlinux, sorted by
// address.
func kernelSymbols(t *testing.T, path string) symbolTable {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	var funcs symbolTable
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			funcs = append(funcs, s)
		}
	}
	slices.SortFunc(funcs, func(a, b elf.Symbol) int { return cmp.Compare(a.Value, b.Value) })
	return funcs
}

// name returns "function+offset" for addr, or the address alone.
func (st symbolTable) name(addr uint64) string {
	i, _ := slices.BinarySearchFunc(st, addr, func(s elf.Symbol, a uint64) int { return cmp.Compare(s.Value, a) })
	if i < len(st) && st[i].Value == addr {
		return st[i].Name
	}
	if i == 0 {
		return fmt.Sprintf("%#x", addr)
	}
	s := st[i-1]
	return fmt.Sprintf("%s+%#x", s.Name, addr-s.Value)
}

var e820Line = regexp.MustCompile(`BIOS-e820: (\[mem 0x[0-9a-f]+-0x[0-9a-f]+\] .*)`)

// checkBanner checks what the kernel prints early against what Tandem
// passed: the banner, the exact command line, the e820 map, the initrd
// and the processors of the MP table.
func checkBanner(t *testing.T, out string, b *boot.LinuxBoot, vcpus int) {
	t.Helper()
	out = strings.ReplaceAll(out, "\r\n", "\n") // the 8250 console sends CRLF
	if !strings.Contains(out, "Linux version 6.12") {
		t.Fatalf("no Linux banner on the console:\n%s", out)
	}
	if want := "Command line: " + b.Cmdline + "\n"; !strings.Contains(out, want) {
		t.Errorf("console lacks %q", want)
	}
	var got []string
	for _, m := range e820Line.FindAllStringSubmatch(out, -1) {
		got = append(got, strings.TrimSpace(m[1]))
	}
	var want []string
	for _, e := range b.E820 {
		want = append(want, e.String())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("kernel's BIOS-e820 map:\n%s\nTandem's:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if b.Initrd.Size > 0 {
		// The kernel prints the initrd's pages (arch/x86/kernel/setup.c).
		end := (b.Initrd.End()+boot.PageSize-1)&^(boot.PageSize-1) - 1
		if want := fmt.Sprintf("RAMDISK: [mem 0x%08x-0x%08x]", b.Initrd.Start, end); !strings.Contains(out, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if want := fmt.Sprintf("Processors: %d", vcpus); !strings.Contains(out, want) {
		t.Errorf("console lacks %q (the MP table)", want)
	}
}

// TestLinuxBoot boots the images/linux kernel through each entry with an
// initrd and virtio devices, and checks the early console against what
// Tandem passed: banner, exact command line, e820 map, initrd, MP table.
//
// With hardware virtualization every boot runs to the init, which
// reboots. Where guest ring 0 runs in KVM's instruction emulator (PVM)
// the test stops each VM once the checked lines are out, to spare the
// slow emulator; TestLinuxUserspace boots to userspace there.
func TestLinuxBoot(t *testing.T) {
	k := testKernel(t)
	initrd := testInitramfs(t)
	for _, tc := range []struct {
		name   string
		kernel string
		entry  boot.LinuxEntry
		want   boot.LinuxEntry
		format boot.KernelFormat
	}{
		{"vmlinux-pvh", k.Vmlinux, boot.EntryPVH, boot.EntryPVH, boot.FormatELF},
		{"vmlinux-64bit", k.Vmlinux, boot.Entry64, boot.Entry64, boot.FormatELF},
		{"bzImage", k.BzImage, boot.EntryAuto, boot.Entry64, boot.FormatBzImage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kernel, err := os.ReadFile(tc.kernel)
			if err != nil {
				t.Fatal(err)
			}
			const vcpus = 2
			out := newMilestoneClock()
			vm, err := New(Config{Memory: MemoryConfig{Bytes: 256 << 20}, VCPUs: vcpus, SerialOut: out})
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Close()
			disk := filepath.Join(t.TempDir(), "disk.img")
			if err := os.WriteFile(disk, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			be, err := virtio.OpenFileBackend(disk, true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := vm.AddVirtio(virtio.NewBlock(be, "test")); err != nil {
				t.Fatal(err)
			}
			if _, err := vm.AddVirtio(virtio.NewRNG()); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			b, err := vm.LoadLinux(LinuxConfig{
				Kernel:  kernel,
				Initrd:  initrd,
				Cmdline: "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=-1 tandem.test=" + tc.name,
				Entry:   tc.entry,
			})
			if err != nil {
				t.Fatal(err)
			}
			if b.Entry != tc.want || b.Format != tc.format {
				t.Fatalf("loaded as %v through %v, want %v through %v", b.Format, b.Entry, tc.format, tc.want)
			}
			for _, p := range []string{"virtio_mmio.device=4K@0xd0000000:5", "virtio_mmio.device=4K@0xd0001000:6"} {
				if !strings.Contains(b.Cmdline, p) {
					t.Errorf("command line %q lacks %s", b.Cmdline, p)
				}
			}

			// The emulator runs a few million instructions a second, and
			// less on a loaded machine: the limit is generous, and
			// reaching it means a hang.
			const limit = 5 * time.Minute
			ctx, cancel := context.WithTimeout(context.Background(), limit)
			defer cancel()
			type result struct {
				res Result
				err error
			}
			done := make(chan result, 1)
			go func() {
				r, err := vm.Run(ctx)
				done <- result{r, err}
			}()
			stopEarly := GuestCodeEmulated()
			var r result
		wait:
			for {
				select {
				case r = <-done:
					break wait
				case <-time.After(10 * time.Millisecond):
					// The MP table's processor count is the last line
					// checked.
					if stopEarly && strings.Contains(out.String(), fmt.Sprintf("Processors: %d", vcpus)) {
						vm.Stop()
						r = <-done
						break wait
					}
				}
			}
			took := time.Since(start)
			if ctx.Err() != nil {
				t.Fatalf("the VM was still running after %v (a hang); console:\n%s", limit, out.String())
			}
			t.Logf("%s: %s; run ended after %v", tc.name, out.report(start), took.Round(time.Millisecond))
			checkBanner(t, out.String(), b, vcpus)

			if !stopEarly {
				if r.err != nil || r.res.Kind != ExitReset {
					t.Fatalf("with hardware virtualization: run ended with %v, %v; want the init's reboot\n%s", r.res, r.err, out.String())
				}
				return
			}
			if r.err != nil || r.res.Kind != ExitStopped {
				t.Fatalf("run ended with %v, %v before the test stopped it\n%s", r.res, r.err, out.String())
			}
			if !slices.Contains(strings.Fields(b.Cmdline), "noint3selftest") {
				t.Errorf("command line %q lacks noint3selftest, which the emulator needs", b.Cmdline)
			}
		})
	}
}

func TestLinuxRejectsBadKernels(t *testing.T) {
	kvmtest.Open(t)
	vm, err := New(Config{Memory: MemoryConfig{Bytes: 64 << 20}, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	for name, k := range map[string][]byte{
		"empty":      nil,
		"text":       []byte("#!/bin/sh\necho not a kernel\n"),
		"flat guest": bytes.Repeat([]byte{0x90}, 4096),
	} {
		if _, err := vm.LoadLinux(LinuxConfig{Kernel: k}); !errors.Is(err, boot.ErrImage) {
			t.Errorf("%s: LoadLinux = %v, want boot.ErrImage", name, err)
		}
	}
}

func TestHostHasHardwareVirt(t *testing.T) {
	for _, tc := range []struct {
		info string
		want bool
	}{
		{"processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae vmx sse\n", true},
		{"flags\t\t: fpu svm lm\n", true},
		{"flags\t\t: fpu hypervisor lm xsave\nbugs\t\t: vmx_ish\n", false},
		{"", false},
	} {
		if got := HostHasHardwareVirt([]byte(tc.info)); got != tc.want {
			t.Errorf("HostHasHardwareVirt(%q) = %v, want %v", tc.info, got, tc.want)
		}
	}
}

// TestLinuxUserspace boots the images/linux guest to its init with 1 and
// 2 vCPUs. The init reads a file from a virtio-blk disk, exchanges UDP
// datagrams with a peer on the host end of a TAP device, writes to its
// virtio-console and reads virtio-rng, then reboots, which stops the VM.
// The peer lives in a network namespace the test creates, so nothing
// leaves this machine. Where guest ring 0 runs in KVM's instruction
// emulator (PVM hosts) the boot takes a minute or so; the log gives the
// milestones.
func TestLinuxUserspace(t *testing.T) {
	k := testKernel(t)
	initrd := testInitramfs(t)
	kernel, err := os.ReadFile(k.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	const diskText = "tandem virtio-blk test file"
	disk := makeExt2(t, map[string]string{"tandem.txt": diskText + "\n"})
	for _, vcpus := range []int{1, 2} {
		t.Run(fmt.Sprintf("vcpus=%d", vcpus), func(t *testing.T) {
			bootUserspace(t, k.Vmlinux, kernel, initrd, disk, diskText, vcpus)
		})
	}
}

// bootUserspace runs one TestLinuxUserspace boot. It must run on a
// goroutine of its own: it moves that goroutine's thread into a new
// network namespace for good.
func bootUserspace(t *testing.T, vmlinux string, kernel, initrd []byte, disk, diskText string, vcpus int) {
	// The network peer: a TAP in a namespace of this test's own, and a
	// UDP echo service on its host end.
	runtime.LockOSThread() // never unlocked: the thread leaves with the namespace
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		if kvmtest.Required() {
			t.Fatalf("cannot create a network namespace: %v", err)
		}
		t.Skipf("cannot create a network namespace (needs root): %v", err)
	}
	tap, tapName, err := virtio.OpenTAP("tndm%d")
	if err != nil {
		t.Fatal(err)
	}
	configureInterface(t, tapName, [4]byte{10, 0, 2, 1}, 24)
	udp, err := net.ListenPacket("udp4", "10.0.2.1:7777")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	pings := make(chan string, 16)
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := udp.ReadFrom(buf)
			if err != nil {
				return
			}
			select {
			case pings <- string(buf[:n]):
			default:
			}
			udp.WriteTo([]byte("pong from the host"), from)
		}
	}()

	// The virtio-console channel, on a Unix socket.
	chanPath := filepath.Join(t.TempDir(), "channel.sock")
	host, err := devices.OpenConsole("unix:" + chanPath)
	if err != nil {
		t.Fatal(err)
	}
	client, err := net.Dial("unix", chanPath)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	channelOut := &serialBuffer{}
	go io.Copy(channelOut, client)

	out := newMilestoneClock("Run /init", "tandem-init: up", "tandem-init: done")
	vm, err := New(Config{Memory: MemoryConfig{Bytes: 256 << 20}, VCPUs: vcpus, SerialOut: out})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	be, err := virtio.OpenFileBackend(disk, true)
	if err != nil {
		t.Fatal(err)
	}
	nic, err := virtio.NewNet(tap, net.HardwareAddr{0x02, 0x54, 0x4E, 0x44, 0x4D, 0x00}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, dev := range []virtio.Device{virtio.NewBlock(be, "disk0"), nic, virtio.NewConsole(host, nil), virtio.NewRNG()} {
		if _, err := vm.AddVirtio(dev); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	b, err := vm.LoadLinux(LinuxConfig{
		Kernel:  kernel,
		Initrd:  initrd,
		Cmdline: "console=ttyS0 reboot=k panic=-1 tandem_ip=10.0.2.15/24 tandem_peer=10.0.2.1:7777",
	})
	if err != nil {
		t.Fatal(err)
	}

	// The emulator's speed follows the machine's load; the limit only
	// catches a hang.
	// A stuck guest is reported with where its vCPUs are.
	const limit = 6 * time.Minute
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stuck []VCPUStatus
	var stuckErr error
	watchdog := time.AfterFunc(limit, func() {
		stuck, stuckErr = vm.VCPUStatuses()
		cancel()
	})
	res, err := vm.Run(ctx)
	console := strings.ReplaceAll(out.String(), "\r\n", "\n")
	t.Logf("%d vCPUs: %s", vcpus, out.report(start))
	if !watchdog.Stop() {
		<-ctx.Done()
		syms := kernelSymbols(t, vmlinux)
		var where []string
		for _, s := range stuck {
			where = append(where, s.String()+" in "+syms.name(s.RIP))
		}
		t.Fatalf("the guest was still running after %v (%v):\n%s\nconsole:\n%s", limit, stuckErr, strings.Join(where, "\n"), console)
	}
	if err != nil || res.Kind != ExitReset {
		t.Fatalf("run ended with %v, %v; want the init's reboot; console:\n%s", res, err, console)
	}
	checkBanner(t, console, b, vcpus)
	for _, want := range []string{
		"tandem-init: up\n",
		"tandem-init: disk: " + diskText + "\n",
		"tandem-init: net: pong from the host\n",
		"tandem-init: hvc0: ok\n",
		"tandem-init: rng: 16 bytes\n",
		"tandem-init: done\n",
	} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	if strings.Contains(console, "FAIL") {
		t.Errorf("the init reported a failure:\n%s", console)
	}
	select {
	case p := <-pings:
		if p != "ping from tandem-init" {
			t.Errorf("peer got %q", p)
		}
	default:
		t.Error("the peer got no datagram through the TAP device")
	}
	poll(t, "the virtio-console message", 5*time.Second, func() bool {
		return strings.Contains(channelOut.String(), "tandem-init: hello over virtio-console")
	})
}

// makeExt2 returns the path of a small ext2 image holding files.
func makeExt2(t *testing.T, files map[string]string) string {
	t.Helper()
	mkfs, err := exec.LookPath("mke2fs")
	if err != nil {
		if kvmtest.Required() {
			t.Fatal("mke2fs not found (apt-get install e2fsprogs)")
		}
		t.Skip("mke2fs not found (apt-get install e2fsprogs)")
	}
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "disk.ext2")
	if err := os.WriteFile(img, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-t", "ext2", "-d", root, img).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v: %s", err, out)
	}
	return img
}

// configureInterface gives an interface an IPv4 address and brings it up.
func configureInterface(t *testing.T, name string, addr [4]byte, prefix int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	req, err := unix.NewIfreq(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := req.SetInet4Addr(addr[:]); err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFADDR, req); err != nil {
		t.Fatalf("set address of %s: %v", name, err)
	}
	mask := net.CIDRMask(prefix, 32)
	if err := req.SetInet4Addr(mask); err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFNETMASK, req); err != nil {
		t.Fatalf("set netmask of %s: %v", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, req); err != nil {
		t.Fatal(err)
	}
	req.SetUint16(req.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, req); err != nil {
		t.Fatalf("bring %s up: %v", name, err)
	}
}

// TestLinuxRejectsTruncatedKernels cuts the real images/linux kernels
// short: the loader must refuse them with an error that says so.
func TestLinuxRejectsTruncatedKernels(t *testing.T) {
	k := testKernel(t)
	vm, err := New(Config{Memory: MemoryConfig{Bytes: 256 << 20}, VCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	for _, path := range []string{k.BzImage, k.Vmlinux} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []int{0x300, len(b) / 2, len(b) - 1} {
			_, err := vm.LoadLinux(LinuxConfig{Kernel: b[:n]})
			if !errors.Is(err, boot.ErrImage) || !strings.Contains(err.Error(), "truncated") {
				t.Errorf("%s cut to %d bytes: %v", filepath.Base(path), n, err)
			}
		}
	}
}

func TestEmulatorCmdline(t *testing.T) {
	host := []kvm.CPUIDEntry{
		{Function: 1, ECX: cpuid1ECXXSAVE | cpuid1ECXPOPCNT | 1<<31},
		{Function: 7, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, EBX: cpuid7EBXSMAP},
		{Function: 7, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex, EBX: cpuid7EBXSMAP},
	}
	params := func(ps []KernelParam) string {
		var s []string
		for _, p := range ps {
			if p.Why == "" {
				t.Errorf("%s has no reason", p.Param)
			}
			s = append(s, p.Param)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		name    string
		cmdline string
		cpuid   []kvm.CPUIDEntry
		want    string
	}{
		{"host bits reported", "console=ttyS0", host, "noxsave clearcpuid=smap,popcnt noint3selftest"},
		{"nothing reported", "console=ttyS0", []kvm.CPUIDEntry{{Function: 1}, {Function: 7}}, "noint3selftest"},
		{"popcnt only", "", []kvm.CPUIDEntry{{Function: 1, ECX: cpuid1ECXPOPCNT}}, "clearcpuid=popcnt noint3selftest"},
		{"smap only", "", []kvm.CPUIDEntry{{Function: 7, EBX: cpuid7EBXSMAP}}, "clearcpuid=smap noint3selftest"},
		{"smap in subleaf 1 is another bit", "", []kvm.CPUIDEntry{{Function: 7, Index: 1, EBX: cpuid7EBXSMAP}, {Function: 7}}, "noint3selftest"},
		{"user gave them", "noxsave clearcpuid=pku noint3selftest", host, ""},
		{"a prefix is not the parameter", "noxsaves clearcpuidx=1", host, "noxsave clearcpuid=smap,popcnt noint3selftest"},
	} {
		if got := params(EmulatorCmdline(tc.cmdline, tc.cpuid)); got != tc.want {
			t.Errorf("%s: EmulatorCmdline(%q) = %q, want %q", tc.name, tc.cmdline, got, tc.want)
		}
	}
}

func TestKernelSymbolName(t *testing.T) {
	st := symbolTable{{Name: "a", Value: 0x1000}, {Name: "b", Value: 0x2000}}
	for addr, want := range map[uint64]string{0x10: "0x10", 0x1000: "a", 0x1004: "a+0x4", 0x2000: "b", 0x3000: "b+0x1000"} {
		if got := st.name(addr); got != want {
			t.Errorf("name(%#x) = %q, want %q", addr, got, want)
		}
	}
}

func TestMilestoneClock(t *testing.T) {
	m := newMilestoneClock("Run /init", "tandem-init: up")
	start := time.Now()
	// Byte by byte, as the UART writes, with a mark split across writes.
	for _, c := range []byte("xx Linux version 6.12\nRun /in") {
		m.Write([]byte{c})
	}
	if _, ok := m.since(start, "Linux version"); !ok {
		t.Error("missed a mark written a byte at a time")
	}
	if _, ok := m.since(start, "Run /init"); ok {
		t.Error("saw a mark before it was complete")
	}
	m.Write([]byte("it as init process\ntandem-init: u"))
	m.Write([]byte("p\n"))
	for _, mark := range []string{"Run /init", "tandem-init: up"} {
		if _, ok := m.since(start, mark); !ok {
			t.Errorf("missed %q split across writes", mark)
		}
	}
	if got := m.String(); !strings.HasSuffix(got, "tandem-init: up\n") {
		t.Errorf("console %q", got)
	}
}
