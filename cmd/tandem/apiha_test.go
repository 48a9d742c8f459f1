package main

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/cmd/tandem/internal/fcapi"
	"github.com/tandemvm/tandem/kvm/kvmtest"
	"github.com/tandemvm/tandem/replicate"
)

// TestAPIHAFlags: PUT /ha's configuration becomes tandem run's --ha flags,
// and a primary's status becomes GET /ha's links and last pause, each
// link's lag counted from the newest epoch.
func TestAPIHAFlags(t *testing.T) {
	if got := haArgs(nil); got != nil {
		t.Errorf("no replication: flags %v", got)
	}
	epoch := 20
	got := strings.Join(haArgs(&fcapi.HAConfig{Replicas: []string{"10.0.0.1:7000", "10.0.0.2:7000"}, Leader: "10.0.0.3:7001",
		Policy: "ft", Mode: "async", EpochMs: &epoch, AuthKeyPath: "/k", InsecurePlaintext: true, Coordinator: "etcd://10.0.0.9:2379"}), " ")
	want := "--ha --replicas 10.0.0.1:7000,10.0.0.2:7000 --leader 10.0.0.3:7001 --policy ft --mode async --epoch 20ms --auth-key /k --insecure-plaintext --coordinator etcd://10.0.0.9:2379"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}

	rep := haReplication(replicate.Status{Generation: 2, Committed: 40, Leader: "L", LeaderConnected: true, Policy: replicate.PolicyFT, Protected: true, Degraded: true,
		Links: []replicate.LinkStatus{{Addr: "a", Alive: true, Acked: 42, Rate: 5e8}, {Addr: "b", Acked: 30}, {Addr: "c", Alive: true, Joining: true}},
		LastEpoch: &replicate.EpochTrace{Epoch: 42, DirtyPages: 7, LinkBytes: []uint64{4096, 0},
			Pause: replicate.Durations{Harvest: 1500 * time.Nanosecond, Group: 2 * time.Microsecond, Transfer: 3 * time.Microsecond, Ack: 4 * time.Microsecond, Total: 11 * time.Microsecond}}})
	if rep.Generation != 2 || rep.CommittedEpoch != 40 || rep.Policy != "ft" || !rep.Protected || !rep.Degraded || !rep.LeaderConnected || rep.Leader != "L" {
		t.Errorf("status %+v", rep)
	}
	wantLinks := []fcapi.HALink{
		{Addr: "a", Alive: true, AckedEpoch: 42, LagEpochs: 0, RateBytesPerS: 5e8, BytesLastEpoch: 4096},
		{Addr: "b", AckedEpoch: 30, LagEpochs: 12},
		{Addr: "c", Alive: true, Joining: true, LagEpochs: 42}, // no bytes counted for it in the trace
	}
	if !slices.Equal(rep.Links, wantLinks) {
		t.Errorf("links\n %+v\nwant\n %+v", rep.Links, wantLinks)
	}
	if p := rep.LastPause; p == nil || *p != (fcapi.HAPause{Epoch: 42, DirtyPages: 7, HarvestUs: 1.5, GroupUs: 2, TransferUs: 3, AckUs: 4, TotalUs: 11}) {
		t.Errorf("last pause %+v", p)
	}
	if rep := haReplication(replicate.Status{Committed: 5, Links: []replicate.LinkStatus{{Acked: 3}}}); rep.LastPause != nil || rep.Links[0].LagEpochs != 2 {
		t.Errorf("before any trace: %+v", rep)
	}
}

