// Package pagecodec owns how the pages of one link's epoch are encoded
// when Tandem reduces replication traffic: pages that are all zero travel
// as a one-byte record, a page the replica already holds an earlier copy
// of travels as the bytes that changed (seed 001, "fine-grained dirty
// regions"; QEMU's XBZRLE is the same idea), a page whose content the
// replica holds under another page travels as a delta against that page
// (seed 002, content similarity; an identical page is an empty delta), a
// page that the replica's own running copy of the VM wrote the same way
// travels as its checksum alone (seed 001's active backup), and a
// message's records may be compressed with zstd as a whole (the baseline
// of QEMU's multifd).
//
// The package knows nothing of links, epochs or the commit rule: the
// primary decides which base a page may be encoded against (a copy it
// knows the replica holds, see package replicate), the replica supplies
// its store's copy of a base when decoding, and every delta names the
// CRC-32C of the base it was made against and of the page it yields, so
// that a base that is not what the primary thought, or a delta that does
// not apply, is an error ([ErrCorrupt]) and never a wrong page. A kept
// record is checked the same way against the replica's copy.
//
// # Message format
//
// One message carries up to [MaxPages] consecutive pages of the epoch's
// map, in map order. Its payload (all integers little endian):
//
//	0  u8  flags: bit 0 set, the body is one zstd frame
//	1  u8  0
//	2  u16 0
//	4  u32 records in the body (1..MaxPages)
//	8  u32 body length, decompressed (at most MaxBody)
//	12 body
//
// The body is the records, one per page, back to back:
//
//	0x01 raw         the 4096 bytes of the page
//	0x02 zero        nothing: the page is all zero
//	0x03 delta       u32 crc(base) | u32 crc(page) | u16 n | n bytes of runs;
//	                 the base is the replica's copy of the same page
//	0x04 delta-from  uvarint base page | u32 crc(base) | u32 crc(page) |
//	                 u16 n | n bytes of runs; the base is another page
//	0x05 kept        u32 crc(page); the page is the replica's shadow copy
//	                 of it (Decoder.Shadow), which it found equal by hash
//
// Runs are pairs (uvarint bytes unchanged, uvarint bytes changed, the
// changed bytes); bytes after the last run are the base's. A record never
// exceeds a raw one (1+4096 bytes), so MaxBody bounds every message and a
// decoder allocates nothing from a peer's claims beyond it.
package pagecodec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/klauspost/compress/zstd"
)

// PageSize is the size of a page.
const PageSize = 4096

// MaxPages bounds the records of one message.
const MaxPages = 256

// maxRecord is the largest record: a raw page.
const maxRecord = 1 + PageSize

// MaxBody bounds a message's body, decompressed.
const MaxBody = MaxPages * maxRecord

// headerSize is the size of a message's fixed part.
const headerSize = 12

// MaxMessage bounds a message's payload: a compressed body that would be
// larger than the body is sent uncompressed.
const MaxMessage = headerSize + MaxBody

// Record kinds.
const (
	kindRaw       = 0x01
	kindZero      = 0x02
	kindDelta     = 0x03
	kindDeltaFrom = 0x04
	kindKept      = 0x05
)

const flagZstd = 1

// deltaFixed is a delta record's size without its runs (and, for
// delta-from, the base page).
const deltaFixed = 1 + 4 + 4 + 2

// maxDeltaRuns bounds a delta's runs: a page that changed more is sent raw,
// which is nearly as short and costs the replica nothing to apply.
const maxDeltaRuns = PageSize * 3 / 4

// ErrCorrupt reports a message that does not decode: malformed, a base
// the replica does not hold or whose checksum differs, a delta that does
// not apply, a body that decompresses to more than it announced.
var ErrCorrupt = errors.New("pagecodec: corrupt message")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the CRC-32C of a page, the checksum deltas carry.
func Checksum(page []byte) uint32 { return crc32.Checksum(page, castagnoli) }

