package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestLinuxPersistKeepsDiskWrites pulls the plug on a persisted Linux
// guest running its key-value store (tandem_kv: every PUT is fsynced to
// /dev/vda before its OK), which a client in another network namespace
// PUTs keys to over one TCP connection. Each round kills `tandem run`: at
// a random moment, or by fault injection in the middle of writing an
// epoch's record. Before the next round, garbage is written over the
// disk the guest ran on, as a power cut may leave writes that never
// became durable; `tandem run --resume` must restore it and the guest
// from the newest durable epoch. The client's connection must carry on
// across every kill, and at the end a new connection must GET every key
// ever acknowledged, and the disk must hold every one.
func TestLinuxPersistKeepsDiskWrites(t *testing.T) {
	bootDisk := filepath.Join(t.TempDir(), "boot.img")
	os.WriteFile(bootDisk, make([]byte, 1<<20), 0o600)
	snap, _ := bootedSnapshot(t, "tandem_loop=/dev/vda tandem_ip=10.78.0.15/24 tandem_kv=7000", "kv: listening on 7000",
		"--net", "tap:tndmboot2", "--disk", bootDisk)
	lab := newNetLab(t, "host", "client")
	tap := lab.guestSegment(0, "client", "host")
	const guest = "10.78.0.15:7000"
	root := t.TempDir()
	dir, work := filepath.Join(root, "vm"), filepath.Join(root, "work.img")
	booted, err := os.ReadFile(bootDisk)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(work, booted, 0o600)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 18))

	var acked *atomic.Int64
	var conn interface{ Close() error }
	var done chan struct{}
	const rounds = 3 // kill, tear, kill; then a last resume
	for round := 0; round <= rounds; round++ {
		args := []string{"run", "--resume", dir, "--persist-epoch", "20ms", "--serial", "file:" + filepath.Join(root, fmt.Sprintf("console%d.txt", round))}
		if round == 0 {
			args = []string{"run", "--restore", snap, "--net", "tap:" + tap, "--disk", work, "--persist", dir, "--persist-epoch", "20ms",
				"--serial", "file:" + filepath.Join(root, "console0.txt")}
		}
		tear := round == 2
		var env []string
		if tear {
			env = []string{fmt.Sprintf("%s=%d:%d", tearEnv, 50+rng.IntN(50), 1+rng.IntN(4000))}
		}
		p := lab.start("host", env, args...)
		t.Cleanup(p.kill)
		if round == 0 {
			c := dialGuestFor(t, lab, p, guest)
			conn = c
			acked, done = putKeys(c)
		}
		if round > 0 {
			waitStderr(t, p, "resuming a persisted VM")
			// A SIGKILL may tear a record too (a write is cut short once
			// the signal is pending): only the injected tear must show.
			if round == 3 && strings.Contains(p.stderr.String(), "torn_bytes=0") {
				t.Errorf("round %d: no torn bytes reported after the torn record; stderr:\n%s", round, p.stderr.String())
			}
		}
		atStart := acked.Load()
		if round == rounds {
			pollFor(t, "PUTs acknowledged after the last resume", 2*time.Minute, func() bool { return acked.Load() >= atStart+5 })
			conn.Close()
			<-done
			n := acked.Load()
			fresh, err := lab.dialFrom("client", guest)
			if err != nil {
				t.Fatalf("a new connection to the resumed guest: %v", err)
			}
			defer fresh.Close()
			// Every acknowledged value is in the guest and on the disk it
			// runs on, which the resumes restored.
			lost := checkKeys(t, fresh, n, work)
			raw, err := os.ReadFile(work)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte("lost write")) {
				t.Error("the guest's disk still holds what was written over it after the power cut: --resume did not restore it")
			}
			t.Logf("%d PUTs acknowledged over one connection across %d power cuts; lost %d", n, rounds, lost)
			for _, line := range strings.Split(p.stderr.String(), "\n") {
				if strings.Contains(line, "persisted epochs") {
					t.Log(line) // the last round's epochs, second by second
				}
			}
			if t.Failed() {
				t.Logf("stderr:\n%s", p.stderr.String())
			}
			return
		}
		if tear {
			select {
			case <-p.done:
				p.done <- nil
			case <-time.After(2 * time.Minute):
				t.Fatalf("round %d: the fault injection did not kill tandem; stderr:\n%s", round, p.stderr.String())
			}
		} else {
			pollFor(t, "PUTs acknowledged", 2*time.Minute, func() bool { return acked.Load() >= atStart+5 })
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random moment to pull the plug
			p.kill()
		}
		t.Logf("round %d: %d PUTs acknowledged in all when the power failed (torn record: %v)", round, acked.Load(), tear)
		// What the guest's disk held that was not durable is gone.
		if err := os.WriteFile(work, bytes.Repeat([]byte("lost write "), (1<<20)/11+1)[:1<<20], 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLinuxReplicaPersistKeepsDiskWrites runs the Linux key-value guest
// under --ha on its disk, the replica and the leader keeping their stores
// and the leader its disk copy with the epochs (tandem replica --persist
// --disk), and pulls the plug on the whole cluster while a client PUTs.
// Only the replica nodes come back: the leader takes over from the stores
// in their directories, on its disk copy, and every acknowledged PUT must
// be there, in the guest and on the copy. Both modes.
func TestLinuxReplicaPersistKeepsDiskWrites(t *testing.T) {
	bootDisk := filepath.Join(t.TempDir(), "boot.img")
	os.WriteFile(bootDisk, make([]byte, 1<<20), 0o600)
	snap, _ := bootedSnapshot(t, "tandem_loop=/dev/vda tandem_ip=10.78.0.15/24 tandem_kv=7000", "kv: listening on 7000",
		"--net", "tap:tndmboot3", "--disk", bootDisk)
	lab := newNetLab(t, "primary", "r1", "leader", "client")
	tap := lab.guestSegment(0, "client", "primary", "leader")
	key := testKeyFile(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 18))
	const port, guest = ":7072", "10.78.0.15:7000"
	r1, leader := lab.addrs["r1"]+port, lab.addrs["leader"]+port
	booted, err := os.ReadFile(bootDisk)
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"sync", "async"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			primaryDisk, leaderDisk := filepath.Join(dir, "primary.img"), filepath.Join(dir, "leader.img")
			os.WriteFile(primaryDisk, booted, 0o600)
			os.WriteFile(leaderDisk, make([]byte, len(booted)), 0o600) // the sync fills it
			nodes := func() []*process {
				return startReplicaAndLeader(t, lab, key, r1, leader, []string{"--persist", filepath.Join(dir, "r1")},
					[]string{"--serial", "file:" + filepath.Join(dir, "leader.txt"), "--net", "tap:" + tap, "--disk", leaderDisk, "--persist", filepath.Join(dir, "leader")})
			}
			procs := nodes()
			primary := lab.start("primary", nil, "run", "--restore", snap, "--net", "tap:"+tap, "--disk", primaryDisk,
				"--serial", "file:"+filepath.Join(dir, "primary.txt"), "--ha", "--auth-key", key, "--replicas", r1, "--leader", leader,
				"--mode", mode, "--epoch", "50ms")
			t.Cleanup(primary.kill)
			conn := dialGuestFor(t, lab, primary, guest)
			acked, done := putKeys(conn)
			pollFor(t, "five acknowledged PUTs", time.Minute, func() bool { return acked.Load() >= 5 })
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond) // a random moment to pull the plug
			powerCut(append(procs, primary)...)
			conn.Close()
			<-done
			n := acked.Load()
			again := nodes()
			c := dialGuestFor(t, lab, again[1], guest)
			defer c.Close()
			checkKeys(t, c, n, leaderDisk)
			t.Logf("%d PUTs acknowledged before the power cut, all there after the leader's takeover", n)
			if t.Failed() {
				t.Logf("leader stderr:\n%s", again[1].stderr.String())
			}
		})
	}
}
