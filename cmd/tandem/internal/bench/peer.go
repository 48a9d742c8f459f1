package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/tandemvm/tandem/replicate/auth"
)

// The peer comparison (tandem bench --peer qemu) moves the same guest
// memory with another VMM and with Tandem over the same loopback, side by
// side in one run: QEMU's precopy migration with one channel and with
// multifd, against Tandem's initial full copy (the first epoch of
// replication, every page, fast policy) over as many links, and Tandem's
// recovery of that memory by the leader. The memory holds the same
// contents on both sides (every page non-zero, so QEMU's zero-page
// detection skips none) and no guest runs while it is moved, so the
// figures are the movers' own.

// PeerConfig is a peer comparison's configuration.
type PeerConfig struct {
	Out      string
	MemBytes uint64
	// Streams are the channel counts compared: QEMU multifd channels
	// (1: plain precopy) against Tandem links and replicas.
	Streams []int
	Reps    int
	// QEMU is the qemu-system-x86_64 to run; "" looks it up in PATH.
	QEMU string
	// Accel is QEMU's accelerator: kvm (the default) or tcg.
	Accel string
}

// DefaultPeerConfig returns a preset's peer comparison.
func DefaultPeerConfig(p Preset) PeerConfig {
	c := PeerConfig{Out: "bench-peer", MemBytes: 512 << 20, Streams: []int{1, 4}, Reps: 3, Accel: "kvm"}
	switch p {
	case PresetQuick:
		c.Reps = 2
	case PresetSmoke:
		c.MemBytes, c.Reps = 64<<20, 1
	}
	return c
}

// ErrNoQEMU reports that the peer comparison found no QEMU to run.
var ErrNoQEMU = errors.New("bench: no qemu-system-x86_64 in PATH (Debian: apt-get install --no-install-recommends qemu-system-x86)")

