package replicate

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// EpochTrace is one epoch's record, written as a JSON line by --trace and
// read back by tandem bench.
type EpochTrace struct {
	Epoch      uint64    `json:"epoch"`
	Time       time.Time `json:"time"`   // when the pause began
	Mode       string    `json:"mode"`   // "sync" or "async"
	Policy     string    `json:"policy"` // a Policy's String
	DirtyPages int       `json:"dirty_pages"`
	Regions    int       `json:"regions"`
	// TransferredPages is the number of pages the regions cover after
	// grouping, counted once: with PolicyFT each link sends all of them.
	TransferredPages uint64   `json:"transferred_pages"`
	LinkBytes        []uint64 `json:"link_bytes"` // payload bytes sent on each link this epoch
	StateBytes       int      `json:"state_bytes"`
	// DiskBytes is the part of StateBytes that is the epoch's disk writes,
	// for a Source that says (DiskWriteSizer).
	DiskBytes int `json:"disk_bytes,omitempty"`
	// Pause times the steps of the pause, in microseconds in JSON.
	Pause  Durations `json:"pause_us"`
	Failed string    `json:"failed,omitempty"` // why the epoch failed, if it did
	// Reduce counts how the pages of links that reduce traffic travelled
	// (reduce.go); LinkBytes are then the bytes on the wire.
	Reduce *ReduceTrace `json:"reduce,omitempty"`
	// Active counts the epoch's active backup (active.go).
	Active *ActiveTrace `json:"active,omitempty"`
	// Speculated is the pages sent ahead while the VM ran (speculate.go),
	// SpeculatedBytes their bytes on the wire, SpeculatedAgain those of
	// them the guest wrote again, which the pause sent once more.
	Speculated      int    `json:"speculated,omitempty"`
	SpeculatedBytes uint64 `json:"speculated_bytes,omitempty"`
	SpeculatedAgain int    `json:"speculated_again,omitempty"`
	// Durable is how long the epoch took to become durable on the
	// primary's host, from its staging (PrimaryConfig.Persist).
	Durable time.Duration `json:"durable_ns,omitempty"`
	// Commit is how long the epoch took to commit, from the start of its
	// pause to the release of its output (async: after the VM resumed);
	// zero for an epoch that did not commit.
	Commit time.Duration `json:"commit_ns,omitempty"`
	// HeldBytes is the guest output held when the epoch was sealed: the
	// bytes (and frames' bytes) waiting for this epoch or an earlier one
	// to commit, of the gates that count it (Held).
	HeldBytes int `json:"held_bytes,omitempty"`
}

// GroupingOverhead returns TransferredPages / DirtyPages, the ratio seed 003
// reports as grouping overhead (1 is none), or 1 when no page was dirty.
func (t *EpochTrace) GroupingOverhead() float64 {
	if t.DirtyPages <= 0 {
		return 1
	}
	return float64(t.TransferredPages) / float64(t.DirtyPages)
}

// Durations times the steps of one epoch's pause. In JSON each is a number
// of microseconds, fractional, so that traces are readable as they are and
// plot without unit conversion.
type Durations struct {
	Harvest  time.Duration // stopping the vCPUs, collecting the dirty pages, capturing the state
	Group    time.Duration // grouping them into regions (and, async, the staging copy)
	Transfer time.Duration // assigning regions to links, sending pages and state
	Ack      time.Duration // waiting for the replicas' acknowledgements
	Total    time.Duration // the whole pause (async: until the VM resumed)
}

type durationsJSON struct {
	Harvest  float64 `json:"harvest"`
	Group    float64 `json:"group"`
	Transfer float64 `json:"transfer"`
	Ack      float64 `json:"ack"`
	Total    float64 `json:"total"`
}

func toMicros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func fromMicros(us float64) time.Duration {
	return time.Duration(math.Round(us * float64(time.Microsecond)))
}

