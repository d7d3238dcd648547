// Package simtest runs a `kvgate sim` engine server in-process for other packages' tests.
package simtest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine/sim"
)

// Start serves cfg (Addr "127.0.0.1:0" for a free port) until tb ends; log and reg may be nil.
// The server is stopped in tb's cleanup, and an error it ends with fails tb.
func Start(tb testing.TB, cfg sim.ServerConfig, log *slog.Logger, reg *prometheus.Registry) *sim.Server {
	tb.Helper()
	s, err := sim.NewServer(cfg, log, reg)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("sim server at %s: %v", s.Addr(), err)
		}
	})
	return s
}
