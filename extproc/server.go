// Package extproc is Envoy's external processing (ext_proc) service speaking the Gateway API
// Inference Extension's Endpoint Picker Protocol: it asks a Router for the upstream of every
// request and tells Envoy through a header and dynamic metadata.
// In a request's path it owns R1 and R6 for Envoy (the ext_proc stream in, the pick out)
// and feeds R8; it owns no step of a KV event.
package extproc

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/tap"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// Router chooses the upstream of one request. It is what extproc needs from the router.
//
// Route must be safe for concurrent use. It returns an *openai.Error (possibly wrapped) for
// requests it refuses; any other error becomes a 500. The returned Decision is owned by the
// caller, which must call its Done exactly once when the request ends.
type Router interface {
	Route(ctx context.Context, req router.Request) (*router.Decision, error)
}

var _ Router = (*router.Router)(nil)

// Health service names, as the Endpoint Picker Protocol defines them.
const (
	HealthLiveness  = "liveness"
	HealthReadiness = "readiness"
	HealthExtProc   = "envoy.service.ext_proc.v3.ExternalProcessor"
)

// Config configures a Server.
type Config struct {
	// Addr is the gRPC listen address, for example "127.0.0.1:9002" or "127.0.0.1:0".
	Addr string
	// MaxBodyBytes bounds the request body the server accumulates; a larger body ends as a
	// 413 ImmediateResponse. Zero means openai.DefaultMaxBodyBytes.
	MaxBodyBytes int
	// MaxResponseBuffer bounds the non-streamed response body kept to read its usage.
	// Zero means DefaultMaxResponseBuffer.
	MaxResponseBuffer int
	// MaxBufferedBytes bounds the request body bytes buffered across all open streams; a
	// body that would pass it ends as a 503 ImmediateResponse (retry later). Zero means
	// DefaultMaxBufferedBytes.
	MaxBufferedBytes int64
	// ResponseTimeout bounds the time from a pick to the response headers: a pick whose
	// response has not started by then stops counting as load on its endpoint (the proxy
	// may have vanished; the stream itself lives on until IdleTimeout). Zero means
	// DefaultResponseTimeout; negative turns it off.
	ResponseTimeout time.Duration
	// IdleTimeout closes a stream on which the proxy has sent nothing for this long, with
	// gRPC status DEADLINE_EXCEEDED; it must exceed the longest silence of a healthy stream
	// (a non-streamed response's generation). It stops applying once the response headers
	// are answered with a mode_override (a skipped body, response body mode NONE): the
	// proxy then sends nothing until the request ends. Zero means DefaultIdleTimeout;
	// negative turns it off.
	IdleTimeout time.Duration
	// DrainTimeout bounds how long shutdown waits for open streams before closing them.
	// Zero means DefaultDrainTimeout.
	DrainTimeout time.Duration
	// TLS, when non-nil, serves gRPC over TLS (with ClientCAs set: mutual TLS).
	TLS *tls.Config
	// Ready, when non-nil, holds readiness (and the ext_proc service's health) at NOT_SERVING
	// until it is closed: the router has not yet learned its endpoints (Kubernetes informers
	// syncing). Liveness is SERVING from the start either way.
	Ready <-chan struct{}
	// P2PTransferPort, when set, is the port engines serve KV block pulls on: a request the
	// router tells to pull its prefix from another engine also gets
	// kv_transfer_params.remote_kv_source (a body mutation). Zero: the header
	// router.HeaderKVCacheSource alone names the source (docs/OFFLOAD.md).
	P2PTransferPort int
	// SkipResponseBody, when set, answers the response headers of a request whose response
	// the server need not edit (no forced usage chunk to cut) and whose usage the router does
	// not need (Decision.NeedsUsage) with a mode_override that stops the proxy's response
	// body messages: response_body_mode NONE, response_trailer_mode SEND. The request's load
	// is then released when the proxy ends the stream, at the end of the request: the trailer
	// mode keeps Envoy (1.37+) from closing the stream right after the response headers.
	// Lost for those requests: the usage (output tokens, the engine's cached tokens), the
	// time to first token and between tokens, and the first-token release of a streamed
	// request's prefill load, which is held until the request ends. Envoy applies it only
	// with allow_mode_override and neither body mode FULL_DUPLEX_STREAMED; otherwise the
	// body keeps coming and is handled as without it. See docs/EXTPROC.md.
	SkipResponseBody bool
	// Tracer, when set, records each stream as a server span continuing the request's
	// traceparent, the router's decision under it, and a client span for Envoy's call to the
	// pick, whose trace context is added to the request as a traceparent header mutation;
	// nil records nothing at no cost. See docs/TRACING.md.
	Tracer trace.Tracer
}