// haltingKernel writes a vmlinux that stands in for a Linux guest where
// the test is about the VMM's side only: an ELF whose 64-bit entry turns
// interrupts off and halts for good. The VM is configured, started and
// replicated as a Linux one is; its vCPU sleeps in the kernel's halt.
func haltingKernel(t *testing.T) string {
	t.Helper()
	const load = 0x1000000
	code := []byte{0xFA, 0xF4, 0xEB, 0xFD} // cli; hlt; jmp back to the hlt
	const ehsize, phsize = 64, 56
	h := elf.Header64{Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Entry: load, Phoff: ehsize, Ehsize: ehsize, Phentsize: phsize, Phnum: 1, Shentsize: 64}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	p := elf.Prog64{Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X), Off: ehsize + phsize, Vaddr: 0xFFFFFFFF80000000 + load, Paddr: load,
		Filesz: uint64(len(code)), Memsz: 0x1000, Align: 0x1000}
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, &h)
	binary.Write(&b, binary.LittleEndian, &p)
	b.Write(code)
	path := filepath.Join(t.TempDir(), "halting-vmlinux")
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// startAPIProcess runs tandem --api-sock in dir and returns it and a
// client, once the socket answers.
func startAPIProcess(t *testing.T, dir string, flags ...string) (*process, *apiClient) {
	t.Helper()
	sock := filepath.Join(dir, "api.socket")
	p := startCommand(t, tandemBin, append([]string{"--api-sock", sock}, flags...)...)
	pollFor(t, "the API socket", 30*time.Second, func() bool {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("tandem --api-sock stderr:\n%s", p.stderr.String())
		}
	})
	return p, newAPIClient(t, sock)
}

// diskImage writes a disk image of size bytes, filled with fill.
func diskImage(t *testing.T, path string, size int, fill byte) string {
	t.Helper()
	if err := os.WriteFile(path, bytes.Repeat([]byte{fill}, size), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// haNodes are a replica and a leader (each a tandem replica) on loopback.
type haNodes struct {
	key, replica, leader string
}

// startHANodes starts a replica and a leader holding leaderDisks (its
// copies of the guest's disks), and waits until both listen.
func startHANodes(t *testing.T, leaderDisks ...string) haNodes {
	t.Helper()
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	n := haNodes{key: testKeyFile(t), replica: ports[0], leader: ports[1]}
	replica := startTandem(t, "replica", "--listen", n.replica, "--auth-key", n.key)
	args := []string{"replica", "--listen", n.leader, "--leader", "--replicas", n.replica, "--serial", "none", "--auth-key", n.key}
	for _, d := range leaderDisks {
		args = append(args, "--disk", d)
	}
	leader := startTandem(t, args...)
	for _, p := range []*process{replica, leader} {
		waitStderr(t, p, "replica listening")
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replica stderr:\n%s\nleader stderr:\n%s", replica.stderr.String(), leader.stderr.String())
		}
	})
	return n
}

// haStatus is GET /ha's answer, as the tests read it.
type haStatus struct {
	Enabled        bool            `json:"enabled"`
	Config         json.RawMessage `json:"config"`
	CommittedEpoch uint64          `json:"committed_epoch"`
	Protected      bool            `json:"protected"`
	Policy         string          `json:"policy"`
	Links          []struct {
		Addr           string  `json:"addr"`
		Alive          bool    `json:"alive"`
		AckedEpoch     uint64  `json:"acked_epoch"`
		RateBytesPerS  float64 `json:"rate_bytes_per_s"`
		BytesLastEpoch uint64  `json:"bytes_last_epoch"`
	} `json:"links"`
	LastPause *struct {
		Epoch   uint64  `json:"epoch"`
		TotalUs float64 `json:"total_us"`
	} `json:"last_pause"`
}

func getHA(t *testing.T, api *apiClient) haStatus {
	t.Helper()
	var st haStatus
	body := api.do("GET", "/ha", "", 200)
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("GET /ha: %v: %s", err, body)
	}
	return st
}

