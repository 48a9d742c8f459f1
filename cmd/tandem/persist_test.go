package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tandemvm/tandem/kvm/kvmtest"
)

// TestPersistSurvivesKill pulls the plug on a persisted counter guest
// again and again: each round runs it (first with --persist, then with
// --resume of the same directory), pipelines increments at it and kills
// it, at a random moment or (every other round) by fault injection in the
// middle of writing an epoch's record; the next round's VM must hold
// every acknowledged increment and none that was never sent, and the
// torn records must have been seen and cut.
func TestPersistSurvivesKill(t *testing.T) {
	kvmtest.Open(t)
	rounds := 6
	if s := os.Getenv("TANDEM_PERSIST_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	root := t.TempDir()
	dir := filepath.Join(root, "vm")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 14))
	var floor, ceiling int64 // what the counter must hold at the next resume
	for round := 0; round <= rounds; round++ {
		sock := filepath.Join(root, fmt.Sprintf("serial%d.sock", round))
		args := []string{"run", "--resume", dir, "--persist-epoch", "10ms", "--serial", "unix:" + sock}
		if round == 0 {
			args = []string{"run", "--guest", "counter", "--mem", "16M", "--persist", dir, "--persist-epoch", "10ms", "--serial", "unix:" + sock}
		}
		tear := round%2 == 1
		t.Setenv(tearEnv, "")
		if tear {
			t.Setenv(tearEnv, fmt.Sprintf("%d:%d", 3+rng.IntN(15), 1+rng.IntN(4000)))
		}
		p := startTandem(t, args...)
		conn := dialWhenReady(t, p, sock)
		if round > 0 {
			// (A SIGKILL may tear a record too: a write is cut short once
			// the signal is pending.)
			if round%2 == 0 && strings.Contains(p.stderr.String(), "torn_bytes=0") {
				t.Errorf("round %d: the resume after a torn record must report its bytes; stderr:\n%s", round, p.stderr.String())
			}
			v := askCount(t, conn)
			checkCount(t, v, ceiling, floor)
			if t.Failed() {
				t.Fatalf("round %d; stderr:\n%s", round, p.stderr.String())
			}
			floor, ceiling = v, v
			if !strings.Contains(p.stderr.String(), "resuming a persisted VM") {
				t.Errorf("round %d: no resume reported; stderr:\n%s", round, p.stderr.String())
			}
		}
		if round == rounds {
			conn.Close()
			break
		}
		conn.SetDeadline(time.Time{})
		client := runCounterClient(conn, 4)
		if tear {
			// It kills itself in the middle of an epoch's record.
			if status := p.wait(t, 60*time.Second); status != -1 && !strings.Contains(p.cmd.ProcessState.String(), "killed") {
				t.Fatalf("round %d: exited with %v, not killed by its fault injection; stderr:\n%s", round, p.cmd.ProcessState, p.stderr.String())
			}
		} else {
			deadline := time.Now().Add(30 * time.Second)
			for client.acked.Load() < 3 {
				if time.Now().After(deadline) {
					t.Fatalf("round %d: no increments acknowledged in 30s; stderr:\n%s", round, p.stderr.String())
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond) // a random moment to pull the plug
			p.cmd.Process.Kill()
			p.wait(t, 30*time.Second)
		}
		conn.Close()
		<-client.done
		floor += client.acked.Load()
		ceiling += client.sent.Load()
		t.Logf("round %d: %d increments sent, %d acknowledged before the kill", round, client.sent.Load(), client.acked.Load())
	}
}

