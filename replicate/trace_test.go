package replicate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDurationsJSON(t *testing.T) {
	d := Durations{
		Harvest:  12500 * time.Nanosecond,
		Group:    3 * time.Microsecond,
		Transfer: 1234567 * time.Nanosecond,
		Ack:      0,
		Total:    2 * time.Second,
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"harvest":12.5,"group":3,"transfer":1234.567,"ack":0,"total":2000000}`
	if string(b) != want {
		t.Errorf("Marshal = %s, want %s", b, want)
	}
	var back Durations
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back != d {
		t.Errorf("round trip = %+v, want %+v", back, d)
	}
	if err := json.Unmarshal([]byte(`{"harvest":"x"}`), &back); err == nil {
		t.Error("Unmarshal of a string duration succeeded")
	}
}

func sampleTrace(epoch uint64) EpochTrace {
	return EpochTrace{
		Epoch:            epoch,
		Time:             time.Date(2025, 3, 1, 12, 0, 0, int(epoch)*1000+7, time.UTC),
		Mode:             "sync",
		Policy:           PolicyFast.String(),
		DirtyPages:       1520,
		Regions:          32,
		TransferredPages: 1790,
		LinkBytes:        []uint64{3665920, 3665920},
		StateBytes:       20480,
		Pause: Durations{
			Harvest: 150 * time.Microsecond, Group: 40*time.Microsecond + 1,
			Transfer: 900 * time.Microsecond, Ack: 100 * time.Microsecond,
			Total: 1190*time.Microsecond + 1,
		},
	}
}

func TestTraceRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewTraceWriter(&buf)
	want := []EpochTrace{sampleTrace(1), sampleTrace(2)}
	want[1].Failed = "link 1: timeout"
	want[1].LinkBytes = nil
	for i := range want {
		if err := w.Write(&want[i]); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("%d lines, want 2:\n%s", n, buf.String())
	}
	first, _, _ := strings.Cut(buf.String(), "\n")
	for _, key := range []string{`"epoch":1`, `"mode":"sync"`, `"policy":"fast"`, `"dirty_pages":1520`,
		`"transferred_pages":1790`, `"link_bytes":[3665920,3665920]`, `"pause_us":{"harvest":150,`} {
		if !strings.Contains(first, key) {
			t.Errorf("line %s lacks %s", first, key)
		}
	}
	if strings.Contains(first, "failed") {
		t.Errorf("line %s has a failed field for a good epoch", first)
	}
	got, err := ReadTrace(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ReadTrace = %+v\nwant %+v", got, want)
	}
}

func TestReadTrace(t *testing.T) {
	good, _ := json.Marshal(sampleTrace(1))
	tests := []struct {
		name    string
		in      string
		n       int
		wantErr string
	}{
		{"empty", "", 0, ""},
		{"blank lines", "\n" + string(good) + "\n\n  \n" + string(good), 2, ""},
		{"unknown fields kept compatible", `{"epoch":3,"new_field":1}`, 1, ""},
		{"malformed", string(good) + "\n\n{\"epoch\":\n", 1, "line 3"},
		{"trailing garbage", string(good) + " x\n", 0, "line 1"},
		{"wrong type", `{"epoch":"one"}`, 0, "line 1"},
		{"line too long", string(good) + "\n" + strings.Repeat(" ", maxTraceLine+1), 1, "line 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, err := ReadTrace(strings.NewReader(tt.in))
			if tt.wantErr == "" && err != nil {
				t.Fatalf("ReadTrace: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("ReadTrace error %v, want one naming %q", err, tt.wantErr)
			}
			if len(recs) != tt.n {
				t.Errorf("%d records, want %d", len(recs), tt.n)
			}
		})
	}
}

func TestTraceWriterNil(t *testing.T) {
	var w *TraceWriter
	rec := sampleTrace(1)
	if err := w.Write(&rec); err != nil {
		t.Errorf("nil TraceWriter: %v", err)
	}
	var buf bytes.Buffer
	if err := NewTraceWriter(&buf).Write(nil); err != nil || buf.Len() != 0 {
		t.Errorf("Write(nil) = %v, wrote %q", err, buf.String())
	}
}

func TestTraceWriterConcurrent(t *testing.T) {
	var buf syncBuffer
	w := NewTraceWriter(&buf)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				rec := sampleTrace(uint64(i*1000 + j))
				if err := w.Write(&rec); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	recs, err := ReadTrace(strings.NewReader(buf.String()))
	if err != nil || len(recs) != 400 {
		t.Fatalf("ReadTrace: %d records, %v", len(recs), err)
	}
}

func TestGroupingOverheadNoDirty(t *testing.T) {
	tests := []struct {
		rec  EpochTrace
		want float64
	}{
		{EpochTrace{}, 1},
		{EpochTrace{DirtyPages: 10, TransferredPages: 10}, 1},
		{EpochTrace{DirtyPages: 1520, TransferredPages: 1790}, 1790.0 / 1520},
	}
	for _, tt := range tests {
		if got := tt.rec.GroupingOverhead(); got != tt.want {
			t.Errorf("GroupingOverhead(%d/%d) = %v, want %v", tt.rec.TransferredPages, tt.rec.DirtyPages, got, tt.want)
		}
	}
}

func TestSummary(t *testing.T) {
	var s Summary
	if got := s.Line(); got != "" {
		t.Errorf("empty Summary: %q", got)
	}
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * 100 * time.Millisecond) }

	// 20 epochs every 100ms: the first interval is taken to span 2s.
	for i := 0; i < 20; i++ {
		rec := EpochTrace{
			Time: at(i), DirtyPages: 1520, TransferredPages: 1790,
			LinkBytes: []uint64{290000, 290000},
			Pause:     Durations{Total: time.Duration(i+1) * time.Millisecond},
		}
		if i == 5 {
			rec.Failed = "timeout"
		}
		s.Add(&rec)
	}
	want := "epochs 20 (1 failed) | dirty 1520 pg/epoch | sent 1790 pg/epoch (overhead 118%) | links 2.9/2.9 MB/s | pause p50 10.0ms p99 20.0ms"
	if got := s.Line(); got != want {
		t.Errorf("Line =\n%q\nwant\n%q", got, want)
	}
	if got := s.Line(); got != "" {
		t.Errorf("Line after Line = %q, want \"\"", got)
	}

	// 10 more: this interval runs from the previous last record, 1s.
	for i := 20; i < 30; i++ {
		s.Add(&EpochTrace{
			Time: at(i), LinkBytes: []uint64{100000, 0, 50000},
			Pause: Durations{Total: 500 * time.Microsecond},
		})
	}
	want = "epochs 10 (0 failed) | dirty 0 pg/epoch | sent 0 pg/epoch | links 1.0/0.0/0.5 MB/s | pause p50 500us p99 500us"
	if got := s.Line(); got != want {
		t.Errorf("Line =\n%q\nwant\n%q", got, want)
	}
	s.Add(nil)
	if got := s.Line(); got != "" {
		t.Errorf("Line after Add(nil) = %q", got)
	}

	// Encoded links and pages sent ahead.
	for i := 30; i < 40; i++ {
		s.Add(&EpochTrace{
			Time: at(i), DirtyPages: 100, TransferredPages: 100, LinkBytes: []uint64{40960}, Speculated: 50,
			Reduce: &ReduceTrace{Pages: 100, WireBytes: 40960},
			Pause:  Durations{Total: time.Millisecond},
		})
	}
	want = "epochs 10 (0 failed) | dirty 100 pg/epoch | sent 100 pg/epoch (overhead 100%) | links 0.4 MB/s (encoded: 10.0% of raw) | ahead 50 pg/epoch | pause p50 1.0ms p99 1.0ms"
	if got := s.Line(); got != want {
		t.Errorf("Line =\n%q\nwant\n%q", got, want)
	}
}

func TestSummarySingleRecord(t *testing.T) {
	var s Summary
	s.Add(&EpochTrace{Time: time.Now(), DirtyPages: 3, TransferredPages: 4, LinkBytes: []uint64{1}})
	want := "epochs 1 (0 failed) | dirty 3 pg/epoch | sent 4 pg/epoch (overhead 133%) | links - | pause p50 0us p99 0us"
	if got := s.Line(); got != want {
		t.Errorf("Line = %q, want %q", got, want)
	}
}

func TestSummaryConcurrent(t *testing.T) {
	var s Summary
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 100; j++ {
				rec := sampleTrace(uint64(j))
				s.Add(&rec)
				if j%10 == 0 {
					_ = s.Line()
				}
			}
		}()
	}
	wg.Wait()
	_ = fmt.Sprint(s.Line())
}

// TestSummaryStaysBounded: a Summary whose Line is never called must not
// grow with every epoch, and a primary without a summary callback keeps
// nothing at all.
func TestSummaryStaysBounded(t *testing.T) {
	var s Summary
	for i := range 3 * maxSummaryPauses {
		s.Add(&EpochTrace{Epoch: uint64(i), Time: time.Unix(int64(i), 0), Pause: Durations{Total: time.Millisecond}})
	}
	if n := len(s.pauses); n > maxSummaryPauses {
		t.Errorf("summary holds %d pauses after %d epochs, want at most %d", n, 3*maxSummaryPauses, maxSummaryPauses)
	}
	if line := s.Line(); !strings.Contains(line, fmt.Sprintf("epochs %d ", 3*maxSummaryPauses)) {
		t.Errorf("line %q does not count every epoch", line)
	}

	c := newCluster(t, 1)
	vm := newFakeVM(t, 64)
	p := c.primary(vm, PolicyFast, ModeSync, c.addrs) // no Summary callback
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go vm.run(ctx, 9)
	runErr := make(chan error, 1)
	go func() { runErr <- p.Run(ctx) }()
	waitCommitted(t, p, 20, 20*time.Second, nil)
	cancel()
	<-runErr
	p.summary.mu.Lock()
	defer p.summary.mu.Unlock()
	if p.summary.epochs != 0 || len(p.summary.pauses) != 0 {
		t.Errorf("a primary without a summary callback kept %d epochs, %d pauses", p.summary.epochs, len(p.summary.pauses))
	}
}
