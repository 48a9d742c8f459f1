package pagecodec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// fakeStore is a replica's store: pages by index.
type fakeStore map[uint64][]byte

func (s fakeStore) get(page uint64, dst []byte) bool {
	p, ok := s[page]
	if ok {
		copy(dst, p)
	}
	return ok
}

func randomPage(r *rand.Rand) []byte {
	p := make([]byte, PageSize)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func edited(base []byte, r *rand.Rand, edits int) []byte {
	p := bytes.Clone(base)
	for range edits {
		p[r.IntN(PageSize)] ^= byte(1 + r.IntN(255))
	}
	return p
}

// roundTrip encodes pages (with bases) in one message and decodes it
// against store, returning the message and the decoded pages.
func roundTrip(t *testing.T, opts Options, pages [][]byte, bases []*Base, store fakeStore) ([]byte, []byte) {
	t.Helper()
	e, err := NewEncoder(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	idx := make([]uint64, len(pages))
	for i, p := range pages {
		idx[i] = uint64(100 + i)
		e.Add(p, bases[i])
	}
	msg := e.Flush(nil)
	if s := e.Stats(); s.WireBytes != uint64(len(msg)) || s.Pages != uint64(len(pages)) {
		t.Fatalf("stats %+v for a %d-byte message of %d pages", s, len(msg), len(pages))
	}
	d, err := NewDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	dst := make([]byte, len(pages)*PageSize)
	n, err := d.Decode(dst, idx, msg, store.get)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(pages) {
		t.Fatalf("decoded %d pages of %d", n, len(pages))
	}
	for i, p := range pages {
		if !bytes.Equal(dst[i*PageSize:(i+1)*PageSize], p) {
			t.Fatalf("page %d differs after the round trip", i)
		}
	}
	return msg, dst
}

func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	base := randomPage(r)
	other := randomPage(r)
	text := bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog. "), PageSize/45+1)[:PageSize]
	store := fakeStore{100: base, 7: other}
	same := &Base{Data: base, Page: 100, CRC: Checksum(base), Same: true}
	from := &Base{Data: other, Page: 7, CRC: Checksum(other)}
	tests := []struct {
		name    string
		opts    Options
		page    []byte
		base    *Base
		maxWire int // the message's size at most
		kind    func(Stats) uint64
	}{
		{"raw", Options{}, randomPage(r), nil, headerSize + maxRecord, func(s Stats) uint64 { return s.Raw }},
		{"zero", Options{Zero: true}, make([]byte, PageSize), nil, headerSize + 1, func(s Stats) uint64 { return s.Zero }},
		{"zero off sends raw", Options{}, make([]byte, PageSize), nil, headerSize + maxRecord, func(s Stats) uint64 { return s.Raw }},
		{"delta of 3 bytes", Options{}, edited(base, r, 3), same, headerSize + deltaFixed + 3*4, func(s Stats) uint64 { return s.Delta }},
		{"unchanged page", Options{}, bytes.Clone(base), same, headerSize + deltaFixed, func(s Stats) uint64 { return s.Delta }},
		{"identical to another page", Options{}, bytes.Clone(other), from, headerSize + deltaFixed + 1, func(s Stats) uint64 { return s.DeltaFrom }},
		{"similar to another page", Options{}, edited(other, r, 5), from, headerSize + deltaFixed + 1 + 5*4, func(s Stats) uint64 { return s.DeltaFrom }},
		{"delta too large goes raw", Options{}, randomPage(r), same, headerSize + maxRecord, func(s Stats) uint64 { return s.Raw }},
		{"compressed text", Options{Compress: true}, text, nil, headerSize + 200, func(s Stats) uint64 { return s.Raw }},
		{"incompressible stays plain", Options{Compress: true}, randomPage(r), nil, headerSize + maxRecord, func(s Stats) uint64 { return s.Raw }},
		{"zero page under a base", Options{Zero: true}, make([]byte, PageSize), same, headerSize + 1, func(s Stats) uint64 { return s.Zero }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, _ := roundTrip(t, tt.opts, [][]byte{tt.page}, []*Base{tt.base}, store)
			if len(msg) > tt.maxWire {
				t.Errorf("message of %d bytes, want at most %d", len(msg), tt.maxWire)
			}
			e, _ := NewEncoder(tt.opts)
			e.Add(tt.page, tt.base)
			if tt.kind(e.Stats()) != 1 {
				t.Errorf("stats %+v: not the expected record kind", e.Stats())
			}
		})
	}
}