// TestPersistWithHASurvivesClusterPowerCut runs the counter guest under
// --ha with --persist on the primary, pipelines increments at it, and
// pulls the plug on the whole cluster at once (primary, replica and
// leader SIGKILLed at a random moment); then the cluster comes back (new
// replica processes, their stores empty) and the VM resumes from the
// primary's directory under --ha, protected again, until the next power
// cut. Each time the counter must hold every acknowledged increment and
// none that was never sent. Six power cuts in one directory, both modes.
func TestPersistWithHASurvivesClusterPowerCut(t *testing.T) {
	kvmtest.Open(t)
	lab := newNetLab(t, "primary", "r1", "leader")
	key := testKeyFile(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 15))
	const port = ":7070"
	r1, leader := lab.addrs["r1"]+port, lab.addrs["leader"]+port
	root := t.TempDir()
	dir := filepath.Join(root, "vm")
	// The counter's value after the last power cut lies in [low, high].
	var low, high int64
	for round := range 6 {
		mode := []string{"sync", "async"}[round%2]
		ok := t.Run(fmt.Sprintf("round%d/%s", round, mode), func(t *testing.T) {
			procs := startReplicaAndLeader(t, lab, key, r1, leader, nil, []string{"--serial", "none"})
			sock := filepath.Join(root, fmt.Sprintf("primary%d.sock", round))
			args := []string{"run", "--guest", "counter", "--mem", "16M", "--persist", dir}
			if round > 0 {
				args = []string{"run", "--resume", dir, "--persist-epoch", "10ms"}
			}
			primary := lab.start("primary", nil, append(args, "--ha", "--auth-key", key,
				"--replicas", r1, "--leader", leader, "--mode", mode, "--epoch", "10ms", "--serial", "unix:"+sock)...)
			t.Cleanup(primary.kill)
			conn := dialWhenReady(t, primary, sock)
			base := askCount(t, conn)
			if base < low || base > high {
				t.Errorf("after the power cut the counter holds %d, want %d to %d: acknowledged increments lost or unsent ones counted", base, low, high)
			}
			client := runCounterClient(conn, 4)
			pollFor(t, "increments acknowledged", 30*time.Second, func() bool { return client.acked.Load() >= 3 })
			if !strings.Contains(primary.stderr.String(), "initial copy sent") {
				t.Fatalf("the primary does not replicate; stderr:\n%s", primary.stderr.String())
			}
			time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond) // a random moment to pull the plug
			// The power fails everywhere at once.
			powerCut(append(procs, primary)...)
			conn.Close()
			<-client.done
			low, high = base+client.acked.Load(), base+client.sent.Load()
			t.Logf("from %d: sent %d, acknowledged %d", base, client.sent.Load(), client.acked.Load())
			if t.Failed() {
				t.Logf("primary stderr:\n%s", primary.stderr.String())
			}
		})
		if !ok {
			return
		}
	}
	// The cluster does not come back: the directory alone resumes it.
	rsock := filepath.Join(root, "resumed.sock")
	p := startTandem(t, "run", "--resume", dir, "--persist-epoch", "10ms", "--serial", "unix:"+rsock)
	c := dialWhenReady(t, p, rsock)
	defer c.Close()
	got := askCount(t, c)
	t.Logf("after 6 power cuts the counter holds %d (%d to %d acknowledged and sent)", got, low, high)
	if got < low || got > high {
		t.Errorf("LOST OR INVENTED INCREMENTS: the counter holds %d, want %d to %d; stderr:\n%s", got, low, high, p.stderr.String())
	}
}