// configureHA does PUT /ha to nodes for a guest on one root disk, and
// checks GET /ha shows the configuration before InstanceStart.
func configureHA(t *testing.T, api *apiClient, n haNodes) {
	t.Helper()
	api.do("GET", "/ha", "", 200)
	if st := getHA(t, api); st.Enabled {
		t.Fatalf("GET /ha before PUT /ha: %+v", st)
	}
	api.do("PUT", "/ha", fmt.Sprintf(`{"replicas": [%q], "leader": %q, "policy": "ft", "epoch_ms": 20, "auth_key_path": %q, "turbo": 1}`, n.replica, n.leader, n.key), 400)
	api.do("PUT", "/ha", fmt.Sprintf(`{"replicas": [%q], "leader": %q, "policy": "ft", "epoch_ms": 20, "auth_key_path": %q}`, n.replica, n.leader, n.key), 204)
	if st := getHA(t, api); !st.Enabled || !strings.Contains(string(st.Config), `"epoch_ms":20`) || !strings.Contains(string(st.Config), `"mode":"sync"`) {
		t.Fatalf("GET /ha before InstanceStart: %+v %s", st, st.Config)
	}
}

// checkProtected polls GET /ha until the replication is protected with
// every link alive and a last pause, then until the committed epoch has
// moved on, and returns the last answer. withBytes also waits for a link
// to have sent bytes in the last pause (a guest that writes memory).
func checkProtected(t *testing.T, api *apiClient, n haNodes, withBytes bool) haStatus {
	t.Helper()
	var st haStatus
	pollFor(t, "GET /ha protected, its link alive, with a last pause", 2*time.Minute, func() bool {
		st = getHA(t, api)
		return st.Protected && len(st.Links) == 1 && st.Links[0].Alive && st.LastPause != nil && st.CommittedEpoch > 0
	})
	if st.Policy != "ft" || st.Links[0].Addr != n.replica || st.LastPause.TotalUs <= 0 {
		t.Errorf("GET /ha: %+v", st)
	}
	first := st.CommittedEpoch
	pollFor(t, "the committed epoch advancing", time.Minute, func() bool {
		st = getHA(t, api)
		return st.CommittedEpoch >= first+5 && st.Links[0].AckedEpoch >= first+5
	})
	if withBytes {
		pollFor(t, "a pause that sent bytes on the link", time.Minute, func() bool {
			st = getHA(t, api)
			return st.Links[0].BytesLastEpoch > 0
		})
	}
	t.Logf("GET /ha: committed epoch %d, link %+v, last pause %+v", st.CommittedEpoch, st.Links[0], *st.LastPause)
	return st
}

