package replicate

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/tandemvm/tandem/replicate/disk"
)

// DiskImage is one of the primary's disks, read for the initial copy while
// the VM does not run.
type DiskImage struct {
	Name string
	Size int64
	R    io.ReaderAt
}

// DiskFile is what the leader keeps a disk copy in: an *os.File.
type DiskFile interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// DiskCopy is the leader's copy of one of the primary's disks, in the
// primary's order.
type DiskCopy struct {
	Name string
	Size int64
	F    DiskFile
}

// diskHashRate is the slowest rate at which the leader is expected to
// hash its copy of a disk: the primary waits for the leader's answer this
// long per byte, plus a minute.
const diskHashRate = 20 << 20

// hashDisks hashes the primary's disks, before the state connection is
// opened (the leader expects a message within its heartbeat timeout once
// it is).
func hashDisks(disks []DiskImage) ([][]disk.Hash, error) {
	out := make([][]disk.Hash, len(disks))
	for i, d := range disks {
		hs, err := disk.Hashes(d.R, d.Size, nil)
		if err != nil {
			return nil, fmt.Errorf("replicate: disk %s: %w", d.Name, err)
		}
		out[i] = hs
	}
	return out, nil
}

// syncDisks brings the leader's copy of each disk to the primary's content
// over the state connection c, before any epoch (see package disk): the
// primary sends a disk's chunk hashes, the leader answers with the chunks
// its copy lacks, the primary sends those and says done, and the leader
// acknowledges once its copy is durable. Progress is logged.
func syncDisks(c *conn, disks []DiskImage, hashes [][]disk.Hash, log *slog.Logger) error {
	for i, d := range disks {
		start := time.Now()
		hs := hashes[i]
		p := binary.LittleEndian.AppendUint32(nil, uint32(i))
		p = binary.LittleEndian.AppendUint64(p, uint64(d.Size))
		if err := c.send(MsgDiskHashes, 0, disk.AppendHashes(p, hs)); err != nil {
			return c.errorf("disk %s: %w", d.Name, err)
		}
		c.c.SetReadDeadline(time.Now().Add(time.Minute + time.Duration(d.Size/diskHashRate)*time.Second))
		_, b, err := readReply(c, MsgDiskWant)
		if err != nil {
			return c.errorf("disk %s: %w", d.Name, err)
		}
		want, err := disk.ParseIndices(b, d.Size)
		if err != nil {
			return c.errorf("disk %s: %w", d.Name, err)
		}
		log.Info("disk sync: the leader's copy lacks chunks", "disk", d.Name, "chunks", len(want), "of", len(hs), "bytes", int64(len(want))*disk.ChunkSize)
		buf := make([]byte, disk.ChunkSize)
		next := time.Now().Add(5 * time.Second)
		for k, ci := range want {
			n := int(min(disk.ChunkSize, d.Size-int64(ci)*disk.ChunkSize))
			if _, err := d.R.ReadAt(buf[:n], int64(ci)*disk.ChunkSize); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("disk %s: read chunk %d: %w", d.Name, ci, err)
			}
			msg := binary.LittleEndian.AppendUint32(nil, uint32(i))
			if err := c.send(MsgDiskChunk, 0, disk.AppendChunk(msg, disk.Chunk{Index: ci, Data: buf[:n]})); err != nil {
				return c.errorf("disk %s: %w", d.Name, err)
			}
			if time.Now().After(next) {
				log.Info("disk sync", "disk", d.Name, "sent", k+1, "of", len(want))
				next = time.Now().Add(5 * time.Second)
			}
		}
		if err := c.send(MsgDiskDone, 0, binary.LittleEndian.AppendUint32(nil, uint32(i))); err != nil {
			return c.errorf("disk %s: %w", d.Name, err)
		}
		c.c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, _, err := readReply(c, MsgAck); err != nil {
			return c.errorf("disk %s: %w", d.Name, err)
		}
		c.c.SetReadDeadline(time.Time{})
		log.Info("disk sync done", "disk", d.Name, "chunks_sent", len(want), "took", time.Since(start).Round(time.Millisecond))
	}
	return nil
}

// readReply reads one message of type want, or the peer's refusal.
func readReply(c *conn, want MsgType) (Header, []byte, error) {
	h, err := c.readHeader()
	if err != nil {
		return h, nil, noEOF(err)
	}
	p, err := readPayload(c.r, h)
	switch {
	case err != nil:
		return h, nil, err
	case h.Type == MsgError:
		return h, nil, fmt.Errorf("%w: %s", ErrRefused, p)
	case h.Type != want:
		return h, nil, fmt.Errorf("%w: %v message, want %v", ErrProtocol, h.Type, want)
	}
	return h, p, nil
}