// PeerRun is one move of the memory.
type PeerRun struct {
	System  string `json:"system"` // "qemu" or "tandem"
	What    string `json:"what"`   // "migration", "full copy" or "recovery"
	Streams int    `json:"streams"`
	// Mode is QEMU's migration (precopy, multifd) or Tandem's connection
	// mode (encrypted, plaintext).
	Mode     string        `json:"mode"`
	Rep      int           `json:"rep"`
	Took     time.Duration `json:"took_ns"`
	Bytes    uint64        `json:"bytes"` // QEMU: RAM bytes it sent; Tandem: the memory
	Verified bool          `json:"verified,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// PeerResults are a peer comparison's runs and its machine.
type PeerResults struct {
	Env  Env       `json:"env"`
	QEMU string    `json:"qemu"` // its version line
	Mem  uint64    `json:"mem_bytes"`
	Runs []PeerRun `json:"runs"`
}

const (
	peerRaw    = "peer.json"
	peerReport = "peer.md"
)

// RunPeer runs the peer comparison and writes DIR/peer.json and
// DIR/peer.md.
func RunPeer(ctx context.Context, cfg PeerConfig, opt Options) (*PeerResults, error) {
	if cfg.MemBytes < 16<<20 || cfg.MemBytes%(2<<20) != 0 {
		return nil, fmt.Errorf("bench: memory size %d: want a multiple of 2 MiB, at least 16 MiB", cfg.MemBytes)
	}
	if len(cfg.Streams) == 0 || cfg.Reps < 1 {
		return nil, errors.New("bench: no streams or repetitions to compare")
	}
	qemu := cfg.QEMU
	if qemu == "" {
		var err error
		if qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
			return nil, ErrNoQEMU
		}
	}
	version, err := exec.Command(qemu, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("bench: %s --version: %w", qemu, err)
	}
	bcfg := DefaultConfig(PresetQuick)
	bcfg.Out = cfg.Out
	b, closeLog, err := newBencher(bcfg, opt, "peer.log")
	if err != nil {
		return nil, err
	}
	defer closeLog()
	res := &PeerResults{Env: machineEnv(bcfg, opt.Version), QEMU: strings.SplitN(strings.TrimSpace(string(version)), "\n", 2)[0], Mem: cfg.MemBytes}
	b.progress("tandem bench --peer qemu: %d MiB over loopback, %v streams, %d repetitions; %s", cfg.MemBytes>>20, cfg.Streams, cfg.Reps, res.QEMU)

	scratch, err := os.MkdirTemp(peerScratchRoot(), "tandem-peer-")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(scratch)
	image := filepath.Join(scratch, "guest-ram")
	if err := writeSynthImage(image, cfg.MemBytes); err != nil {
		return nil, err
	}

	// Tandem runs with the bench's own connections (encrypted unless
	// --insecure-plaintext) and in plaintext, as QEMU's migration runs.
	modes := []*auth.Credentials{b.auth}
	if b.auth.Mode() != auth.Plaintext {
		plain, err := plaintextCreds()
		if err != nil {
			return nil, err
		}
		modes = append(modes, plain)
	}
	own := b.auth
	defer func() { b.auth = own }()
	for _, n := range cfg.Streams {
		for rep := range cfg.Reps {
			if ctx.Err() != nil {
				break
			}
			r := migrateQEMU(ctx, qemu, cfg.Accel, scratch, image, cfg.MemBytes, n)
			r.Rep = rep
			res.Runs = append(res.Runs, r)
			b.progress("qemu %s, %d channel(s): %s%s", r.Mode, n, secs(r.Took.Seconds()), errNote(r.Error))
			for _, creds := range modes {
				b.auth = creds
				mode := creds.Mode().String()
				for _, rec := range b.runRecovery(ctx, cfg.MemBytes, n, 1) {
					res.Runs = append(res.Runs,
						PeerRun{System: "tandem", What: "full copy", Streams: n, Mode: mode, Rep: rep, Took: rec.SyncTook, Bytes: cfg.MemBytes, Error: rec.Error},
						PeerRun{System: "tandem", What: "recovery", Streams: n, Mode: mode, Rep: rep, Took: rec.Took, Bytes: cfg.MemBytes, Verified: rec.Verified, Error: rec.Error})
					b.progress("tandem %s, %d link(s): full copy %s, recovery %s%s", mode, n, secs(rec.SyncTook.Seconds()), secs(rec.Took.Seconds()), errNote(rec.Error))
				}
			}
		}
	}
	res.Env.Finished = time.Now()
	res.Env.LoadAvg[1] = loadAvg()
	if err := writeJSON(cfg.Out, peerRaw, res); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, peerReport), []byte(res.Markdown()), 0o644); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	b.progress("wrote %s and %s", filepath.Join(cfg.Out, peerReport), filepath.Join(cfg.Out, peerRaw))
	return res, nil
}

// peerScratchRoot is where the source image lives: tmpfs when there is
// one, so that neither side waits on a disk.
func peerScratchRoot() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// writeSynthImage writes memBytes of the synthetic source's contents
// (newSynthSource) to path: QEMU's source guest maps it as its RAM.
func writeSynthImage(path string, memBytes uint64) error {
	src, err := newSynthSource(memBytes, nil)
	if err != nil {
		return err
	}
	defer src.Close()
	if err := os.WriteFile(path, src.Memory(), 0o600); err != nil {
		return fmt.Errorf("bench: writing the source image: %w", err)
	}
	return nil
}

// plaintextCreds are credentials with a key made for the run, in
// plaintext mode (authenticated, then in clear), as QEMU's migration runs.
func plaintextCreds() (*auth.Credentials, error) {
	k, err := auth.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	c, err := auth.NewCredentials(k, auth.Plaintext)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	return c, nil
}

// migrateQEMU migrates a paused QEMU VM of memBytes, its RAM the image
// file, to a second QEMU on loopback, with channels multifd channels (1:
// plain precopy), and times it from the migrate command to QEMU's
// "completed".
func migrateQEMU(ctx context.Context, qemu, accel, dir, image string, memBytes uint64, channels int) PeerRun {
	mode := "precopy"
	if channels > 1 {
		mode = fmt.Sprintf("multifd(%d)", channels)
	}
	run := PeerRun{System: "qemu", What: "migration", Streams: channels, Mode: mode}
	err := func() error {
		size := fmt.Sprintf("%dM", memBytes>>20)
		common := []string{"-accel", accel, "-machine", "pc,memory-backend=ram", "-m", size,
			"-nodefaults", "-no-user-config", "-display", "none", "-S"}
		src, err := startQEMU(ctx, qemu, filepath.Join(dir, "src"), append(common,
			"-object", "memory-backend-file,id=ram,size="+size+",mem-path="+image+",share=off"))
		if err != nil {
			return err
		}
		defer src.stop()
		dst, err := startQEMU(ctx, qemu, filepath.Join(dir, "dst"), append(common,
			"-object", "memory-backend-ram,id=ram,size="+size, "-incoming", "defer"))
		if err != nil {
			return err
		}
		defer dst.stop()
		if channels > 1 {
			for _, q := range []*qemuProc{src, dst} {
				if _, err := q.qmp.Execute("migrate-set-capabilities", map[string]any{
					"capabilities": []map[string]any{{"capability": "multifd", "state": true}}}); err != nil {
					return err
				}
				if _, err := q.qmp.Execute("migrate-set-parameters", map[string]any{"multifd-channels": channels}); err != nil {
					return err
				}
			}
		}
		// QEMU's default bandwidth limit (128 MiB/s) would measure the limit.
		if _, err := src.qmp.Execute("migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
			return err
		}
		port, err := freeLoopbackPort()
		if err != nil {
			return err
		}
		uri := "tcp:127.0.0.1:" + port
		if _, err := dst.qmp.Execute("migrate-incoming", map[string]any{"uri": uri}); err != nil {
			return err
		}
		start := time.Now()
		if _, err := src.qmp.Execute("migrate", map[string]any{"uri": uri}); err != nil {
			return err
		}
		deadline := start.Add(5*time.Minute + time.Duration(memBytes>>20)*100*time.Millisecond)
		for {
			var st qemuMigration
			if err := src.qmp.ExecuteInto("query-migrate", nil, &st); err != nil {
				return err
			}
			switch st.Status {
			case "completed":
				run.Took = time.Since(start)
				run.Bytes = st.RAM.Transferred
				return nil
			case "failed", "cancelled":
				return fmt.Errorf("qemu migration %s: %s", st.Status, st.ErrorDesc)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("qemu migration still %q after %v", st.Status, time.Since(start).Round(time.Second))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	if err != nil {
		run.Error = err.Error()
	}
	return run
}

// qemuMigration is the part of QMP's query-migrate answer the bench reads.
type qemuMigration struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	RAM       struct {
		Transferred uint64 `json:"transferred"`
	} `json:"ram"`
}

// freeLoopbackPort returns a loopback port that was free a moment ago.
func freeLoopbackPort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("bench: a free port: %w", err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port, nil
}

// Markdown is the peer comparison's report.
func (res *PeerResults) Markdown() string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "# tandem bench --peer qemu\n\n")
	fmt.Fprintf(&sb, "Machine: %s, %d CPUs, %s, %s; %s. Tandem %s, %s. Started %s, load average %s / %s.\n\n",
		res.Env.CPU, res.Env.CPUs, res.Env.Kernel, res.Env.KVM, res.QEMU, res.Env.Tandem, res.Env.Go,
		res.Env.Started.UTC().Format(time.RFC3339), res.Env.LoadAvg[0], res.Env.LoadAvg[1])
	fmt.Fprintf(&sb, "%d MiB of guest memory, every page non-zero, moved over loopback with no guest running: "+
		"QEMU migrates a paused VM (max-bandwidth lifted) to a second QEMU; Tandem replicates it to as many "+
		"replicas as streams (fast policy: each page once) and the leader then recovers it. Times are means "+
		"of the repetitions; ratios compare the same stream count.\n\n", res.Mem>>20)
	sb.WriteString("| streams | QEMU migration | Tandem full copy (encrypted) | Tandem full copy (plaintext) | plaintext ÷ QEMU | Tandem recovery (plaintext) |\n|---|---|---|---|---|---|\n")
	for _, n := range res.streams() {
		q := res.mean("qemu", "migration", n, "")
		enc := res.mean("tandem", "full copy", n, "encrypted")
		pl := res.mean("tandem", "full copy", n, "plaintext")
		rec := res.mean("tandem", "recovery", n, "plaintext")
		ratio := "–"
		if q > 0 && pl > 0 {
			ratio = fmt.Sprintf("%.2f", pl/q)
		}
		fmt.Fprintf(&sb, "| %d | %s | %s | %s | %s | %s |\n", n, secs(q), secs(enc), secs(pl), ratio, secs(rec))
	}
	var errs []string
	for _, r := range res.Runs {
		if r.Error != "" {
			errs = append(errs, fmt.Sprintf("- %s %s, %d stream(s), %s, rep %d: %s", r.System, r.What, r.Streams, r.Mode, r.Rep, r.Error))
		}
	}
	if len(errs) > 0 {
		sb.WriteString("\nErrors:\n\n" + strings.Join(errs, "\n") + "\n")
	}
	return sb.String()
}

// secs formats seconds for the progress lines and the report; "–" for
// none (a run that failed).
func secs(s float64) string {
	if s <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f s", s)
}

// streams lists the stream counts of the runs, in order.
func (res *PeerResults) streams() []int {
	var ns []int
	seen := map[int]bool{}
	for _, r := range res.Runs {
		if !seen[r.Streams] {
			seen[r.Streams] = true
			ns = append(ns, r.Streams)
		}
	}
	return ns
}

// mean is the mean time in seconds of the runs without error that match;
// mode "" matches any. 0 if none.
func (res *PeerResults) mean(system, what string, streams int, mode string) float64 {
	var sum float64
	var n int
	for _, r := range res.Runs {
		if r.System == system && r.What == what && r.Streams == streams && (mode == "" || r.Mode == mode) && r.Error == "" {
			sum += r.Took.Seconds()
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}
