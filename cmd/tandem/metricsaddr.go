package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tandemvm/tandem/cmd/tandem/internal/metrics"
)

// metricsFlagUsage documents --metrics-addr for every command that has it.
const metricsFlagUsage = "serve Prometheus metrics (the VM's vCPU exits, its replication's epochs, pauses, pages, bytes per link, commit latency, held output, takeovers) at http://ADDR/metrics, e.g. 127.0.0.1:9100"

// serveMetrics serves the process's metrics on addr (--metrics-addr) at
// /metrics until ctx ends. It returns once it listens, or why it cannot.
func serveMetrics(ctx context.Context, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return usagef("--metrics-addr: %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(metrics.Gatherer(), promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	go hs.Serve(ln)
	context.AfterFunc(ctx, func() { hs.Close() })
	log.Info("metrics listening", "url", "http://"+ln.Addr().String()+"/metrics")
	return nil
}
