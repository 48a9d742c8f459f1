package replicate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/tandemvm/tandem/replicate/disk"
	"github.com/tandemvm/tandem/replicate/pagecodec"
)

// Wire format. Every message is a 40-byte header followed by its payload:
//
//	0  u32 magic "TNDM"     8  u64 VM id        24 u64 generation
//	4  u16 version          16 u64 epoch        32 u32 payload length
//	6  u16 type                                 36 u32 reserved (0)
//
// All integers are little endian. Decoders check magic, version, VM id,
// type and the payload bound of the type before reading a payload, so a
// malformed or hostile peer costs at most one bounded read. The
// generation is the primary term the connection belongs to (see the
// package documentation, "Generations and fencing"): fixed by the hello,
// carried by every message in both directions, and checked on every read.
const (
	wireMagic   = 0x4D444E54 // "TNDM"
	wireVersion = 5
	headerSize  = 40
)

// MsgType is the kind of a protocol message.
type MsgType uint16

// Message types. Primary → replica on a link: Hello, Probe (before the
// first Map, answered by a Probe; probe.go), Map, Data or Pages
// (and, for an epoch sent in two parts, MapMore and its Data or Pages;
// with active backup, Hashes right after the Map), Done, Commit. Replica
// → primary: Welcome, Ack, Error, and Want answering Hashes. Primary → leader on the
// state connection: Hello, State, Commit, Heartbeat; leader → primary:
// Welcome, Ack, and Bye when the VM ended on purpose (no takeover).
// Leader → replica during recovery: Hello, Query, Resolve,
// Fetch; replica → leader: Welcome, Report, Epochs, Data. Primary →
// replica setting up an RDMA link: Hello; replica → primary: Welcome,
// Ticket (rdma_auth.go).
const (
	MsgHello MsgType = iota + 1
	MsgWelcome
	MsgError
	MsgMap
	MsgData
	MsgDone
	MsgAck
	MsgCommit
	MsgState
	MsgHeartbeat
	MsgQuery
	MsgReport
	MsgResolve
	MsgEpochs
	MsgFetch
	MsgBye
	MsgTicket
	MsgDiskHashes // primary → leader: a disk's chunk hashes (diskrep.go)
	MsgDiskWant   // leader → primary: the chunks its copy lacks
	MsgDiskChunk  // primary → leader: one of them
	MsgDiskDone   // primary → leader: that disk is sent; the leader acks once durable
	MsgFenced     // node → primary: a newer generation was seen here; payload: it (u64)
	MsgCluster    // primary → leader, first on a state connection: how it replicates (cluster.go)
	MsgPages      // primary → replica on a TCP link: the epoch's pages as pagecodec records (reduce.go)
	MsgMapMore    // primary → replica on a TCP link: the second part of a speculated epoch's map (speculate.go)
	MsgHashes     // primary → replica on a TCP link, after the map: a hash per page (active backup, active.go)
	MsgWant       // replica → primary: the pages of those hashes it wants sent
	MsgProbe      // primary → replica on a TCP link before its first map, and back: the element cost's measurement (probe.go)
	msgTypeEnd
)

var msgNames = [...]string{"", "hello", "welcome", "error", "map", "data", "done", "ack", "commit", "state", "heartbeat", "query", "report", "resolve", "epochs", "fetch", "bye", "ticket", "disk hashes", "disk want", "disk chunk", "disk done", "fenced", "cluster", "pages", "map more", "hashes", "want", "probe"}

func (t MsgType) String() string {
	if t > 0 && t < msgTypeEnd {
		return msgNames[t]
	}
	return fmt.Sprintf("MsgType(%d)", uint16(t))
}

// Payload bounds per message type. Data, Epochs and Map payloads are
// further checked against the guest size by their readers.
const (
	maxSmallPayload = 64 << 10
	maxMapRegions   = 1 << 20
	maxStatePayload = 64 << 20
	maxDataPayload  = 1 << 40
)

