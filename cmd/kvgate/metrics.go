package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
)

// newRegistry is a Prometheus registry with the Go and process collectors; every command
// that serves metrics builds its own and passes it down.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// addMetricsFlag registers --metrics-addr on fs, with --metrics as its old, hidden name.
func addMetricsFlag(fs *pflag.FlagSet, addr *string, what string) {
	fs.StringVar(addr, "metrics-addr", "", "serve Prometheus /metrics ("+what+") on this address, e.g. 127.0.0.1:9090")
	fs.StringVar(addr, "metrics", "", "old name of --metrics-addr")
	_ = fs.MarkDeprecated("metrics", "use --metrics-addr")
}

// metricsServer serves a registry at /metrics.
type metricsServer struct {
	lis net.Listener
	srv *http.Server
	mux *http.ServeMux
}

// Handle serves h at pattern beside /metrics (before Serve).
func (m *metricsServer) Handle(pattern string, h http.Handler) { m.mux.Handle(pattern, h) }

// listenMetrics listens on addr now, so that a bad address fails at start; Serve serves.
func listenMetrics(addr string, reg prometheus.Gatherer, log *slog.Logger) (*metricsServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	log.Info("metrics listening", "addr", lis.Addr().String())
	return &metricsServer{lis: lis, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, mux: mux}, nil
}

// Serve serves until ctx ends.
func (m *metricsServer) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = m.srv.Close() })
	defer stop()
	if err := m.srv.Serve(m.lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveMetrics serves reg at /metrics on addr until ctx ends.
func serveMetrics(ctx context.Context, addr string, reg prometheus.Gatherer, log *slog.Logger) error {
	m, err := listenMetrics(addr, reg, log)
	if err != nil {
		return err
	}
	return m.Serve(ctx)
}
