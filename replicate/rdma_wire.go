package replicate

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// RDMA formats. All integers little endian, like the TCP wire format,
// except the immediate, which verbs carries in network byte order.

// The map record the primary RDMA-writes into a replica's map buffer before
// an epoch's data:
//
//	0  u32 magic "TNRM"   8 u64 VM id       32 u64 data bytes
//	4  u16 version       16 u64 epoch       40 u32 bytes of the final write
//	6  u16 flags (0)     24 u64 committed   44 u32 CRC-32C, this field as 0
//	48 u32 region count n, then n × (u64 first page, u64 pages)
//
// The replica reads it only when the epoch's immediate arrives, checks the
// CRC, that the epoch's low 32 bits equal the immediate, that the final
// write carried as many bytes as announced and that the regions lie inside
// the guest, ascending, without overlap (parseRegions, as for TCP).
const (
	rdmaMapMagic   = 0x4D524E54 // "TNRM"
	rdmaMapVersion = 1
	rdmaMapHeader  = 48
)

// rdmaMapSize is the size of a map record with n regions.
func rdmaMapSize(n int) int { return rdmaMapHeader + 4 + 16*n }

// rdmaMapCapacity is the map buffer a replica registers for a guest of
// pages pages: room for the most regions a valid map can hold (one per
// page), within the protocol's bound on regions.
func rdmaMapCapacity(pages uint64) int {
	return rdmaMapSize(int(min(pages, maxMapRegions)))
}

// putRDMAMap encodes m into b, which must be large enough, and returns the
// record's size. tail is the byte count of the epoch's final write.
func putRDMAMap(b []byte, vmID uint64, m *MapRecord, tail uint32) (int, error) {
	n := rdmaMapSize(len(m.Regions))
	if n > len(b) {
		return 0, fmt.Errorf("replicate: rdma: a map of %d regions needs %d bytes; the replica's map buffer holds %d", len(m.Regions), n, len(b))
	}
	le := binary.LittleEndian
	le.PutUint32(b[0:], rdmaMapMagic)
	le.PutUint16(b[4:], rdmaMapVersion)
	le.PutUint16(b[6:], 0)
	le.PutUint64(b[8:], vmID)
	le.PutUint64(b[16:], m.Epoch)
	le.PutUint64(b[24:], m.Committed)
	le.PutUint64(b[32:], m.Pages()*PageSize)
	le.PutUint32(b[40:], tail)
	le.PutUint32(b[44:], 0)
	appendRegions(b[48:48], m.Regions)
	le.PutUint32(b[44:], crc32.Checksum(b[:n], castagnoli))
	return n, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// parseRDMAMap decodes and checks the map record at the start of b for a
// guest of pages pages, and returns it with the byte count of the final
// write. The record is copied out, so the buffer may be overwritten after.
func parseRDMAMap(b []byte, vmID, pages uint64) (*MapRecord, uint32, error) {
	if len(b) < rdmaMapSize(0) {
		return nil, 0, fmt.Errorf("%w: rdma map buffer of %d bytes", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	if m := le.Uint32(b[0:]); m != rdmaMapMagic {
		return nil, 0, fmt.Errorf("%w: rdma map record with bad magic %#x", ErrProtocol, m)
	}
	if v := le.Uint16(b[4:]); v != rdmaMapVersion {
		return nil, 0, fmt.Errorf("%w: rdma map record version %d, this build speaks %d", ErrProtocol, v, rdmaMapVersion)
	}
	n := le.Uint32(b[48:])
	if uint64(n) > maxMapRegions || rdmaMapSize(int(n)) > len(b) {
		return nil, 0, fmt.Errorf("%w: rdma map record of %d regions in a %d-byte buffer", ErrProtocol, n, len(b))
	}
	size := rdmaMapSize(int(n))
	want := le.Uint32(b[44:])
	var zero [4]byte
	crc := crc32.Update(crc32.Checksum(b[:44], castagnoli), castagnoli, zero[:])
	if crc = crc32.Update(crc, castagnoli, b[48:size]); crc != want {
		return nil, 0, fmt.Errorf("%w: rdma map record fails its checksum", ErrProtocol)
	}
	if id := le.Uint64(b[8:]); id != vmID {
		return nil, 0, fmt.Errorf("%w: rdma map record for VM %016x on a link of VM %016x", ErrProtocol, id, vmID)
	}
	m := &MapRecord{Epoch: le.Uint64(b[16:]), Committed: le.Uint64(b[24:])}
	var err error
	if m.Regions, err = parseRegions(b[48:size], pages); err != nil {
		return nil, 0, err
	}
	if data := le.Uint64(b[32:]); data != m.Pages()*PageSize {
		return nil, 0, fmt.Errorf("%w: rdma map record announces %d bytes for %d pages", ErrProtocol, data, m.Pages())
	}
	return m, le.Uint32(b[40:]), nil
}

// Immediate data. verbs carries 32 bits, in network byte order, so the
// immediate is the epoch's low 32 bits, big endian on the wire. Epochs are
// 64-bit and consecutive on a link, so the receiver expands the 32 bits to
// the epoch nearest the one it expects (expandEpoch), which is exact as long
// as the two are less than 2^31 apart; the map record, which carries the
// full 64-bit epoch, must agree.

// encodeImm is the value to store in a work request's imm_data (a __be32)
// for epoch e.
func encodeImm(e uint64) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(e))
	return binary.NativeEndian.Uint32(b[:])
}

// decodeImm turns a work completion's imm_data back into the epoch's low
// 32 bits.
func decodeImm(imm uint32) uint32 {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], imm)
	return binary.BigEndian.Uint32(b[:])
}

