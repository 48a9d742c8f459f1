package replicate

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Speculative transfer (seed 001). While the VM runs, PrimaryConfig.Speculate
// of the way through the interval, the primary harvests the pages dirtied
// so far (the VM keeps running: RunningHarvester), and sends ahead those
// the previous epoch did not dirty (pages written every epoch are likely
// to be written again), copied first so that a page the guest is writing
// is sent whole. At the pause it sends only what was dirtied since, what
// it held back, and what the replicas cannot have: so the pause moves what
// was re-dirtied, not the whole epoch.
//
// On the wire a speculated epoch is one epoch in two parts. Its first map
// (MsgMap) and data go during the interval; at the pause, a second map
// (MsgMapMore) and its data follow on the same link, then the completion.
// The replica appends the second part to the staged epoch; pages in both
// parts are applied in order, so the later copy wins; nothing of it is
// applied before the epoch commits, and a link that fails between the two
// parts leaves an incomplete stage that recovery ignores like any other.
// The binding rules: MsgMapMore names the epoch being staged, which must
// have all the data of its first part and no second part yet, and carries
// the same commit as the first.
//
// A page harvested ahead is write-protected again by the harvest, so any
// write after it is in the pause's harvest and is sent again; every page
// harvested ahead belongs to the epoch whether sent ahead or not. When the
// links changed between the parts (a link came back that has no first
// part), the pause resends the pages sent ahead too. Speculation switches
// itself off for a while when over a window of epochs more than half of
// what it sent ahead was written again.

// Speculation needs ft: with fast, a page sent ahead on one link and
// written again may go at the pause to another, and the two copies of the
// same epoch on two links (two replicas, or two stages of one) would leave
// recovery, which takes a page's newest epoch, a stale copy to pick. With
// ft every link carries both parts and the later copy wins in each stage.
var errSpeculateFast = errors.New("replicate: speculative transfer needs the ft policy: with fast, a page sent ahead on one link and again on another would leave two copies of one epoch")

// RunningHarvester is a Source that can harvest its dirty pages while the
// VM runs (vmm.ReplicationSource over the dirty bitmap): the pages it
// reports are write-protected again before it returns.
type RunningHarvester interface {
	HarvestDirtyRunning(dst []uint64) ([]uint64, error)
}

// partLink is a Link that can send an epoch in two parts (TCP).
type partLink interface {
	// SendPart sends the queued map and data without completing the
	// epoch; WriteMapMore queues the epoch's second map.
	SendPart() error
	WriteMapMore(m *MapRecord) error
}

// specPart is the part of the coming epoch sent ahead.
type specPart struct {
	epoch uint64
	// harvested is every page the running harvest reported; ahead those
	// sent, each link's share in exts.
	harvested, ahead []uint64
	exts             map[int][]Region
	bytes            uint64
}

// speculation is the primary's speculative-transfer bookkeeping.
type speculation struct {
	part *specPart
	// hot marks the pages the previous epoch dirtied, hotList lists them.
	hot     []uint64
	hotList []uint64
	// Over a window of epochs, pages sent ahead and those re-dirtied.
	window, ahead, resent int
	offUntil, epochs      uint64
	failed                bool
	buf                   []uint64
	regions               []Region
	perLink               [][]Region
}

const (
	specWindow    = 16
	specOffEpochs = 256
)

func (s *speculation) isHot(p uint64) bool { return s.hot[p/64]&(1<<(p%64)) != 0 }

