package replicate

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"
)

// Active backup (seed 001's "active slave"). A node that holds the VM's
// state may run its own copy of the VM, the shadow, from the newest epoch
// its store applied, while the primary runs the next one. At the pause
// the primary sends, on the link to that node, a hash per page of the
// epoch (MsgHashes, after the map) and the node answers which pages its
// shadow wrote differently (MsgWant, stopping the shadow first). The
// primary then sends those as usual and the others as kept records
// (pagecodec), which the node fills from its shadow's memory.
//
// The rule that makes this safe does not depend on the shadow being
// right: a page is kept only where the shadow's copy has the hash of the
// primary's page (the first 16 bytes of its SHA-256) and, when the kept
// record is decoded, the checksum the primary sent with it. A shadow that
// diverged, crashed or started from the wrong epoch costs bytes, never a
// wrong page; the staged epoch, the commit rule and recovery are those of
// any other epoch. The shadow's memory is only read while it is stopped:
// from the answer to the epoch's decoding, and its restart waits for the
// link's next commit.
//
// What it costs: the leader holds a second copy of guest memory and runs
// the guest (a vCPU's worth of CPU), the primary hashes every page of the
// epoch inside the pause (about 2.5 µs per page with SHA instructions), and
// the pause takes one more round trip. It pays where links are slow and
// the guest deterministic; ActiveBackupAuto switches it off while it does
// not.

// ActiveBackup chooses whether a primary's links use active backup.
type ActiveBackup int

const (
	// ActiveBackupOff sends every page.
	ActiveBackupOff ActiveBackup = iota
	// ActiveBackupAuto uses it while the bytes it saves take more link
	// time than its hashing and round trip cost (over windows of
	// payEpochs epochs), and leaves it off for offEpochs after a window
	// where it did not.
	ActiveBackupAuto
	// ActiveBackupOn always uses it: for measuring it.
	ActiveBackupOn
)

func (a ActiveBackup) String() string {
	switch a {
	case ActiveBackupOff:
		return "off"
	case ActiveBackupAuto:
		return "auto"
	case ActiveBackupOn:
		return "on"
	}
	return fmt.Sprintf("ActiveBackup(%d)", int(a))
}

// ParseActiveBackup reads off, auto or on.
func ParseActiveBackup(s string) (ActiveBackup, error) {
	for a := ActiveBackupOff; a <= ActiveBackupOn; a++ {
		if s == a.String() {
			return a, nil
		}
	}
	return 0, fmt.Errorf("active backup %q: want off, auto or on", s)
}

// errActiveBackup is a primary configured for active backup that cannot
// have it.
var errActiveBackup = errors.New("replicate: active backup needs policy ft in sync mode without speculation: the node running the shadow must be sent every page of each epoch at its pause")

// Shadow is a node's running copy of the VM (package vmm implements it).
type Shadow interface {
	// Memory is the shadow's guest memory, written by the caller only
	// while the shadow is stopped.
	Memory() []byte
	// Run loads an epoch's state, as the primary captured it, into the
	// stopped shadow and runs it.
	Run(state []byte) error
	// Stop pauses the shadow and appends the pages it wrote since Run;
	// on a stopped shadow it appends nothing.
	Stop(dst []uint64) ([]uint64, error)
	// Close stops it for good.
	Close() error
}

// NewShadow makes a node's shadow for a VM of memBytes and vcpus, whose
// first state is state (ReplicaConfig.Shadow).
type NewShadow func(memBytes uint64, vcpus int, state []byte) (Shadow, error)

// hashSize is the size of a page's hash in MsgHashes.
const hashSize = 16

func pageHash(page []byte) [hashSize]byte {
	s := sha256.Sum256(page)
	return [hashSize]byte(s[:hashSize])
}

// hashPages returns the hashes of the pages of regions, read through
// src, in map order, made on up to GOMAXPROCS goroutines (the VM is
// paused: its cores are free).
func hashPages(regions []Region, src func(Region) []byte) []byte {
	var pages [][]byte
	for _, x := range regions {
		data := src(x)
		for k := range x.Pages {
			pages = append(pages, data[k*PageSize:(k+1)*PageSize])
		}
	}
	out := make([]byte, len(pages)*hashSize)
	workers := min(runtime.GOMAXPROCS(0), (len(pages)+255)/256)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(pages); i += workers {
				h := pageHash(pages[i])
				copy(out[i*hashSize:], h[:])
			}
		}()
	}
	wg.Wait()
	return out
}