// MarshalJSON encodes d as {"harvest":12.5,"group":...} in microseconds.
func (d Durations) MarshalJSON() ([]byte, error) {
	return json.Marshal(durationsJSON{
		Harvest:  toMicros(d.Harvest),
		Group:    toMicros(d.Group),
		Transfer: toMicros(d.Transfer),
		Ack:      toMicros(d.Ack),
		Total:    toMicros(d.Total),
	})
}

// UnmarshalJSON decodes what MarshalJSON encodes, to the nanosecond.
func (d *Durations) UnmarshalJSON(b []byte) error {
	var j durationsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*d = Durations{
		Harvest:  fromMicros(j.Harvest),
		Group:    fromMicros(j.Group),
		Transfer: fromMicros(j.Transfer),
		Ack:      fromMicros(j.Ack),
		Total:    fromMicros(j.Total),
	}
	return nil
}

// TraceWriter writes EpochTrace records as JSON lines, one Write call on the
// underlying writer per record so that lines never interleave. It is safe
// for concurrent use. A nil *TraceWriter discards records, so that callers
// need not check whether tracing is on.
type TraceWriter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

// NewTraceWriter returns a TraceWriter that writes to w.
func NewTraceWriter(w io.Writer) *TraceWriter {
	return &TraceWriter{enc: json.NewEncoder(w)}
}

// Write writes rec as one line. A nil t or rec writes nothing.
func (t *TraceWriter) Write(rec *EpochTrace) error {
	if t == nil || rec == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.enc.Encode(rec)
}

// maxTraceLine bounds one line of a trace; a record is a few hundred bytes.
const maxTraceLine = 1 << 20

// ReadTrace reads the records of a JSON-lines trace, skipping blank lines.
// It stops at the first malformed line and says which it was.
func ReadTrace(r io.Reader) ([]EpochTrace, error) {
	var recs []EpochTrace
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxTraceLine)
	line := 0
	for sc.Scan() {
		line++
		b := sc.Bytes()
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		var rec EpochTrace
		if err := json.Unmarshal(b, &rec); err != nil {
			return recs, fmt.Errorf("replicate: trace line %d: %w", line, err)
		}
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		return recs, fmt.Errorf("replicate: trace line %d: %w", line+1, err)
	}
	return recs, nil
}

// Summary accumulates epoch records and sums them up in one human-readable
// line per interval, for a periodic log line while a VM runs, e.g.
//
//	epochs 20 (0 failed) | dirty 1520 pg/epoch | sent 1790 pg/epoch (overhead 118%) | links 2.9/2.9 MB/s | pause p50 1.2ms p99 3.4ms
//
// "sent" counts pages once per epoch whatever the policy; overhead is sent
// over dirty pages; link rates are payload bytes (1 MB = 10^6 bytes) per
// second of the records' own clock, from the previous interval's last record
// to this one's; pause percentiles are of the total pause.
//
// The zero Summary is ready to use, and it is safe for concurrent use. An
// interval keeps at most maxSummaryPauses pauses for its percentiles, so a
// Summary whose Line is never called stays small.
type Summary struct {
	mu        sync.Mutex
	epochs    int
	failed    int
	dirty     uint64
	sent      uint64
	linkBytes []uint64
	// encodedRaw and encodedWire are the encoded links' pages raw and
	// their bytes on the wire; ahead the pages sent ahead.
	encodedRaw, encodedWire uint64
	ahead                   uint64
	pauses                  []time.Duration
	first                   time.Time // Time of this interval's first record
	last                    time.Time // Time of the latest record
	prevLast                time.Time // Time of the previous interval's last record
}

// maxSummaryPauses bounds the pauses one interval keeps (a second of
// epochs is a few hundred at most; more means Line is not being called).
const maxSummaryPauses = 1 << 14