// expandEpoch returns the epoch whose low 32 bits are low and which is
// nearest to ref (never below 0): serial-number arithmetic over 2^32.
func expandEpoch(low uint32, ref uint64) uint64 {
	d := int64(int32(low - uint32(ref)))
	if d < 0 && uint64(-d) > ref {
		d += 1 << 32 // would fall below epoch 0: the next lap instead
	}
	return ref + uint64(d)
}

// rdmaConnectData is the private data of a link's connect request: the
// one-time ticket the replica issued over an authenticated TCP connection
// (RoleRDMA, see rdma_auth.go), which stands for the VM id and the hello
// the replica checked there. 24 bytes of the 56 the IB CM carries.
//
//	0 u32 magic "TNRC"  4 u16 version  6 u16 0  8 [16]byte ticket
const (
	rdmaConnectMagic   = 0x43524E54 // "TNRC"
	rdmaConnectVersion = 2
	rdmaConnectSize    = 24
	// rdmaMaxConnectData is what an IB or RoCE connect request carries
	// (rdma_connect(3)).
	rdmaMaxConnectData = 56
)

func marshalRDMAConnect(t rdmaTicket) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, rdmaConnectMagic)
	b = le.AppendUint16(b, rdmaConnectVersion)
	b = le.AppendUint16(b, 0)
	return append(b, t[:]...)
}