// Options choose the techniques an Encoder uses. Deltas need no option:
// the caller offers a base or does not.
type Options struct {
	// Zero sends an all-zero page as a one-byte record.
	Zero bool
	// Compress compresses each message's body with zstd (fastest level)
	// when that makes it shorter. A message that compresses to more than
	// 90% of its body makes the Encoder send the next 32 plain (and try
	// again after them): incompressible pages cost a scan, not zstd's
	// time at every message.
	Compress bool
}

// Base is a copy of a page that the replica holds, which a page may be
// encoded against. Page is the base's page index (for a delta against the
// same page it is the page itself, and Same is set); CRC is Checksum(Data).
type Base struct {
	Data []byte
	Page uint64
	CRC  uint32
	Same bool
}

// Stats counts what an Encoder produced.
type Stats struct {
	Pages, Raw, Zero, Delta, DeltaFrom, Kept uint64
	// DeltaBytes is the bytes of delta records; BodyBytes of all records;
	// WireBytes of the messages as sent (compressed, with their headers).
	DeltaBytes, BodyBytes, WireBytes uint64
	Messages                         uint64
	// Compressed counts the messages sent compressed.
	Compressed uint64
}

// Add adds o's counts to s.
func (s *Stats) Add(o Stats) {
	s.Pages += o.Pages
	s.Raw += o.Raw
	s.Zero += o.Zero
	s.Delta += o.Delta
	s.DeltaFrom += o.DeltaFrom
	s.Kept += o.Kept
	s.DeltaBytes += o.DeltaBytes
	s.BodyBytes += o.BodyBytes
	s.WireBytes += o.WireBytes
	s.Messages += o.Messages
	s.Compressed += o.Compressed
}

// An Encoder builds messages, one page at a time. It is not safe for
// concurrent use; each link has its own.
type Encoder struct {
	opts    Options
	zenc    *zstd.Encoder
	body    []byte
	records int
	stats   Stats
	// plain counts the messages still to send without trying zstd.
	plain int
}

// Compression switches off for plainAfterMiss messages after one that
// saved under a tenth.
const plainAfterMiss = 32

// NewEncoder returns an Encoder using opts.
func NewEncoder(opts Options) (*Encoder, error) {
	e := &Encoder{opts: opts, body: make([]byte, 0, MaxBody)}
	if opts.Compress {
		z, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		if err != nil {
			return nil, fmt.Errorf("pagecodec: zstd: %w", err)
		}
		e.zenc = z
	}
	return e, nil
}

// Stats returns the counts since the last ResetStats.
func (e *Encoder) Stats() Stats { return e.stats }

// ResetStats zeroes the counts.
func (e *Encoder) ResetStats() { e.stats = Stats{} }

// Full reports whether the message in progress holds MaxPages records:
// Flush it before adding more.
func (e *Encoder) Full() bool { return e.records == MaxPages }

// Pending is the number of records in the message in progress.
func (e *Encoder) Pending() int { return e.records }

var zeroPage [PageSize]byte

// IsZero reports whether page is all zero.
func IsZero(page []byte) bool { return bytes.Equal(page, zeroPage[:]) }

// Add appends page (PageSize bytes) to the message in progress, as the
// shortest record the options and base allow; base may be nil. It panics
// if the message is full (see Full) or page is not a page.
func (e *Encoder) Add(page []byte, base *Base) {
	if e.records == MaxPages || len(page) != PageSize {
		panic("pagecodec: Add to a full message or of a non-page")
	}
	e.records++
	e.stats.Pages++
	start := len(e.body)
	switch {
	case e.opts.Zero && IsZero(page):
		e.body = append(e.body, kindZero)
		e.stats.Zero++
	case base != nil && e.appendDelta(page, base):
		e.stats.DeltaBytes += uint64(len(e.body) - start)
		if base.Same {
			e.stats.Delta++
		} else {
			e.stats.DeltaFrom++
		}
	default:
		e.body = append(append(e.body, kindRaw), page...)
		e.stats.Raw++
	}
	e.stats.BodyBytes += uint64(len(e.body) - start)
}