func maxPayload(t MsgType) uint64 {
	switch t {
	case MsgData, MsgEpochs:
		return maxDataPayload
	case MsgState, MsgDiskHashes, MsgDiskWant:
		return maxStatePayload
	case MsgDiskChunk:
		return 4 + 8 + disk.ChunkSize
	case MsgMap, MsgMapMore, MsgFetch:
		return 8 + 4 + maxMapRegions*mapEntrySize
	case MsgDone, MsgAck, MsgCommit, MsgHeartbeat, MsgQuery, MsgResolve, MsgBye:
		return 0
	case MsgDiskDone:
		return 4
	case MsgFenced:
		return 8
	case MsgPages:
		return pagecodec.MaxMessage
	case MsgHashes:
		return maxHashesPayload
	case MsgWant:
		return 1 + maxHashesPayload/hashSize/8
	case MsgProbe:
		return probeBytes
	}
	return maxSmallPayload
}

// ErrProtocol reports a message that breaks the protocol. Errors wrapping
// it name the peer.
var ErrProtocol = errors.New("replicate: protocol error")

// Header is a decoded message header.
type Header struct {
	Type       MsgType
	VMID       uint64
	Epoch      uint64
	Generation uint64
	Length     uint32
}

func (h Header) put(b []byte) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], wireMagic)
	le.PutUint16(b[4:], wireVersion)
	le.PutUint16(b[6:], uint16(h.Type))
	le.PutUint64(b[8:], h.VMID)
	le.PutUint64(b[16:], h.Epoch)
	le.PutUint64(b[24:], h.Generation)
	le.PutUint32(b[32:], h.Length)
	le.PutUint32(b[36:], 0)
}

// appendHeader appends an encoded header to b.
func appendHeader(b []byte, h Header) []byte {
	var hb [headerSize]byte
	h.put(hb[:])
	return append(b, hb[:]...)
}

// parseHeader decodes and checks a header. vmID 0 accepts any VM id (a
// replica learning the id from its first hello).
func parseHeader(b []byte, vmID uint64) (Header, error) {
	le := binary.LittleEndian
	if m := le.Uint32(b[0:]); m != wireMagic {
		return Header{}, fmt.Errorf("%w: bad magic %#x (not a Tandem peer?)", ErrProtocol, m)
	}
	if v := le.Uint16(b[4:]); v != wireVersion {
		return Header{}, fmt.Errorf("%w: protocol version %d, this build speaks %d", ErrProtocol, v, wireVersion)
	}
	h := Header{
		Type:       MsgType(le.Uint16(b[6:])),
		VMID:       le.Uint64(b[8:]),
		Epoch:      le.Uint64(b[16:]),
		Generation: le.Uint64(b[24:]),
		Length:     le.Uint32(b[32:]),
	}
	if h.Type == 0 || h.Type >= msgTypeEnd {
		return Header{}, fmt.Errorf("%w: unknown message type %d", ErrProtocol, uint16(h.Type))
	}
	if vmID != 0 && h.VMID != vmID {
		return Header{}, fmt.Errorf("%w: message for VM %016x on a connection of VM %016x", ErrProtocol, h.VMID, vmID)
	}
	if uint64(h.Length) > maxPayload(h.Type) {
		return Header{}, fmt.Errorf("%w: %v message with a %d-byte payload, at most %d allowed", ErrProtocol, h.Type, h.Length, maxPayload(h.Type))
	}
	return h, nil
}

// readHeader reads and checks one header.
func readHeader(r io.Reader, vmID uint64) (Header, error) {
	var b [headerSize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return Header{}, err
	}
	return parseHeader(b[:], vmID)
}

// checkGeneration is the per-message half of fencing: every message on a
// connection carries the generation its hello fixed.
func checkGeneration(h Header, gen uint64) error {
	if h.Generation != gen {
		return fmt.Errorf("%w: %v message of generation %d on a connection of generation %d", ErrProtocol, h.Type, h.Generation, gen)
	}
	return nil
}

// readPayload reads a header's payload into a fresh slice.
func readPayload(r io.Reader, h Header) ([]byte, error) {
	b := make([]byte, h.Length)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%v payload: %w", h.Type, noEOF(err))
	}
	return b, nil
}