// A want's reason: why a node asks for the pages it asks for.
const (
	wantCompared = 0 // its shadow's copies were compared: the bits say which differ
	wantNotReady = 1 // its shadow is not running from a committed epoch now: every page
	wantNoShadow = 2 // it runs no shadow (not a state holder, none configured, or it failed): every page, and no more hashes on this connection
)

// want is a MsgWant: the reason, and bit i set where the map's page i must
// be sent.
type want struct {
	reason byte
	bits   []byte
}

func (w want) marshal() []byte { return append([]byte{w.reason}, w.bits...) }

// parseWant checks a MsgWant's payload against the n pages of the map.
func parseWant(b []byte, n int) (want, error) {
	if len(b) != 1+(n+7)/8 || b[0] > wantNoShadow {
		return want{}, fmt.Errorf("%w: want of %d bytes (reason %d) for %d pages", ErrProtocol, len(b), b[0:min(1, len(b))], n)
	}
	return want{reason: b[0], bits: b[1:]}, nil
}

func (w want) wanted(i int) bool { return w.bits[i/8]&(1<<(i%8)) != 0 }

// allWanted is the want of every one of n pages.
func allWanted(reason byte, n int) want {
	w := want{reason: reason, bits: make([]byte, (n+7)/8)}
	for i := range n {
		w.bits[i/8] |= 1 << (i % 8)
	}
	return w
}

// activeNode runs a node's shadow. Its methods are called from the
// link's goroutine (compare, page) and from the link's background apply
// (restart), which the link's next map waits for; mu orders the rest.
type activeNode struct {
	newShadow NewShadow
	mu        sync.Mutex
	shadow    Shadow
	running   bool
	// written are the pages the shadow wrote since it last ran from the
	// store's content: restart copies them back.
	written []uint64
	// off says why the node runs no shadow any more ("" while it may).
	off string
	// kept is, per link, the sorted pages its last comparison found
	// equal: the only pages a kept record on that link may name. Several
	// links to this node compare the same stopped shadow: stoppedFor is
	// the epoch whose hashes stopped it (0: none since it last ran), and
	// base the epoch it last ran from, which it is restarted from once.
	kept             map[uint32][]uint64
	stoppedFor, base uint64
	// Counts, for tests and the status; since is when the shadow last
	// started to run.
	restarts, compared, equal uint64
	restartTook, ran          time.Duration
	since                     time.Time
	// hashed is the newest epoch whose hashes came: the shadow runs only
	// while the primary uses it (not before its first hashes, nor once it
	// stopped sending them, as ActiveBackupAuto does when it does not pay).
	hashed uint64
}

// stopped books the shadow's run that just ended.
func (a *activeNode) stopped() {
	if a.running {
		a.ran += time.Since(a.since)
	}
	a.running = false
}

// restart stops the shadow, makes its memory the store's (for a new
// shadow all of it, else the pages either side changed), and runs it
// from state, the state of the epoch the store just applied.
func (a *activeNode) restart(s *Store, e uint64, state []byte, vcpus int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.off != "" {
		return nil
	}
	if e == a.base {
		return nil // another link's apply of the same epoch restarted it
	}
	if a.hashed == 0 || e > a.hashed+1 {
		// Not in use: idle, the pages it wrote remembered for the next
		// restart (the store keeps the ones it changes meanwhile).
		if a.shadow != nil && a.running {
			var err error
			if a.written, err = a.shadow.Stop(a.written); err != nil {
				a.stop(fmt.Sprintf("stop: %v", err))
				return err
			}
			a.stopped()
		}
		return nil
	}
	t := time.Now()
	err := a.restartLocked(s, state, vcpus)
	if err != nil {
		a.stop(fmt.Sprintf("restart: %v", err))
		return err
	}
	a.restarts++
	a.restartTook += time.Since(t)
	a.base = e
	return nil
}

