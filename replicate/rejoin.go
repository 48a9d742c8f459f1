package replicate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// Links that come back. A failed link is dialled again in the background
// with a growing backoff (firstLinkBackoff to maxLinkBackoff) for as long
// as the primary runs; a link that answers is taken back into service at
// the start of an epoch (installRejoined).
//
// With fast the link counts at once: after its loss the other links got a
// full copy of memory, so they hold every page's newest copy between them,
// and the epochs from now on spread over it too. With ft every counted
// link must hold every page, so a link that comes back (or a replica that
// restarted empty) first catches up: each epoch it gets that epoch's pages
// like the others plus the next slice of all of memory, read at the same
// pause (catchUpSlice), and it counts for commits, and for recovery (the
// epoch's state lists only counted links), once the slice that ends
// memory has committed. Until then its acknowledgements are waited for but
// decide nothing: losing it fails no epoch.
const (
	firstLinkBackoff = 100 * time.Millisecond
	maxLinkBackoff   = 5 * time.Second
)

// rejoined is a link dialled again, for the run loop to install.
type rejoined struct {
	index int
	link  Link
}

// redialLink dials link i again, in the background, until it answers or
// the primary closes. Call it from the run loop (or before Run).
func (p *Primary) redialLink(i int) {
	go p.redialLinkTo(i, p.cfg.Links[i], p.linkHello(i))
}

func (p *Primary) redialLinkTo(i int, addr string, h Hello) {
	p.retry(firstLinkBackoff, maxLinkBackoff, func(ctx context.Context) error {
		l, err := p.dialTransport(ctx, addr, i, h)
		if err != nil {
			p.log.Debug("replica link still unreachable", "link", i, "addr", addr, "err", err)
			return err
		}
		select {
		case p.rejoined <- rejoined{i, l}:
		case <-p.bg.Done():
			l.Close()
		}
		return nil
	})
}

// retry calls attempt after a pause of first, then of twice the last up
// to most, each time with a context bounded by the acknowledgement
// timeout, until it succeeds or the primary closes.
func (p *Primary) retry(first, most time.Duration, attempt func(ctx context.Context) error) {
	for pause := first; ; pause = min(2*pause, most) {
		select {
		case <-p.bg.Done():
			return
		case <-time.After(pause):
		}
		ctx, cancel := context.WithTimeout(p.bg, p.cfg.AckTimeout)
		err := attempt(ctx)
		cancel()
		if err == nil {
			return
		}
	}
}

// installRejoined takes the links dialled again into service.
func (p *Primary) installRejoined() {
	for {
		select {
		case r := <-p.rejoined:
			joining := p.cfg.Policy == PolicyFT
			p.links[r.index] = newLinkState(r.link, r.index)
			p.links[r.index].joining = joining
			if joining {
				p.log.Warn("replica link back: it gets a full copy of memory, slice by slice, before it counts", "link", r.link.String())
			} else {
				p.log.Warn("replica link back in service", "link", r.link.String())
			}
		default:
			return
		}
	}
}

// catchUpSlice is the memory a joining link gets in epoch e beyond the
// epoch's pages: about a quarter of what the link moves in an epoch
// interval at its measured rate (4 MiB until measured), at least 1 MiB
// and at most 64 MiB.
func (p *Primary) catchUpSlice(l *linkState, pages uint64) Region {
	bytes := uint64(4 << 20)
	if l.rate > 0 {
		bytes = min(max(uint64(l.rate*p.cfg.Epoch.Seconds()/4), 1<<20), 64<<20)
	}
	return Region{First: l.cursor, Pages: min(max(bytes/PageSize, 1), pages-l.cursor)}
}

// caughtUp advances the joining links past the slices of a committed
// epoch, and counts those that now hold every page.
func (p *Primary) caughtUp(slices map[int]Region, pages uint64) {
	for i, s := range slices {
		l := p.links[i]
		if !l.alive || !l.joining {
			continue
		}
		l.cursor = s.End()
		if l.cursor >= pages {
			l.joining = false
			p.log.Warn("replica link caught up: it holds every page and counts again", "link", l.String())
		} else if old := (s.First * 4) / pages; (l.cursor*4)/pages != old {
			p.log.Info("replica link catching up", "link", l.String(), "done_pct", 100*l.cursor/pages)
		}
	}
}

// Nodes added later. AddLink gives the primary a link to a node it did not
// start with (tandem add-replica): the run loop takes it at the start of
// an epoch as a link that failed, dials it in the background and lets it
// join as above (with ft it counts once it holds every page); with a
// coordinator term the node also becomes a state holder. The holders are
// told the new Cluster at once, so a takeover protects the VM with the
// new node too.

// addRequest is an AddLink for the run loop.
type addRequest struct {
	addr string
	done chan error
}

// ErrLinkExists means AddLink was given a link the primary has.
var ErrLinkExists = errors.New("replicate: the primary already has that link")

// AddLink adds a link to the replica at addr, which joins as a link that
// came back does. It returns once the run loop has taken the link (not
// once it is connected: Status shows that), or when ctx ends.
func (p *Primary) AddLink(ctx context.Context, addr string) error {
	if strings.Contains(addr, "://") {
		if _, err := ParseLinkAddr(addr); err != nil {
			return err
		}
	} else if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("replicate: link %q: %w", addr, err)
	}
	req := addRequest{addr: addr, done: make(chan error, 1)}
	select {
	case p.adds <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-p.bg.Done():
		return errors.New("replicate: the primary has stopped")
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// installAdded takes the links AddLink gave into service.
func (p *Primary) installAdded() {
	for {
		select {
		case req := <-p.adds:
			req.done <- p.addLink(req.addr)
		default:
			return
		}
	}
}

func (p *Primary) addLink(addr string) error {
	switch {
	case slices.Contains(p.cfg.Links, addr):
		return fmt.Errorf("%w: %s", ErrLinkExists, addr)
	case len(p.cfg.Links) >= MaxLinks:
		return fmt.Errorf("replicate: the primary has %d links, at most %d", len(p.cfg.Links), MaxLinks)
	}
	i := len(p.cfg.Links)
	p.cfg.Links = append(slices.Clip(p.cfg.Links), addr)
	p.links = append(p.links, &linkState{index: i, Link: deadLink{addr}})
	p.redialLink(i)
	if p.cfg.Term != nil {
		if node := linkNode(addr); !slices.ContainsFunc(p.holders, func(h *holder) bool { return h.addr == node }) {
			h := &holder{addr: node}
			p.holders = append(p.holders, h)
			p.redialHolder(h)
		}
	}
	c := p.cluster()
	for _, h := range p.inService() {
		if err := h.link.sendCluster(c); err != nil {
			p.log.Warn("telling a state holder about the new link", "holder", h.addr, "err", err)
		}
	}
	p.log.Warn("a replica link was added: it joins once it answers", "link", i, "addr", addr)
	p.publishStatus()
	return nil
}
