package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	cplog "github.com/envoyproxy/go-control-plane/pkg/log"
	server "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/tlsconfig"
)

// DefaultListen is where xDS listens unless told otherwise: loopback only.
const DefaultListen = "127.0.0.1:18000"

// Config configures the xDS server.
type Config struct {
	// Listen is the gRPC address Envoy connects to, host:port (Run only; default
	// DefaultListen, loopback).
	Listen string
	// TLS, when Cert and Key are set, serves xDS over TLS; a CA as well requires and verifies
	// client certificates (mTLS).
	TLS tlsconfig.Files
	// Model is the configuration template: listener, router, options. Its Pools are replaced
	// by what Source reports.
	Model Model
	// Source reports the engines; each report is the full set.
	Source discovery.Source
	// Debounce coalesces bursts of discovery changes into one snapshot (default 100ms; a
	// change reaches Envoy well within a second).
	Debounce time.Duration
	// Log receives the server's logs; nil discards them.
	Log *slog.Logger
	// Registerer receives the server's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// nodeGroup is the one snapshot key: every Envoy node, whatever its id, gets the same
// configuration.
const nodeGroup = "kvgate"

type allNodes struct{}

func (allNodes) ID(*core.Node) string { return nodeGroup }

// Server is the xDS control plane: it watches discovery, translates each change into a
// snapshot and serves it over ADS (state of the world and delta) and the per-type services.
type Server struct {
	cfg   Config
	log   *slog.Logger
	cache cache.SnapshotCache
	m     *metrics
	tls   *tls.Config // nil: plaintext

	mu      sync.Mutex
	version string                // of the snapshot in the cache, "" before the first
	pools   map[string][]Endpoint // that snapshot's input
	pushes  int
	changed chan struct{} // closed and replaced on every push
}

// New checks cfg and returns a server; nothing runs until Run or Serve.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, errors.New("xds: no discovery source")
	}
	if len(cfg.Model.Router) == 0 {
		return nil, errors.New("xds: no router address")
	}
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Translate once now so that a bad template fails at start, not at the first change.
	if res, err := Translate(cfg.Model); res == nil {
		return nil, err
	}
	tc, err := cfg.TLS.Server()
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	// Metrics last: a New that fails registers nothing.
	s := &Server{cfg: cfg, log: log, changed: make(chan struct{}), tls: tc, m: newMetrics(cfg.Registerer)}
	s.cache = cache.NewSnapshotCache(true, allNodes{}, slogAdapter(log))
	return s, nil
}

// Run listens on cfg.Listen and serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	lis, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	return s.Serve(ctx, lis)
}

// Serve serves xDS on lis until ctx ends, then stops the gRPC server and returns nil. It
// closes lis.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	opts := []grpc.ServerOption{
		grpc.MaxConcurrentStreams(1 << 16),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 5 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	}
	if s.tls != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.tls)))
	}
	gs := grpc.NewServer(opts...)
	xs := server.NewServer(ctx, s.cache, s.callbacks())
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xs)

	// The first snapshot goes in before Envoy can ask: the listener and the router are
	// known before any engine is.
	s.update(ctx, nil)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.watch(ctx)
	}()
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	s.log.Info("xds serving", "addr", lis.Addr().String(), "tls", s.cfg.TLS.Cert != "", "mtls", s.cfg.TLS.CA != "")

	var err error
	select {
	case <-ctx.Done():
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			gs.Stop() // xDS streams never end by themselves
		}
		<-errc
	case err = <-errc:
	}
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds: %w", err)
	}
	return nil
}

// watch turns discovery reports into snapshots, coalescing reports that arrive within the
// debounce window.
func (s *Server) watch(ctx context.Context) {
	ch := s.cfg.Source.Watch(ctx)
	var (
		pending []discovery.Endpoint
		have    bool
		timer   *time.Timer
		fire    <-chan time.Time
	)
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case eps, ok := <-ch:
			if !ok {
				if have {
					s.update(ctx, pending)
				}
				return
			}
			pending, have = eps, true
			if fire == nil {
				timer = time.NewTimer(s.cfg.Debounce)
				fire = timer.C
			}
		case <-fire:
			fire = nil
			if have {
				s.update(ctx, pending)
				have = false
			}
		}
	}
}