// noEOF turns a clean EOF inside a message into ErrUnexpectedEOF.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// linkResume is what a link's welcome tells the primary (16 bytes: u64
// acknowledged, u64 committed): the newest epoch the link index
// acknowledged and the newest commit it carried, on any earlier connection
// of this generation. The binding rules outlive a connection, so the
// first map on a new one must carry a commit in between: the primary
// sends committed, which also leaves a staged epoch the primary never
// committed unapplied. A replica that restarted says 0, 0.
type linkResume struct{ acked, committed uint64 }

const welcomeLinkSize = 16

func (r linkResume) marshal() []byte {
	return binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, r.acked), r.committed)
}

func parseLinkResume(b []byte) linkResume {
	return linkResume{acked: binary.LittleEndian.Uint64(b), committed: binary.LittleEndian.Uint64(b[8:])}
}

// Role says what a connection is for; it is the first field of a hello.
type Role uint32

const (
	RoleLink     Role = 1 // carries one link's epochs to a replica
	RoleState    Role = 2 // carries state and heartbeats to the leader
	RoleRecovery Role = 3 // the leader reading a replica's store
	// RoleRDMA sets up an RDMA link: the replica answers an authenticated
	// hello with a one-time ticket that the RDMA connect request must carry
	// (see rdma.go).
	RoleRDMA Role = 4
)

func (r Role) String() string {
	switch r {
	case RoleLink:
		return "link"
	case RoleState:
		return "state"
	case RoleRecovery:
		return "recovery"
	case RoleRDMA:
		return "rdma setup"
	}
	return fmt.Sprintf("Role(%d)", uint32(r))
}

// Hello opens every connection.
type Hello struct {
	Role     Role
	Link     uint32 // link index (RoleLink)
	Links    uint32 // number of links the primary drives
	MemBytes uint64
	VCPUs    uint32
	Policy   Policy // recovery needs every link (fast) or one copy (ft)
	Guest    string // guest name, for the leader's messages and snapshot metadata
}

const helloFixed = 4 + 4 + 4 + 8 + 4 + 4 + 2

func (m *Hello) marshal() []byte {
	b := make([]byte, helloFixed+len(m.Guest))
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(m.Role))
	le.PutUint32(b[4:], m.Link)
	le.PutUint32(b[8:], m.Links)
	le.PutUint64(b[12:], m.MemBytes)
	le.PutUint32(b[20:], m.VCPUs)
	le.PutUint32(b[24:], uint32(m.Policy))
	le.PutUint16(b[28:], uint16(len(m.Guest)))
	copy(b[helloFixed:], m.Guest)
	return b
}

