package auth

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func mustKey(t testing.TB) *Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustCreds(t testing.TB, k *Key, m Mode) *Credentials {
	t.Helper()
	c, err := NewCredentials(k, m)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestKeyFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	k := mustKey(t)
	if err := WriteKeyFile(path, k); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %#o, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if len(b) != 65 || b[64] != '\n' {
		t.Errorf("key file %q: want 64 hex characters and a newline", b)
	}
	got, err := LoadKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.secret, k.secret) {
		t.Error("loaded key differs from the written one")
	}
	if err := WriteKeyFile(path, mustKey(t)); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("overwrite: %v, want a refusal", err)
	}
	if again, _ := LoadKey(path); again == nil || !bytes.Equal(again.secret, k.secret) {
		t.Error("the refused overwrite changed the key")
	}
}

func TestLoadKeyRefusals(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	good := strings.Repeat("ab", 32) + "\n"
	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "nope"), "does not exist (create one with tandem keygen"},
		{"world-readable", write("wr", good, 0o644), "other users may access it"},
		{"other-writable", write("ow", good, 0o602), "other users may access it"},
		{"short", write("short", strings.Repeat("ab", 31)+"\n", 0o600), "31 bytes of secret, at least 32"},
		{"not hex", write("nothex", strings.Repeat("zz", 32), 0o600), "not hexadecimal"},
		{"empty", write("empty", "", 0o600), "empty"},
		{"directory", dir, "not a regular file"},
	} {
		_, err := LoadKey(tc.path)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.path) || !errors.Is(err, ErrKey) {
			t.Errorf("%s: %v, want an ErrKey naming %s and saying %q", tc.name, err, tc.path, tc.want)
		}
	}
	// Group-readable is allowed (only "other" is refused); longer keys too.
	if _, err := LoadKey(write("group", "  "+strings.Repeat("cd", 48)+"\n\n", 0o640)); err != nil {
		t.Errorf("a 48-byte key readable by the group: %v", err)
	}
}

// pair runs a handshake between client credentials cc (role r) and
// server credentials sc over a real loopback TCP connection.
func pair(t *testing.T, cc, sc *Credentials, r Role) (client, server net.Conn, gotRole Role, cerr, serr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		c    net.Conn
		r    Role
		err  error
		conn net.Conn
	}
	done := make(chan res, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			done <- res{err: err}
			return
		}
		c, r, err := sc.Server(context.Background(), nc)
		done <- res{c, r, err, nc}
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client, cerr = cc.Client(context.Background(), nc, r)
	s := <-done
	if cerr != nil {
		// A failed client has closed its end; the server sees it.
		nc.Close()
	}
	t.Cleanup(func() {
		nc.Close()
		if s.conn != nil {
			s.conn.Close()
		}
	})
	return client, s.c, s.r, cerr, s.err
}

func TestHandshake(t *testing.T) {
	k := mustKey(t)
	for _, m := range []Mode{Encrypted, Plaintext} {
		t.Run(m.String(), func(t *testing.T) {
			c, s, r, cerr, serr := pair(t, mustCreds(t, k, m), mustCreds(t, k, m), 3)
			if cerr != nil || serr != nil {
				t.Fatalf("client %v, server %v", cerr, serr)
			}
			if r != 3 {
				t.Errorf("server saw role %d, want 3", r)
			}
			go c.Write([]byte("ping"))
			b := make([]byte, 4)
			if _, err := io.ReadFull(s, b); err != nil || string(b) != "ping" {
				t.Fatalf("read %q, %v", b, err)
			}
		})
	}
}

// TestHandshakeRefusals: every mismatch fails on both sides, and neither
// side hangs.
func TestHandshakeRefusals(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	for _, tc := range []struct {
		name   string
		cc, sc *Credentials
	}{
		{"wrong key, encrypted", mustCreds(t, other, Encrypted), mustCreds(t, k, Encrypted)},
		{"wrong key, plaintext", mustCreds(t, other, Plaintext), mustCreds(t, k, Plaintext)},
		{"plaintext client, encrypting server", mustCreds(t, k, Plaintext), mustCreds(t, k, Encrypted)},
		{"encrypting client, plaintext server", mustCreds(t, k, Encrypted), mustCreds(t, k, Plaintext)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cc, sc := tc.cc.WithTimeout(5*time.Second), tc.sc.WithTimeout(5*time.Second)
			start := time.Now()
			_, _, _, cerr, serr := pair(t, cc, sc, 1)
			if cerr == nil || serr == nil {
				t.Fatalf("client %v, server %v: want both to fail", cerr, serr)
			}
			if !errors.Is(cerr, ErrHandshake) || !errors.Is(serr, ErrHandshake) {
				t.Errorf("errors do not wrap ErrHandshake: client %v, server %v", cerr, serr)
			}
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("refusal took %v: a side waited for its deadline", d)
			}
			t.Logf("client: %v\nserver: %v", cerr, serr)
		})
	}
}

