package replicate

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/tandemvm/tandem/replicate/pagecodec"
)

// Traffic reduction (issue 18). A TCP link does not need its pages as raw
// bytes: it sends them as pagecodec records (MsgPages), which the replica
// decodes into the link's staging area, so the store, the commit rule and
// recovery see exactly the pages they would have seen raw.
//
// A delta may only be made against a copy the replica certainly holds in
// its store when it decodes. The primary keeps the copies of pages it
// sent in epochs that committed (pageCache, bounded, least recently sent
// evicted first), each with the set of links whose replica holds that copy:
// the links that carried the page in the epoch that committed it. A link
// may encode page p against a cached copy of q (p itself, or another page
// with the same content, seed 002) only if it is in q's set; the set is
// replaced when q is sent again and committed, and a link that fails is
// taken out of every set (its replica may have restarted). On the replica
// a link decodes epoch e only after its own earlier committed epochs were
// applied (beginEpoch waits for them), and any other link that carried q
// later would have replaced q's set, so the store's q is the copy the
// primary cached; staged, uncommitted data is never a base. Every delta
// names the checksums of its base and its result: were that reasoning
// wrong the link fails with a protocol error, it never stores a wrong page.

// Reduction chooses how TCP links reduce the bytes of an epoch. RDMA links
// write raw memory one-sided and ignore it.
type Reduction struct {
	// Zero sends an all-zero page as a one-byte record.
	Zero bool
	// CacheBytes keeps up to this many bytes of committed page copies on
	// the primary, plus about 3% for bookkeeping (a 48-byte slot and index
	// entries per page), so that a page sent again travels as the bytes
	// that changed (seed 001). 0: no deltas.
	CacheBytes int64
	// Similar sends a page whose content equals, or is much like, a cached
	// copy of another page as a delta against it (seed 002). Needs
	// CacheBytes.
	Similar bool
	// Compress compresses each message with zstd where that pays.
	Compress bool
}

// DefaultReduction is what a primary uses when its config names none:
// zero pages only, which costs no memory and a scan of each page.
var DefaultReduction = Reduction{Zero: true}

// any reports whether r reduces anything: without, links send raw data.
func (r Reduction) any() bool { return r.Zero || r.CacheBytes > 0 || r.Compress }

