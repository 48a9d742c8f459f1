package replicate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/tandemvm/tandem/replicate/replicadir"
)

// A persisted replica (tandem replica --persist DIR, OpenReplica) keeps
// its store on persistent media, so that the whole cluster may lose power
// and its VM still be recovered from the replicas' directories. The rule
// is the commit rule's: the replica acknowledges nothing it has not made
// durable. A link's epoch is appended to the directory (replicadir) and
// synchronised before its MsgAck; the leader's state of an epoch before
// its MsgAck; a newer generation before anything of it is accepted. Since
// the primary commits (and releases output) only what every link and the
// leader acknowledged, every committed epoch is in the directories.
//
// The log mirrors the replica's transitions, and reopening replays them:
// a link's staged epoch, complete, with the commit it had seen; commits;
// the settling of a recovery; the leader's state connections, states,
// commits, cluster and goodbye. Applying a staged epoch to the store in
// replay follows the same rules as live (beginEpoch, commit, resolve), so
// the reopened replica holds exactly the pages and epochs, applied and
// staged, it held when the records were written; its answers to a
// recovery are those it would have given then. A checkpoint writes the
// whole replica (store, stages, states) as a snapshot and starts the log
// again, once the log exceeds max(64 MiB, the guest's memory).
//
// A persisted leader's disk copies (ReplicaConfig.Disks) are synchronised
// before the log records that they hold the primary's content or an
// epoch's writes (recDiskSynced, recDelivered); the writes of later epochs
// are in the states the log keeps, and recovery delivers them.
//
// A reopened leader that no primary reconnects to within its heartbeat
// timeout and reconnect wait declares the primary failed, as it would for
// a lost state connection, and the takeover recovers the VM from the
// replicas, reopened too.

// Record kinds of a persisted replica's log.
const (
	recHello        uint32 = 1 + iota // u64 VM id | hello
	recGen                            // u64 newest generation seen
	recStaged                         // u32 link | u64 gen | u64 epoch | u64 committed | regions | data
	recCommit                         // u32 link | u64 gen | u64 epoch
	recResolve                        // u64 epoch
	recStateConn                      // u64 gen | u8 states cleared
	recState                          // u64 gen | u64 epoch | state payload
	recCluster                        // cluster description (JSON)
	recLeaderCommit                   // u64 epoch
	recBye                            // the primary stopped its VM on purpose
	recDiskSynced                     // u32 disk: its copy holds the primary's content
	recDelivered                      // u64 epoch: the disk copies hold its writes, synchronised
)

// persistCheckpointMin is the log size past which a persisted replica
// checkpoints, at the least.
var persistCheckpointMin int64 = 64 << 20

// errPersistRDMA refuses an RDMA link on a persisted replica: its epochs
// complete in registered memory without passing MsgDone here.
var errPersistRDMA = errors.New("this replica persists its store and takes TCP links only")

// replicaDir is a persisted replica's directory and its lock.
type replicaDir struct {
	mu  sync.Mutex
	dir *replicadir.Dir
}

// OpenReplica returns a replica whose store is kept in dir (opened with
// contents c, as replicadir.Open returns them): what dir held is restored
// first. The leader's disk copies (cfg.Disks) must be the files it had:
// a copy is synchronised before the log says it holds the primary's
// content or an epoch's writes, and the writes of the epochs after that
// come from the states in the log when recovery delivers them.
func OpenReplica(cfg ReplicaConfig, dir *replicadir.Dir, c *replicadir.Contents) (*Replica, error) {
	if cfg.Shadow != nil {
		return nil, errors.New("replicate: a persisted replica runs no shadow")
	}
	r := NewReplica(cfg)
	r.durable = &replicaDir{dir: dir}
	if err := r.restore(c); err != nil {
		return nil, fmt.Errorf("replicate: restoring the replica: %w", err)
	}
	if r.vmID != 0 {
		r.log.Info("replica restored from its directory", "vm", fmt.Sprintf("%016x", r.vmID), "generation", r.gen,
			"applied", r.store != nil && r.store.applied > 0, "states", len(r.states), "committed", r.committed, "torn_bytes", c.TornBytes)
	}
	if cfg.Leader && len(r.states) > 0 && !r.ended && !cfg.Coordinated {
		wait := r.cfg.HeartbeatTimeout + r.cfg.ReconnectWait
		time.AfterFunc(wait, func() {
			r.mu.Lock()
			again := r.stateConns > 0
			r.mu.Unlock()
			if !again {
				r.suspectFailed(fmt.Sprintf("restarted from its directory, and the primary did not reconnect within %v", wait))
			}
		})
	}
	return r, nil
}

