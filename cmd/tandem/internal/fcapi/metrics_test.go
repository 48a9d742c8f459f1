package fcapi

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testGatherer is a registry with a metric of every kind, as the VM's
// are: a counter, a labelled counter, a gauge that is not a number and a
// histogram.
func testGatherer(t *testing.T) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewRegistry()
	exits := prometheus.NewCounter(prometheus.CounterOpts{Name: "tandem_test_exits_total", Help: "VM exits."})
	byReason := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tandem_test_reason_total", Help: "VM exits by reason."}, []string{"reason", "cpu"})
	ratio := prometheus.NewGauge(prometheus.GaugeOpts{Name: "tandem_test_ratio", Help: "A ratio of nothing."})
	epoch := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "tandem_test_epoch_seconds", Help: "Epoch lengths.", Buckets: []float64{0.1, 1}})
	reg.MustRegister(exits, byReason, ratio, epoch)
	exits.Add(3)
	byReason.WithLabelValues(`i"o`, "0").Add(2)
	ratio.Set(math.NaN())
	epoch.Observe(0.25)
	epoch.Observe(0.5)
	return reg
}

// TestMetricsToFIFO: after PUT /metrics, FlushMetrics writes one JSON
// line to the FIFO: the timestamp, the id and properties asked for, and
// the gathered metrics flattened; GET /metrics answers the same metrics
// as Prometheus text.
func TestMetricsToFIFO(t *testing.T) {
	fifo := mkfifo(t)
	s := NewServer("vm7", "1", &fakeMachine{})
	s.Metrics = testGatherer(t)
	defer s.Close()
	body := `{"metrics_path": "` + fifo + `", "emit_id": true, "properties": {"host": "h1"}}`
	run(t, s, []step{
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`, 400, "PUT /metrics first"},
		{"PUT", "/metrics", body, 400, "FIFO without a reader"},
		{"PUT", "/metrics", `{"metrics_path": ""}`, 400, "metrics_path is required"},
		{"PUT", "/metrics", `{"metrics_path": "` + filepath.Join(t.TempDir(), "none") + `"}`, 400, "does not exist"},
		{"PUT", "/metrics", `{"metrics_path": "` + fifo + `", "emit_id": "yes"}`, 400, "malformed"},
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`, 400, "PUT /metrics first"},
	})
	lines := fifoReader(t, fifo)
	before := time.Now().UnixMilli()
	run(t, s, []step{
		{"PUT", "/metrics", body, 204, ""},
		{"PUT", "/metrics", body, 400, "configured already"},
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`, 204, ""},
	})
	line, err := lines.ReadString('\n')
	if err != nil {
		t.Fatalf("reading the metrics line: %v", err)
	}
	var got map[string]any
	d := json.NewDecoder(strings.NewReader(line))
	d.UseNumber()
	if err := d.Decode(&got); err != nil {
		t.Fatalf("the metrics line %q: %v", line, err)
	}
	if !strings.HasPrefix(line, `{"utc_timestamp_ms":`) {
		t.Errorf("the line does not start with utc_timestamp_ms: %s", line)
	}
	if ms, err := got["utc_timestamp_ms"].(json.Number).Int64(); err != nil || ms < before || ms > time.Now().UnixMilli() {
		t.Errorf("utc_timestamp_ms %v (%v), want between %d and now", got["utc_timestamp_ms"], err, before)
	}
	for key, want := range map[string]string{
		"id":                      `"vm7"`,
		"properties":              `{"host":"h1"}`,
		"tandem_test_exits_total": `3`,
		`tandem_test_reason_total{cpu="0",reason="i\"o"}`: `2`,
		"tandem_test_ratio":         `null`,
		"tandem_test_epoch_seconds": `{"count":2,"sum":0.75}`,
	} {
		b, _ := json.Marshal(got[key])
		if string(b) != want {
			t.Errorf("%s is %s, want %s (line %s)", key, b, want, line)
		}
	}

	status, text := call(t, s, "GET", "/metrics", "")
	for _, want := range []string{"# TYPE tandem_test_exits_total counter", "tandem_test_exits_total 3", `tandem_test_reason_total{cpu="0",reason="i\"o"} 2`, "tandem_test_epoch_seconds_count 2"} {
		if status != 200 || !strings.Contains(text, want) {
			t.Errorf("GET /metrics: %d, no %q in\n%s", status, want, text)
		}
	}
	req := httptest.NewRequest("GET", "http://localhost/metrics", nil)
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /metrics: Content-Type %q", ct)
	}

	// Close writes a last line, and ends the metrics.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if line, err := lines.ReadString('\n'); err != nil || !strings.Contains(line, `"tandem_test_exits_total":3`) {
		t.Errorf("after Close: %q, %v; want the last metrics line", line, err)
	}
	run(t, s, []step{
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`, 400, "PUT /metrics first"},
		{"PUT", "/metrics", body, 400, "configured already"},
	})
}

// TestMetricsPeriodic: a metrics file gets a line every period without
// FlushMetrics; a file is appended to, and metrics need a microVM not
// started.
func TestMetricsPeriodic(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.json")
	os.WriteFile(path, []byte("{}\n"), 0o600)
	s := NewServer("vm0", "1", &fakeMachine{})
	s.Metrics = testGatherer(t)
	s.metricsPeriod = 10 * time.Millisecond
	run(t, s, []step{{"PUT", "/metrics", `{"metrics_path": "` + path + `"}`, 204, ""}})
	var lines [][]byte
	deadline := time.Now().Add(30 * time.Second)
	for len(lines) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("%d lines in the metrics file after 30 s", len(lines))
		}
		time.Sleep(5 * time.Millisecond)
		b, _ := os.ReadFile(path)
		lines = bytes.SplitAfter(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for i, l := range lines[1:] {
		var v map[string]any
		if err := json.Unmarshal(l, &v); err != nil || v["tandem_test_exits_total"] != 3.0 || v["id"] != nil {
			t.Errorf("line %d: %s (%v)", i+1, l, err)
		}
	}

	s = NewServer("vm0", "1", &fakeMachine{})
	defer s.Close()
	run(t, s, []step{
		{"PUT", "/boot-source", `{"kernel_image_path": "/k"}`, 204, ""},
		{"PUT", "/actions", `{"action_type": "InstanceStart"}`, 204, ""},
		{"PUT", "/metrics", `{"metrics_path": "` + path + `"}`, 400, "before InstanceStart"},
		{"PUT", "/actions", `{"action_type": "FlushMetrics"}`, 400, "PUT /metrics first"},
	})
}