// String names r as ParseReduction reads it.
func (r Reduction) String() string {
	var parts []string
	if r.Zero {
		parts = append(parts, "zero")
	}
	if r.CacheBytes > 0 {
		parts = append(parts, "delta")
	}
	if r.Similar {
		parts = append(parts, "similar")
	}
	if r.Compress {
		parts = append(parts, "zstd")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// ParseReduction reads a comma list of techniques (zero, delta, similar,
// zstd), "all", or "none"; delta and similar keep cacheBytes of copies.
func ParseReduction(s string, cacheBytes int64) (Reduction, error) {
	var r Reduction
	for _, w := range strings.Split(s, ",") {
		switch strings.TrimSpace(w) {
		case "none":
		case "zero":
			r.Zero = true
		case "delta":
			r.CacheBytes = cacheBytes
		case "similar":
			r.CacheBytes, r.Similar = cacheBytes, true
		case "zstd":
			r.Compress = true
		case "all":
			r = Reduction{Zero: true, CacheBytes: cacheBytes, Similar: true, Compress: true}
		default:
			return Reduction{}, fmt.Errorf("reduction %q: want none, all, or a list of zero, delta, similar, zstd", w)
		}
	}
	if (strings.Contains(s, "delta") || strings.Contains(s, "similar") || s == "all") && cacheBytes < pagecodec.PageSize {
		return Reduction{}, fmt.Errorf("reduction %q needs a page cache of at least one page, not %d bytes", s, cacheBytes)
	}
	return r, nil
}

// pageCache holds the copies of pages sent in committed epochs and which
// links' replicas hold each. Slots form a list from the most to the least
// recently sent; a full cache reuses the last.
type pageCache struct {
	slots []cacheSlot
	data  []byte
	index map[uint64]int32
	// byCRC finds a cached copy by its content's checksum, byDensity one
	// whose content is much like a page's (Similar; see density).
	byCRC      map[uint32]int32
	byDensity  map[uint64]int32
	head, tail int32 // -1: empty
	used       int32
	// stamp numbers the commits, so a page carried on several links in
	// one epoch is copied once.
	stamp uint64
}

type cacheSlot struct {
	page       uint64
	crc        uint32
	holders    uint64 // bit i: link i's replica holds this copy
	stamp      uint64
	density    uint64 // with Similar
	prev, next int32
}

func newPageCache(bytes int64, similar bool) *pageCache {
	n := bytes / pagecodec.PageSize
	c := &pageCache{slots: make([]cacheSlot, n), data: make([]byte, n*pagecodec.PageSize), index: map[uint64]int32{}, head: -1, tail: -1}
	if similar {
		c.byCRC, c.byDensity = map[uint32]int32{}, map[uint64]int32{}
	}
	return c
}

// density is seed 002's bit density hash of a page: the number of set
// bits in each of its eight 512-byte blocks, each rounded down to a
// multiple of 16. A few changed bytes seldom move a block's count across
// a boundary, so pages that differ a little mostly share it, and the
// content-addressable table byDensity finds a candidate base for a page
// the replica holds no copy of; the delta then says whether it pays.
func density(page []byte) uint64 {
	var h uint64
	for b := 0; b < PageSize; b += 512 {
		n := 0
		for i := b; i < b+512; i += 8 {
			n += bits.OnesCount64(binary.LittleEndian.Uint64(page[i:]))
		}
		h = h<<8 | uint64(n>>4)
	}
	return h
}

func (c *pageCache) slotData(i int32) []byte {
	return c.data[int64(i)*pagecodec.PageSize : int64(i+1)*pagecodec.PageSize]
}

// base returns the copy the links in mask may encode page (content data)
// against, if any: the page's own copy, or (similar) a copy of another
// page with the same or much the same content; every link in mask must
// hold it.
func (c *pageCache) base(page uint64, data []byte, mask uint64, b *pagecodec.Base) bool {
	if i, ok := c.index[page]; ok && c.slots[i].holders&mask == mask {
		*b = pagecodec.Base{Data: c.slotData(i), Page: page, CRC: c.slots[i].crc, Same: true}
		if c.byCRC == nil || bytes.Equal(data, b.Data) {
			return true
		}
	}
	if c.byCRC != nil {
		crc := pagecodec.Checksum(data)
		if i, ok := c.byCRC[crc]; ok && c.slots[i].holders&mask == mask && bytes.Equal(data, c.slotData(i)) {
			*b = pagecodec.Base{Data: c.slotData(i), Page: c.slots[i].page, CRC: crc}
			return true
		}
		if b.Data == nil {
			if i, ok := c.byDensity[density(data)]; ok && c.slots[i].holders&mask == mask {
				*b = pagecodec.Base{Data: c.slotData(i), Page: c.slots[i].page, CRC: c.slots[i].crc}
				return true
			}
		}
	}
	return b.Data != nil
}

// unlink takes slot i out of the recency list.
func (c *pageCache) unlink(i int32) {
	s := &c.slots[i]
	if s.prev >= 0 {
		c.slots[s.prev].next = s.next
	} else {
		c.head = s.next
	}
	if s.next >= 0 {
		c.slots[s.next].prev = s.prev
	} else {
		c.tail = s.prev
	}
}

// front puts slot i at the head of the recency list.
func (c *pageCache) front(i int32) {
	s := &c.slots[i]
	s.prev, s.next = -1, c.head
	if c.head >= 0 {
		c.slots[c.head].prev = i
	}
	c.head = i
	if c.tail < 0 {
		c.tail = i
	}
}

// forgetCRC drops slot i from byCRC and byDensity.
func (c *pageCache) forgetCRC(i int32) {
	if c.byCRC != nil {
		if j, ok := c.byCRC[c.slots[i].crc]; ok && j == i {
			delete(c.byCRC, c.slots[i].crc)
		}
		if j, ok := c.byDensity[c.slots[i].density]; ok && j == i {
			delete(c.byDensity, c.slots[i].density)
		}
	}
}

// sent records that the links in links (bit i: link i) carried page, with
// content data, in the epoch being committed (dirty: the page changed
// since it was last cached). A page that did not change keeps its copy
// and gains holders; one that did gets the new copy, held by the links
// that carry it in this commit.
func (c *pageCache) sent(page uint64, data []byte, dirty bool, links uint64) {
	i, ok := c.index[page]
	switch {
	case ok && c.slots[i].stamp == c.stamp:
		c.slots[i].holders |= links
		return
	case ok && !dirty:
		c.slots[i].holders |= links
		c.slots[i].stamp = c.stamp
		return
	case !dirty:
		return // a clean page not cached: nothing to learn
	case ok:
		c.unlink(i)
		c.forgetCRC(i)
	case c.used < int32(len(c.slots)):
		i = c.used
		c.used++
	default:
		i = c.tail
		c.unlink(i)
		c.forgetCRC(i)
		delete(c.index, c.slots[i].page)
	}
	copy(c.slotData(i), data)
	crc := pagecodec.Checksum(data)
	c.slots[i] = cacheSlot{page: page, crc: crc, holders: links, stamp: c.stamp}
	c.index[page] = i
	c.front(i)
	if c.byCRC != nil {
		c.slots[i].density = density(data)
		c.byCRC[crc] = i
		c.byDensity[c.slots[i].density] = i
	}
}

// dropLink takes link out of every copy's holders: its replica may not
// hold them any more.
func (c *pageCache) dropLink(link int) {
	mask := ^(uint64(1) << link)
	for i := range c.used {
		c.slots[i].holders &= mask
	}
}

// clear forgets every copy (the cache is switched off for a while).
func (c *pageCache) clear() {
	clear(c.index)
	if c.byCRC != nil {
		clear(c.byCRC)
		clear(c.byDensity)
	}
	c.used, c.head, c.tail = 0, -1, -1
}

// reducer is the primary's traffic reduction: one encoder per link and the
// shared page cache.
type reducer struct {
	cfg      Reduction
	encoders map[int]*pagecodec.Encoder
	bufs     map[int][]byte
	cache    *pageCache
	// The encoding as a whole, and the cache alone, switch themselves off
	// when they do not pay (see account); a replay keeps them on
	// (adaptive false) so that its figures are the techniques' own.
	adaptive          bool
	encoding, caching payWindow
	keepTime          time.Duration
	epochs            uint64
}

// payWindow decides whether a technique pays: over each window of
// payEpochs epochs, the link time its saved bytes would have taken against
// the pause time it cost. One that does not is off for offEpochs, then
// tried again.
type payWindow struct {
	n        int
	saved    uint64
	cost     time.Duration
	offUntil uint64
}

const (
	payEpochs = 16
	offEpochs = 256
)

func (w *payWindow) on(epoch uint64) bool { return epoch >= w.offUntil }

// add books one epoch at epoch, the links moving rate bytes/s (0: not
// measured, taken as 1 Gbit/s), and reports whether the technique was
// switched off.
func (w *payWindow) add(epoch, saved uint64, cost time.Duration, rate float64) bool {
	w.n++
	w.saved += saved
	w.cost += cost
	if w.n < payEpochs {
		return false
	}
	if rate <= 0 {
		rate = 125e6
	}
	pays := time.Duration(float64(w.saved)/rate*float64(time.Second)) >= w.cost
	w.n, w.saved, w.cost = 0, 0, 0
	if !pays {
		w.offUntil = epoch + offEpochs
	}
	return !pays
}

func newReducer(cfg Reduction) *reducer {
	r := &reducer{cfg: cfg, encoders: map[int]*pagecodec.Encoder{}, bufs: map[int][]byte{}, adaptive: true}
	if cfg.CacheBytes >= pagecodec.PageSize {
		r.cache = newPageCache(cfg.CacheBytes, cfg.Similar)
	}
	return r
}

// encodingOn reports whether links encode this epoch (else they send raw
// data, zero-copy).
func (r *reducer) encodingOn() bool { return r.encoding.on(r.epochs) }

// cacheOn reports whether the cache is in use this epoch.
func (r *reducer) cacheOn() bool {
	return r.cache != nil && r.encodingOn() && r.caching.on(r.epochs)
}

// encode encodes the pages of ext, read through src, as MsgPages
// payloads for the links in mask (bit i: link i), against copies all of
// them hold. It runs in a sending goroutine: the cache is only read.
func (r *reducer) encode(mask uint64, enc *pagecodec.Encoder, buf []byte, ext []Region, src func(Region) []byte, keep []byte) ([]byte, [][]byte) {
	var msgs [][]byte
	buf = buf[:0]
	flush := func() {
		if enc.Pending() == 0 {
			return // a link with no pages this epoch sends no message
		}
		start := len(buf)
		buf = enc.Flush(buf)
		msgs = append(msgs, buf[start:len(buf):len(buf)])
	}
	useCache := r.cacheOn()
	var b pagecodec.Base
	i := 0
	for _, x := range ext {
		data := src(x)
		for k := range x.Pages {
			page := data[k*PageSize : (k+1)*PageSize]
			kept := keep != nil && keep[i/8]&(1<<(i%8)) != 0
			i++
			var base *pagecodec.Base
			if !kept && useCache && r.cache.base(x.First+k, page, mask, &b) {
				base = &b
			}
			if kept {
				enc.AddKept(page)
			} else {
				enc.Add(page, base)
			}
			b = pagecodec.Base{}
			if enc.Full() {
				flush()
			}
		}
	}
	flush()
	return buf, msgs
}

// maxKeptBuf bounds the message buffer a link keeps between epochs: one
// that grew for a full copy of memory is let go.
const maxKeptBuf = 64 << 20

// keepBuf keeps buf as link's message buffer for the next epoch.
func (r *reducer) keepBuf(link int, buf []byte) {
	if cap(buf) > maxKeptBuf {
		buf = nil
	}
	r.bufs[link] = buf
}

// encoderFor returns link's encoder.
func (r *reducer) encoderFor(link int) (*pagecodec.Encoder, error) {
	if e, ok := r.encoders[link]; ok {
		return e, nil
	}
	e, err := pagecodec.NewEncoder(pagecodec.Options{Zero: r.cfg.Zero, Compress: r.cfg.Compress})
	if err != nil {
		return nil, err
	}
	r.encoders[link] = e
	return e, nil
}

// committed teaches the cache what epoch's links carried (exts[i] on link
// links[i]), the pages being read through src, dirty the epoch's dirty
// pages (ascending). Call with the epoch committed and before src changes.
func (r *reducer) committed(links []int, exts [][]Region, dirty []uint64, src func(Region) []byte) {
	if !r.cacheOn() {
		return
	}
	t := time.Now()
	c := r.cache
	c.stamp++
	// Links that carried the same share (ft) are learnt together, so a
	// copy's holders are all of them even when the cache is smaller than
	// the share.
	var shares [][]Region
	var masks []uint64
next:
	for i, link := range links {
		for s := range shares {
			if slices.Equal(shares[s], exts[i]) {
				masks[s] |= 1 << link
				continue next
			}
		}
		shares, masks = append(shares, exts[i]), append(masks, 1<<link)
	}
	for s, share := range shares {
		for _, x := range share {
			data := src(x)
			for k := range x.Pages {
				_, d := slices.BinarySearch(dirty, x.First+k)
				c.sent(x.First+k, data[k*PageSize:(k+1)*PageSize], d, masks[s])
			}
		}
	}
	r.keepTime += time.Since(t)
}

// account closes an epoch's books (t: what its encoded links did, nil
// if none encoded; rate: the slowest live link's, bytes/s, 0 unknown).
// The encoding pays by the bytes it saved against raw pages for the time
// it took to encode and keep the cache; the cache by what its deltas and
// references saved for the time keeping it took. Either that does not
// pay over a window is switched off for a while (the cache emptied: raw
// sends do not keep it), and what was switched off is returned.
func (r *reducer) account(t *ReduceTrace, rate float64) (off string) {
	r.epochs++
	keep := r.keepTime
	r.keepTime = 0
	if t == nil || !r.adaptive {
		return ""
	}
	cost := time.Duration((t.EncodeMicros + t.CacheMicros) * float64(time.Microsecond))
	var saved uint64
	if raw := t.Pages * PageSize; raw > t.WireBytes {
		saved = raw - t.WireBytes
	}
	if r.encoding.add(r.epochs, saved, cost, rate) {
		if r.cache != nil {
			r.cache.clear()
		}
		return "encoding"
	}
	if r.cache != nil && r.caching.on(r.epochs) && r.caching.add(r.epochs, t.saved(), keep, rate) {
		r.cache.clear()
		return "page cache"
	}
	return ""
}

// linkLost takes a failed link out of the cache's holders.
func (r *reducer) linkLost(link int) {
	if r.cache != nil {
		r.cache.dropLink(link)
	}
	if e, ok := r.encoders[link]; ok {
		e.Close()
		delete(r.encoders, link)
	}
}

// close releases the encoders.
func (r *reducer) close() {
	for _, e := range r.encoders {
		e.Close()
	}
	clear(r.encoders)
}

// linkSends is what each link carried in the epoch in progress.
type linkSends []linkSend

type linkSend struct {
	link int
	ext  []Region
}

// pageLink is a Link that can carry pages as pagecodec messages
// (MsgPages) instead of raw data: TCP links can, RDMA ones write guest
// memory one-sided.
type pageLink interface {
	WritePages(msgs [][]byte) error
}

// encodedSend is one link's encoded share of an epoch. Links that carry
// the same pages (ft) share one encoding: the group's first link makes it,
// against copies every link of the group holds, and the others send the
// same messages.
type encodedSend struct {
	link  pageLink
	group *encodedGroup
	first bool // this link encodes for the group
}

// encodedGroup is one encoding of an epoch's share, for the links in mask.
type encodedGroup struct {
	mask  uint64
	owner int // the link whose encoder and buffer it uses
	enc   *pagecodec.Encoder
	buf   []byte
	msgs  [][]byte
	stats pagecodec.Stats
	took  time.Duration
	done  chan struct{} // closed once msgs are made
}

// prepareEncoding returns, per slot of alive (whose shares are exts), the
// encoding of the links that send encoded pages (nil for the others),
// slots with the same share sharing one. It runs before the sending
// goroutines, which only use what it returns. actives (nil: none) are
// the slots' links doing active backup.
func (p *Primary) prepareEncoding(alive []uint32, exts [][]Region, actives []*tcpLink) ([]*encodedSend, error) {
	out := make([]*encodedSend, len(alive))
	if p.red == nil {
		return out, nil
	}
	on := p.red.encodingOn()
	for slot, li := range alive {
		pl, ok := p.links[li].Link.(pageLink)
		// A link doing active backup always encodes, on its own: its
		// kept records are its node's alone.
		active := activeAt(actives, slot) != nil
		if !ok || !on && !active {
			continue
		}
		var g *encodedGroup
		for prev := range slot {
			if !active && out[prev] != nil && activeAt(actives, prev) == nil && slices.Equal(exts[prev], exts[slot]) {
				g = out[prev].group
				break
			}
		}
		first := g == nil
		if first {
			enc, err := p.red.encoderFor(int(li))
			if err != nil {
				return nil, err
			}
			enc.ResetStats()
			g = &encodedGroup{owner: int(li), enc: enc, buf: p.red.bufs[int(li)], done: make(chan struct{})}
		}
		g.mask |= 1 << li
		out[slot] = &encodedSend{link: pl, group: g, first: first}
	}
	return out, nil
}

// encode encodes ext for the group or, on a link that does not encode for
// its group, waits for the group's encoding. Every link of a group calls
// it whatever else fails, so that none waits for ever.
func (s *encodedSend) encode(r *reducer, ext []Region, src func(Region) []byte) {
	s.encodeKeeping(r, ext, src, nil)
}

// encodeKeeping is encode, the pages whose bit is set in keep (bit i:
// the i-th page of ext) sent as kept records (active backup).
func (s *encodedSend) encodeKeeping(r *reducer, ext []Region, src func(Region) []byte, keep []byte) {
	g := s.group
	if !s.first {
		<-g.done
		return
	}
	t := time.Now()
	g.buf, g.msgs = r.encode(g.mask, g.enc, g.buf, ext, src, keep)
	g.stats, g.took = g.enc.Stats(), time.Since(t)
	close(g.done)
}

// write queues the group's messages on the link.
func (s *encodedSend) write() error { return s.link.WritePages(s.group.msgs) }

// finishEncoding keeps the groups' buffers and records what the encoding
// did: the bytes each link put on the wire, the pages by how they
// travelled (counted on every link that carried them), and the time
// encoding took (once per group).
func (p *Primary) finishEncoding(alive []uint32, encoded []*encodedSend, rec *EpochTrace) {
	for slot, s := range encoded {
		if s == nil {
			continue
		}
		li, g := int(alive[slot]), s.group
		if rec.Reduce == nil {
			rec.Reduce = &ReduceTrace{}
		}
		took := time.Duration(0)
		if s.first {
			p.red.keepBuf(g.owner, g.buf)
			took = g.took
		}
		rec.Reduce.add(g.stats, took)
		rec.LinkBytes[li] = g.stats.WireBytes
	}
}

// learnSent teaches the cache what the links that completed committed
// epoch e carried, and closes the reduction's books on the epoch.
func (p *Primary) learnSent(e uint64, src func(Region) []byte, rec *EpochTrace) {
	if p.red == nil {
		return
	}
	t := time.Now()
	var links []int
	var exts [][]Region
	rate := 0.0
	dirty := p.pages
	part := p.specState.part
	if part != nil && part.epoch == e && len(part.ahead) > 0 {
		dirty = append(slices.Clone(p.pages), part.ahead...)
		slices.Sort(dirty)
		dirty = slices.Compact(dirty)
		// A link holds its first part's copy of a page only if the pause
		// did not send the page again (to it or, with fast, to another).
		for li, ext := range part.exts {
			if l := p.links[li]; l.alive && l.acked >= e {
				links, exts = append(links, li), append(exts, withoutPages(ext, p.pages))
			}
		}
	}
	for _, s := range p.sent {
		if l := p.links[s.link]; l.alive && l.acked >= e {
			links, exts = append(links, s.link), append(exts, s.ext)
			if l.rate > 0 && (rate == 0 || l.rate < rate) {
				rate = l.rate
			}
		}
	}
	p.red.committed(links, exts, dirty, src)
	if rec.Reduce != nil && p.red.cache != nil {
		rec.Reduce.CacheMicros = toMicros(time.Since(t))
	}
	if off := p.red.account(rec.Reduce, rate); off != "" {
		p.log.Info(off+" switched off for a while: the bytes it saved took less link time than it cost", "epochs", offEpochs)
	}
}

// ReduceTrace counts, for one epoch, the pages its links sent encoded, by
// how they travelled (summed over links), and what that cost.
type ReduceTrace struct {
	Pages   uint64 `json:"pages"`
	Raw     uint64 `json:"raw"`
	Zero    uint64 `json:"zero"`
	Delta   uint64 `json:"delta"`
	Similar uint64 `json:"similar"`
	// Kept is the pages sent as kept records (active backup).
	Kept uint64 `json:"kept,omitempty"`
	// DeltaBytes is the bytes of the delta records, WireBytes of all the
	// messages as sent (compressed, with their headers).
	DeltaBytes uint64 `json:"delta_bytes"`
	WireBytes  uint64 `json:"wire_bytes"`
	// EncodeMicros is the links' encoding time, summed; CacheMicros the
	// time the page cache took to learn the epoch after its commit.
	EncodeMicros float64 `json:"encode_us"`
	CacheMicros  float64 `json:"cache_us,omitempty"`
}

func (t *ReduceTrace) add(s pagecodec.Stats, took time.Duration) {
	t.Pages += s.Pages
	t.Raw += s.Raw
	t.Zero += s.Zero
	t.Delta += s.Delta
	t.Similar += s.DeltaFrom
	t.Kept += s.Kept
	t.DeltaBytes += s.DeltaBytes
	t.WireBytes += s.WireBytes
	t.EncodeMicros += toMicros(took)
}

// saved is the bytes deltas saved against raw records.
func (t *ReduceTrace) saved() uint64 {
	raw := (t.Delta + t.Similar) * (1 + PageSize)
	if raw < t.DeltaBytes {
		return 0
	}
	return raw - t.DeltaBytes
}

// group groups the epoch's dirty pages: into at most SGMax regions when
// set (seed 003), else by cost for the links in service.
func (p *Primary) group(dst []Region, pages []uint64) []Region {
	if p.cfg.SGMax > 0 {
		return Group(dst, pages, p.cfg.SGMax)
	}
	return GroupByCost(dst, pages, p.mergeableGap(), maxMapRegions)
}

// elementCoster is a Link for which one more region of an epoch costs
// time beyond its bytes: a TCP link's slice (measured by its probe,
// probe.go), an RDMA link's share of a work request.
type elementCoster interface {
	elementCost() time.Duration
}

// mergeableGap is the largest clean gap, in pages, that is cheaper to send
// along than to cut the region at, on the links in service: the gap's
// bytes at the slowest link's rate against the cost of one more element,
// its map entry's bytes plus the time the link states for it. A link that
// carries encoded pages copies them into messages whatever the regions, so
// only the map entry counts there.
func (p *Primary) mergeableGap() uint64 {
	var gap uint64
	encoding := p.red != nil && p.red.encodingOn()
	for _, l := range p.links {
		if l == nil || !l.alive {
			continue
		}
		rate := l.rate
		if rate <= 0 {
			rate = 12.5e9 // 100 Gbit/s until measured: merges the least
		}
		var cost time.Duration
		if c, ok := l.Link.(elementCoster); ok {
			cost = c.elementCost()
		}
		if _, ok := l.Link.(pageLink); ok && encoding {
			cost = 0
		}
		gap = max(gap, (uint64(cost.Seconds()*rate)+mapEntrySize)/PageSize)
	}
	return gap
}

// pageDecoder is a replica link's decoder and scratch space.
type pageDecoder struct {
	dec   *pagecodec.Decoder
	msg   []byte
	pages []uint64
}

func newPageDecoder() (*pageDecoder, error) {
	d, err := pagecodec.NewDecoder()
	if err != nil {
		return nil, err
	}
	return &pageDecoder{dec: d, msg: make([]byte, 0, pagecodec.MaxMessage)}, nil
}

func (d *pageDecoder) close() { d.dec.Close() }

// receivePages decodes a MsgPages into the link's staging area: the next
// pages of the epoch's map, bases taken from the store (which holds every
// epoch of this link committed before it: beginEpoch applied them). A
// message that does not decode is a protocol error and fails the link;
// what it may have written is staging the completion never covers.
func (r *Replica) receivePages(c *conn, link uint32, h Header, d *pageDecoder) error {
	if _, err := io.ReadFull(c.r, d.msg[:h.Length]); err != nil {
		return c.errorf("link %d: epoch %d pages: %w", link, h.Epoch, noEOF(err))
	}
	msg := d.msg[:h.Length]
	n, err := pagecodec.Records(msg)
	if err != nil {
		return c.errorf("link %d: %w: %w", link, ErrProtocol, err)
	}
	st, dst, err := r.nextStaging(c, link, h.Epoch, uint64(n)*PageSize)
	if err != nil {
		return err
	}
	r.mu.Lock()
	d.pages = pagesAt(d.pages[:0], st.regions, st.received/PageSize, n)
	r.mu.Unlock()
	total := uint64(len(r.store.epochs))
	base := func(page uint64, dst []byte) bool {
		if page >= total {
			return false
		}
		r.store.mu.RLock()
		defer r.store.mu.RUnlock()
		copy(dst, r.store.pages[page*PageSize:(page+1)*PageSize])
		return true
	}
	// Only this link's goroutine writes its staging data.
	if _, err := d.dec.Decode(dst, d.pages, msg, base); err != nil {
		return c.errorf("link %d: epoch %d: %w: %w", link, h.Epoch, ErrProtocol, err)
	}
	if r.cfg.Delay != nil {
		r.cfg.Delay(len(dst))
	}
	r.mu.Lock()
	st.received += uint64(len(dst))
	r.mu.Unlock()
	return nil
}

// pagesAt appends the indices of n pages of regions, from the skip-th on.
func pagesAt(dst []uint64, regions []Region, skip uint64, n int) []uint64 {
	for _, x := range regions {
		if skip >= x.Pages {
			skip -= x.Pages
			continue
		}
		for p := x.First + skip; p < x.End() && len(dst) < n; p++ {
			dst = append(dst, p)
		}
		skip = 0
		if len(dst) == n {
			break
		}
	}
	return dst
}
