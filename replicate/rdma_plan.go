package replicate

import (
	"errors"
	"fmt"
	"unsafe"
)

// rdmaSpan is a piece of registered local memory to send: its address, its
// length and the lkey of the memory region holding it.
type rdmaSpan struct {
	Addr uint64
	Len  uint64
	Key  uint32
}

// rdmaSGE is one scatter-gather element, laid out like struct ibv_sge.
type rdmaSGE struct {
	Addr uint64
	Len  uint32
	Key  uint32
}

// rdmaWR is one planned RDMA write: the SGEs sges[First:First+N] of its
// plan, landing at remote address Remote, Bytes long.
type rdmaWR struct {
	First  int
	N      int
	Remote uint64
	Bytes  uint64
}

// maxSGEBytes bounds one SGE (its length is a u32; staying well below keeps
// clear of providers that treat the top bit specially).
const maxSGEBytes = 1 << 30

// planWrites lays spans out back to back from remote address remote as RDMA
// writes of at most maxSGE SGEs and maxMsg bytes each. Spans that continue
// one another in memory with the same key become one SGE (async staging is
// one contiguous buffer); spans longer than a message or an SGE are split.
// The plan always holds at least one write, of zero bytes if spans are
// empty: the last write of an epoch carries its immediate. wrs and sges are
// reused.
func planWrites(wrs []rdmaWR, sges []rdmaSGE, spans []rdmaSpan, maxSGE int, maxMsg, remote uint64) ([]rdmaWR, []rdmaSGE, error) {
	if maxSGE < 1 {
		return wrs, sges, fmt.Errorf("replicate: rdma: max_sge %d: the QP takes no scatter-gather entries", maxSGE)
	}
	if maxMsg == 0 {
		return wrs, sges, errors.New("replicate: rdma: max_msg_sz is 0")
	}
	wrs, sges = wrs[:0], sges[:0]
	sgeMax := min(maxMsg, maxSGEBytes)
	cur := rdmaWR{Remote: remote}
	flush := func() {
		wrs = append(wrs, cur)
		cur = rdmaWR{First: len(sges), Remote: cur.Remote + cur.Bytes}
	}
	for i := 0; i < len(spans); i++ {
		s := spans[i]
		// Coalesce the spans that continue this one.
		for i+1 < len(spans) && spans[i+1].Key == s.Key && spans[i+1].Addr == s.Addr+s.Len {
			s.Len += spans[i+1].Len
			i++
		}
		for s.Len > 0 {
			if cur.N == maxSGE || cur.Bytes == maxMsg {
				flush()
			}
			n := min(s.Len, sgeMax, maxMsg-cur.Bytes)
			sges = append(sges, rdmaSGE{Addr: s.Addr, Len: uint32(n), Key: s.Key})
			cur.N++
			cur.Bytes += n
			s.Addr += n
			s.Len -= n
		}
	}
	wrs = append(wrs, cur)
	return wrs, sges, nil
}

// planBytes is the number of bytes a plan writes.
func planBytes(wrs []rdmaWR) uint64 {
	var n uint64
	for _, w := range wrs {
		n += w.Bytes
	}
	return n
}

// Work request opcodes (enum ibv_wr_opcode) and receive completion opcodes
// and flags (enum ibv_wc_opcode, ibv_wc_flags); the rdma build checks them
// against the headers.
const (
	wrWrite       uint32 = 0   // IBV_WR_RDMA_WRITE
	wrWriteImm    uint32 = 1   // IBV_WR_RDMA_WRITE_WITH_IMM
	wrSendImm     uint32 = 3   // IBV_WR_SEND_WITH_IMM
	wcOpRecv      uint32 = 128 // IBV_WC_RECV
	wcOpRecvImm   uint32 = 129 // IBV_WC_RECV_RDMA_WITH_IMM
	wcFlagWithImm uint32 = 2   // IBV_WC_WITH_IMM
)

// rdmaDesc is one work request to post.
type rdmaDesc struct {
	opcode uint32
	remote uint64
	rkey   uint32
	imm    uint32
	sges   []rdmaSGE
}

// rdmaEpochPlan lays out one epoch on one link: the map record's write(s)
// into the replica's map buffer, then the data writes into the staging half
// of the epoch, the last one an RDMA_WRITE_WITH_IMM carrying the epoch. Its
// slices are reused from epoch to epoch.
type rdmaEpochPlan struct {
	wrs, mapWRs   []rdmaWR
	sges, mapSGEs []rdmaSGE
	descs         []rdmaDesc
	total         uint64 // data bytes
	mapBytes      int
}

// build plans epoch m of a link whose data is spans; it encodes the map
// record into mapBuf, registered under mapKey. remote is what the replica
// announced, maxSGE and maxMsg the limits of the QP and path.
func (p *rdmaEpochPlan) build(vmID uint64, m *MapRecord, spans []rdmaSpan, mapBuf []byte, mapAddr uint64, mapKey uint32, remote rdmaAcceptData, maxSGE int, maxMsg uint64) error {
	var err error
	half := remote.StagingAddr + (m.Epoch%2)*remote.StagingHalf
	if p.wrs, p.sges, err = planWrites(p.wrs, p.sges, spans, maxSGE, maxMsg, half); err != nil {
		return err
	}
	p.total = planBytes(p.wrs)
	if p.total != m.Pages()*PageSize {
		return fmt.Errorf("replicate: rdma: epoch %d carries %d bytes for %d pages", m.Epoch, p.total, m.Pages())
	}
	if p.total > remote.StagingHalf {
		return fmt.Errorf("replicate: rdma: epoch %d of %d bytes exceeds the replica's %d-byte staging", m.Epoch, p.total, remote.StagingHalf)
	}
	tail := p.wrs[len(p.wrs)-1].Bytes
	if p.mapBytes, err = putRDMAMap(mapBuf[:min(uint64(len(mapBuf)), uint64(remote.MapLen))], vmID, m, uint32(tail)); err != nil {
		return err
	}
	if p.mapWRs, p.mapSGEs, err = planWrites(p.mapWRs, p.mapSGEs, []rdmaSpan{{Addr: mapAddr, Len: uint64(p.mapBytes), Key: mapKey}}, maxSGE, maxMsg, remote.MapAddr); err != nil {
		return err
	}
	p.descs = p.descs[:0]
	for _, w := range p.mapWRs {
		p.descs = append(p.descs, rdmaDesc{opcode: wrWrite, remote: w.Remote, rkey: remote.MapKey, sges: p.mapSGEs[w.First : w.First+w.N]})
	}
	for i, w := range p.wrs {
		d := rdmaDesc{opcode: wrWrite, remote: w.Remote, rkey: remote.StagingKey, sges: p.sges[w.First : w.First+w.N]}
		if i == len(p.wrs)-1 {
			d.opcode, d.imm = wrWriteImm, encodeImm(m.Epoch)
		}
		p.descs = append(p.descs, d)
	}
	return nil
}

// descBytes is the number of bytes a work request carries.
func descBytes(d rdmaDesc) uint64 {
	var n uint64
	for _, s := range d.sges {
		n += uint64(s.Len)
	}
	return n
}

// addrOf is the address of a slice's first byte, as verbs takes it.
func addrOf(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