// TestReplicaPersistSurvivesClusterPowerCut runs the counter guest under
// --ha, its replica and its leader each keeping their store in a
// directory (tandem replica --persist), and pulls the plug on the whole
// cluster at a random moment. Only the two replica nodes come back, from
// their directories: the leader finds no primary, takes over from the
// replica's store and resumes the VM, whose counter must hold every
// acknowledged increment and none never sent. Three rounds, both modes.
func TestReplicaPersistSurvivesClusterPowerCut(t *testing.T) {
	kvmtest.Open(t)
	lab := newNetLab(t, "primary", "r1", "leader")
	key := testKeyFile(t)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 16))
	const port = ":7071"
	r1, leader := lab.addrs["r1"]+port, lab.addrs["leader"]+port
	for round := range 3 {
		mode := []string{"sync", "async"}[round%2]
		t.Run(fmt.Sprintf("round%d/%s", round, mode), func(t *testing.T) {
			root := t.TempDir()
			r1Dir, leaderDir := filepath.Join(root, "r1"), filepath.Join(root, "leader")
			leaderSock := filepath.Join(root, "leader.sock")
			nodes := func() []*process {
				return startReplicaAndLeader(t, lab, key, r1, leader, []string{"--persist", r1Dir},
					[]string{"--serial", "unix:" + leaderSock, "--persist", leaderDir})
			}
			procs := nodes()
			sock := filepath.Join(root, "primary.sock")
			primary := lab.start("primary", nil, "run", "--guest", "counter", "--mem", "16M", "--ha", "--auth-key", key,
				"--replicas", r1, "--leader", leader, "--mode", mode, "--epoch", "10ms", "--serial", "unix:"+sock)
			t.Cleanup(primary.kill)
			conn := dialWhenReady(t, primary, sock)
			client := runCounterClient(conn, 4)
			pollFor(t, "increments acknowledged", 30*time.Second, func() bool { return client.acked.Load() >= 3 })
			time.Sleep(time.Duration(rng.IntN(200)) * time.Millisecond) // a random moment to pull the plug
			// The power fails everywhere at once.
			powerCut(append(procs, primary)...)
			conn.Close()
			<-client.done
			// The replica nodes come back; the primary's host does not.
			again := nodes()
			// The leader finds no primary, takes over, and serves the console.
			c := dialWhenReady(t, again[1], leaderSock)
			defer c.Close()
			checkCount(t, askCount(t, c), client.sent.Load(), client.acked.Load())
			if !strings.Contains(again[1].stderr.String(), "replica restored from its directory") {
				t.Errorf("the leader did not restore its store; stderr:\n%s", again[1].stderr.String())
			}
			if t.Failed() {
				t.Logf("leader stderr:\n%s\nr1 stderr:\n%s", again[1].stderr.String(), again[0].stderr.String())
			}
		})
	}
}

// TestReplicaPersistFlags: --persist refuses what it cannot keep with the
// epochs, and a directory that is not a replica's, leaving it untouched.
func TestReplicaPersistFlags(t *testing.T) {
	key := testKeyFile(t)
	dir := t.TempDir()
	copyFile := filepath.Join(dir, "copy.img")
	os.WriteFile(copyFile, make([]byte, 1<<20), 0o600)
	foreign := filepath.Join(dir, "foreign")
	os.MkdirAll(foreign, 0o700)
	os.WriteFile(filepath.Join(foreign, "precious"), []byte("data"), 0o600)
	for _, c := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"--persist", filepath.Join(dir, "a"), "--rdma-listen", "127.0.0.1:0", "--disk", copyFile}, exitUsage, "--persist takes TCP links only"},
		{[]string{"--persist", filepath.Join(dir, "b"), "--shadow"}, exitUsage, "--persist takes TCP links only"},
		{[]string{"--persist", foreign}, 1, "not a Tandem replica directory"},
	} {
		_, stderr, status := runTandem(t, append([]string{"replica", "--listen", "127.0.0.1:0", "--auth-key", key}, c.args...)...)
		if status != c.status || !strings.Contains(stderr, c.want) {
			t.Errorf("tandem replica %v: status %d, stderr %q; want %d and %q", c.args, status, stderr, c.status, c.want)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(foreign, "precious")); string(b) != "data" {
		t.Error("the foreign directory was changed")
	}
}

// startReplicaAndLeader starts `tandem replica` on the lab's r1 host
// (with r1Args) and its leader on the leader host (watching the primary
// with a 2 s heartbeat timeout, recovering from r1, with leaderArgs), and
// waits until both listen; they are killed when the test ends.
func startReplicaAndLeader(t *testing.T, lab *netLab, key, r1, leader string, r1Args, leaderArgs []string) []*process {
	t.Helper()
	procs := []*process{
		lab.start("r1", nil, append([]string{"replica", "--listen", r1, "--auth-key", key}, r1Args...)...),
		lab.start("leader", nil, append([]string{"replica", "--listen", leader, "--leader", "--auth-key", key, "--replicas", r1,
			"--heartbeat-timeout", "2s"}, leaderArgs...)...),
	}
	for _, p := range procs {
		t.Cleanup(p.kill)
		waitStderr(t, p, "replica listening")
	}
	return procs
}
