// Package metrics is Tandem's Prometheus exposition: what a running VM,
// its run loop and its replication have done, for --metrics-addr, GET
// /metrics on the API socket and Firecracker's PUT /metrics.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	gsync "gvisor.dev/gvisor/pkg/sync"
)

var process = prometheus.NewRegistry()

var _ gsync.SeqCount

func init() {
	process.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// Gatherer returns the process's metrics: those of the VM it runs, of
// its replication, and of the Go runtime and the process.
func Gatherer() prometheus.Gatherer { return process }