// update translates the endpoints into a snapshot and puts it in the cache, unless its
// version is the one already there.
func (s *Server) update(ctx context.Context, eps []discovery.Endpoint) {
	m := s.cfg.Model
	m.Pools = Pools(eps)
	s.m.endpoints.Set(float64(len(eps)))
	s.mu.Lock()
	same := s.version != "" && maps.EqualFunc(s.pools, m.Pools, slices.Equal)
	s.mu.Unlock()
	if same {
		// Translate is pure: the same input gives the same version. Skip the work.
		s.log.Debug("xds discovery report unchanged")
		return
	}
	res, err := Translate(m)
	if res == nil {
		s.log.Error("xds translation failed; keeping the previous configuration", "err", err)
		return
	}
	s.m.problems.Set(float64(countJoined(err)))
	if err != nil {
		s.log.Warn("xds translation problems", "err", err)
	}
	version, err := res.Version()
	if err != nil {
		s.log.Error("xds version", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if version == s.version {
		s.pools = m.Pools
		s.log.Debug("xds configuration unchanged", "version", version)
		return
	}
	snap, err := res.Snapshot()
	if err != nil {
		s.log.Error("xds snapshot", "err", err)
		return
	}
	if err := s.cache.SetSnapshot(ctx, nodeGroup, snap); err != nil {
		s.log.Error("xds set snapshot", "err", err)
		return
	}
	s.version = version
	s.pools = m.Pools
	s.pushes++
	s.m.snapshots.Inc()
	close(s.changed)
	s.changed = make(chan struct{})
	s.log.Info("xds snapshot", "version", version, "engines", len(eps), "models", len(m.Pools),
		"clusters", len(res.Clusters), "assignments", len(res.Endpoints))
}

// Version is the version of the configuration Envoy is being served, "" before the first
// snapshot, and a channel closed when it next changes. Safe for concurrent use.
func (s *Server) Version() (string, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version, s.changed
}

// Pushes counts the snapshots put in the cache so far.
func (s *Server) Pushes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pushes
}

func (s *Server) callbacks() server.Callbacks {
	return server.CallbackFuncs{
		StreamOpenFunc: func(_ context.Context, id int64, typ string) error {
			s.m.streams.Inc()
			s.log.Debug("xds stream open", "stream", id, "type", typ)
			return nil
		},
		StreamClosedFunc: func(id int64, node *core.Node) {
			s.m.streams.Dec()
			s.log.Debug("xds stream closed", "stream", id, "node", node.GetId())
		},
		DeltaStreamOpenFunc: func(_ context.Context, id int64, typ string) error {
			s.m.streams.Inc()
			s.log.Debug("xds delta stream open", "stream", id, "type", typ)
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *core.Node) {
			s.m.streams.Dec()
			s.log.Debug("xds delta stream closed", "stream", id, "node", node.GetId())
		},
		StreamRequestFunc: func(id int64, req *discoverygrpc.DiscoveryRequest) error {
			if req.GetErrorDetail() != nil {
				s.m.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
				s.log.Warn("envoy rejected configuration", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
					"version", req.GetVersionInfo(), "err", req.GetErrorDetail().GetMessage())
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discoverygrpc.DeltaDiscoveryRequest) error {
			if req.GetErrorDetail() != nil {
				s.m.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
				s.log.Warn("envoy rejected configuration", "node", req.GetNode().GetId(), "type", req.GetTypeUrl(),
					"err", req.GetErrorDetail().GetMessage())
			}
			return nil
		},
	}
}

// countJoined counts the problems in an errors.Join result.
func countJoined(err error) int {
	if err == nil {
		return 0
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return len(j.Unwrap())
	}
	return 1
}

// slogAdapter routes go-control-plane's logs to slog, its chatty info as debug.
func slogAdapter(l *slog.Logger) cplog.Logger {
	return cplog.LoggerFuncs{
		DebugFunc: func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		InfoFunc:  func(f string, a ...any) { l.Debug(fmt.Sprintf(f, a...)) },
		WarnFunc:  func(f string, a ...any) { l.Warn(fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { l.Error(fmt.Sprintf(f, a...)) },
	}
}