// leaderDisks is the leader's side of disk replication: the copies, which
// of them the primary has synchronised, and the newest epoch whose state
// went to ReplicaConfig.Committed.
type leaderDisks struct {
	synced    []bool
	delivered uint64
	err       error // a copy failed: the leader cannot recover a consistent disk
}

// serveDiskSync answers one message of the initial disk copy on the state
// connection (see syncDisks).
func (r *Replica) serveDiskSync(c *conn, h Header, p []byte) error {
	disks := r.cfg.Disks
	if len(p) < 4 {
		return c.errorf("%w: %v of %d bytes", ErrProtocol, h.Type, len(p))
	}
	i := binary.LittleEndian.Uint32(p)
	if int(i) >= len(disks) {
		c.sendError(fmt.Sprintf("this leader holds %d disk copies; the primary's disk %d has none: give the leader one --disk per disk of the primary", len(disks), i+1))
		return c.errorf("the primary syncs disk %d, the leader holds %d copies", i+1, len(disks))
	}
	d := disks[i]
	switch h.Type {
	case MsgDiskHashes:
		if len(p) < 12 {
			return c.errorf("%w: disk hashes of %d bytes", ErrProtocol, len(p))
		}
		size := int64(binary.LittleEndian.Uint64(p[4:]))
		if err := disk.CheckSize(d.Name, size, d.Size); err != nil {
			c.sendError(err.Error())
			return err
		}
		theirs, err := disk.ParseHashes(p[12:], size)
		if err != nil {
			return c.errorf("%w", err)
		}
		ours, err := disk.Hashes(d.F, d.Size, nil)
		if err != nil {
			c.sendError("the leader cannot read its copy of disk " + d.Name)
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
		want, err := disk.Diff(theirs, ours)
		if err != nil {
			return c.errorf("%w", err)
		}
		r.log.Info("disk sync: the copy lacks chunks", "disk", d.Name, "chunks", len(want), "of", len(ours))
		return c.send(MsgDiskWant, 0, disk.AppendIndices(nil, want))
	case MsgDiskChunk:
		ch, err := disk.ParseChunk(p[4:], d.Size)
		if err != nil {
			return c.errorf("%w", err)
		}
		if err := disk.WriteChunk(d.F, ch); err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
		return nil
	case MsgDiskDone:
		if err := d.F.Sync(); err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
		if err := r.persistDiskSynced(i); err != nil {
			return fmt.Errorf("disk %s: %w", d.Name, err)
		}
		r.mu.Lock()
		r.disks.synced[i] = true
		r.mu.Unlock()
		return c.send(MsgAck, 0, nil)
	}
	return c.errorf("%w: unexpected %v message", ErrProtocol, h.Type)
}

// checkDisksSynced refuses an epoch's state before every disk copy is
// synchronised: its writes would land on a copy of unknown content.
func (r *Replica) checkDisksSynced() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, ok := range r.disks.synced {
		if !ok {
			return fmt.Errorf("the primary sent state before synchronising disk %s (give it as many --disk as the leader, in order)", r.cfg.Disks[i].Name)
		}
	}
	return nil
}

// deliverCommitted hands the states of every epoch up to upTo not handed
// yet to ReplicaConfig.Committed, in epoch order: on a commit, and when
// recovery has chosen its epoch. A failure is kept: the leader's disks are
// no longer of any one epoch, and recovery then refuses.
func (r *Replica) deliverCommitted(upTo uint64) error {
	if r.cfg.Committed == nil {
		return nil
	}
	r.mu.Lock()
	if r.disks.err != nil {
		err := r.disks.err
		r.mu.Unlock()
		return err
	}
	var due []*StateRecord
	for e, s := range r.states {
		if e > r.disks.delivered && e <= upTo {
			due = append(due, s)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(due, func(a, b *StateRecord) int { return cmp.Compare(a.Epoch, b.Epoch) })
	for _, s := range due {
		err := r.cfg.Committed(s.Epoch, s.Blob)
		if err == nil {
			err = r.persistDelivered(s.Epoch)
		}
		if err != nil {
			err = fmt.Errorf("replicate: applying epoch %d to the leader's disks: %w", s.Epoch, err)
			r.mu.Lock()
			r.disks.err = err
			r.mu.Unlock()
			r.log.Error("the leader's disk copies are no longer consistent", "err", err)
			return err
		}
		r.mu.Lock()
		r.disks.delivered = s.Epoch
		r.mu.Unlock()
	}
	return nil
}
