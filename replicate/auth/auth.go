// Package auth owns the authentication and encryption of Tandem's
// replication connections: the shared key (its file format, loading and
// generation) and the handshake that wraps a connection before any Tandem
// message is read from it, so that the replication protocol's decoders only
// ever see bytes from a peer that holds the key.
//
// # Key
//
// Every node of one protected VM (primary, replicas, leader) holds the same
// secret of at least 32 bytes. A key file holds it as hexadecimal text (64
// hex characters for the 32 random bytes tandem keygen writes), optionally
// followed by a newline; surrounding whitespace is ignored. The file must
// not be accessible to "other" (mode & 0o007 == 0): a world-readable key
// would let any local user read and write the VM's memory. The secret is
// never used directly: HKDF-SHA256 derives one key for each purpose, with
// the labels below.
//
// # Encrypted handshake (the default)
//
// Both ends derive one Ed25519 key pair from the secret (HKDF-SHA256, info
// "tandem replication v1 ed25519") and a self-signed certificate for it,
// and run TLS 1.3 (crypto/tls, no older version). Each side requires the
// peer's certificate and accepts it only if its public key is exactly the
// derived public key; TLS 1.3's CertificateVerify proves the peer holds the
// private key, and its transcript separates the client's signature from
// the server's, so a message of one cannot be reflected as the other. No
// CA, name or expiry is involved: the key is the identity. The client
// names the connection's role in ALPN ("tandem-v1-<role>"), which the
// handshake authenticates, so the server learns the role before it reads
// any Tandem message. Everything after the handshake is TLS records.
//
// # Plaintext handshake (--insecure-plaintext)
//
// Both ends still authenticate each other with the key, by challenge and
// response, and then carry the Tandem messages in clear. It protects
// against anyone who does not hold the key connecting to a replica or
// impersonating one, but not against an on-path attacker, who can read the
// VM's memory as it passes and change or inject messages once the
// handshake is over. Use it only on a network you trust, for speed.
//
//	client → server  clientHello  (41 bytes)
//	   0 u32 magic "TNAH"   4 u16 version 1   6 u8 mode 1 (plaintext)
//	   7 u8 role           8 [32]byte client nonce Nc   40 u8 0
//	server → client  serverProof  (72 bytes)
//	   0 u32 magic "TNAS"   4 u16 version 1   6 u16 0
//	   8 [32]byte server nonce Ns   40 [32]byte HMAC(K, "server", role, Nc, Ns)
//	client → server  clientProof  (40 bytes)
//	   0 u32 magic "TNAC"   4 u16 version 1   6 u16 0
//	   8 [32]byte HMAC(K, "client", role, Nc, Ns)
//
// K is HKDF-SHA256(secret, info "tandem replication v1 plaintext hmac");
// the MAC is HMAC-SHA256 over the label "tandem replication v1
// plaintext", the direction, the role byte and both nonces, compared in
// constant time. Fresh nonces on both sides make a recorded exchange
// useless, and the direction in the MAC stops a server's proof from being
// replayed as a client's.
//
// # Refusals and deadlines
//
// A peer that fails the handshake (no key, wrong key, the other mode, a
// truncated or malformed frame) is told nothing: the connection is simply
// closed, before anything about the VM is revealed or allocated. Every
// handshake has a deadline (Timeout by default), so a peer that connects
// and says nothing holds a connection for at most that long.
package auth

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"strings"
	"time"
)

// KeySize is the smallest secret accepted, and the size GenerateKey makes.
const KeySize = 32

// maxKeyFile bounds a key file's size: a key is a few dozen bytes.
const maxKeyFile = 4096

// HKDF labels: one derived key per purpose.
const (
	labelEd25519   = "tandem replication v1 ed25519"
	labelPlainHMAC = "tandem replication v1 plaintext hmac"
	labelPlainMAC  = "tandem replication v1 plaintext"
)

// ErrKey marks a key that cannot be used; errors wrapping it name the file
// and what is wrong.
var ErrKey = errors.New("auth: unusable key")