// AddKept appends page as a kept record: the replica takes its shadow
// copy of the page, which must have page's content (checked by its
// checksum). It panics as Add does.
func (e *Encoder) AddKept(page []byte) {
	if e.records == MaxPages || len(page) != PageSize {
		panic("pagecodec: AddKept to a full message or of a non-page")
	}
	e.records++
	e.stats.Pages++
	e.stats.Kept++
	e.body = binary.LittleEndian.AppendUint32(append(e.body, kindKept), Checksum(page))
	e.stats.BodyBytes += 5
}

// appendDelta appends a delta record of page against base, or nothing if
// the runs would exceed maxDeltaRuns, and reports which.
func (e *Encoder) appendDelta(page []byte, base *Base) bool {
	start := len(e.body)
	if base.Same {
		e.body = append(e.body, kindDelta)
	} else {
		e.body = binary.AppendUvarint(append(e.body, kindDeltaFrom), base.Page)
	}
	le := binary.LittleEndian
	e.body = le.AppendUint32(e.body, base.CRC)
	e.body = le.AppendUint32(e.body, Checksum(page))
	lenAt := len(e.body)
	e.body = append(e.body, 0, 0)
	var ok bool
	e.body, ok = appendRuns(e.body, page, base.Data, lenAt+2+maxDeltaRuns)
	if !ok {
		e.body = e.body[:start]
		return false
	}
	le.PutUint16(e.body[lenAt:], uint16(len(e.body)-lenAt-2))
	return true
}

// appendRuns appends the runs that turn base into page, failing once dst
// would pass limit bytes. Equal 64-byte blocks are skipped with one
// comparison each, differing ones word by word, and a run's ends are then
// trimmed to the bytes that differ.
func appendRuns(dst, page, base []byte, limit int) ([]byte, bool) {
	pos, i := 0, 0
	for i < PageSize {
		if i%64 == 0 && bytes.Equal(page[i:i+64], base[i:i+64]) {
			i += 64
			continue
		}
		if wordAt(page, i) == wordAt(base, i) {
			i += 8
			continue
		}
		s := i
		for i < PageSize && wordAt(page, i) != wordAt(base, i) {
			i += 8
		}
		end := i
		for page[s] == base[s] {
			s++
		}
		for page[end-1] == base[end-1] {
			end--
		}
		dst = binary.AppendUvarint(dst, uint64(s-pos))
		dst = binary.AppendUvarint(dst, uint64(end-s))
		dst = append(dst, page[s:end]...)
		if len(dst) > limit {
			return dst, false
		}
		pos = end
	}
	return dst, true
}

