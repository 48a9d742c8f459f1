package main

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandemvm/tandem/replicate"
	"github.com/tandemvm/tandem/replicate/auth"
)

// testKeyFile writes a fresh replication key into the test's temporary
// directory and returns its path, for --auth-key.
func testKeyFile(t testing.TB) string {
	t.Helper()
	k, err := auth.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "replication.key")
	if err := auth.WriteKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestKeygen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	stdout, stderr, status := runTandem(t, "keygen", path)
	if status != 0 || !strings.Contains(stdout, "--auth-key "+path) {
		t.Fatalf("keygen: status %d, stdout %q, stderr %q", status, stdout, stderr)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || st.Size() != 65 {
		t.Errorf("key file mode %#o, %d bytes; want 0600 and 65", st.Mode().Perm(), st.Size())
	}
	before, _ := os.ReadFile(path)
	if _, err := auth.LoadKey(path); err != nil {
		t.Errorf("the written key does not load: %v", err)
	}
	_, stderr, status = runTandem(t, "keygen", path)
	if status == 0 || !strings.Contains(stderr, "already exists") {
		t.Errorf("keygen over an existing file: status %d, stderr %q", status, stderr)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("keygen changed an existing key file")
	}
	if _, stderr, status := runTandem(t, "keygen"); status != exitUsage || !strings.Contains(stderr, "one argument") {
		t.Errorf("keygen without a file: status %d, stderr %q", status, stderr)
	}
}

// TestAuthKeyRequired: replication without a usable key is refused, with an
// error that says how to make one or what is wrong with the file.
func TestAuthKeyRequired(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.key")
	os.WriteFile(open, []byte(strings.Repeat("ab", 32)+"\n"), 0o644)
	os.Chmod(open, 0o644)
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte("abcd\n"), 0o600)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"replica", "--listen", "127.0.0.1:0"}, []string{"tandem replica needs --auth-key FILE", "tandem keygen FILE"}},
		{[]string{"replica", "--listen", "127.0.0.1:0", "--auth-key", open}, []string{open, "other users may access it"}},
		{[]string{"replica", "--listen", "127.0.0.1:0", "--auth-key", short}, []string{short, "at least 32"}},
		{[]string{"replica", "--listen", "127.0.0.1:0", "--auth-key", filepath.Join(dir, "none")}, []string{"does not exist", "tandem keygen"}},
		{[]string{"run", "--guest", "hello", "--ha", "--replicas", "127.0.0.1:1", "--leader", "127.0.0.1:2"}, []string{"--ha needs --auth-key FILE", "tandem keygen FILE"}},
		{[]string{"run", "--guest", "hello", "--auth-key", open}, []string{"--auth-key needs --ha"}},
		{[]string{"run", "--guest", "hello", "--insecure-plaintext"}, []string{"--insecure-plaintext needs --ha"}},
		// Traffic reduction and speculation: refused before the key is read.
		{[]string{"run", "--guest", "hello", "--ha", "--replicas", "127.0.0.1:1", "--leader", "127.0.0.1:2", "--speculate", "0.5"}, []string{"--speculate needs --policy ft"}},
		{[]string{"run", "--guest", "hello", "--ha", "--replicas", "127.0.0.1:1", "--leader", "127.0.0.1:2", "--reduce", "lz4"}, []string{"--reduce", "lz4"}},
		{[]string{"run", "--guest", "hello", "--speculate", "0.5"}, []string{"--speculate needs --ha"}},
	} {
		_, stderr, status := runTandem(t, tc.args...)
		if status != exitUsage {
			t.Errorf("%v: status %d, want %d; stderr %q", tc.args, status, exitUsage, stderr)
		}
		for _, w := range tc.want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%v: stderr %q lacks %q", tc.args, stderr, w)
			}
		}
	}
}

// staticVM is a replication source with fixed memory: enough for a primary
// to connect and run epochs against real tandem replicas.
type staticVM struct{ mem []byte }

func (s *staticVM) Pause() error                                { return nil }
func (s *staticVM) Resume()                                     {}
func (s *staticVM) Memory() []byte                              { return s.mem }
func (s *staticVM) HarvestDirty(dst []uint64) ([]uint64, error) { return append(dst, 1), nil }
func (s *staticVM) CaptureState() ([]byte, error)               { return []byte("state"), nil }

