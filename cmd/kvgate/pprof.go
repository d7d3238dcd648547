package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/spf13/pflag"
)

// addPprofFlag registers --pprof-addr: Go's runtime profiles (net/http/pprof) on a debug
// listener of their own, off by default.
func addPprofFlag(fs *pflag.FlagSet, addr *string) {
	fs.StringVar(addr, "pprof-addr", "", "debug: serve Go's runtime profiles (/debug/pprof/, e.g. ?seconds=30 of CPU at /debug/pprof/profile) on this address, e.g. 127.0.0.1:6060; off by default, keep it on loopback")
}

// listenPprof listens on addr now (a bad address fails at start) and returns the server of
// the /debug/pprof/ handlers; they are registered on a mux of its own, not the default one.
func listenPprof(addr string, log *slog.Logger) (*metricsServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("pprof: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("pprof listening", "addr", lis.Addr().String())
	// No write timeout: a CPU profile or trace streams for as long as it was asked to run.
	return &metricsServer{lis: lis, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, mux: mux}, nil
}

// servePprof serves the profiles on addr until ctx ends; "" serves nothing.
func servePprof(ctx context.Context, addr string, log *slog.Logger) (func() error, error) {
	if addr == "" {
		return func() error { return nil }, nil
	}
	s, err := listenPprof(addr, log)
	if err != nil {
		return nil, err
	}
	return func() error { return s.Serve(ctx) }, nil
}
