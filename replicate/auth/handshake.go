package auth

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Mode says whether connections are encrypted after authentication.
type Mode int

const (
	// Encrypted runs TLS 1.3 authenticated by the shared key (the default).
	Encrypted Mode = iota
	// Plaintext authenticates both ends by challenge and response and then
	// carries messages in clear (--insecure-plaintext): no protection
	// against an on-path attacker.
	Plaintext
)

func (m Mode) String() string {
	if m == Plaintext {
		return "plaintext"
	}
	return "encrypted"
}

// Role is what a connection is for, as the caller numbers it (1-255). The
// handshake authenticates it, so the server knows it before reading
// anything else from the peer.
type Role uint8

// DefaultTimeout bounds a handshake when the Credentials set none.
const DefaultTimeout = 10 * time.Second

// ErrHandshake marks a failed authentication handshake. A peer without the
// key, with another key, in the other mode, or sending malformed frames
// fails with it; the error says what this side saw, never the peer.
var ErrHandshake = errors.New("auth: handshake failed")

// Credentials authenticate connections with one key in one mode.
type Credentials struct {
	mode    Mode
	timeout time.Duration
	id      *identity
	macKey  []byte
	server  *tls.Config
}

// NewCredentials prepares the handshakes of key k in mode m.
func NewCredentials(k *Key, m Mode) (*Credentials, error) {
	if k == nil {
		return nil, fmt.Errorf("%w: no key", ErrKey)
	}
	if m != Encrypted && m != Plaintext {
		return nil, fmt.Errorf("auth: unknown mode %d", m)
	}
	c := &Credentials{mode: m, timeout: DefaultTimeout}
	var err error
	if c.id, err = k.identity(); err != nil {
		return nil, err
	}
	if c.macKey, err = k.derive(labelPlainHMAC, sha256.Size); err != nil {
		return nil, err
	}
	base := c.tlsConfig()
	base.ClientAuth = tls.RequireAnyClientCert
	base.SessionTicketsDisabled = true // every connection proves the key again
	c.server = &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The role is in the client's ALPN; answer with exactly that one.
		GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
			if len(chi.SupportedProtos) != 1 {
				return nil, fmt.Errorf("%w: client offered %d application protocols, want one tandem role", ErrHandshake, len(chi.SupportedProtos))
			}
			if _, err := ParseALPN(chi.SupportedProtos[0]); err != nil {
				return nil, err
			}
			cfg := base.Clone()
			cfg.NextProtos = chi.SupportedProtos
			return cfg, nil
		},
	}
	return c, nil
}

// WithTimeout returns credentials whose handshakes take at most d (d > 0).
func (c *Credentials) WithTimeout(d time.Duration) *Credentials {
	cc := *c
	if d > 0 {
		cc.timeout = d
	}
	return &cc
}

// Mode is the credentials' mode.
func (c *Credentials) Mode() Mode { return c.mode }

// Timeout is the handshake deadline.
func (c *Credentials) Timeout() time.Duration { return c.timeout }

// tlsConfig is what both ends of the encrypted handshake share.
func (c *Credentials) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:             tls.VersionTLS13,
		Certificates:           []tls.Certificate{{Certificate: [][]byte{c.id.cert}, PrivateKey: c.id.priv}},
		InsecureSkipVerify:     true, // no CA: VerifyPeerCertificate checks the key itself
		VerifyPeerCertificate:  c.verifyPeer,
		SessionTicketsDisabled: true,
	}
}

// verifyPeer accepts exactly one certificate whose public key is the one
// derived from the shared key.
func (c *Credentials) verifyPeer(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	return CheckPeerCertificate(rawCerts, c.id.pub)
}

// CheckPeerCertificate is the peer check of the encrypted handshake:
// exactly one certificate, carrying the Ed25519 public key want.
func CheckPeerCertificate(rawCerts [][]byte, want ed25519.PublicKey) error {
	if len(rawCerts) != 1 {
		return fmt.Errorf("%w: peer sent %d certificates, want 1", ErrHandshake, len(rawCerts))
	}
	cert, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("%w: peer certificate: %w", ErrHandshake, err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || len(pub) != ed25519.PublicKeySize || subtle.ConstantTimeCompare(pub, want) != 1 {
		return fmt.Errorf("%w: the peer's key is not this replication key (another --auth-key?)", ErrHandshake)
	}
	return nil
}

const alpnPrefix = "tandem-v1-"

// ALPN names a role as the encrypted handshake's application protocol.
func ALPN(r Role) string { return alpnPrefix + strconv.Itoa(int(r)) }

// ParseALPN decodes a role from an application protocol name.
func ParseALPN(s string) (Role, error) {
	n, ok := strings.CutPrefix(s, alpnPrefix)
	if !ok || n == "" || len(n) > 3 || (len(n) > 1 && n[0] == '0') {
		return 0, fmt.Errorf("%w: application protocol %q is not a tandem role", ErrHandshake, s)
	}
	v, err := strconv.ParseUint(n, 10, 8)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("%w: application protocol %q is not a tandem role", ErrHandshake, s)
	}
	return Role(v), nil
}

