package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/tandemvm/tandem/kvm/kvmtest"
)

// scrape reads the metrics at http://addr/metrics, or says why it
// cannot.
func scrape(addr string) (map[string]*dto.MetricFamily, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /metrics: %s: %s", resp.Status, b)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// metricValue is the value of the series of family name whose labels
// include want (counter, gauge, or a histogram's count), and whether
// there is one.
func metricValue(mfs map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for i := 0; i+1 < len(want); i += 2 {
			match = match && labels[want[i]] == want[i+1]
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

// TestMetricsOfAnHAVM: a VM under --ha with --metrics-addr exports its
// replication as it runs (epochs committed, the pause histogram by step
// with as many pauses as epochs, commit latency, dirty and sent pages,
// bytes on each of its two links, both alive and protected, vCPU exits),
// and its leader, killed primary, counts the takeover and its recovery
// time on its own --metrics-addr.
func TestMetricsOfAnHAVM(t *testing.T) {
	kvmtest.Open(t)
	ports, err := freePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	replicaAddr, leaderAddr, primaryMetrics, leaderMetrics := ports[0], ports[1], ports[2], ports[3]
	key := testKeyFile(t)
	replica := startTandem(t, "replica", "--listen", replicaAddr, "--auth-key", key)
	leader := startTandem(t, "replica", "--listen", leaderAddr, "--replicas", replicaAddr, "--serial", "none", "--auth-key", key, "--metrics-addr", leaderMetrics)
	for _, p := range []*process{replica, leader} {
		pollFor(t, "the replica to listen", 30*time.Second, func() bool { return strings.Contains(p.stderr.String(), "replica listening") })
	}
	primary := startTandem(t, "run", "--guest", "dirty", "--args", "pattern=scattered,pages=512,rate=20000", "--mem", "32M", "--serial", "none",
		"--ha", "--replicas", replicaAddr+","+replicaAddr, "--leader", leaderAddr, "--epoch", "10ms", "--auth-key", key, "--metrics-addr", primaryMetrics)

	var mfs map[string]*dto.MetricFamily
	pollFor(t, "20 committed epochs in the primary's metrics", 60*time.Second, func() bool {
		if primary.exited() {
			t.Fatalf("the primary ended: %s", primary.stderr.String())
		}
		mfs, err = scrape(primaryMetrics)
		n, _ := metricValue(mfs, "tandem_replication_epochs_total", "result", "committed")
		return err == nil && n >= 20
	})
	committed, _ := metricValue(mfs, "tandem_replication_epochs_total", "result", "committed")
	failed, _ := metricValue(mfs, "tandem_replication_epochs_total", "result", "failed")
	atLeast := func(what string, got, want float64) {
		t.Helper()
		if got < want {
			t.Errorf("%s = %v, want at least %v", what, got, want)
		}
	}
	for _, step := range []string{"harvest", "group", "transfer", "ack", "total"} {
		n, _ := metricValue(mfs, "tandem_replication_pause_seconds", "step", step)
		if n != committed+failed {
			t.Errorf("%d pauses with a %s step, want one per epoch (%v)", int(n), step, committed+failed)
		}
	}
	commits, _ := metricValue(mfs, "tandem_replication_commit_seconds")
	atLeast("commit latencies observed", commits, committed)
	dirty, _ := metricValue(mfs, "tandem_replication_dirty_pages_total")
	atLeast("dirty pages", dirty, 1)
	sent, _ := metricValue(mfs, "tandem_replication_sent_pages_total")
	atLeast("sent pages", sent, dirty)
	for _, link := range []string{"0", "1"} {
		b, _ := metricValue(mfs, "tandem_replication_link_bytes_total", "link", link, "addr", replicaAddr)
		atLeast("bytes on link "+link, b, 4096)
		alive, _ := metricValue(mfs, "tandem_replication_link_alive", "link", link)
		atLeast("link "+link+" alive", alive, 1)
	}
	protected, _ := metricValue(mfs, "tandem_replication_protected")
	atLeast("protected", protected, 1)
	exits := 0.0
	for _, m := range mfs["tandem_vm_exits_total"].GetMetric() {
		exits += m.GetCounter().GetValue()
	}
	atLeast("vCPU exits", exits, 1)
	if last, _ := metricValue(mfs, "tandem_replication_last_epoch"); last < committed {
		t.Errorf("last epoch %v, want at least the %v committed", last, committed)
	}
	if v, ok := metricValue(mfs, "tandem_failovers_total"); !ok || v != 0 {
		t.Errorf("the primary's tandem_failovers_total = %v (exported: %v), want 0", v, ok)
	}

	primary.kill()
	// A scrape gathers the collectors it found registered when it began:
	// one under way during the takeover may see the count and not yet
	// the recovered VM. Wait for one that began after.
	pollFor(t, "the leader's metrics to count the takeover and show the recovered VM", 60*time.Second, func() bool {
		mfs, err = scrape(leaderMetrics)
		n, _ := metricValue(mfs, "tandem_failovers_total")
		r, _ := metricValue(mfs, "tandem_recovery_seconds")
		_, vm := metricValue(mfs, "tandem_vm_memory_bytes")
		return err == nil && n >= 1 && r >= 1 && vm
	})
	if n, _ := metricValue(mfs, "tandem_failovers_total"); n != 1 {
		t.Errorf("%v takeovers counted, want 1", n)
	}
	if n, _ := metricValue(mfs, "tandem_recovery_seconds"); n != 1 {
		t.Errorf("%v recovery times observed, want 1", n)
	}
	if v, _ := metricValue(mfs, "tandem_vm_memory_bytes"); v != 32<<20 {
		t.Errorf("the leader's tandem_vm_memory_bytes = %v, want the recovered VM's 32 MiB", v)
	}
}
