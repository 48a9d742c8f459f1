package replicate

import (
	"bytes"
	"fmt"
	"time"

	"github.com/tandemvm/tandem/replicate/pagecodec"
)

// TrafficReplay runs recorded epochs (each one's dirty pages and their
// contents at the pause) through grouping, assignment and a Reduction
// exactly as a primary does, and decodes what each link would carry as a
// replica does, with no network and no guest: tandem bench --traffic
// replays one recording through every technique, so their bytes and CPU
// compare on the very same epochs. Every decoded page is checked against
// the recording: a replay also tests the codec and the cache's rule.
type TrafficReplay struct {
	policy   Policy
	links    int
	sgMax    int
	assigner *Assigner
	red      *reducer
	dec      *pagecodec.Decoder
	// mem is the guest as of the last epoch replayed, stores what each
	// link's replica holds; all only where the recording wrote (the
	// rest is never touched, so costs no memory).
	mem     []byte
	stores  [][]byte
	regions []Region
	perLink [][]Region
	scratch []byte
	pages   []uint64
}

// ReplayEpoch is what one replayed epoch cost.
type ReplayEpoch struct {
	DirtyPages int
	Regions    int
	// SentPages is the pages the links carried (with ft, every link
	// carries every page); WireBytes what they put on the wire: maps,
	// message headers, and the data raw or encoded.
	SentPages uint64
	WireBytes uint64
	// Encode is the primary's CPU time (encoding and, after the commit,
	// the page cache learning the epoch); Decode the replicas'.
	Encode, Decode time.Duration
	Reduce         ReduceTrace
}

// NewTrafficReplay prepares a replay for a guest of memBytes replicated
// over links links with policy; sgMax is as in PrimaryConfig, red the
// reduction (the zero Reduction: raw data). Unlike a primary, a replay
// never switches a technique off: its figures are the technique's own.
// Raw data is not timed (a primary sends it from guest memory).
func NewTrafficReplay(memBytes uint64, policy Policy, links, sgMax int, red Reduction) (*TrafficReplay, error) {
	if memBytes == 0 || memBytes%PageSize != 0 || links < 1 || links > MaxLinks {
		return nil, fmt.Errorf("replicate: replay of %d bytes over %d links", memBytes, links)
	}
	t := &TrafficReplay{policy: policy, links: links, sgMax: sgMax, assigner: NewAssigner(policy, links),
		mem: make([]byte, memBytes), stores: make([][]byte, links)}
	for i := range t.stores {
		t.stores[i] = make([]byte, memBytes)
	}
	if red.Similar && red.CacheBytes < PageSize {
		return nil, fmt.Errorf("replicate: replay: similar pages need a page cache")
	}
	if red.any() {
		t.red = newReducer(red)
		t.red.adaptive = false // the techniques' own figures, every epoch
		d, err := pagecodec.NewDecoder()
		if err != nil {
			return nil, err
		}
		t.dec = d
	}
	return t, nil
}

// Close releases the replay's encoders and decoder.
func (t *TrafficReplay) Close() {
	if t.red != nil {
		t.red.close()
		t.dec.Close()
	}
}

// Epoch replays one epoch: dirty, ascending, and contents, their pages at
// the pause, in that order.
func (t *TrafficReplay) Epoch(dirty []uint64, contents []byte) (ReplayEpoch, error) {
	var out ReplayEpoch
	if len(contents) != len(dirty)*PageSize {
		return out, fmt.Errorf("replicate: replay: %d dirty pages with %d bytes", len(dirty), len(contents))
	}
	for i, p := range dirty {
		if p >= uint64(len(t.mem))/PageSize {
			return out, fmt.Errorf("replicate: replay: page %d outside the guest", p)
		}
		copy(t.mem[p*PageSize:], contents[i*PageSize:(i+1)*PageSize])
	}
	out.DirtyPages = len(dirty)
	if t.sgMax > 0 {
		t.regions = Group(t.regions[:0], dirty, t.sgMax)
	} else {
		t.regions = GroupByCost(t.regions[:0], dirty, 0, maxMapRegions)
	}
	out.Regions = len(t.regions)
	t.perLink = t.assigner.Assign(t.perLink, t.regions)
	src := func(r Region) []byte { return t.mem[r.First*PageSize : r.End()*PageSize] }
	links := make([]int, len(t.perLink))
	for i, ext := range t.perLink {
		links[i] = i
		out.SentPages += Transferred(ext)
		out.WireBytes += headerSize + 12 + 16*uint64(len(ext)) + headerSize // map and completion
		if t.red == nil {
			n := Transferred(ext) * PageSize
			out.WireBytes += n + headerSize*((n+maxDataMessage-1)/maxDataMessage)
			t.applyRaw(t.stores[i], ext)
			continue
		}
		if err := t.replayLink(i, ext, src, &out); err != nil {
			return out, err
		}
	}
	if t.red != nil {
		start := time.Now()
		t.red.committed(links, t.perLink, dirty, src)
		t.red.account(&out.Reduce, 0)
		out.Reduce.CacheMicros = toMicros(time.Since(start))
		out.Encode += time.Since(start)
		out.Reduce.EncodeMicros = toMicros(out.Encode)
	}
	return out, nil
}

// replayLink encodes one link's share, decodes it against the store as
// the replica would, checks it, and applies it.
func (t *TrafficReplay) replayLink(link int, ext []Region, src func(Region) []byte, out *ReplayEpoch) error {
	enc, err := t.red.encoderFor(link)
	if err != nil {
		return err
	}
	enc.ResetStats()
	start := time.Now()
	var msgs [][]byte
	t.red.bufs[link], msgs = t.red.encode(1<<link, enc, t.red.bufs[link], ext, src, nil)
	out.Encode += time.Since(start)
	out.Reduce.add(enc.Stats(), 0)
	// Decode into staging, as a replica does, then apply.
	n := Transferred(ext)
	if uint64(cap(t.scratch)) < n*PageSize {
		t.scratch = make([]byte, n*PageSize)
	}
	staged := t.scratch[:n*PageSize]
	store := t.stores[link]
	base := func(page uint64, dst []byte) bool {
		if page >= uint64(len(store))/PageSize {
			return false
		}
		copy(dst, store[page*PageSize:(page+1)*PageSize])
		return true
	}
	start = time.Now()
	var off uint64
	for _, m := range msgs {
		out.WireBytes += headerSize + uint64(len(m))
		k, err := pagecodec.Records(m)
		if err != nil {
			return err
		}
		t.pages = pagesAt(t.pages[:0], ext, off, k)
		if _, err := t.dec.Decode(staged[off*PageSize:], t.pages, m, base); err != nil {
			return fmt.Errorf("replicate: replay: link %d: %w", link, err)
		}
		off += uint64(k)
	}
	out.Decode += time.Since(start)
	if off != n {
		return fmt.Errorf("replicate: replay: link %d decoded %d pages of %d", link, off, n)
	}
	off = 0
	for _, x := range ext {
		b := x.Pages * PageSize
		if !bytes.Equal(staged[off:off+b], src(x)) {
			return fmt.Errorf("replicate: replay: link %d: pages %d..%d decode to other contents", link, x.First, x.End()-1)
		}
		copy(store[x.First*PageSize:], staged[off:off+b])
		off += b
	}
	return nil
}

// applyRaw applies a raw share to a link's store.
func (t *TrafficReplay) applyRaw(store []byte, ext []Region) {
	for _, x := range ext {
		copy(store[x.First*PageSize:x.End()*PageSize], t.mem[x.First*PageSize:x.End()*PageSize])
	}
}