// deadline is when a handshake started now must end.
func (c *Credentials) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(c.timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(d) {
		d = dl
	}
	return d
}

// Client authenticates a dialled connection as role r and returns the
// connection to use from then on. On failure nc is closed.
func (c *Credentials) Client(ctx context.Context, nc net.Conn, r Role) (net.Conn, error) {
	if r == 0 {
		nc.Close()
		return nil, fmt.Errorf("auth: role 0 is reserved")
	}
	nc.SetDeadline(c.deadline(ctx))
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var out net.Conn
	var err error
	if c.mode == Plaintext {
		err = c.plainClient(nc, r)
		out = nc
	} else {
		cfg := c.tlsConfig()
		cfg.NextProtos = []string{ALPN(r)}
		want := ALPN(r)
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol != want {
				return fmt.Errorf("%w: server answered protocol %q, want %q", ErrHandshake, cs.NegotiatedProtocol, want)
			}
			return nil
		}
		tc := tls.Client(nc, cfg)
		err = tc.HandshakeContext(ctx)
		out = tc
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		return nil, c.handshakeError(err)
	}
	nc.SetDeadline(time.Time{})
	return out, nil
}

// Server authenticates an accepted connection and returns it with the
// role the peer authenticated. On failure nc is closed and the peer has
// been told nothing.
func (c *Credentials) Server(ctx context.Context, nc net.Conn) (net.Conn, Role, error) {
	nc.SetDeadline(c.deadline(ctx))
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var out net.Conn
	var r Role
	var err error
	if c.mode == Plaintext {
		r, err = c.plainServer(nc)
		out = nc
	} else {
		tc := tls.Server(nc, c.server)
		if err = tc.HandshakeContext(ctx); err == nil {
			r, err = ParseALPN(tc.ConnectionState().NegotiatedProtocol)
		}
		out = tc
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		return nil, 0, c.handshakeError(err)
	}
	nc.SetDeadline(time.Time{})
	return out, r, nil
}

func (c *Credentials) handshakeError(err error) error {
	if errors.Is(err, ErrHandshake) {
		return err
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (%v): no answer within %v: %w", ErrHandshake, c.mode, c.timeout, err)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("%w (%v): the peer hung up (another key, or one side runs --insecure-plaintext and the other does not?): %w", ErrHandshake, c.mode, err)
	}
	return fmt.Errorf("%w (%v): %w", ErrHandshake, c.mode, err)
}

// Plaintext handshake frames (see the package documentation).
const (
	plainVersion     = 1
	magicClientHello = 0x48414E54 // "TNAH"
	magicServerProof = 0x53414E54 // "TNAS"
	magicClientProof = 0x43414E54 // "TNAC"
	nonceSize        = 32
	clientHelloSize  = 41
	serverProofSize  = 72
	clientProofSize  = 40
	// PlaintextClientBytes is how many bytes a client sends in the plaintext
	// handshake before its first message: a test proxy that parses the
	// messages that follow skips them.
	PlaintextClientBytes = clientHelloSize + clientProofSize
)

// ClientHello is the first frame of the plaintext handshake.
type ClientHello struct {
	Role  Role
	Nonce [nonceSize]byte
}

func (h *ClientHello) marshal() []byte {
	b := make([]byte, clientHelloSize)
	binary.LittleEndian.PutUint32(b, magicClientHello)
	binary.LittleEndian.PutUint16(b[4:], plainVersion)
	b[6] = byte(Plaintext)
	b[7] = byte(h.Role)
	copy(b[8:], h.Nonce[:])
	return b
}

// ParseClientHello decodes and checks a plaintext client hello.
func ParseClientHello(b []byte) (ClientHello, error) {
	var h ClientHello
	switch {
	case len(b) != clientHelloSize:
		return h, fmt.Errorf("%w: client hello of %d bytes, want %d", ErrHandshake, len(b), clientHelloSize)
	case len(b) >= 3 && b[0] == 0x16 && b[1] == 0x03:
		return h, fmt.Errorf("%w: the peer speaks TLS: it encrypts, this side runs --insecure-plaintext", ErrHandshake)
	case binary.LittleEndian.Uint32(b) != magicClientHello:
		return h, fmt.Errorf("%w: not a tandem plaintext handshake (magic %#x)", ErrHandshake, binary.LittleEndian.Uint32(b))
	case binary.LittleEndian.Uint16(b[4:]) != plainVersion:
		return h, fmt.Errorf("%w: plaintext handshake version %d, this build speaks %d", ErrHandshake, binary.LittleEndian.Uint16(b[4:]), plainVersion)
	case b[6] != byte(Plaintext):
		return h, fmt.Errorf("%w: handshake mode %d", ErrHandshake, b[6])
	case b[7] == 0:
		return h, fmt.Errorf("%w: role 0", ErrHandshake)
	case b[40] != 0:
		return h, fmt.Errorf("%w: client hello with a non-zero reserved byte", ErrHandshake)
	}
	h.Role = Role(b[7])
	copy(h.Nonce[:], b[8:])
	return h, nil
}