// persist appends a record, synchronised if sync; nothing for a replica
// that does not persist.
func (r *Replica) persist(sync bool, kind uint32, parts ...[]byte) error {
	d := r.durable
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.dir.Append(kind, parts...); err != nil {
		return err
	}
	if sync {
		return d.dir.Sync()
	}
	return nil
}

func u64s(v ...uint64) []byte {
	b := make([]byte, 0, 8*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint64(b, x)
	}
	return b
}

// persistHello records the VM served and its hello. Call with r.mu.
func (r *Replica) persistHello() error {
	return r.persist(true, recHello, u64s(r.vmID), r.hello.marshal())
}

// persistStaged makes a link's completed epoch durable before its ack.
func (r *Replica) persistStaged(st *stage) error {
	if r.durable == nil {
		return nil
	}
	r.mu.Lock()
	head := binary.LittleEndian.AppendUint32(nil, st.link)
	head = append(head, u64s(st.gen, st.epoch, st.committed)...)
	head = appendRegions(head, st.regions)
	data := st.data
	r.mu.Unlock()
	// Only this link's goroutine changes its staging data.
	if err := r.persist(true, recStaged, head, data); err != nil {
		return err
	}
	return r.maybeCheckpoint()
}

// restore replays what the directory holds.
func (r *Replica) restore(c *replicadir.Contents) error {
	if c.Snapshot != nil {
		if err := r.readSnapshot(c.Snapshot); err != nil {
			return fmt.Errorf("%w: snapshot: %v", replicadir.ErrCorrupt, err)
		}
	}
	for i, rec := range c.Records {
		if err := r.replay(rec); err != nil {
			return fmt.Errorf("%w: record %d (kind %d): %v", replicadir.ErrCorrupt, i, rec.Kind, err)
		}
	}
	return nil
}