func wordAt(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

// Flush appends the message in progress (header and payload, compressed
// if that is shorter) to dst and starts a new one. With no record pending
// it appends nothing.
func (e *Encoder) Flush(dst []byte) []byte {
	if e.records == 0 {
		return dst
	}
	start := len(dst)
	le := binary.LittleEndian
	flags := byte(0)
	body := e.body
	if e.zenc != nil && e.plain == 0 {
		dst = append(dst, make([]byte, headerSize)...)
		dst = e.zenc.EncodeAll(body, dst)
		n := len(dst) - start - headerSize
		if n < len(body) {
			flags = flagZstd
			e.stats.Compressed++
		} else {
			dst = append(dst[:start+headerSize], body...)
		}
		if n*10 > len(body)*9 {
			e.plain = plainAfterMiss
		}
	} else {
		e.plain = max(e.plain-1, 0)
		dst = append(append(dst, make([]byte, headerSize)...), body...)
	}
	h := dst[start:]
	h[0], h[1] = flags, 0
	le.PutUint16(h[2:], 0)
	le.PutUint32(h[4:], uint32(e.records))
	le.PutUint32(h[8:], uint32(len(body)))
	e.stats.WireBytes += uint64(len(dst) - start)
	e.stats.Messages++
	e.body, e.records = e.body[:0], 0
	return dst
}

// Close releases the Encoder's compressor.
func (e *Encoder) Close() {
	if e.zenc != nil {
		e.zenc.Close()
	}
}

// Records returns how many pages a message announces, checking its header
// only: the replica uses it to find the pages the message is for.
func Records(msg []byte) (int, error) {
	if len(msg) < headerSize {
		return 0, fmt.Errorf("%w: message of %d bytes", ErrCorrupt, len(msg))
	}
	n := binary.LittleEndian.Uint32(msg[4:])
	if n == 0 || n > MaxPages {
		return 0, fmt.Errorf("%w: message of %d records", ErrCorrupt, n)
	}
	return int(n), nil
}

// Store is the replica's side of a base: it copies its copy of page into
// dst (PageSize bytes) and reports whether it holds the page at all.
type Store func(page uint64, dst []byte) bool

// A Decoder decodes messages. It is not safe for concurrent use; each link
// has its own.
type Decoder struct {
	// Shadow, when set, supplies the replica's shadow copy of a page for
	// kept records; without it a kept record is an ErrCorrupt.
	Shadow Store
	zdec   *zstd.Decoder
	body   []byte
}

// NewDecoder returns a Decoder.
func NewDecoder() (*Decoder, error) {
	z, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(MaxBody),
		zstd.WithDecoderMaxWindow(MaxBody), zstd.WithDecodeAllCapLimit(true), zstd.IgnoreChecksum(true))
	if err != nil {
		return nil, fmt.Errorf("pagecodec: zstd: %w", err)
	}
	return &Decoder{zdec: z, body: make([]byte, 0, MaxBody)}, nil
}

// Close releases the Decoder's decompressor.
func (d *Decoder) Close() { d.zdec.Close() }

