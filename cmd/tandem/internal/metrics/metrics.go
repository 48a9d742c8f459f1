// Package metrics is Tandem's Prometheus exposition: what the VM a
// process runs, its vCPUs and its replication have done, for
// --metrics-addr, GET /metrics on the API socket and Firecracker's PUT
// /metrics. It owns the metric names and their meaning; it measures
// nothing itself: the run loop hands it each epoch's record (Observe),
// and it reads the vCPUs' exit counts and the replication's status when
// scraped.
//
// # Reading never stalls the run loop
//
// A scrape takes no lock the run loop takes. Counters and histograms are
// client_golang's, updated with atomic operations; the newest epoch's
// figures, which only make sense together (its number, its pause and
// each step of it, its commit latency, the output it held), are written
// by the run loop under a sequence count (gVisor's sync.SeqCount) and
// read by a scrape that retries if an epoch was recorded meanwhile; the
// exit counts are per-vCPU atomics (vmm.VM.Exits), the replication's
// status an immutable published copy (replicate.Primary.Status).
//
// # Names
//
// tandem_vm_* describe the VM (vCPU exits by reason); tandem_replication_*
// the epochs of a VM under --ha (epochs by result, pause time and its
// steps, commit latency, dirty and sent pages, bytes per link, state
// bytes, output held, the last epoch, generation, committed epoch, links
// and protection); tandem_failovers_total and tandem_recovery_seconds a
// node's takeovers. Times are in seconds, sizes in bytes.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

var process = prometheus.NewRegistry()

// Failovers count this process's takeovers of a failed primary, and how
// long each took from the failure being declared to the VM resuming.
var (
	failovers = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "tandem_failovers_total",
		Help: "Takeovers of a failed primary's VM by this node.",
	})
	recovery = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "tandem_recovery_seconds",
		Help:    "Time from a primary declared failed to its VM resuming here: recovery of memory, state and disks from the replicas.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16), // 1 ms to 33 s
	})
)

func init() {
	process.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), failovers, recovery)
}

// Gatherer returns the process's metrics: those of the VM it runs (once
// Register was called), of its takeovers, and of the Go runtime and the
// process.
func Gatherer() prometheus.Gatherer { return process }

// Failover counts one takeover whose recovery took seconds.
func Failover(seconds float64) {
	failovers.Inc()
	recovery.Observe(seconds)
}