func TestFullMessageMixed(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	store := fakeStore{}
	var pages [][]byte
	var bases []*Base
	for i := range MaxPages {
		b := randomPage(r)
		store[uint64(100+i)] = b
		switch i % 4 {
		case 0:
			pages, bases = append(pages, make([]byte, PageSize)), append(bases, nil)
		case 1:
			pages, bases = append(pages, edited(b, r, 1+r.IntN(40))), append(bases, &Base{Data: b, Page: uint64(100 + i), CRC: Checksum(b), Same: true})
		default:
			pages, bases = append(pages, randomPage(r)), append(bases, nil)
		}
	}
	for _, opts := range []Options{{}, {Zero: true}, {Zero: true, Compress: true}} {
		msg, _ := roundTrip(t, opts, pages, bases, store)
		if len(msg) > MaxMessage {
			t.Fatalf("%+v: message of %d bytes exceeds MaxMessage", opts, len(msg))
		}
	}
}

// TestBadInput: each way a message can be wrong is an ErrCorrupt.
func TestBadInput(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	base := randomPage(r)
	page := edited(base, r, 10)
	good := func(opts Options, b *Base) []byte {
		e, _ := NewEncoder(opts)
		e.Add(page, b)
		return e.Flush(nil)
	}
	same := &Base{Data: base, Page: 100, CRC: Checksum(base), Same: true}
	delta := good(Options{}, same)
	bomb := func() []byte {
		z, _ := zstd.NewWriter(nil)
		body := z.EncodeAll(make([]byte, 64<<20), nil)
		h := make([]byte, headerSize)
		h[0] = flagZstd
		binary.LittleEndian.PutUint32(h[4:], 1)
		binary.LittleEndian.PutUint32(h[8:], maxRecord)
		return append(h, body...)
	}()
	patch := func(b []byte, off int, v byte) []byte { b = bytes.Clone(b); b[off] = v; return b }
	tests := []struct {
		name  string
		msg   []byte
		store fakeStore
		pages int
	}{
		{"short", delta[:5], fakeStore{100: base}, 1},
		{"no records", patch(delta, 4, 0), fakeStore{100: base}, 1},
		{"more records than pages", delta, fakeStore{100: base}, 0},
		{"unknown flags", patch(delta, 0, 0x80), fakeStore{100: base}, 1},
		{"body too large", func() []byte { b := bytes.Clone(delta); binary.LittleEndian.PutUint32(b[8:], MaxBody+1); return b }(), fakeStore{100: base}, 1},
		{"truncated body", delta[:len(delta)-3], fakeStore{100: base}, 1},
		{"trailing bytes", append(bytes.Clone(delta), 0), fakeStore{100: base}, 1},
		{"base not held", delta, fakeStore{}, 1},
		{"base differs", delta, fakeStore{100: randomPage(r)}, 1},
		{"delta does not apply", patch(delta, len(delta)-1, delta[len(delta)-1]^0xff), fakeStore{100: base}, 1},
		{"unknown record", patch(delta, headerSize, 0x7f), fakeStore{100: base}, 1},
		{"decompression bomb", bomb, fakeStore{}, 1},
		{"bad zstd", append(patch(delta, 0, flagZstd)[:headerSize], 1, 2, 3, 4), fakeStore{100: base}, 1},
	}
	d, _ := NewDecoder()
	defer d.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, tt.pages*PageSize)
			idx := make([]uint64, tt.pages)
			for i := range idx {
				idx[i] = 100
			}
			if _, err := d.Decode(dst, idx, tt.msg, tt.store.get); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Decode: %v, want ErrCorrupt", err)
			}
		})
	}
	// The untouched message decodes: the cases above fail for their
	// reason, not for another.
	dst := make([]byte, PageSize)
	if _, err := d.Decode(dst, []uint64{100}, delta, fakeStore{100: base}.get); err != nil || !bytes.Equal(dst, page) {
		t.Fatalf("good message: %v", err)
	}
}