func (a *activeNode) restartLocked(s *Store, state []byte, vcpus int) error {
	s.mu.Lock()
	changed := s.changed
	s.changed = nil
	s.mu.Unlock()
	if a.shadow == nil {
		sh, err := a.newShadow(uint64(len(s.pages)), vcpus, state)
		if err != nil {
			return err
		}
		if len(sh.Memory()) != len(s.pages) {
			sh.Close()
			return fmt.Errorf("shadow of %d bytes for a store of %d", len(sh.Memory()), len(s.pages))
		}
		a.shadow = sh
		s.mu.RLock()
		copy(sh.Memory(), s.pages)
		s.mu.RUnlock()
	} else {
		var err error
		if a.written, err = a.shadow.Stop(a.written); err != nil {
			return err
		}
		a.stopped()
		mem := a.shadow.Memory()
		s.mu.RLock()
		for _, pages := range [][]uint64{a.written, changed} {
			for _, p := range pages {
				if p < uint64(len(s.epochs)) {
					copy(mem[p*PageSize:(p+1)*PageSize], s.pages[p*PageSize:(p+1)*PageSize])
				}
			}
		}
		s.mu.RUnlock()
	}
	a.written = a.written[:0]
	clear(a.kept)
	if err := a.shadow.Run(state); err != nil {
		return err
	}
	a.running, a.since, a.stoppedFor = true, time.Now(), 0
	return nil
}

// stop ends the shadow for good, for reason.
func (a *activeNode) stop(reason string) {
	if a.off == "" {
		a.off = reason
	}
	if a.shadow != nil {
		a.shadow.Close()
		a.shadow = nil
	}
	a.stopped()
}

// close ends the shadow (a takeover, the node stopping).
func (a *activeNode) close(reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stop(reason)
}

// compare stops the shadow and answers link's hashes of epoch e, one per
// page of pages.
func (a *activeNode) compare(link uint32, e uint64, pages []uint64, hashes []byte) want {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.kept == nil {
		a.kept = map[uint32][]uint64{}
	}
	kept := a.kept[link][:0]
	delete(a.kept, link)
	a.hashed = max(a.hashed, e)
	switch {
	case a.off != "":
		return allWanted(wantNoShadow, len(pages))
	case a.running:
		var err error
		if a.written, err = a.shadow.Stop(a.written); err != nil {
			a.stop(fmt.Sprintf("stop: %v", err))
			return allWanted(wantNoShadow, len(pages))
		}
		a.stopped()
		a.stoppedFor = e
	case a.shadow == nil || a.stoppedFor != e:
		// Stopped for another epoch: its memory is not this one's.
		return allWanted(wantNotReady, len(pages))
	}
	w := want{reason: wantCompared, bits: make([]byte, (len(pages)+7)/8)}
	mem := a.shadow.Memory()
	for i, p := range pages {
		h := pageHash(mem[p*PageSize : (p+1)*PageSize])
		if [hashSize]byte(hashes[i*hashSize:]) == h {
			kept = append(kept, p)
		} else {
			w.bits[i/8] |= 1 << (i % 8)
		}
	}
	slices.Sort(kept)
	a.kept[link] = kept
	a.compared += uint64(len(pages))
	a.equal += uint64(len(kept))
	return w
}

// page copies the shadow's copy of a page link's last comparison kept
// into dst (pagecodec.Decoder.Shadow).
func (a *activeNode) page(link uint32, p uint64, dst []byte) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := slices.BinarySearch(a.kept[link], p); !ok || a.shadow == nil || a.running {
		return false
	}
	copy(dst, a.shadow.Memory()[p*PageSize:(p+1)*PageSize])
	return true
}

// ShadowStats counts what a node's shadow did (zero without one).
type ShadowStats struct {
	// Off says why the node runs no shadow ("" while it does or may).
	Off string
	// Restarts counts the epochs it was started from, RestartTook their
	// time, Ran the time it ran (its vCPUs' time, at most, when the guest
	// is busy); Compared and Equal the pages hashed against it and those
	// it had written the same.
	Restarts, Compared, Equal uint64
	RestartTook, Ran          time.Duration
}

// ShadowStats reports this node's shadow.
func (r *Replica) ShadowStats() ShadowStats {
	if r.active == nil {
		return ShadowStats{Off: "none configured"}
	}
	a := r.active
	a.mu.Lock()
	defer a.mu.Unlock()
	ran := a.ran
	if a.running {
		ran += time.Since(a.since)
	}
	return ShadowStats{Off: a.off, Restarts: a.restarts, Compared: a.compared, Equal: a.equal, RestartTook: a.restartTook, Ran: ran}
}