// speculate sends the pages dirtied so far in the coming epoch ahead, if
// the source, the mode and the links allow (see the file comment).
func (p *Primary) speculate() {
	s := &p.specState
	h, ok := p.src.(RunningHarvester)
	if !ok || s.failed || p.cfg.Mode != ModeSync || p.needFull || s.part != nil || s.epochs < s.offUntil || s.hot == nil {
		return // s.hot: no epoch yet to tell hot pages from cold ones
	}
	var alive []uint32
	for _, l := range p.links {
		if !l.alive {
			continue
		}
		if _, ok := l.Link.(partLink); !ok || l.joining {
			return
		}
		alive = append(alive, uint32(l.index))
	}
	if len(alive) == 0 {
		return
	}
	mem := p.src.Memory()
	pages, err := h.HarvestDirtyRunning(s.buf[:0])
	if err != nil {
		s.failed = true
		p.log.Warn("speculative transfer off: the source cannot harvest while running", "err", err)
		return
	}
	s.buf = pages
	part := &specPart{epoch: p.epoch + 1, harvested: pages, exts: map[int][]Region{}}
	p.specState.part = part // from here on, these pages belong to the coming epoch
	for _, pg := range pages {
		if !s.isHot(pg) {
			part.ahead = append(part.ahead, pg)
		}
	}
	if len(part.ahead) == 0 {
		return
	}
	s.regions = p.group(s.regions[:0], part.ahead)
	if p.assigner.Links() != len(alive) {
		p.assigner = NewAssigner(p.cfg.Policy, len(alive))
	}
	s.perLink = p.assigner.Assign(s.perLink, s.regions)
	// A copy first: the guest runs, and an encoded page must not change
	// between its checksum and its delta.
	src := p.stage(mem, s.regions)
	encoded, err := p.prepareEncoding(alive, s.perLink, nil)
	if err != nil {
		p.log.Warn("speculative transfer", "err", err)
		return
	}
	start := time.Now()
	for slot, li := range alive {
		ext := s.perLink[slot]
		if len(ext) == 0 {
			continue
		}
		l := p.links[li]
		n := Transferred(ext) * PageSize
		if d, ok := l.Link.(sendDeadliner); ok {
			d.SetSendDeadline(start.Add(allowance(p.cfg.AckTimeout, n, l.rate, p.cfg.MinLinkRate)))
		}
		enc := encoded[slot]
		if enc != nil {
			enc.encode(p.red, ext, src)
		}
		err := l.WriteMap(&MapRecord{Epoch: part.epoch, Committed: l.mapCommit(p.committed.Load()), Regions: ext})
		if err == nil && enc != nil {
			err = enc.write()
			n = enc.group.stats.WireBytes
		} else if err == nil {
			sg := make([][]byte, len(ext))
			for i, x := range ext {
				sg[i] = src(x)
			}
			err = l.WriteSG(sg)
		}
		if err == nil {
			err = l.Link.(partLink).SendPart()
		}
		if err != nil {
			p.linkFailed(l.index, fmt.Errorf("sending epoch %d ahead: %w", part.epoch, err))
			continue
		}
		part.exts[l.index] = slices.Clone(ext)
		part.bytes += n
	}
	for _, enc := range encoded {
		if enc != nil && enc.first {
			p.red.keepBuf(enc.group.owner, enc.group.buf)
		}
	}
}

// recordEpoch writes epoch e to the recording, if any: the pages the
// epoch sends, with those sent ahead, as they are at the pause.
func (p *Primary) recordEpoch(e uint64, mem []byte) {
	r := p.cfg.Record
	if r == nil {
		return
	}
	pages := p.pages
	if part := p.specState.part; part != nil && part.epoch == e && len(part.ahead) > 0 {
		pages = append(slices.Clone(pages), part.ahead...)
		slices.Sort(pages)
		pages = slices.Compact(pages)
	}
	if err := r.Record(e, pages, mem); err != nil && !p.recordFailed {
		p.recordFailed = true
		p.log.Warn("epoch recording failed; replication goes on", "err", err)
	}
}

// sentAhead reports whether link carried a first part of epoch e.
func (p *Primary) sentAhead(e uint64, link int) bool {
	part := p.specState.part
	if part == nil || part.epoch != e {
		return false
	}
	_, ok := part.exts[link]
	return ok
}

// withoutPages returns the regions of ext less the pages in pages
// (ascending): what a link's first part still holds once the pause sent
// those pages again.
func withoutPages(ext []Region, pages []uint64) []Region {
	var out []Region
	for _, x := range ext {
		i, _ := slices.BinarySearch(pages, x.First)
		start := x.First
		for ; i < len(pages) && pages[i] < x.End(); i++ {
			if pages[i] > start {
				out = append(out, Region{First: start, Pages: pages[i] - start})
			}
			start = pages[i] + 1
		}
		if start < x.End() {
			out = append(out, Region{First: start, Pages: x.End() - start})
		}
	}
	return out
}