// Key is a shared replication secret.
type Key struct {
	secret []byte
}

// NewKey makes a key from a secret of at least KeySize bytes.
func NewKey(secret []byte) (*Key, error) {
	if len(secret) < KeySize {
		return nil, fmt.Errorf("%w: %d bytes of secret, at least %d needed", ErrKey, len(secret), KeySize)
	}
	return &Key{secret: append([]byte(nil), secret...)}, nil
}

// GenerateKey makes a fresh random key of KeySize bytes.
func GenerateKey() (*Key, error) {
	b := make([]byte, KeySize)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("auth: generate key: %w", err)
	}
	return &Key{secret: b}, nil
}

// MarshalText encodes the key as a key file's contents: hex and a newline.
func (k *Key) MarshalText() []byte {
	return []byte(hex.EncodeToString(k.secret) + "\n")
}

// ParseKey decodes a key file's contents (see the package documentation).
func ParseKey(b []byte) (*Key, error) {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return nil, fmt.Errorf("%w: empty", ErrKey)
	}
	secret, err := hex.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not hexadecimal (a key file holds %d hex characters, as tandem keygen writes)", ErrKey, 2*KeySize)
	}
	return NewKey(secret)
}

// LoadKey reads a key file. A missing file, one that other users may access
// (mode & 0o007 != 0), or one holding less than KeySize bytes of secret is
// refused with an error naming the file and the problem.
func LoadKey(path string) (*Key, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: key file %s does not exist (create one with tandem keygen %s): %w", ErrKey, path, path, err)
		}
		return nil, fmt.Errorf("%w: key file %s: %w", ErrKey, path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%w: key file %s: %w", ErrKey, path, err)
	}
	switch {
	case !st.Mode().IsRegular():
		return nil, fmt.Errorf("%w: key file %s is not a regular file", ErrKey, path)
	case st.Mode().Perm()&0o007 != 0:
		return nil, fmt.Errorf("%w: key file %s has mode %#o: other users may access it (chmod 600 %s)", ErrKey, path, st.Mode().Perm(), path)
	case st.Size() > maxKeyFile:
		return nil, fmt.Errorf("%w: key file %s is %d bytes, more than a key", ErrKey, path, st.Size())
	}
	b := make([]byte, maxKeyFile+1)
	n, err := f.Read(b)
	if err != nil && n == 0 {
		return nil, fmt.Errorf("%w: key file %s: %w", ErrKey, path, err)
	}
	k, err := ParseKey(b[:n])
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

// WriteKeyFile writes k to a new file at path with mode 0600. It never
// overwrites an existing file.
func WriteKeyFile(path string, k *Key) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("auth: key file %s already exists; not overwriting it: %w", path, err)
		}
		return fmt.Errorf("auth: key file %s: %w", path, err)
	}
	// O_CREATE's mode is filtered by the umask; make sure of 0600.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("auth: key file %s: %w", path, err)
	}
	if _, err := f.Write(k.MarshalText()); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("auth: key file %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("auth: key file %s: %w", path, err)
	}
	return nil
}

// derive is HKDF-SHA256 of the secret for one purpose.
func (k *Key) derive(label string, n int) ([]byte, error) {
	b, err := hkdf.Key(sha256.New, k.secret, nil, label, n)
	if err != nil {
		return nil, fmt.Errorf("auth: hkdf %q: %w", label, err)
	}
	return b, nil
}

// identity is the derived Ed25519 key pair and its self-signed
// certificate.
type identity struct {
	priv ed25519.PrivateKey
	pub  ed25519.PublicKey
	cert []byte // DER
}

func (k *Key) identity() (*identity, error) {
	seed, err := k.derive(labelEd25519, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tandem replication"},
		// Fixed validity: the certificate only carries the public key, which
		// is what the peer checks; no clock is involved.
		NotBefore:   time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:    time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	// Ed25519 signatures are deterministic: every node makes the same
	// certificate from the same key.
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("auth: certificate: %w", err)
	}
	return &identity{priv: priv, pub: pub, cert: der}, nil
}
