package replicate

import (
	"fmt"
	"io"
	"net"
	"time"
)

// What one more element costs a TCP link is measured once, when the link
// connects, by the probe: before its first map the primary sends
// probeRounds pairs of MsgProbe messages of probeBytes each, one as a
// single slice and one as probeSlices slices of the same bytes, and times
// each until the replica's answer. The replica discards the payload and
// answers with an empty MsgProbe of the same epoch. The least time of each
// shape over the rounds, their difference spread over the extra slices, is
// the element cost the link states (elementCoster). The probe writes as
// an epoch's sends do (writeBuffers), so the cost is writev's per-iovec
// work on a plain connection, and on an encrypted one the copy of a short
// slice into a record shared with its neighbours. A probe after the
// link's first map, or one larger than probeBytes, is a protocol error.
const (
	probeBytes  = 64 << 10
	probeSlices = 1024 // one writev: IOV_MAX
	probeRounds = 3
)

// probeTimeout bounds the probe when the dial has no deadline.
const probeTimeout = 10 * time.Second

// probe measures the link's element cost (see above) and keeps it.
func (l *tcpLink) probe(deadline time.Time) error {
	if deadline.IsZero() {
		deadline = time.Now().Add(probeTimeout)
	}
	l.c.c.SetDeadline(deadline)
	defer l.c.c.SetDeadline(time.Time{})
	body := make([]byte, probeBytes)
	step := probeBytes / probeSlices
	best := [2]time.Duration{}
	for round := range probeRounds {
		for shape := range 2 {
			epoch := uint64(round*2 + shape)
			bufs := net.Buffers{appendHeader(nil, Header{Type: MsgProbe, VMID: l.c.vmID, Generation: l.c.gen, Epoch: epoch, Length: probeBytes})}
			if shape == 0 {
				bufs = append(bufs, body)
			} else {
				for off := 0; off < probeBytes; off += step {
					bufs = append(bufs, body[off:off+step])
				}
			}
			start := time.Now()
			if err := writeBuffers(l.c.c, bufs, &l.records); err != nil {
				return l.c.errorf("link %d: probe: %w", l.index, err)
			}
			h, err := l.c.readHeader()
			if err == nil && (h.Type != MsgProbe || h.Epoch != epoch || h.Length != 0) {
				err = fmt.Errorf("%w: answer to probe %d is %v of epoch %d, %d bytes", ErrProtocol, epoch, h.Type, h.Epoch, h.Length)
			}
			if err != nil {
				return l.c.errorf("link %d: probe: %w", l.index, noEOF(err))
			}
			if took := time.Since(start); round == 0 || took < best[shape] {
				best[shape] = took
			}
		}
	}
	l.element = max(0, best[1]-best[0]) / (probeSlices - 1)
	return nil
}

// elementCost implements elementCoster: what the probe measured.
func (l *tcpLink) elementCost() time.Duration { return l.element }

// answerProbe discards a probe's payload and answers it (see above).
// mapped is whether the link has sent a map yet.
func (r *Replica) answerProbe(c *conn, link uint32, h Header, mapped bool) error {
	if mapped {
		return c.errorf("link %d: %w: probe after the link's first map", link, ErrProtocol)
	}
	if h.Length > probeBytes {
		return c.errorf("link %d: %w: probe of %d bytes, more than %d", link, ErrProtocol, h.Length, probeBytes)
	}
	if _, err := io.CopyN(io.Discard, c.r, int64(h.Length)); err != nil {
		return c.errorf("link %d: probe: %w", link, noEOF(err))
	}
	if err := c.send(MsgProbe, h.Epoch, nil); err != nil {
		return c.errorf("link %d: %w", link, err)
	}
	return nil
}