// replay applies one record as the live replica did.
func (r *Replica) replay(rec replicadir.Record) error {
	b := rec.Body
	le := binary.LittleEndian
	need := func(n int) error {
		if len(b) < n {
			return fmt.Errorf("%d bytes, want at least %d", len(b), n)
		}
		return nil
	}
	switch rec.Kind {
	case recHello:
		if err := need(8); err != nil {
			return err
		}
		var h Hello
		if err := h.unmarshal(b[8:]); err != nil {
			return err
		}
		r.vmID, r.hello = le.Uint64(b), h // the store comes with the first staged epoch
	case recGen:
		if err := need(8); err != nil {
			return err
		}
		r.gen = max(r.gen, le.Uint64(b))
	case recStaged:
		if err := need(4 + 24); err != nil {
			return err
		}
		if r.vmID == 0 {
			return errors.New("a staged epoch before the VM's hello")
		}
		if r.store == nil {
			r.store = newStore(r.hello.MemBytes)
		}
		link, gen, epoch, committed := le.Uint32(b), le.Uint64(b[4:]), le.Uint64(b[12:]), le.Uint64(b[20:])
		rest := b[28:]
		if len(rest) < 4 {
			return errors.New("no regions")
		}
		n := int(le.Uint32(rest))
		if len(rest) < 4+16*n {
			return errors.New("regions cut short")
		}
		regions, err := parseRegions(rest[:4+16*n], uint64(len(r.store.epochs)))
		if err != nil {
			return err
		}
		data := rest[4+16*n:]
		if uint64(len(data)) != Transferred(regions)*PageSize {
			return fmt.Errorf("%d data bytes for %d pages", len(data), Transferred(regions))
		}
		st := r.stages[link]
		switch {
		case st == nil:
			st = &stage{link: link, gen: gen}
			r.stages[link] = st
		case st.gen < gen:
			st = &stage{link: link, gen: gen, appliedEpoch: st.appliedEpoch}
			r.stages[link] = st
		}
		if st.complete && st.epoch <= committed {
			r.store.apply(st)
			st.appliedEpoch = max(st.appliedEpoch, st.epoch)
		}
		st.epoch, st.regions, st.data, st.received, st.complete = epoch, regions, data, uint64(len(data)), true
		st.lastMap, st.acked, st.committed = epoch, epoch, committed
	case recCommit:
		if err := need(20); err != nil {
			return err
		}
		link, gen, epoch := le.Uint32(b), le.Uint64(b[4:]), le.Uint64(b[12:])
		if st := r.stages[link]; st != nil && st.gen == gen {
			st.committed = max(st.committed, epoch)
			if st.complete && st.epoch <= epoch {
				r.store.apply(st)
				st.appliedEpoch = max(st.appliedEpoch, st.epoch)
				st.epoch, st.complete, st.regions, st.data = 0, false, nil, nil
			}
		}
	case recResolve:
		if err := need(8); err != nil {
			return err
		}
		r.resolveStages(le.Uint64(b))
	case recStateConn:
		if err := need(9); err != nil {
			return err
		}
		r.stateGen = le.Uint64(b)
		if b[8] != 0 {
			clear(r.states)
		}
	case recState:
		if err := need(16); err != nil {
			return err
		}
		gen, epoch := le.Uint64(b), le.Uint64(b[8:])
		s, err := parseState(Header{Epoch: epoch}, bytes.Clone(b[16:]))
		if err != nil {
			return err
		}
		if gen == r.stateGen {
			r.states[epoch] = s
		}
	case recCluster:
		cl, err := parseCluster(b)
		if err != nil {
			return err
		}
		r.cluster = cl
	case recLeaderCommit:
		if err := need(8); err != nil {
			return err
		}
		r.leaderCommitted(le.Uint64(b))
	case recBye:
		r.ended = true
	case recDiskSynced:
		if err := need(4); err != nil {
			return err
		}
		i := le.Uint32(b)
		if int(i) >= len(r.disks.synced) {
			return fmt.Errorf("disk %d synchronised, this leader has %d copies: give it the --disk it had", i+1, len(r.disks.synced))
		}
		r.disks.synced[i] = true
	case recDelivered:
		if err := need(8); err != nil {
			return err
		}
		r.disks.delivered = max(r.disks.delivered, le.Uint64(b))
	default:
		return fmt.Errorf("unknown record kind %d", rec.Kind)
	}
	return nil
}

// leaderCommitted records that epoch e committed: the states before it
// are of no further use. Call with r.mu.
func (r *Replica) leaderCommitted(e uint64) {
	if e > r.committed {
		r.committed = e
		for x := range r.states {
			if x < e {
				delete(r.states, x)
			}
		}
	}
}

// resolveStages applies every complete staged epoch up to e and discards
// the rest (recovery's settling). Call with r.mu.
func (r *Replica) resolveStages(e uint64) {
	for _, st := range r.stages {
		if st.complete && st.epoch <= e {
			r.store.apply(st)
			st.appliedEpoch = max(st.appliedEpoch, st.epoch)
		}
		st.epoch, st.complete, st.regions = 0, false, nil
	}
}

// Snapshot layout (little endian), after replicadir's framing:
//
//	"TNDMRPS1" | u64 VM id | u32 n | n bytes hello | u64 gen | u64 state gen
//	| u64 committed | u8 ended | u64 disks delivered | u32 n | n u8 synced
//	| u32 n | n bytes cluster JSON (0: none)
//	| u32 states | per state: u64 epoch | u32 n | n bytes state payload
//	| u32 stages | per stage: u32 link | u64 gen, epoch, lastMap, acked,
//	  committed, appliedEpoch | u8 complete | regions | u64 n | n bytes data
//	| u8 store | store: u64 applied | u64 epoch per page | the pages
const snapshotMagic = "TNDMRPS1"