// TestHandshakeSilentPeer: a peer that connects and says nothing is dropped
// at the deadline.
func TestHandshakeSilentPeer(t *testing.T) {
	k := mustKey(t)
	for _, m := range []Mode{Encrypted, Plaintext} {
		t.Run(m.String(), func(t *testing.T) {
			sc := mustCreds(t, k, m).WithTimeout(200 * time.Millisecond)
			a, b := net.Pipe()
			defer b.Close()
			start := time.Now()
			_, _, err := sc.Server(context.Background(), a)
			if err == nil || !errors.Is(err, ErrHandshake) {
				t.Fatalf("silent peer: %v", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// TestPlaintextTruncatedFrames: a client that sends part of a frame and
// hangs up fails the handshake cleanly, whatever the cut.
func TestPlaintextTruncatedFrames(t *testing.T) {
	k := mustKey(t)
	sc := mustCreds(t, k, Plaintext).WithTimeout(5 * time.Second)
	hello := (&ClientHello{Role: 1}).marshal()
	for cut := 0; cut < len(hello); cut += 5 {
		a, b := net.Pipe()
		go func() {
			b.Write(hello[:cut])
			b.Close()
		}()
		if _, _, err := sc.Server(context.Background(), a); err == nil {
			t.Fatalf("cut at %d: handshake succeeded", cut)
		}
	}
}

func TestParseALPN(t *testing.T) {
	for r := 1; r < 256; r++ {
		got, err := ParseALPN(ALPN(Role(r)))
		if err != nil || got != Role(r) {
			t.Fatalf("role %d: %v, %v", r, got, err)
		}
	}
	for _, s := range []string{"", "tandem-v1-", "tandem-v1-0", "tandem-v1-256", "tandem-v1-01", "tandem-v1-+1", "h2", "tandem-v2-1"} {
		if _, err := ParseALPN(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func TestCheckPeerCertificate(t *testing.T) {
	k, other := mustKey(t), mustKey(t)
	id, _ := k.identity()
	oid, _ := other.identity()
	if err := CheckPeerCertificate([][]byte{id.cert}, id.pub); err != nil {
		t.Errorf("own certificate: %v", err)
	}
	for name, certs := range map[string][][]byte{
		"other key": {oid.cert}, "none": nil, "two": {id.cert, id.cert}, "garbage": {[]byte("x")},
	} {
		if err := CheckPeerCertificate(certs, id.pub); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	// The derivation is deterministic: same key, same identity.
	again, _ := k.identity()
	if !bytes.Equal(again.cert, id.cert) || !ed25519.PublicKey(again.pub).Equal(id.pub) {
		t.Error("two derivations from one key differ")
	}
}

// FuzzHandshakeDecoders feeds arbitrary bytes to every decoder a peer
// reaches during the handshake: none may panic, and what decodes encodes
// back to the same bytes.
func FuzzHandshakeDecoders(f *testing.F) {
	k, _ := GenerateKey()
	id, _ := k.identity()
	f.Add((&ClientHello{Role: 1}).marshal())
	f.Add((&ServerProof{}).marshal())
	f.Add(marshalClientProof([32]byte{1}))
	f.Add(id.cert)
	f.Add([]byte(ALPN(3)))
	f.Fuzz(func(t *testing.T, b []byte) {
		if h, err := ParseClientHello(b); err == nil && !bytes.Equal(h.marshal(), b) {
			t.Fatalf("client hello %x re-encodes as %x", b, h.marshal())
		}
		if p, err := ParseServerProof(b); err == nil && !bytes.Equal(p.marshal(), b) {
			t.Fatalf("server proof %x re-encodes as %x", b, p.marshal())
		}
		if m, err := ParseClientProof(b); err == nil && !bytes.Equal(marshalClientProof(m), b) {
			t.Fatalf("client proof %x re-encodes differently", b)
		}
		if r, err := ParseALPN(string(b)); err == nil && ALPN(r) != string(b) {
			t.Fatalf("ALPN %q decodes as role %d", b, r)
		}
		if CheckPeerCertificate([][]byte{b}, id.pub) == nil && !bytes.Equal(b, id.cert) {
			// Another encoding of a certificate for the derived key would
			// still need its private key in the handshake; note it.
			t.Logf("a different certificate for the derived key: %x", b)
		}
	})
}

// scriptConn is a peer that sends fixed bytes, then EOF, and swallows
// whatever it is sent: a handshake against it never waits.
type scriptConn struct {
	net.Conn // nil: only the methods below are used
	r        *bytes.Reader
}

func (c *scriptConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *scriptConn) Write(b []byte) (int, error)      { return len(b), nil }
func (c *scriptConn) Close() error                     { return nil }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *scriptConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }

// FuzzPlaintextServer runs the plaintext server against a peer that sends
// arbitrary bytes: it must fail (no key) without panicking.
func FuzzPlaintextServer(f *testing.F) {
	k, _ := GenerateKey()
	sc, _ := NewCredentials(k, Plaintext)
	h := (&ClientHello{Role: 2}).marshal()
	f.Add(h)
	f.Add(append(append([]byte{}, h...), marshalClientProof([32]byte{})...))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, err := sc.Server(context.Background(), &scriptConn{r: bytes.NewReader(b)})
		if err == nil {
			t.Fatalf("a peer without the key passed the handshake with %x", b)
		}
	})
}