func (m *Hello) unmarshal(b []byte) error {
	if len(b) < helloFixed {
		return fmt.Errorf("%w: hello of %d bytes", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	*m = Hello{
		Role:     Role(le.Uint32(b[0:])),
		Link:     le.Uint32(b[4:]),
		Links:    le.Uint32(b[8:]),
		MemBytes: le.Uint64(b[12:]),
		VCPUs:    le.Uint32(b[20:]),
		Policy:   Policy(le.Uint32(b[24:])),
	}
	n := int(le.Uint16(b[28:]))
	if len(b) != helloFixed+n {
		return fmt.Errorf("%w: hello names a %d-byte guest in %d bytes", ErrProtocol, n, len(b)-helloFixed)
	}
	m.Guest = string(b[helloFixed:])
	switch {
	case m.Role < RoleLink || m.Role > RoleRDMA:
		return fmt.Errorf("%w: hello with unknown role %d", ErrProtocol, m.Role)
	case (m.Role == RoleLink || m.Role == RoleRDMA) && (m.Links == 0 || m.Link >= m.Links || m.Links > MaxLinks):
		return fmt.Errorf("%w: hello for link %d of %d", ErrProtocol, m.Link, m.Links)
	case m.Policy != PolicyFast && m.Policy != PolicyFT:
		return fmt.Errorf("%w: hello with unknown policy %d", ErrProtocol, m.Policy)
	case m.MemBytes == 0 || m.MemBytes%PageSize != 0 || m.MemBytes > maxGuestBytes:
		return fmt.Errorf("%w: hello with a guest of %d bytes", ErrProtocol, m.MemBytes)
	}
	return nil
}

// PageSize is the unit of replication.
const PageSize = 4096

// MaxLinks bounds the links of one primary.
const MaxLinks = 64

const maxGuestBytes = 1 << 40

// MapRecord says where the data of one link's epoch belongs: the regions, in
// the order their pages follow in the data message. Committed is the newest
// epoch the primary has committed, so a replica that missed a commit
// message still learns it.
type MapRecord struct {
	Epoch     uint64
	Committed uint64
	Regions   []Region
}

// Pages is the number of pages the record's data carries.
func (m *MapRecord) Pages() uint64 {
	var n uint64
	for _, r := range m.Regions {
		n += r.Pages
	}
	return n
}

// mapEntrySize is the bytes one region takes in a map.
const mapEntrySize = 16

// appendMap appends a map message (header and payload) to b.
func appendMap(b []byte, vmID, gen uint64, m *MapRecord) []byte {
	return appendMapAs(b, MsgMap, vmID, gen, m)
}

// appendMapAs appends a map of type t (MsgMap or MsgMapMore).
func appendMapAs(b []byte, t MsgType, vmID, gen uint64, m *MapRecord) []byte {
	b = appendHeader(b, Header{Type: t, VMID: vmID, Generation: gen, Epoch: m.Epoch, Length: uint32(12 + mapEntrySize*len(m.Regions))})
	return appendRegions(binary.LittleEndian.AppendUint64(b, m.Committed), m.Regions)
}

func appendRegions(b []byte, regions []Region) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, uint32(len(regions)))
	for _, r := range regions {
		b = le.AppendUint64(b, r.First)
		b = le.AppendUint64(b, r.Pages)
	}
	return b
}

// parseMap decodes a map payload and checks that its regions are non-empty,
// ascending, non-overlapping and inside a guest of pages pages.
func parseMap(h Header, b []byte, pages uint64) (*MapRecord, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: map of %d bytes", ErrProtocol, len(b))
	}
	m := &MapRecord{Epoch: h.Epoch, Committed: binary.LittleEndian.Uint64(b)}
	var err error
	if m.Regions, err = parseRegions(b[8:], pages); err != nil {
		return nil, err
	}
	return m, nil
}

// parseRegions decodes a region list; fast-mode maps and fetch requests
// both use it.
func parseRegions(b []byte, pages uint64) ([]Region, error) {
	if len(b) < 4 {
		return nil, fmt.Errorf("%w: region list of %d bytes", ErrProtocol, len(b))
	}
	n := binary.LittleEndian.Uint32(b)
	if uint64(len(b)-4) != 16*uint64(n) {
		return nil, fmt.Errorf("%w: %d regions in %d bytes", ErrProtocol, n, len(b)-4)
	}
	regions := make([]Region, n)
	var end uint64
	for i := range regions {
		r := Region{First: binary.LittleEndian.Uint64(b[4+16*i:]), Pages: binary.LittleEndian.Uint64(b[12+16*i:])}
		if r.Pages == 0 || r.First >= pages || r.Pages > pages-r.First {
			return nil, fmt.Errorf("%w: region of %d pages at page %d outside a %d-page guest", ErrProtocol, r.Pages, r.First, pages)
		}
		if i > 0 && r.First < end {
			return nil, fmt.Errorf("%w: region at page %d overlaps or precedes the one before", ErrProtocol, r.First)
		}
		end = r.End()
		regions[i] = r
	}
	return regions, nil
}

// StateRecord is an epoch's VM state as the leader receives it, with the
// links that carried the epoch: recovery needs every one of them complete.
//
// Within and Interval tell the leader when to expect the primary's next
// progress (see the package documentation, "Liveness"): Within is how long
// the primary allows this epoch's transfer and acknowledgements, Interval
// how long its VM runs between two pauses.
type StateRecord struct {
	Epoch    uint64
	Within   time.Duration
	Interval time.Duration
	Links    []uint32
	Blob     []byte
}

