package fcapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// MetricsConfig is Firecracker's Metrics: the file or FIFO the metrics
// lines go to, and what each line says besides the metrics.
type MetricsConfig struct {
	MetricsPath string            `json:"metrics_path"`
	EmitID      *bool             `json:"emit_id,omitempty"`
	Properties  map[string]string `json:"properties,omitempty"`
}

// MetricsPeriod is how often the metrics file gets a line without
// FlushMetrics: Firecracker's period.
const MetricsPeriod = 60 * time.Second

// metricsWriteTimeout bounds the write of one metrics line, so that a
// FIFO whose reader stopped reading fails a FlushMetrics instead of
// hanging it.
const metricsWriteTimeout = 5 * time.Second

// metricsWriter writes the metrics lines of a PUT /metrics: one JSON
// object a line, on FlushMetrics, every period, and once on Close.
type metricsWriter struct {
	path     string
	gatherer prometheus.Gatherer
	id       string // "" unless emit_id
	props    map[string]string

	mu  sync.Mutex // one line at a time
	out *os.File

	stop, stopped chan struct{}
}

// metricsLine is one line of the metrics file: {"utc_timestamp_ms": N},
// then "id" (with emit_id) and "properties" (with properties), then
// every sample of the gathered metric families, in their order, keyed by
// its name and, for a labelled sample, its labels in Prometheus' notation
// (tandem_vm_exits_total{reason="io"}). A counter's, gauge's or untyped
// sample's value is a number, a histogram's or summary's is {"count": N,
// "sum": S}; a value that is not finite (NaN, ±Inf) is null, which JSON
// has instead.
func metricsLine(now time.Time, id string, props map[string]string, families []*dto.MetricFamily) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"utc_timestamp_ms":%d`, now.UnixMilli())
	field := func(key string, v any) {
		k, _ := json.Marshal(key)
		val, err := json.Marshal(v)
		if err != nil {
			val = []byte("null")
		}
		b.WriteByte(',')
		b.Write(k)
		b.WriteByte(':')
		b.Write(val)
	}
	if id != "" {
		field("id", id)
	}
	if len(props) > 0 {
		field("properties", props)
	}
	type distribution struct {
		Count any `json:"count"`
		Sum   any `json:"sum"`
	}
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + labelSuffix(m.GetLabel())
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				field(key, finite(m.GetCounter().GetValue()))
			case dto.MetricType_GAUGE:
				field(key, finite(m.GetGauge().GetValue()))
			case dto.MetricType_UNTYPED:
				field(key, finite(m.GetUntyped().GetValue()))
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				h := m.GetHistogram()
				var count any = h.GetSampleCount()
				if h.GetSampleCountFloat() > 0 {
					count = finite(h.GetSampleCountFloat())
				}
				field(key, distribution{count, finite(h.GetSampleSum())})
			case dto.MetricType_SUMMARY:
				field(key, distribution{m.GetSummary().GetSampleCount(), finite(m.GetSummary().GetSampleSum())})
			}
		}
	}
	b.WriteString("}\n")
	return b.Bytes()
}

// finite is f, or nil for a value JSON cannot hold.
func finite(f float64) any {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	return f
}

var labelValueEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)

// labelSuffix is {name="value",...} for labels sorted by name, or "".
func labelSuffix(labels []*dto.LabelPair) string {
	if len(labels) == 0 {
		return ""
	}
	sorted := append([]*dto.LabelPair(nil), labels...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].GetName() < sorted[j].GetName() })
	var b strings.Builder
	b.WriteByte('{')
	for i, l := range sorted {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `%s="%s"`, l.GetName(), labelValueEscaper.Replace(l.GetValue()))
	}
	b.WriteByte('}')
	return b.String()
}

// flush gathers the metrics and writes their line. A family that fails
// to gather is left out of the line, and its error returned.
func (w *metricsWriter) flush() error {
	families, gatherErr := w.gatherer.Gather()
	line := metricsLine(time.Now(), w.id, w.props, families)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.out == nil {
		return errors.New("the metrics file is closed")
	}
	if err := w.out.SetWriteDeadline(time.Now().Add(metricsWriteTimeout)); err != nil && !errors.Is(err, os.ErrNoDeadline) {
		return fmt.Errorf("writing the metrics to %s: %w", w.path, err)
	}
	if _, err := w.out.Write(line); err != nil {
		return fmt.Errorf("writing the metrics to %s: %w", w.path, err)
	}
	if gatherErr != nil {
		return fmt.Errorf("gathering the metrics (the line has the others): %w", gatherErr)
	}
	return nil
}

// flushEvery writes a line every period until close.
func (w *metricsWriter) flushEvery(period time.Duration, s *Server) {
	defer close(w.stopped)
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			if err := w.flush(); err != nil {
				s.logger().Warn("writing the periodic metrics line", "path", w.path, "err", err)
			}
		}
	}
}

// close stops the periodic lines, writes a last one and closes the file.
func (w *metricsWriter) close() error {
	close(w.stop)
	<-w.stopped
	err := w.flush()
	w.mu.Lock()
	defer w.mu.Unlock()
	if cerr := w.out.Close(); err == nil {
		err = cerr
	}
	w.out = nil
	return err
}

// gatherer is the server's metrics, none if it has no Gatherer.
func (s *Server) gatherer() prometheus.Gatherer {
	if s.Metrics == nil {
		return prometheus.Gatherers{}
	}
	return s.Metrics
}

// putMetrics serves PUT /metrics: once, before InstanceStart, it starts
// the metrics lines on the file or FIFO the body names.
func (s *Server) putMetrics(r *http.Request) (int, any, error) {
	var c MetricsConfig
	if err := decode(r, &c); err != nil {
		return 0, nil, err
	}
	if c.MetricsPath == "" {
		return 0, nil, badRequest("metrics_path is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state != NotStarted:
		return 0, nil, badRequest("the microVM has started: metrics can only be configured before InstanceStart")
	case s.metrics != nil || s.closed:
		return 0, nil, badRequest("the metrics are configured already: they are configured once")
	}
	out, err := OpenOutput(c.MetricsPath, false)
	if err != nil {
		return 0, nil, badRequest("metrics_path: %v", err)
	}
	w := &metricsWriter{path: c.MetricsPath, gatherer: s.gatherer(), props: c.Properties, out: out, stop: make(chan struct{}), stopped: make(chan struct{})}
	if c.EmitID != nil && *c.EmitID {
		w.id = s.ID
	}
	period := s.metricsPeriod
	if period <= 0 {
		period = MetricsPeriod
	}
	go w.flushEvery(period, s)
	s.metrics = w
	s.cfg.Metrics = &c
	return http.StatusNoContent, nil, nil
}

// flushMetrics is the action FlushMetrics: a metrics line now.
func (s *Server) flushMetrics() (int, any, error) {
	s.mu.Lock()
	w := s.metrics
	s.mu.Unlock()
	if w == nil {
		return 0, nil, badRequest("no metrics to flush: PUT /metrics first")
	}
	if err := w.flush(); err != nil {
		return 0, nil, badRequest("flushing the metrics: %v", err)
	}
	return http.StatusNoContent, nil, nil
}

// serveMetricsText is GET /metrics, Tandem's: the metrics in Prometheus'
// text exposition format.
func (s *Server) serveMetricsText(w http.ResponseWriter, r *http.Request) {
	promhttp.HandlerFor(s.gatherer(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}).ServeHTTP(w, r)
}

// Close ends what PUT /metrics started, with a last metrics line. The
// server serves on, without metrics lines, and refuses another PUT
// /metrics.
func (s *Server) Close() error {
	s.mu.Lock()
	w := s.metrics
	s.metrics, s.closed = nil, true
	s.mu.Unlock()
	if w == nil {
		return nil
	}
	return w.close()
}