func mustCreds(t *testing.T, path string, m auth.Mode) *auth.Credentials {
	t.Helper()
	k, err := auth.LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := auth.NewCredentials(k, m)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestAuthHostilePeersAgainstTheReplicaBinary runs hostile peers against
// real tandem replica processes, in each mode: a 62-byte hello claiming a
// 1 TiB guest with no handshake, a primary with another key, and one with
// the right key in the other mode all fail; the replicas stay up and then
// serve the real primary.
func TestAuthHostilePeersAgainstTheReplicaBinary(t *testing.T) {
	for _, mode := range []auth.Mode{auth.Encrypted, auth.Plaintext} {
		t.Run(mode.String(), func(t *testing.T) {
			key, other := testKeyFile(t), testKeyFile(t)
			ports, err := freePorts(2)
			if err != nil {
				t.Fatal(err)
			}
			extra := []string{"--auth-key", key}
			otherMode := auth.Plaintext
			if mode == auth.Plaintext {
				extra = append(extra, "--insecure-plaintext")
				otherMode = auth.Encrypted
			}
			replica := startTandem(t, append([]string{"replica", "--listen", ports[0], "--max-mem", "1T"}, extra...)...)
			leader := startTandem(t, append([]string{"replica", "--listen", ports[1], "--leader", "--replicas", ports[0], "--serial", "none"}, extra...)...)
			for _, p := range []*process{replica, leader} {
				waitStderr(t, p, "replica listening")
			}

			// The hello of the finding: 62 bytes, a 1 TiB guest, no handshake.
			hello := make([]byte, 62)
			le := binary.LittleEndian
			le.PutUint32(hello[0:], 0x4D444E54)
			le.PutUint16(hello[4:], 1)
			le.PutUint16(hello[6:], 1) // hello
			le.PutUint64(hello[8:], 0xB16)
			le.PutUint32(hello[24:], 30)
			le.PutUint32(hello[32:], 1)     // role link
			le.PutUint32(hello[40:], 1)     // links
			le.PutUint64(hello[44:], 1<<40) // memory
			le.PutUint32(hello[56:], 0)     // policy fast
			for range 3 {
				nc, err := net.Dial("tcp", ports[0])
				if err != nil {
					t.Fatal(err)
				}
				nc.Write(hello)
				nc.SetReadDeadline(time.Now().Add(15 * time.Second))
				_, err = io.Copy(io.Discard, nc)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("the replica kept an unauthenticated connection open")
				}
				nc.Close()
			}

			vm := &staticVM{mem: make([]byte, 64*replicate.PageSize)}
			vm.mem[0] = 1
			primary := func(c *auth.Credentials) (*replicate.Primary, error) {
				p, err := replicate.NewPrimary(replicate.PrimaryConfig{
					Auth: c, Links: []string{ports[0]}, Leader: ports[1], VMID: 0x7E57, Guest: "static", VCPUs: 1,
					Epoch: 5 * time.Millisecond, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				}, vm, replicate.NewOutputGate(io.Discard, 1<<20))
				if err != nil {
					return nil, err
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				return p, p.Connect(ctx)
			}
			for name, c := range map[string]*auth.Credentials{
				"another key":          mustCreds(t, other, mode),
				"the key, other mode":  mustCreds(t, key, otherMode),
				"another key and mode": mustCreds(t, other, otherMode),
			} {
				if _, err := primary(c); !errors.Is(err, auth.ErrHandshake) {
					t.Errorf("%s: %v, want a failed handshake", name, err)
				}
			}
			if err := replica.cmd.Process.Signal(syscall.Signal(0)); err != nil || strings.Contains(replica.stderr.String(), "serving VM") {
				t.Fatalf("after the hostile peers the replica is gone (%v) or bound a VM:\n%s", err, replica.stderr.String())
			}
			if !strings.Contains(replica.stderr.String(), "handshake failed") {
				t.Errorf("the replica did not log the failed handshakes:\n%s", replica.stderr.String())
			}

			p, err := primary(mustCreds(t, key, mode))
			if err != nil {
				t.Fatalf("the real primary: %v\nreplica:\n%s", err, replica.stderr.String())
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			deadline := time.Now().Add(20 * time.Second)
			for p.Committed() < 5 {
				if time.Now().After(deadline) {
					t.Fatalf("replication stuck at epoch %d; replica:\n%s", p.Committed(), replica.stderr.String())
				}
				time.Sleep(time.Millisecond)
			}
			p.Finish()
			if err := <-done; err != nil {
				t.Fatalf("the primary's goodbye: %v", err)
			}
			if status := leader.wait(t, 30*time.Second); status != 0 || !strings.Contains(leader.stdout.String(), "no takeover") {
				t.Errorf("leader: status %d, stdout %q, stderr:\n%s", status, leader.stdout.String(), leader.stderr.String())
			}
		})
	}
}