// TestKept: a kept record takes the page from the decoder's shadow copy,
// costs five bytes, and is corrupt when there is no shadow, the shadow
// lacks the page or holds other content.
func TestKept(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	page, other := randomPage(r), randomPage(r)
	e, _ := NewEncoder(Options{Zero: true})
	e.AddKept(page)
	e.Add(other, nil)
	if s := e.Stats(); s.Kept != 1 || s.Raw != 1 || s.BodyBytes != 5+maxRecord {
		t.Fatalf("stats %+v: want one kept record of 5 bytes and one raw", s)
	}
	msg := e.Flush(nil)
	tests := []struct {
		name   string
		shadow Store
		ok     bool
	}{
		{"shadow holds the page", fakeStore{40: page}.get, true},
		{"no shadow", nil, false},
		{"shadow lacks the page", fakeStore{}.get, false},
		{"shadow differs", fakeStore{40: other}.get, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, _ := NewDecoder()
			defer d.Close()
			d.Shadow = tt.shadow
			dst := make([]byte, 2*PageSize)
			_, err := d.Decode(dst, []uint64{40, 41}, msg, fakeStore{}.get)
			if !tt.ok {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Decode: %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil || !bytes.Equal(dst[:PageSize], page) || !bytes.Equal(dst[PageSize:], other) {
				t.Fatalf("Decode: %v, or the pages differ", err)
			}
		})
	}
}

// FuzzDecode: no input makes Decode panic, write past its pages, or
// decode into more pages than it was given.
func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	base := randomPage(r)
	for _, opts := range []Options{{}, {Zero: true, Compress: true}} {
		e, _ := NewEncoder(opts)
		e.Add(edited(base, r, 20), &Base{Data: base, Page: 1, CRC: Checksum(base), Same: true})
		e.Add(make([]byte, PageSize), nil)
		e.Add(bytes.Clone(base), &Base{Data: base, Page: 1, CRC: Checksum(base)})
		f.Add(e.Flush(nil))
	}
	e, _ := NewEncoder(Options{})
	e.AddKept(base)
	f.Add(e.Flush(nil))
	d, _ := NewDecoder()
	store := fakeStore{1: base}
	d.Shadow = fakeStore{1: base}.get
	f.Fuzz(func(t *testing.T, msg []byte) {
		dst := make([]byte, 4*PageSize)
		n, err := d.Decode(dst[:3*PageSize], []uint64{1, 2, 1}, msg, store.get)
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v is not an ErrCorrupt", err)
		}
		if err == nil && (n < 1 || n > 3) {
			t.Fatalf("decoded %d pages into 3", n)
		}
		if !IsZero(dst[3*PageSize:]) {
			t.Fatal("Decode wrote past the pages it was given")
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	r := rand.New(rand.NewPCG(9, 10))
	base := randomPage(r)
	page := edited(base, r, 16)
	for _, c := range []struct {
		name string
		opts Options
		base *Base
	}{
		{"raw", Options{}, nil},
		{"zero-check", Options{Zero: true}, nil},
		{"delta", Options{}, &Base{Data: base, CRC: Checksum(base), Same: true}},
		{"zstd", Options{Compress: true}, nil},
	} {
		b.Run(c.name, func(b *testing.B) {
			e, _ := NewEncoder(c.opts)
			var out []byte
			b.SetBytes(PageSize)
			for b.Loop() {
				e.Add(page, c.base)
				if e.Full() {
					out = e.Flush(out[:0])
				}
			}
		})
	}
}

// TestCompressionSwitchesOff: after a message that zstd cannot shrink
// the Encoder sends plainAfterMiss messages without trying, then tries
// again; compressible messages stay compressed.
func TestCompressionSwitchesOff(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	text := bytes.Repeat([]byte("compressible "), PageSize/13+1)[:PageSize]
	e, _ := NewEncoder(Options{Compress: true})
	send := func(page []byte) {
		e.Add(page, nil)
		e.Flush(nil)
	}
	send(text)
	send(text)
	if c := e.Stats().Compressed; c != 2 {
		t.Fatalf("%d of 2 compressible messages compressed", c)
	}
	send(randomPage(r)) // a miss
	for range plainAfterMiss {
		send(text)
	}
	if c := e.Stats().Compressed; c != 2 {
		t.Fatalf("compression tried again within %d messages of a miss (%d compressed)", plainAfterMiss, c)
	}
	send(text)
	if c := e.Stats().Compressed; c != 3 {
		t.Fatalf("compression not tried again after %d plain messages", plainAfterMiss)
	}
}