// Defaults for Config's zero values.
const (
	DefaultMaxResponseBuffer = 4 << 20
	DefaultDrainTimeout      = 10 * time.Second
	DefaultMaxBufferedBytes  = 256 << 20
	DefaultResponseTimeout   = 5 * time.Minute
	DefaultIdleTimeout       = 10 * time.Minute
)

// MaxChunk is the largest body chunk the server sends back in a streamed body response, as
// the Endpoint Picker Protocol's reference implementation does.
const MaxChunk = 62000

// Server is the ext_proc gRPC service. Create it with New; serve with Run or Serve.
type Server struct {
	extprocv3.UnimplementedExternalProcessorServer

	cfg     Config
	router  Router
	log     *slog.Logger
	metrics *metrics
	health  *health.Server

	buffered atomic.Int64 // request body bytes held by all streams

	mu   sync.Mutex
	addr net.Addr
	up   chan struct{} // closed once the listener is bound
}

var _ extprocv3.ExternalProcessorServer = (*Server)(nil)

// New returns a Server asking rt for every request. reg receives the server's metrics
// (nil: not registered).
func New(cfg Config, rt Router, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if rt == nil {
		return nil, errors.New("extproc: nil router")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = openai.DefaultMaxBodyBytes
	}
	if cfg.MaxResponseBuffer <= 0 {
		cfg.MaxResponseBuffer = DefaultMaxResponseBuffer
	}
	if cfg.MaxBufferedBytes <= 0 {
		cfg.MaxBufferedBytes = DefaultMaxBufferedBytes
	}
	if cfg.ResponseTimeout == 0 {
		cfg.ResponseTimeout = DefaultResponseTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = DefaultDrainTimeout
	}
	srv := &Server{cfg: cfg, router: rt, log: log, health: health.NewServer(), up: make(chan struct{})}
	m, err := newMetrics(reg, func() float64 { return float64(srv.buffered.Load()) })
	if err != nil {
		return nil, err
	}
	srv.metrics = m
	return srv, nil
}

// Addr returns the bound listen address, waiting until Run has bound it or ctx ends.
func (s *Server) Addr(ctx context.Context) (net.Addr, error) {
	select {
	case <-s.up:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.addr, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Register adds the ext_proc service, gRPC health (liveness, readiness and the ext_proc
// service name) and reflection to g.
func (s *Server) Register(g *grpc.Server) {
	extprocv3.RegisterExternalProcessorServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
	reflection.Register(g)
	s.health.SetServingStatus(HealthLiveness, healthpb.HealthCheckResponse_SERVING)
	s.SetReady(s.cfg.Ready == nil)
}

// SetReady sets the readiness and ext_proc health status.
func (s *Server) SetReady(ready bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ready {
		st = healthpb.HealthCheckResponse_SERVING
	}
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(HealthReadiness, st)
	s.health.SetServingStatus(HealthExtProc, st)
}

// Run listens on cfg.Addr and serves until ctx ends, then drains open streams for up to
// DrainTimeout before closing them.
func (s *Server) Run(ctx context.Context) error {
	lis, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("extproc: listen: %w", err)
	}
	return s.Serve(ctx, lis)
}

// Flow-control windows of the gRPC server. Fixed windows turn off grpc-go's bandwidth
// estimator, which otherwise answers data frames with PING frames; a window larger than
// a typical request body also spares most WINDOW_UPDATE frames. They bound what one stream
// (one connection) may have unread, not what is allocated.
const (
	streamWindow = 1 << 20
	connWindow   = 16 << 20
)

// serverOptions are the gRPC options every Server uses: streams run on a fixed set of
// worker goroutines (their stacks stay grown, no goroutine is created per stream), the
// windows above, and the tap that lets Process end an ext_proc stream itself.
func serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.InTapHandle(tapStream),
	}
}