// maybeCheckpoint checkpoints once the log has grown past its bound, with
// every background apply done and none started while it writes.
func (r *Replica) maybeCheckpoint() error {
	d := r.durable
	d.mu.Lock()
	size := d.dir.LogBytes()
	d.mu.Unlock()
	limit := persistCheckpointMin
	r.mu.Lock()
	if r.hello.MemBytes > uint64(limit) {
		limit = int64(r.hello.MemBytes)
	}
	r.mu.Unlock()
	if size <= limit {
		return nil
	}
	for {
		r.waitApplies()
		r.mu.Lock()
		pending := false
		for _, st := range r.stages {
			if st.applied != nil {
				select {
				case <-st.applied:
				default:
					pending = true
				}
			}
		}
		if !pending {
			break
		}
		r.mu.Unlock()
	}
	defer r.mu.Unlock()
	head := r.snapshotHead()
	n := int64(len(head)) + 1
	if r.store != nil {
		n += 8 + 8*int64(len(r.store.epochs)) + int64(len(r.store.pages))
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	start := time.Now()
	err := d.dir.Checkpoint(n, func(w io.Writer) error {
		if _, err := w.Write(head); err != nil {
			return err
		}
		if r.store == nil {
			_, err := w.Write([]byte{0})
			return err
		}
		r.store.mu.RLock()
		defer r.store.mu.RUnlock()
		b := append([]byte{1}, u64s(r.store.applied)...)
		if _, err := w.Write(b); err != nil {
			return err
		}
		eb := make([]byte, 0, 8<<10)
		for i, e := range r.store.epochs {
			eb = binary.LittleEndian.AppendUint64(eb, e)
			if len(eb) == cap(eb) || i == len(r.store.epochs)-1 {
				if _, err := w.Write(eb); err != nil {
					return err
				}
				eb = eb[:0]
			}
		}
		_, err := w.Write(r.store.pages)
		return err
	})
	if err != nil {
		return err
	}
	r.log.Info("replica checkpoint", "bytes", n, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// snapshotHead encodes everything but the store. Call with r.mu.
func (r *Replica) snapshotHead() []byte {
	le := binary.LittleEndian
	b := []byte(snapshotMagic)
	b = le.AppendUint64(b, r.vmID)
	h := r.hello.marshal()
	b = le.AppendUint32(b, uint32(len(h)))
	b = append(b, h...)
	b = append(b, u64s(r.gen, r.stateGen, r.committed)...)
	ended := byte(0)
	if r.ended {
		ended = 1
	}
	b = append(b, ended)
	b = le.AppendUint64(b, r.disks.delivered)
	b = le.AppendUint32(b, uint32(len(r.disks.synced)))
	for _, ok := range r.disks.synced {
		b = append(b, map[bool]byte{false: 0, true: 1}[ok])
	}
	var cl []byte
	if r.cluster != nil {
		cl = r.cluster.marshal()
	}
	b = le.AppendUint32(b, uint32(len(cl)))
	b = append(b, cl...)
	b = le.AppendUint32(b, uint32(len(r.states)))
	for e, s := range r.states {
		p := s.marshal()
		b = le.AppendUint64(b, e)
		b = le.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	b = le.AppendUint32(b, uint32(len(r.stages)))
	for _, st := range r.stages {
		b = le.AppendUint32(b, st.link)
		b = append(b, u64s(st.gen, st.epoch, st.lastMap, st.acked, st.committed, st.appliedEpoch)...)
		var data []byte
		var regions []Region
		complete := byte(0)
		if st.complete {
			complete, data, regions = 1, st.data, st.regions
		}
		b = append(b, complete)
		b = appendRegions(b, regions)
		b = le.AppendUint64(b, uint64(len(data)))
		b = append(b, data...)
	}
	return b
}

// readSnapshot restores what a checkpoint wrote.
func (r *Replica) readSnapshot(rd io.Reader) error {
	le := binary.LittleEndian
	var err error
	read := func(n uint64) []byte {
		if err != nil {
			return nil
		}
		if n > 1<<40 {
			err = fmt.Errorf("a field of %d bytes", n)
			return nil
		}
		b := make([]byte, n)
		_, err = io.ReadFull(rd, b)
		return b
	}
	u32 := func() uint32 {
		b := read(4)
		if err != nil {
			return 0
		}
		return le.Uint32(b)
	}
	u64 := func() uint64 {
		b := read(8)
		if err != nil {
			return 0
		}
		return le.Uint64(b)
	}
	if m := read(8); err == nil && string(m) != snapshotMagic {
		return fmt.Errorf("not a replica snapshot")
	}
	r.vmID = u64()
	if hb := read(uint64(u32())); err == nil {
		err = r.hello.unmarshal(hb)
	}
	r.gen, r.stateGen, r.committed = u64(), u64(), u64()
	if e := read(1); err == nil {
		r.ended = e[0] != 0
	}
	r.disks.delivered = u64()
	if synced := read(uint64(u32())); err == nil {
		if len(synced) != len(r.disks.synced) && slices.Contains(synced, 1) {
			return fmt.Errorf("%d disk copies synchronised, this leader has %d: give it the --disk it had", len(synced), len(r.disks.synced))
		}
		for i := range min(len(synced), len(r.disks.synced)) {
			r.disks.synced[i] = synced[i] != 0
		}
	}
	if cl := read(uint64(u32())); err == nil && len(cl) > 0 {
		r.cluster, err = parseCluster(cl)
	}
	for n := u32(); err == nil && n > 0; n-- {
		e := u64()
		p := read(uint64(u32()))
		if err == nil {
			var s *StateRecord
			if s, err = parseState(Header{Epoch: e}, p); err == nil {
				r.states[e] = s
			}
		}
	}
	pages := r.hello.MemBytes / PageSize
	for n := u32(); err == nil && n > 0; n-- {
		st := &stage{link: u32()}
		st.gen, st.epoch, st.lastMap, st.acked, st.committed, st.appliedEpoch = u64(), u64(), u64(), u64(), u64(), u64()
		complete := read(1)
		nr := u32()
		rb := read(16 * uint64(nr))
		if err == nil && nr > 0 {
			st.regions, err = parseRegions(append(le.AppendUint32(nil, nr), rb...), pages)
		}
		st.data = read(u64())
		if err == nil {
			st.complete = complete[0] != 0
			st.received = uint64(len(st.data))
			if st.complete && uint64(len(st.data)) != Transferred(st.regions)*PageSize {
				err = fmt.Errorf("link %d: %d bytes for %d pages", st.link, len(st.data), Transferred(st.regions))
			}
			r.stages[st.link] = st
		}
	}
	if s := read(1); err == nil && s[0] == 1 {
		r.store = newStore(r.hello.MemBytes)
		r.store.applied = u64()
		eb := read(8 * uint64(len(r.store.epochs)))
		if err == nil {
			for i := range r.store.epochs {
				r.store.epochs[i] = le.Uint64(eb[8*i:])
			}
			_, err = io.ReadFull(rd, r.store.pages)
		}
	}
	return err
}

// persistDiskSynced records that disk copy i holds the primary's content
// (synchronised already) before the sync is acknowledged.
func (r *Replica) persistDiskSynced(i uint32) error {
	return r.persist(true, recDiskSynced, binary.LittleEndian.AppendUint32(nil, i))
}

// persistDelivered synchronises the disk copies, which now hold epoch e's
// writes, and records it: a reopened leader delivers only the epochs
// after e. (If the record is lost, the epochs up to e are delivered
// again, which writes the same blocks.)
func (r *Replica) persistDelivered(e uint64) error {
	if r.durable == nil {
		return nil
	}
	for _, d := range r.cfg.Disks {
		if err := d.F.Sync(); err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
	}
	return r.persist(false, recDelivered, u64s(e))
}