// Decode decodes msg into dst, the pages pages[0], pages[1], ... of the
// map in order (len(dst) is len(pages)*PageSize), taking bases from store.
// It returns how many pages the message held; a message holding more than
// len(pages), or anything else wrong with it, is an ErrCorrupt and may
// have written any of dst.
func (d *Decoder) Decode(dst []byte, pages []uint64, msg []byte, store Store) (int, error) {
	n, err := Records(msg)
	if err != nil {
		return 0, err
	}
	if n > len(pages) || len(dst) < n*PageSize {
		return 0, fmt.Errorf("%w: %d records for %d pages", ErrCorrupt, n, len(pages))
	}
	le := binary.LittleEndian
	flags, bodyLen := msg[0], le.Uint32(msg[8:])
	if flags&^flagZstd != 0 || msg[1] != 0 || le.Uint16(msg[2:]) != 0 {
		return 0, fmt.Errorf("%w: header flags %#x %#x %#x", ErrCorrupt, flags, msg[1], le.Uint16(msg[2:]))
	}
	if bodyLen > MaxBody {
		return 0, fmt.Errorf("%w: body of %d bytes, at most %d", ErrCorrupt, bodyLen, MaxBody)
	}
	body := msg[headerSize:]
	if flags&flagZstd != 0 {
		body, err = d.zdec.DecodeAll(body, d.body[:0:bodyLen])
		if err != nil {
			return 0, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
	}
	if uint32(len(body)) != bodyLen {
		return 0, fmt.Errorf("%w: body of %d bytes, announced %d", ErrCorrupt, len(body), bodyLen)
	}
	for i := range n {
		page := dst[i*PageSize : (i+1)*PageSize]
		if body, err = d.decodeRecord(page, pages[i], body, store); err != nil {
			return 0, fmt.Errorf("%w (record %d, page %d)", err, i, pages[i])
		}
	}
	if len(body) != 0 {
		return 0, fmt.Errorf("%w: %d bytes after the last record", ErrCorrupt, len(body))
	}
	return n, nil
}

// decodeRecord decodes one record into page and returns the rest of body.
func (d *Decoder) decodeRecord(page []byte, index uint64, body []byte, store Store) ([]byte, error) {
	if len(body) == 0 {
		return nil, fmt.Errorf("%w: body ends before its records", ErrCorrupt)
	}
	kind := body[0]
	body = body[1:]
	switch kind {
	case kindRaw:
		if len(body) < PageSize {
			return nil, fmt.Errorf("%w: raw record of %d bytes", ErrCorrupt, len(body))
		}
		copy(page, body[:PageSize])
		return body[PageSize:], nil
	case kindZero:
		clear(page)
		return body, nil
	case kindKept:
		if len(body) < 4 {
			return nil, fmt.Errorf("%w: kept record of %d bytes", ErrCorrupt, len(body))
		}
		if d.Shadow == nil || !d.Shadow(index, page) {
			return nil, fmt.Errorf("%w: kept page %d, which the replica has no shadow copy of", ErrCorrupt, index)
		}
		if want, c := binary.LittleEndian.Uint32(body), Checksum(page); c != want {
			return nil, fmt.Errorf("%w: kept page %d has checksum %08x in the shadow, not %08x", ErrCorrupt, index, c, want)
		}
		return body[4:], nil
	case kindDelta, kindDeltaFrom:
	default:
		return nil, fmt.Errorf("%w: record kind %#x", ErrCorrupt, kind)
	}
	baseIndex := index
	if kind == kindDeltaFrom {
		v, k := binary.Uvarint(body)
		if k <= 0 {
			return nil, fmt.Errorf("%w: delta's base page", ErrCorrupt)
		}
		baseIndex, body = v, body[k:]
	}
	if len(body) < deltaFixed-1 {
		return nil, fmt.Errorf("%w: delta record of %d bytes", ErrCorrupt, len(body))
	}
	le := binary.LittleEndian
	baseCRC, pageCRC, n := le.Uint32(body), le.Uint32(body[4:]), int(le.Uint16(body[8:]))
	body = body[10:]
	if n > len(body) {
		return nil, fmt.Errorf("%w: delta of %d bytes in %d", ErrCorrupt, n, len(body))
	}
	runs := body[:n]
	if !store(baseIndex, page) {
		return nil, fmt.Errorf("%w: delta against page %d, which the replica does not hold", ErrCorrupt, baseIndex)
	}
	if c := Checksum(page); c != baseCRC {
		return nil, fmt.Errorf("%w: delta against page %d with checksum %08x; the replica's has %08x", ErrCorrupt, baseIndex, baseCRC, c)
	}
	if err := applyRuns(page, runs); err != nil {
		return nil, err
	}
	if c := Checksum(page); c != pageCRC {
		return nil, fmt.Errorf("%w: delta yields checksum %08x, not %08x", ErrCorrupt, c, pageCRC)
	}
	return body[n:], nil
}

// applyRuns applies runs to page in place.
func applyRuns(page, runs []byte) error {
	pos := uint64(0)
	for len(runs) > 0 {
		skip, k := binary.Uvarint(runs)
		if k <= 0 {
			return fmt.Errorf("%w: delta run", ErrCorrupt)
		}
		runs = runs[k:]
		n, k := binary.Uvarint(runs)
		if k <= 0 {
			return fmt.Errorf("%w: delta run", ErrCorrupt)
		}
		runs = runs[k:]
		if skip > PageSize-pos || n > PageSize-pos-skip || n > uint64(len(runs)) {
			return fmt.Errorf("%w: delta run of %d bytes at %d", ErrCorrupt, n, pos+skip)
		}
		pos += skip
		copy(page[pos:], runs[:n])
		pos += n
		runs = runs[n:]
	}
	return nil
}