// restartShadow runs the shadow from epoch e, which link's apply just
// put in the store, if this node holds e's state. Called from the apply
// goroutine, before the link's next map may proceed.
func (r *Replica) restartShadow(e uint64) {
	r.mu.Lock()
	s := r.states[e]
	vcpus := int(r.hello.VCPUs)
	r.mu.Unlock()
	if s == nil || len(s.Blob) == 0 {
		return
	}
	if err := r.active.restart(r.store, e, s.Blob, vcpus); err != nil {
		r.log.Warn("active backup: the shadow VM stopped; every page is sent from now on", "epoch", e, "err", err)
	}
}

// receiveHashes answers a link's MsgHashes for its staged epoch.
func (r *Replica) receiveHashes(c *conn, link uint32, h Header) error {
	p, err := readPayload(c.r, h)
	if err != nil {
		return c.errorf("link %d: %w", link, err)
	}
	r.mu.Lock()
	st, err := r.linkStage(link, c.gen)
	var pages []uint64
	switch {
	case err != nil:
	case st == nil || st.epoch != h.Epoch || st.complete || st.received != 0 || st.continued || st.hashed:
		err = fmt.Errorf("%w: hashes for epoch %d out of place (they follow its map, before any data)", ErrProtocol, h.Epoch)
	case uint64(len(p)) != uint64(len(st.data))/PageSize*hashSize:
		err = fmt.Errorf("%w: %d bytes of hashes for a map of %d pages", ErrProtocol, len(p), len(st.data)/PageSize)
	default:
		st.hashed = true
		pages = pagesAt(nil, st.regions, 0, len(st.data)/PageSize)
	}
	r.mu.Unlock()
	if err != nil {
		return c.errorf("link %d: %w", link, err)
	}
	w := allWanted(wantNoShadow, len(pages))
	if r.active != nil {
		w = r.active.compare(link, h.Epoch, pages, p)
	}
	if err := c.send(MsgWant, h.Epoch, w.marshal()); err != nil {
		return c.errorf("link %d: %w", link, err)
	}
	return nil
}

// maxHashesPayload bounds a MsgHashes (its reader checks it against the
// map): an epoch of more pages than 4 Mi (16 GiB) is sent without.
const maxHashesPayload = 64 << 20

// activeLink is the primary's side of active backup on one TCP link.
type activeLink struct {
	// wants carries the link's MsgWant answers, from its reader; closed
	// when the connection ends.
	wants chan wantMsg
	// noShadow: the node said it runs none; no more hashes go there.
	noShadow bool
}

type wantMsg struct {
	epoch   uint64
	payload []byte
}

// awaitWant waits until deadline for the answer to epoch e's hashes of n
// pages.
func (a *activeLink) awaitWant(e uint64, n int, deadline time.Time) (want, error) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case m, ok := <-a.wants:
		if !ok {
			return want{}, errors.New("connection ended before it answered the epoch's hashes")
		}
		if m.epoch != e {
			return want{}, fmt.Errorf("%w: want for epoch %d, hashes were of epoch %d", ErrProtocol, m.epoch, e)
		}
		return parseWant(m.payload, n)
	case <-t.C:
		return want{}, fmt.Errorf("no answer to the hashes of epoch %d in time", e)
	}
}

// activeEpoch is a primary's active backup in one epoch: the hashes of
// each distinct share, made once.
type activeEpoch struct {
	mu     sync.Mutex
	shares [][]Region
	hashes [][]byte
	took   time.Duration
}

// hashesOf returns the hashes of ext's pages, made once per distinct
// share (ft links all carry the same).
func (a *activeEpoch) hashesOf(ext []Region, src func(Region) []byte) []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, s := range a.shares {
		if slices.Equal(s, ext) {
			return a.hashes[i]
		}
	}
	t := time.Now()
	h := hashPages(ext, src)
	a.took += time.Since(t)
	a.shares, a.hashes = append(a.shares, ext), append(a.hashes, h)
	return h
}

// ActiveTrace counts an epoch's active backup: the links sent hashes and
// those whose node compared them with its shadow (the others were not
// ready, or run none), the pages those compared and kept (not sent), and
// the time hashing and the round trips took.
type ActiveTrace struct {
	Links      int     `json:"links"`
	Compared   int     `json:"compared"`
	Pages      uint64  `json:"pages"`
	Kept       uint64  `json:"kept"`
	HashMicros float64 `json:"hash_us"`
	WaitMicros float64 `json:"wait_us"`
}