// takeSpeculated folds the part of epoch e sent ahead into its pages at
// the pause (final: the pause's harvest, with carried pages): it returns
// the pages the pause must send and notes what the part cost.
func (p *Primary) takeSpeculated(e uint64, final []uint64, rec *EpochTrace) []uint64 {
	s := &p.specState
	part := s.part
	if part == nil || part.epoch != e {
		s.part = nil
		return final
	}
	rec.Speculated, rec.SpeculatedBytes = len(part.ahead), part.bytes
	for _, pg := range part.ahead {
		if _, found := slices.BinarySearch(final, pg); found {
			rec.SpeculatedAgain++
		}
	}
	// Held back: harvested but not sent ahead. Sent ahead too, when a link
	// in service has no first part (it came back between the parts).
	extra := slices.Clone(part.harvested)
	changed := false
	for _, l := range p.links {
		if _, ok := part.exts[l.index]; l.alive && !ok && len(part.ahead) > 0 {
			changed = true
		}
	}
	if !changed {
		extra = slices.DeleteFunc(extra, func(pg uint64) bool { _, sent := slices.BinarySearch(part.ahead, pg); return sent })
	}
	out := append(final, extra...)
	slices.Sort(out)
	return slices.Compact(out)
}

// specDone closes epoch e's books: the pages it dirtied become the hot
// set, and speculation switches off for a while when it does not pay.
// committed says whether e committed; if not, the pages sent ahead are
// carried into the next epoch like the rest.
func (p *Primary) specDone(e uint64, dirty []uint64, committed bool, rec *EpochTrace) {
	s := &p.specState
	part := s.part
	s.part = nil
	if part != nil && part.epoch == e && !committed {
		p.carry = append(p.carry, part.ahead...)
	}
	if s.hot == nil {
		s.hot = make([]uint64, (uint64(len(p.src.Memory()))/PageSize+63)/64)
	}
	for _, pg := range s.hotList {
		s.hot[pg/64] = 0
	}
	s.hotList = append(s.hotList[:0], dirty...)
	if part != nil && part.epoch == e {
		s.hotList = append(s.hotList, part.harvested...)
	}
	for _, pg := range s.hotList {
		s.hot[pg/64] |= 1 << (pg % 64)
	}
	s.epochs++
	s.ahead += rec.Speculated
	s.resent += rec.SpeculatedAgain
	if s.window++; s.window == specWindow {
		if s.ahead > 0 && 2*s.resent > s.ahead {
			s.offUntil = s.epochs + specOffEpochs
			p.log.Info("speculative transfer switched off for a while: most pages sent ahead were written again", "ahead", s.ahead, "again", s.resent, "epochs", specOffEpochs)
		}
		s.window, s.ahead, s.resent = 0, 0, 0
	}
}

// continueEpoch appends a MsgMapMore's regions to the epoch a link is
// staging (see the file comment), growing its staging area.
func (r *Replica) continueEpoch(link uint32, gen uint64, m *MapRecord) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.linkStage(link, gen)
	switch {
	case err != nil:
		return fmt.Errorf("link %d: %w", link, err)
	case st == nil || st.epoch != m.Epoch || st.complete:
		return fmt.Errorf("%w: link %d: second map of epoch %d, which the link is not staging", ErrProtocol, link, m.Epoch)
	case st.continued || st.buf != nil:
		return fmt.Errorf("%w: link %d: a third map of epoch %d, or one on an RDMA link", ErrProtocol, link, m.Epoch)
	case st.received != uint64(len(st.data)):
		return fmt.Errorf("%w: link %d: second map of epoch %d before the data of the first", ErrProtocol, link, m.Epoch)
	case m.Committed != st.committed:
		return fmt.Errorf("%w: link %d: second map of epoch %d says %d is committed, the first said %d", ErrProtocol, link, m.Epoch, m.Committed, st.committed)
	}
	need := m.Pages() * PageSize
	old := uint64(len(st.data))
	if uint64(cap(st.data))-old < need {
		grown := make([]byte, old, old+need)
		copy(grown, st.data)
		st.data = grown
	}
	st.data = st.data[:old+need]
	st.regions = append(slices.Clip(st.regions), m.Regions...)
	st.continued = true
	return nil
}