// TestAPIHA starts a microVM through the API with PUT /ha to a replica and
// a leader on loopback: GET /ha shows the configuration before
// InstanceStart, then the running replication, protected, its epochs
// committing; PUT /ha after the start and PATCH /drives of a replicated
// microVM are refused. The guest is the halting kernel: this is the
// VMM's side, which needs no Linux build (TestAPIHALinux is the same
// with the Linux test guest).
func TestAPIHA(t *testing.T) {
	kvmtest.Open(t)
	dir := t.TempDir()
	root := diskImage(t, filepath.Join(dir, "root.img"), 1<<20, 0)
	n := startHANodes(t, diskImage(t, filepath.Join(dir, "leader-root.img"), 1<<20, 0))
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	p, api := startAPIProcess(t, dir, "--metrics-addr", ports[0])
	api.do("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q, "boot_args": "console=ttyS0"}`, haltingKernel(t)), 204)
	api.do("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id": "rootfs", "path_on_host": %q, "is_root_device": true}`, root), 204)
	configureHA(t, api, n)
	api.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
	checkProtected(t, api, n, false)
	// --metrics-addr serves what GET /metrics on the socket does: the
	// microVM's replication.
	resp, err := http.Get("http://" + ports[0] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	scrape, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(scrape), "tandem_replication_committed_epoch") {
		t.Errorf("--metrics-addr of tandem --api-sock serves no replication metrics:\n%s", scrape)
	}
	api.do("PUT", "/ha", fmt.Sprintf(`{"replicas": [%q], "leader": %q, "auth_key_path": %q}`, n.replica, n.leader, n.key), 400)
	other := diskImage(t, filepath.Join(dir, "other.img"), 2<<20, 0)
	if got := api.do("PATCH", "/drives/rootfs", fmt.Sprintf(`{"drive_id": "rootfs", "path_on_host": %q}`, other), 400); !strings.Contains(got, "replicated VM") {
		t.Errorf("PATCH /drives under --ha: %s, want a fault naming the replication", got)
	}
	if got := api.do("GET", "/vm/config", "", 200); !strings.Contains(got, root) || strings.Contains(got, other) {
		t.Errorf("GET /vm/config after the refused PATCH: %s", got)
	}
	if p.exited() {
		t.Fatalf("tandem --api-sock ended; stderr:\n%s", p.stderr.String())
	}
}

// TestAPIHALinux boots the Linux test guest the way Firecracker's
// --config-file does, with Tandem's "ha" part: tandem --api-sock S
// --config-file FILE and no configuration request. The guest counts on
// its disk, replicated: GET /ha shows it protected, its epochs
// committing, the link carrying bytes (the guest dirties memory), and
// PATCH /drives of the replicated microVM is refused. The file's logger
// part sends the log of the process and of the run it starts to the log
// file (not standard error), with levels; its metrics part gets a last
// metrics line when SIGTERM ends Tandem.
func TestAPIHALinux(t *testing.T) {
	k, initrd := linuxGuest(t)
	dir := t.TempDir()
	root := diskImage(t, filepath.Join(dir, "root.img"), 1<<20, 0)
	logPath, metricsPath := filepath.Join(dir, "tandem.log"), filepath.Join(dir, "metrics.json")
	os.WriteFile(logPath, nil, 0o600)
	os.WriteFile(metricsPath, nil, 0o600)
	n := startHANodes(t, diskImage(t, filepath.Join(dir, "leader-root.img"), 1<<20, 0))
	config := map[string]any{
		"boot-source":    map[string]any{"kernel_image_path": k.Vmlinux, "initrd_path": initrd, "boot_args": "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vda"},
		"drives":         []any{map[string]any{"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false}},
		"machine-config": map[string]any{"vcpu_count": 1, "mem_size_mib": 128},
		"logger":         map[string]any{"log_path": logPath, "level": "Info", "show_level": true},
		"metrics":        map[string]any{"metrics_path": metricsPath},
		"ha":             map[string]any{"replicas": []string{n.replica}, "leader": n.leader, "policy": "ft", "epoch_ms": 20, "auth_key_path": n.key},
	}
	b, _ := json.Marshal(config)
	file := filepath.Join(dir, "vm.json")
	os.WriteFile(file, b, 0o600)
	sock := filepath.Join(dir, "api.socket")
	p := startTandem(t, "--api-sock", sock, "--config-file", file)
	logged := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	pollFor(t, "the replicated guest counting on its disk", 6*time.Minute, func() bool {
		if p.exited() {
			console := p.stdout.String()
			t.Fatalf("tandem --config-file ended (status %d); console's end:\n%s\nstderr:\n%s\nlog file:\n%s",
				p.wait(t, 0), console[max(0, len(console)-2000):], p.stderr.String(), logged())
		}
		return len(consoleTick.FindAllString(p.stdout.String(), -1)) >= 3
	})
	api := newAPIClient(t, sock)
	if got := api.do("GET", "/", "", 200); !strings.Contains(got, `"state":"Running"`) {
		t.Errorf("GET / after the config file's InstanceStart: %s", got)
	}
	checkProtected(t, api, n, true)
	if got := api.do("PATCH", "/drives/rootfs", fmt.Sprintf(`{"drive_id": "rootfs", "path_on_host": %q}`, diskImage(t, filepath.Join(dir, "other.img"), 1<<20, 0)), 400); !strings.Contains(got, "replicated VM") {
		t.Errorf("PATCH /drives under --ha: %s, want a fault naming the replication", got)
	}
	// The API process's line, and the run's.
	for _, want := range []string{`level=INFO msg="starting the microVM"`, `level=INFO msg="control socket listening"`} {
		if !strings.Contains(logged(), want) {
			t.Errorf("the log file has no %q:\n%s", want, logged())
		}
	}
	if strings.Contains(p.stderr.String(), "control socket listening") {
		t.Errorf("the run logged to standard error, not the logger's file:\n%s", p.stderr.String())
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if status := p.wait(t, time.Minute); status != 0 {
		t.Fatalf("tandem --config-file exited with %d after SIGTERM; stderr:\n%s", status, p.stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(func() string { b, _ := os.ReadFile(metricsPath); return string(b) }()), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last["utc_timestamp_ms"] == nil {
		t.Fatalf("the metrics file's last line %q: %v; want utc_timestamp_ms and metrics", lines[len(lines)-1], err)
	}
	if v, ok := last["tandem_replication_epochs_total{result=\"committed\"}"].(float64); !ok || v < 5 {
		t.Errorf("the metrics file's last line counts %v committed epochs, want 5 or more: %s", last["tandem_replication_epochs_total{result=\"committed\"}"], lines[len(lines)-1])
	}
}

// TestAPIDrive: PATCH /drives swaps the backing file of a running
// microVM's second drive: refused before InstanceStart, for a file that
// cannot be opened (nothing changes), and with a rate limiter; done, GET
// /vm/config shows the new file, the run logs the drive's new size, and
// the microVM runs on. The guest is the halting kernel (TestAPIDriveLinux
// is the same with the Linux test guest, which shows what it sees).
func TestAPIDrive(t *testing.T) {
	kvmtest.Open(t)
	dir := t.TempDir()
	root := diskImage(t, filepath.Join(dir, "root.img"), 1<<20, 0)
	data := diskImage(t, filepath.Join(dir, "data.img"), 1<<20, 0x11)
	bigger := diskImage(t, filepath.Join(dir, "bigger.img"), 2<<20, 0x22)
	p, api := startAPIProcess(t, dir)
	api.do("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q, "boot_args": "console=ttyS0"}`, haltingKernel(t)), 204)
	// The root device is configured second: it is still the VM's first.
	api.do("PUT", "/drives/data", fmt.Sprintf(`{"drive_id": "data", "path_on_host": %q, "is_root_device": false}`, data), 204)
	api.do("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id": "rootfs", "path_on_host": %q, "is_root_device": true, "is_read_only": true}`, root), 204)
	api.do("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id": "data", "path_on_host": %q}`, bigger), 400)
	api.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
	before := api.do("GET", "/vm/config", "", 200)
	if got := api.do("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id": "data", "path_on_host": %q}`, filepath.Join(dir, "missing.img")), 400); !strings.Contains(got, "missing.img") {
		t.Errorf("PATCH to a missing file: %s", got)
	}
	api.do("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id": "data", "path_on_host": %q, "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}`, bigger), 400)
	if after := api.do("GET", "/vm/config", "", 200); after != before {
		t.Errorf("refused PATCHes changed the configuration:\n%s\n%s", before, after)
	}
	api.do("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id": "data", "path_on_host": %q, "rate_limiter": null}`, bigger), 204)
	var cfg fcapi.Config
	if err := json.Unmarshal([]byte(api.do("GET", "/vm/config", "", 200)), &cfg); err != nil {
		t.Fatal(err)
	}
	if order := cfg.DriveOrder(); len(order) != 2 || order[0].PathOnHost != root || order[1].PathOnHost != bigger {
		t.Errorf("GET /vm/config after the PATCH: drives %+v", cfg.Drives)
	}
	if !regexp.MustCompile(`drive updated.*drive=1 .*sectors=4096`).MatchString(p.stderr.String()) {
		t.Errorf("the run did not log drive 1's new size (4096 sectors); stderr:\n%s", p.stderr.String())
	}
	// The read-only root drive takes a file read-only, paused too.
	api.do("PATCH", "/vm", `{"state": "Paused"}`, 204)
	api.do("PATCH", "/drives/rootfs", fmt.Sprintf(`{"drive_id": "rootfs", "path_on_host": %q}`, data), 204)
	api.do("PATCH", "/vm", `{"state": "Resumed"}`, 204)
	// A run that survived the swaps pauses and resumes again: its vCPUs
	// and control loop answer.
	api.do("PATCH", "/vm", `{"state": "Paused"}`, 204)
	api.do("PATCH", "/vm", `{"state": "Resumed"}`, 204)
	if got := api.do("GET", "/", "", 200); !strings.Contains(got, `"state":"Running"`) || p.exited() {
		t.Fatalf("after the swaps: %s, exited %v; stderr:\n%s", got, p.exited(), p.stderr.String())
	}
}

// TestAPIDriveLinux: the Linux test guest counts on its second drive
// (tandem_loop=/dev/vdb), which PATCH /drives swaps for a file twice the
// size: the guest's kernel reports the new capacity on the console (the
// config-change interrupt reached its driver), its counts land in the new
// file and no longer in the old, and it counts on.
func TestAPIDriveLinux(t *testing.T) {
	k, initrd := linuxGuest(t)
	dir := t.TempDir()
	root := diskImage(t, filepath.Join(dir, "root.img"), 1<<20, 0)
	data := diskImage(t, filepath.Join(dir, "data.img"), 1<<20, 0)
	bigger := diskImage(t, filepath.Join(dir, "bigger.img"), 2<<20, 0)
	p, api := startAPIProcess(t, dir)
	api.do("PUT", "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`, 204)
	api.do("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path": %q, "initrd_path": %q, "boot_args": "console=ttyS0 reboot=k panic=-1 tandem_loop=/dev/vdb"}`, k.Vmlinux, initrd), 204)
	api.do("PUT", "/drives/rootfs", fmt.Sprintf(`{"drive_id": "rootfs", "path_on_host": %q, "is_root_device": true}`, root), 204)
	api.do("PUT", "/drives/data", fmt.Sprintf(`{"drive_id": "data", "path_on_host": %q, "is_root_device": false}`, data), 204)
	api.do("PUT", "/actions", `{"action_type": "InstanceStart"}`, 204)
	ticks := regexp.MustCompile(`tandem-init: tick (\d+) disk (\d+)`)
	last := func() int {
		m := ticks.FindAllStringSubmatch(p.stdout.String(), -1)
		if len(m) == 0 {
			return -1
		}
		n, _ := strconv.Atoi(m[len(m)-1][1])
		return n
	}
	pollFor(t, "the guest counting on /dev/vdb", 6*time.Minute, func() bool { return last() >= 3 })
	countIn := func(path string) int { // the count the guest wrote at the start of path
		b, _ := os.ReadFile(path)
		n, _ := strconv.Atoi(string(bytes.TrimRight(b[:min(len(b), 32)], "\x00")))
		return n
	}
	if countIn(data) < 1 {
		t.Fatalf("the guest's counts are not in %s", data)
	}
	api.do("PATCH", "/drives/data", fmt.Sprintf(`{"drive_id": "data", "path_on_host": %q}`, bigger), 204)
	at := last()
	pollFor(t, "the guest's kernel reporting the new size", time.Minute, func() bool {
		return regexp.MustCompile(`vdb: detected capacity change from 2048 to 4096`).MatchString(p.stdout.String())
	})
	pollFor(t, "the guest's counts in the new file", time.Minute, func() bool { return countIn(bigger) > at })
	inOld := countIn(data)
	pollFor(t, "the guest counting on", time.Minute, func() bool { return last() >= at+5 })
	if n := countIn(data); n != inOld || n > at+1 {
		t.Errorf("the old file still gets counts: %d at the swap (tick %d), %d now", inOld, at, n)
	}
	if got := api.do("GET", "/vm/config", "", 200); !strings.Contains(got, bigger) || strings.Contains(got, data) {
		t.Errorf("GET /vm/config after the PATCH: %s", got)
	}
}