// sendActive is the part of a link's epoch send that differs with
// active backup: the map and the hashes go first, then the encoded pages
// the node wants and kept records for the others. It reports the
// answer's reason.
func (p *Primary) sendActive(l *linkState, tl *tcpLink, m *MapRecord, ext []Region, src func(Region) []byte, enc *encodedSend, ae *activeEpoch, deadline time.Time, tr *linkActive) error {
	if err := l.WriteMap(m); err != nil {
		return err
	}
	hashes := ae.hashesOf(ext, src)
	n := len(hashes) / hashSize
	tl.queue(MsgHashes, m.Epoch, hashes)
	tl.SetSendDeadline(deadline)
	if err := tl.SendPart(); err != nil {
		return err
	}
	t := time.Now()
	w, err := tl.active.awaitWant(m.Epoch, n, deadline)
	tr.wait = time.Since(t)
	if err != nil {
		return err
	}
	tr.reason, tr.pages = w.reason, n
	if w.reason == wantNoShadow {
		tl.active.noShadow = true
	}
	var keep []byte
	if w.reason == wantCompared {
		keep = make([]byte, len(w.bits))
		for i := range n {
			if !w.wanted(i) {
				keep[i/8] |= 1 << (i % 8)
				tr.kept++
			}
		}
	}
	enc.encodeKeeping(p.red, ext, src, keep)
	tl.SetSendDeadline(deadline)
	return enc.write()
}

// linkActive is what active backup did on one link in an epoch.
type linkActive struct {
	used        bool
	reason      byte
	pages, kept int
	wait        time.Duration
}

// activeAt is slot's link doing active backup this epoch (nil: none, or
// active backup is off and actives nil).
func activeAt(actives []*tcpLink, slot int) *tcpLink {
	if slot < len(actives) {
		return actives[slot]
	}
	return nil
}

// activeLinkOf returns l's TCP link if it takes part in active backup
// this epoch.
func (p *Primary) activeLinkOf(l *linkState, e uint64) *tcpLink {
	if p.cfg.ActiveBackup == ActiveBackupOff || !p.activePay.on(e) || l.joining {
		return nil
	}
	tl, ok := l.Link.(*tcpLink)
	if !ok || tl.active == nil || tl.active.noShadow {
		return nil
	}
	return tl
}

// finishActive records the epoch's active backup and, with
// ActiveBackupAuto, books whether it paid.
func (p *Primary) finishActive(ae *activeEpoch, per []linkActive, rec *EpochTrace, e uint64) {
	if per == nil {
		return
	}
	t := &ActiveTrace{HashMicros: toMicros(ae.took)}
	var wait time.Duration
	rate := 0.0
	for li, a := range per {
		if !a.used {
			continue
		}
		t.Links++
		wait = max(wait, a.wait)
		if a.reason == wantCompared {
			t.Compared++
			t.Pages += uint64(a.pages)
			t.Kept += uint64(a.kept)
		}
		if r := p.links[li].rate; r > 0 && (rate == 0 || r < rate) {
			rate = r
		}
	}
	if t.Links == 0 {
		return
	}
	t.WaitMicros = toMicros(wait)
	rec.Active = t
	if p.cfg.ActiveBackup != ActiveBackupAuto {
		return
	}
	saved := t.Kept*PageSize - min(t.Kept*PageSize, t.Pages*hashSize)
	if p.activePay.add(e, saved, ae.took+wait, rate) {
		p.log.Info("active backup switched off for a while: the bytes it kept from the wire took less link time than hashing and the round trip cost", "epochs", offEpochs)
	}
}

// queue queues a message of type t for epoch e on the link, sent with
// the rest of the epoch.
func (l *tcpLink) queue(t MsgType, e uint64, payload []byte) {
	l.bufs = append(l.bufs, appendHeader(nil, Header{Type: t, VMID: l.c.vmID, Generation: l.c.gen, Epoch: e, Length: uint32(len(payload))}), payload)
}

// hashesFit reports whether the hashes of ext's pages fit one message.
func hashesFit(ext []Region) bool {
	n := uint64(0)
	for _, x := range ext {
		n += x.Pages
	}
	return n*hashSize <= maxHashesPayload
}