// ServerProof is the server's answer: its nonce and its MAC.
type ServerProof struct {
	Nonce [nonceSize]byte
	MAC   [sha256.Size]byte
}

func (p *ServerProof) marshal() []byte {
	b := make([]byte, serverProofSize)
	binary.LittleEndian.PutUint32(b, magicServerProof)
	binary.LittleEndian.PutUint16(b[4:], plainVersion)
	copy(b[8:], p.Nonce[:])
	copy(b[40:], p.MAC[:])
	return b
}

// ParseServerProof decodes a plaintext server proof.
func ParseServerProof(b []byte) (ServerProof, error) {
	var p ServerProof
	switch {
	case len(b) != serverProofSize:
		return p, fmt.Errorf("%w: server proof of %d bytes, want %d", ErrHandshake, len(b), serverProofSize)
	case binary.LittleEndian.Uint32(b) != magicServerProof:
		return p, fmt.Errorf("%w: not a tandem plaintext server proof (magic %#x)", ErrHandshake, binary.LittleEndian.Uint32(b))
	case binary.LittleEndian.Uint16(b[4:]) != plainVersion || binary.LittleEndian.Uint16(b[6:]) != 0:
		return p, fmt.Errorf("%w: server proof version %d", ErrHandshake, binary.LittleEndian.Uint16(b[4:]))
	}
	copy(p.Nonce[:], b[8:])
	copy(p.MAC[:], b[40:])
	return p, nil
}

// ParseClientProof decodes a plaintext client proof and returns its MAC.
func ParseClientProof(b []byte) ([sha256.Size]byte, error) {
	var mac [sha256.Size]byte
	switch {
	case len(b) != clientProofSize:
		return mac, fmt.Errorf("%w: client proof of %d bytes, want %d", ErrHandshake, len(b), clientProofSize)
	case binary.LittleEndian.Uint32(b) != magicClientProof:
		return mac, fmt.Errorf("%w: not a tandem plaintext client proof (magic %#x)", ErrHandshake, binary.LittleEndian.Uint32(b))
	case binary.LittleEndian.Uint16(b[4:]) != plainVersion || binary.LittleEndian.Uint16(b[6:]) != 0:
		return mac, fmt.Errorf("%w: client proof version %d", ErrHandshake, binary.LittleEndian.Uint16(b[4:]))
	}
	copy(mac[:], b[8:])
	return mac, nil
}

func marshalClientProof(mac [sha256.Size]byte) []byte {
	b := make([]byte, clientProofSize)
	binary.LittleEndian.PutUint32(b, magicClientProof)
	binary.LittleEndian.PutUint16(b[4:], plainVersion)
	copy(b[8:], mac[:])
	return b
}

// mac is HMAC-SHA256(K, label, direction, role, Nc, Ns).
func (c *Credentials) mac(direction string, r Role, nc, ns [nonceSize]byte) [sha256.Size]byte {
	m := hmac.New(sha256.New, c.macKey)
	m.Write([]byte(labelPlainMAC))
	m.Write([]byte{0})
	m.Write([]byte(direction))
	m.Write([]byte{0, byte(r)})
	m.Write(nc[:])
	m.Write(ns[:])
	var out [sha256.Size]byte
	m.Sum(out[:0])
	return out
}

func (c *Credentials) plainClient(nc net.Conn, r Role) error {
	h := ClientHello{Role: r}
	if _, err := rand.Read(h.Nonce[:]); err != nil {
		return err
	}
	if _, err := nc.Write(h.marshal()); err != nil {
		return err
	}
	b := make([]byte, serverProofSize)
	if _, err := io.ReadFull(nc, b); err != nil {
		return err
	}
	p, err := ParseServerProof(b)
	if err != nil {
		return err
	}
	want := c.mac("server", r, h.Nonce, p.Nonce)
	if !hmac.Equal(want[:], p.MAC[:]) {
		return fmt.Errorf("%w: the server does not hold this replication key (another --auth-key?)", ErrHandshake)
	}
	_, err = nc.Write(marshalClientProof(c.mac("client", r, h.Nonce, p.Nonce)))
	return err
}

func (c *Credentials) plainServer(nc net.Conn) (Role, error) {
	b := make([]byte, clientHelloSize)
	if _, err := io.ReadFull(nc, b); err != nil {
		return 0, err
	}
	h, err := ParseClientHello(b)
	if err != nil {
		return 0, err
	}
	p := ServerProof{}
	if _, err := rand.Read(p.Nonce[:]); err != nil {
		return 0, err
	}
	p.MAC = c.mac("server", h.Role, h.Nonce, p.Nonce)
	if _, err := nc.Write(p.marshal()); err != nil {
		return 0, err
	}
	b = make([]byte, clientProofSize)
	if _, err := io.ReadFull(nc, b); err != nil {
		return 0, err
	}
	got, err := ParseClientProof(b)
	if err != nil {
		return 0, err
	}
	want := c.mac("client", h.Role, h.Nonce, p.Nonce)
	if !hmac.Equal(want[:], got[:]) {
		return 0, fmt.Errorf("%w: the client does not hold this replication key (another --auth-key?)", ErrHandshake)
	}
	return h.Role, nil
}
