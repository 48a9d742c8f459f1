package replicate

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

// An epoch recording holds, for each epoch of a run, the pages the guest
// dirtied and their contents at the pause: what TrafficReplay needs to put
// every technique of traffic reduction through the same epochs. A
// recording is
//
//	"TNDMREC1" | u64 guest bytes
//
// then one record per epoch (little endian):
//
//	u64 epoch | u32 n | n × u64 page (ascending) | n × 4096 bytes |
//	u32 CRC-32C of the record so far
//
// A recording ends at the end of its last whole record; a torn last record
// (the run was killed, or a damaged length in it) is reported as
// io.ErrUnexpectedEOF after the epochs before it. A run that recorded no
// epoch leaves an empty file, which reads as a recording of none.
const recordingMagic = "TNDMREC1"

// maxRecordedPages bounds an epoch record's pages when reading (a guest of
// 64 GiB).
const maxRecordedPages = 1 << 24

var recordCRC = crc32.MakeTable(crc32.Castagnoli)

// EpochRecorder writes an epoch recording (PrimaryConfig.Record). Writing
// happens during the pause, so a recorded run's pauses are longer: a
// recording is for replaying, not for timing.
type EpochRecorder struct {
	w        *bufio.Writer
	memBytes uint64
	started  bool
	err      error
}

// NewEpochRecorder records to w; Flush before closing w.
func NewEpochRecorder(w io.Writer) *EpochRecorder {
	return &EpochRecorder{w: bufio.NewWriterSize(w, 1<<20)}
}

// Record writes one epoch: its dirty pages, read from mem. The first
// error sticks and is returned by every later call.
func (r *EpochRecorder) Record(epoch uint64, dirty []uint64, mem []byte) error {
	if r.err != nil {
		return r.err
	}
	if !r.started {
		r.started, r.memBytes = true, uint64(len(mem))
		r.write(append([]byte(recordingMagic), binary.LittleEndian.AppendUint64(nil, r.memBytes)...))
	}
	h := crc32.New(recordCRC)
	out := io.MultiWriter(r.w, h)
	le := binary.LittleEndian
	b := le.AppendUint32(le.AppendUint64(nil, epoch), uint32(len(dirty)))
	for _, p := range dirty {
		b = le.AppendUint64(b, p)
	}
	if _, err := out.Write(b); err != nil {
		r.err = err
		return err
	}
	for _, p := range dirty {
		if _, err := out.Write(mem[p*PageSize : (p+1)*PageSize]); err != nil {
			r.err = err
			return err
		}
	}
	r.write(le.AppendUint32(nil, h.Sum32()))
	return r.err
}

func (r *EpochRecorder) write(b []byte) {
	if r.err == nil {
		_, r.err = r.w.Write(b)
	}
}

// Flush writes what is buffered.
func (r *EpochRecorder) Flush() error {
	if r.err != nil {
		return r.err
	}
	return r.w.Flush()
}

// readGrow appends n bytes read from r to dst, growing it a MiB at a time.
func readGrow(r io.Reader, dst []byte, n int) ([]byte, error) {
	for n > 0 {
		k := min(n, 1<<20)
		dst = slices.Grow(dst, k)
		if _, err := io.ReadFull(r, dst[len(dst):len(dst)+k]); err != nil {
			return dst, err
		}
		dst, n = dst[:len(dst)+k], n-k
	}
	return dst, nil
}

// RecordedEpoch is one epoch of a recording.
type RecordedEpoch struct {
	Epoch    uint64
	Dirty    []uint64
	Contents []byte
}

// ErrBadRecording reports a file that is not an epoch recording or is
// corrupt.
var ErrBadRecording = errors.New("replicate: not an epoch recording, or a corrupt one")

// ReadRecording reads a recording's guest size, then calls fn for each
// epoch in order (the epoch's slices are reused after fn returns).
func ReadRecording(rd io.Reader, fn func(memBytes uint64, e *RecordedEpoch) error) error {
	br := bufio.NewReaderSize(rd, 1<<20)
	var head [16]byte
	if n, err := io.ReadFull(br, head[:]); n == 0 && err == io.EOF {
		return nil // no epoch was recorded
	} else if err != nil {
		return fmt.Errorf("%w: %v", ErrBadRecording, err)
	}
	if string(head[:8]) != recordingMagic {
		return fmt.Errorf("%w: magic %q", ErrBadRecording, head[:8])
	}
	le := binary.LittleEndian
	memBytes := le.Uint64(head[8:])
	if memBytes == 0 || memBytes%PageSize != 0 || memBytes > maxGuestBytes {
		return fmt.Errorf("%w: a guest of %d bytes", ErrBadRecording, memBytes)
	}
	var e RecordedEpoch
	for {
		h := crc32.New(recordCRC)
		in := io.TeeReader(br, h)
		var fixed [12]byte
		if _, err := io.ReadFull(in, fixed[:]); err == io.EOF {
			return nil
		} else if err != nil {
			return noEOF(err)
		}
		e.Epoch = le.Uint64(fixed[:])
		n := le.Uint32(fixed[8:])
		if n > maxRecordedPages || uint64(n) > memBytes/PageSize {
			return fmt.Errorf("%w: epoch %d with %d pages", ErrBadRecording, e.Epoch, n)
		}
		// What a record claims is read as it arrives, never allocated
		// up front: a corrupt count costs what the file holds.
		raw, err := readGrow(in, nil, 8*int(n))
		if err != nil {
			return noEOF(err)
		}
		idx := slices.Grow(e.Dirty[:0], int(n))[:n]
		for i := range idx {
			idx[i] = le.Uint64(raw[8*i:])
			if idx[i] >= memBytes/PageSize || (i > 0 && idx[i] <= idx[i-1]) {
				return fmt.Errorf("%w: epoch %d: page %d out of order or outside the guest", ErrBadRecording, e.Epoch, idx[i])
			}
		}
		e.Dirty = idx
		if e.Contents, err = readGrow(in, e.Contents[:0], int(n)*PageSize); err != nil {
			return noEOF(err)
		}
		want := h.Sum32()
		var sum [4]byte
		if _, err := io.ReadFull(br, sum[:]); err != nil {
			return noEOF(err)
		}
		if le.Uint32(sum[:]) != want {
			return fmt.Errorf("%w: epoch %d: checksum", ErrBadRecording, e.Epoch)
		}
		if err := fn(memBytes, &e); err != nil {
			return err
		}
	}
}