// stateFixed is the size of a state payload's fixed part: Within,
// Interval (nanoseconds) and the number of links.
const stateFixed = 8 + 8 + 4

// maxStateWait bounds the Within and Interval a state may announce.
const maxStateWait = 24 * time.Hour

func (s *StateRecord) marshal() []byte {
	le := binary.LittleEndian
	b := le.AppendUint64(nil, uint64(max(s.Within, 0)))
	b = le.AppendUint64(b, uint64(max(s.Interval, 0)))
	b = le.AppendUint32(b, uint32(len(s.Links)))
	for _, l := range s.Links {
		b = le.AppendUint32(b, l)
	}
	return append(b, s.Blob...)
}

func parseState(h Header, b []byte) (*StateRecord, error) {
	if len(b) < stateFixed {
		return nil, fmt.Errorf("%w: state of %d bytes", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	within, interval := le.Uint64(b), le.Uint64(b[8:])
	if within > uint64(maxStateWait) || interval > uint64(maxStateWait) {
		return nil, fmt.Errorf("%w: state announcing its next progress in %d+%d ns", ErrProtocol, within, interval)
	}
	n := le.Uint32(b[16:])
	if n == 0 || n > MaxLinks || uint64(len(b)) < stateFixed+4*uint64(n) {
		return nil, fmt.Errorf("%w: state naming %d links in %d bytes", ErrProtocol, n, len(b))
	}
	s := &StateRecord{Epoch: h.Epoch, Within: time.Duration(within), Interval: time.Duration(interval), Links: make([]uint32, n)}
	for i := range s.Links {
		s.Links[i] = le.Uint32(b[stateFixed+4*i:])
		if s.Links[i] >= MaxLinks {
			return nil, fmt.Errorf("%w: state names link %d", ErrProtocol, s.Links[i])
		}
	}
	s.Blob = b[stateFixed+4*n:]
	return s, nil
}

// Staged describes one link on a replica: the epoch in its staging area
// (0: none) and the newest epoch of it applied to the store.
type Staged struct {
	Link     uint32
	Epoch    uint64
	Complete bool
	Applied  uint64
}

// Completed reports whether the link holds epoch e completely, staged or
// applied.
func (s Staged) Completed(e uint64) bool {
	return (s.Complete && s.Epoch == e) || s.Applied >= e
}

// Report is a replica's answer to a recovery query.
type Report struct {
	Applied uint64 // newest epoch applied to the store
	Staged  []Staged
}

func (r *Report) marshal() []byte {
	le := binary.LittleEndian
	b := le.AppendUint64(nil, r.Applied)
	b = le.AppendUint32(b, uint32(len(r.Staged)))
	for _, s := range r.Staged {
		b = le.AppendUint32(b, s.Link)
		var c uint32
		if s.Complete {
			c = 1
		}
		b = le.AppendUint32(b, c)
		b = le.AppendUint64(b, s.Epoch)
		b = le.AppendUint64(b, s.Applied)
	}
	return b
}

func parseReport(b []byte) (*Report, error) {
	if len(b) < 12 {
		return nil, fmt.Errorf("%w: report of %d bytes", ErrProtocol, len(b))
	}
	le := binary.LittleEndian
	r := &Report{Applied: le.Uint64(b)}
	n := le.Uint32(b[8:])
	if n > MaxLinks || uint64(len(b)) != 12+24*uint64(n) {
		return nil, fmt.Errorf("%w: report of %d links in %d bytes", ErrProtocol, n, len(b))
	}
	for i := 0; i < int(n); i++ {
		o := 12 + 24*i
		c := le.Uint32(b[o+4:])
		if c > 1 {
			return nil, fmt.Errorf("%w: report with completion flag %d", ErrProtocol, c)
		}
		r.Staged = append(r.Staged, Staged{Link: le.Uint32(b[o:]), Complete: c == 1, Epoch: le.Uint64(b[o+8:]), Applied: le.Uint64(b[o+16:])})
	}
	return r, nil
}