// Add adds rec to the current interval. A nil rec is ignored.
func (s *Summary) Add(rec *EpochTrace) {
	if rec == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epochs == 0 {
		s.first = rec.Time
	}
	s.epochs++
	if rec.Failed != "" {
		s.failed++
	}
	if rec.DirtyPages > 0 {
		s.dirty += uint64(rec.DirtyPages)
	}
	s.sent += rec.TransferredPages
	for len(s.linkBytes) < len(rec.LinkBytes) {
		s.linkBytes = append(s.linkBytes, 0)
	}
	for i, n := range rec.LinkBytes {
		s.linkBytes[i] += n
	}
	if r := rec.Reduce; r != nil {
		s.encodedRaw += r.Pages * PageSize
		s.encodedWire += r.WireBytes
	}
	s.ahead += uint64(rec.Speculated)
	if len(s.pauses) < maxSummaryPauses {
		s.pauses = append(s.pauses, rec.Pause.Total)
	}
	if rec.Time.After(s.last) {
		s.last = rec.Time
	}
}

// Line returns the summary of the records added since the previous Line and
// starts a new interval. It returns "" when nothing was added.
func (s *Summary) Line() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.epochs == 0 {
		return ""
	}
	var b strings.Builder
	n := uint64(s.epochs)
	fmt.Fprintf(&b, "epochs %d (%d failed) | dirty %d pg/epoch | sent %d pg/epoch",
		s.epochs, s.failed, (s.dirty+n/2)/n, (s.sent+n/2)/n)
	if s.dirty > 0 {
		fmt.Fprintf(&b, " (overhead %.0f%%)", 100*float64(s.sent)/float64(s.dirty))
	}

	b.WriteString(" | links ")
	if elapsed := s.elapsed(); elapsed > 0 && len(s.linkBytes) > 0 {
		for i, n := range s.linkBytes {
			if i > 0 {
				b.WriteByte('/')
			}
			b.WriteString(strconv.FormatFloat(float64(n)/1e6/elapsed.Seconds(), 'f', 1, 64))
		}
		b.WriteString(" MB/s")
	} else {
		b.WriteString("-")
	}
	if s.encodedRaw > 0 {
		fmt.Fprintf(&b, " (encoded: %.1f%% of raw)", 100*float64(s.encodedWire)/float64(s.encodedRaw))
	}
	if s.ahead > 0 {
		fmt.Fprintf(&b, " | ahead %d pg/epoch", (s.ahead+n/2)/n)
	}

	slices.Sort(s.pauses)
	fmt.Fprintf(&b, " | pause p50 %s p99 %s",
		fmtPause(percentile(s.pauses, 50)), fmtPause(percentile(s.pauses, 99)))

	s.prevLast = s.last
	s.epochs, s.failed, s.dirty, s.sent = 0, 0, 0, 0
	s.encodedRaw, s.encodedWire, s.ahead = 0, 0, 0
	clear(s.linkBytes)
	s.linkBytes = s.linkBytes[:0]
	s.pauses = s.pauses[:0]
	return b.String()
}

// elapsed returns the time the interval's link bytes were sent in: from the
// previous interval's last record to this one's last. The first interval has
// no previous record, so it is taken to begin one mean epoch period before
// its first record. It returns 0 when that cannot be told.
func (s *Summary) elapsed() time.Duration {
	if !s.prevLast.IsZero() {
		return s.last.Sub(s.prevLast)
	}
	if s.epochs < 2 {
		return 0
	}
	span := s.last.Sub(s.first)
	return span + span/time.Duration(s.epochs-1)
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	rank := max(1, (p*len(sorted)+99)/100) // ceil(p/100 * n)
	return sorted[rank-1]
}

// fmtPause formats a pause in milliseconds with one decimal, or in whole
// microseconds below 1ms, where one decimal of a millisecond says too little.
func fmtPause(d time.Duration) string {
	if d < time.Millisecond {
		return strconv.FormatInt(d.Microseconds(), 10) + "us"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
}