// cancelKey finds a stream's streamCtx among its context's values.
type cancelKey struct{}

// streamCtx is an ext_proc stream's context as the tap makes it: expiring it ends a Recv
// blocked on the stream (gRPC's reader watches the context the tap returns), which is how
// Process ends an idle stream without a goroutine waiting beside the message loop. An
// expired context's error is context.DeadlineExceeded, so that the status gRPC sends for
// the interrupted Recv is DEADLINE_EXCEEDED.
type streamCtx struct {
	context.Context
	cancel  context.CancelFunc
	expired atomic.Bool
}

func (c *streamCtx) Value(key any) any {
	if key == (cancelKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func (c *streamCtx) Err() error {
	err := c.Context.Err()
	if err != nil && c.expired.Load() {
		return context.DeadlineExceeded
	}
	return err
}

// expire ends the stream's context with context.DeadlineExceeded.
func (c *streamCtx) expire() {
	c.expired.Store(true)
	c.cancel()
}

// tapStream gives each ext_proc stream a context Process can expire (other services'
// streams are left as they are). gRPC cancels the parent when the stream ends, which
// releases this one.
func tapStream(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != extprocv3.ExternalProcessor_Process_FullMethodName {
		return ctx, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	return &streamCtx{Context: ctx, cancel: cancel}, nil
}

// tappedStream returns the stream context the tap made, found in ctx; nil when the stream
// was not tapped (a gRPC server that Serve did not build).
func tappedStream(ctx context.Context) *streamCtx {
	c, _ := ctx.Value(cancelKey{}).(*streamCtx)
	return c
}

// Serve serves on lis until ctx ends (see Run).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	opts := serverOptions()
	if s.cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.cfg.TLS)))
	}
	g := grpc.NewServer(opts...)
	s.Register(g)
	s.mu.Lock()
	s.addr = lis.Addr()
	s.mu.Unlock()
	close(s.up)
	s.log.Info("ext_proc listening", "addr", lis.Addr().String(), "tls", s.cfg.TLS != nil)

	errc := make(chan error, 1)
	go func() { errc <- g.Serve(lis) }()
	gateCtx, stopGate := context.WithCancel(ctx)
	gate := make(chan struct{})
	go func() { // readiness once cfg.Ready closes
		defer close(gate)
		if s.cfg.Ready == nil {
			return
		}
		select {
		case <-s.cfg.Ready:
			s.SetReady(true)
		case <-gateCtx.Done():
		}
	}()
	select {
	case err := <-errc:
		stopGate()
		<-gate
		return fmt.Errorf("extproc: serve: %w", err)
	case <-ctx.Done():
	}
	stopGate()
	<-gate
	// Readiness goes first so that health-checking proxies stop sending new streams.
	s.SetReady(false)
	s.health.Shutdown()
	done := make(chan struct{})
	go func() { g.GracefulStop(); close(done) }()
	t := time.NewTimer(s.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.Warn("ext_proc drain timed out; closing open streams", "timeout", s.cfg.DrainTimeout)
		g.Stop()
		<-done
	}
	<-errc
	return nil
}