// parseRDMAConnect decodes a connect request's private data, which the
// transport may have padded with zeros, and returns its ticket.
func parseRDMAConnect(b []byte) (rdmaTicket, error) {
	var t rdmaTicket
	if len(b) < rdmaConnectSize {
		return t, fmt.Errorf("%w: rdma connect request with %d bytes of private data (not a Tandem primary?)", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	if m := le.Uint32(b); m != rdmaConnectMagic {
		return t, fmt.Errorf("%w: rdma connect request with bad magic %#x (not a Tandem primary?)", ErrProtocol, m)
	}
	if v := le.Uint16(b[4:]); v != rdmaConnectVersion {
		return t, fmt.Errorf("%w: rdma connect request version %d, this build speaks %d", ErrProtocol, v, rdmaConnectVersion)
	}
	if le.Uint16(b[6:]) != 0 {
		return t, fmt.Errorf("%w: rdma connect request with reserved bits set", ErrProtocol)
	}
	for _, x := range b[rdmaConnectSize:] {
		if x != 0 {
			return t, fmt.Errorf("%w: rdma connect request with %d bytes of private data", ErrProtocol, len(b))
		}
	}
	copy(t[:], b[8:rdmaConnectSize])
	return t, nil
}

// rdmaAcceptData is the private data of a replica's accept: where the
// primary writes.
//
//	0 u32 magic "TNRA"  4 u16 version  6 u16 0
//	8 u64 staging address   16 u64 bytes per staging half  24 u32 staging rkey
//	28 u32 map rkey         32 u64 map address             40 u32 map bytes
//	44 u32 receives posted  48 u64 max message size (replica's port)
//	56 [32]byte HMAC-SHA256 of bytes 0-55 under the ticket's confirmation key
//
// The MAC proves to the primary that the accept comes from the replica that
// issued its ticket (only it and the primary know the confirmation key,
// which travelled inside the authenticated connection), so guest memory is
// written only where that replica said.
type rdmaAcceptData struct {
	StagingAddr uint64
	StagingHalf uint64
	StagingKey  uint32
	MapKey      uint32
	MapAddr     uint64
	MapLen      uint32
	Receives    uint32
	MaxMsg      uint64
}

const (
	rdmaAcceptMagic   = 0x41524E54 // "TNRA"
	rdmaAcceptVersion = 2
	rdmaAcceptSize    = 56 + sha256.Size
	rdmaRejectMagic   = 0x4A524E54 // "TNRJ"
	// rdmaMaxRejectData is what an IB CM reject carries for the user.
	rdmaMaxRejectData = 148
)

// marshal encodes the accept and its MAC under key.
func (a *rdmaAcceptData) marshal(key [32]byte) []byte {
	le := binary.LittleEndian
	b := le.AppendUint32(nil, rdmaAcceptMagic)
	b = le.AppendUint16(b, rdmaAcceptVersion)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint64(b, a.StagingAddr)
	b = le.AppendUint64(b, a.StagingHalf)
	b = le.AppendUint32(b, a.StagingKey)
	b = le.AppendUint32(b, a.MapKey)
	b = le.AppendUint64(b, a.MapAddr)
	b = le.AppendUint32(b, a.MapLen)
	b = le.AppendUint32(b, a.Receives)
	b = le.AppendUint64(b, a.MaxMsg)
	return append(b, rdmaAcceptMAC(key, b)...)
}

// rdmaAcceptMAC authenticates an accept's fields under a ticket's
// confirmation key.
func rdmaAcceptMAC(key [32]byte, fields []byte) []byte {
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte("tandem rdma accept v2\x00"))
	m.Write(fields)
	return m.Sum(nil)
}

// parseRDMAAccept checks the accept's MAC under the ticket's confirmation
// key, decodes it and checks it against the guest: a staging half must hold
// all of guest RAM and the map buffer at least one full-memory region.
func parseRDMAAccept(b []byte, memBytes uint64, key [32]byte) (rdmaAcceptData, error) {
	var a rdmaAcceptData
	if len(b) < rdmaAcceptSize {
		return a, fmt.Errorf("%w: rdma accept with %d bytes of private data (not a Tandem replica?)", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	if m := le.Uint32(b); m != rdmaAcceptMagic {
		return a, fmt.Errorf("%w: rdma accept with bad magic %#x (not a Tandem replica?)", ErrProtocol, m)
	}
	if v := le.Uint16(b[4:]); v != rdmaAcceptVersion {
		return a, fmt.Errorf("%w: rdma accept version %d, this build speaks %d", ErrProtocol, v, rdmaAcceptVersion)
	}
	if !hmac.Equal(b[56:rdmaAcceptSize], rdmaAcceptMAC(key, b[:56])) {
		return a, fmt.Errorf("%w: rdma accept not authenticated by the replica that issued the link's ticket", ErrProtocol)
	}
	a = rdmaAcceptData{
		StagingAddr: le.Uint64(b[8:]), StagingHalf: le.Uint64(b[16:]), StagingKey: le.Uint32(b[24:]),
		MapKey: le.Uint32(b[28:]), MapAddr: le.Uint64(b[32:]), MapLen: le.Uint32(b[40:]),
		Receives: le.Uint32(b[44:]), MaxMsg: le.Uint64(b[48:]),
	}
	switch {
	case a.StagingHalf < memBytes:
		return a, fmt.Errorf("%w: rdma replica stages %d bytes per epoch for a %d-byte guest", ErrProtocol, a.StagingHalf, memBytes)
	case a.MapLen < uint32(rdmaMapSize(1)):
		return a, fmt.Errorf("%w: rdma replica map buffer of %d bytes", ErrProtocol, a.MapLen)
	case a.Receives < 2:
		return a, fmt.Errorf("%w: rdma replica posted %d receives", ErrProtocol, a.Receives)
	case a.MaxMsg == 0:
		return a, fmt.Errorf("%w: rdma replica's port takes no messages", ErrProtocol)
	}
	return a, nil
}

// marshalRDMAReject encodes a refusal's reason for rdma_reject.
func marshalRDMAReject(reason string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, rdmaRejectMagic)
	if len(reason) > rdmaMaxRejectData-4 {
		reason = reason[:rdmaMaxRejectData-7] + "..."
	}
	return append(b, reason...)
}

// parseRDMAReject returns the reason a replica gave, or "" when the reject
// did not come from a Tandem replica (no such listener, for example).
func parseRDMAReject(b []byte) string {
	if len(b) < 4 || binary.LittleEndian.Uint32(b) != rdmaRejectMagic {
		return ""
	}
	r := b[4:]
	for i, c := range r { // the transport pads with zeros
		if c == 0 {
			r = r[:i]
			break
		}
	}
	return string(r)
}
