// Package gateway is the embedded OpenAI HTTP front door: it asks the router in-process for
// the upstream of every request and proxies to it, streaming responses through unbuffered.
// In a request's path it owns R1, R6 and R7 without Envoy (receive, pick in-process,
// forward) and feeds R8; it owns no step of a KV event.
package gateway

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// ModelRouter routes requests and lists the models it serves. *router.Router is one.
//
// Both methods must be safe for concurrent use. Route returns an *openai.Error (possibly
// wrapped) for requests it refuses; the caller owns the Decision and calls Done once.
// Models returns a fresh slice.
type ModelRouter interface {
	Route(ctx context.Context, req router.Request) (*router.Decision, error)
	Models() []string
}

var _ ModelRouter = (*router.Router)(nil)

// Config configures a Gateway.
type Config struct {
	// Addr is the listen address of Run, for example "127.0.0.1:8000".
	Addr string
	// MaxBodyBytes bounds request bodies; larger ones get a 413. Zero: openai.DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// DialTimeout bounds connecting to an engine. Zero: DefaultDialTimeout.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for an engine's response headers (its queueing
	// and, when not streaming, its whole generation). Zero: DefaultResponseHeaderTimeout.
	ResponseHeaderTimeout time.Duration
	// BodyTimeout bounds reading a request body; a client slower than that gets a 408 and
	// its connection closed. Zero: DefaultBodyTimeout.
	BodyTimeout time.Duration
	// MaxHeaderBytes bounds the request headers; larger ones get a 431. Zero:
	// DefaultMaxHeaderBytes. (The HTTP server itself refuses headers over 1 MiB or twice
	// this, whichever is larger, before any handler sees them.)
	MaxHeaderBytes int
	// MaxAttempts bounds the endpoints one request is sent to: the target, then fallbacks
	// while an attempt fails before its first response byte. Zero: DefaultMaxAttempts.
	MaxAttempts int
	// MigrationLimit bounds how often one streamed request moves to another engine after
	// its first token, when its engine fails or stalls: the gateway re-issues it with what
	// was generated so far and stitches the answers into one stream. Zero:
	// DefaultMigrationLimit; negative: never (the stream is cut, as without migration).
	MigrationLimit int
	// MigrationStall is how long a stream may go without an event after its first token
	// before it is migrated. Zero: DefaultMigrationStall; negative: only failures migrate.
	MigrationStall time.Duration
	// MigrationMaxTokens is the most generated tokens a request may have and still be
	// migrated (the continuation's prompt grows by them). Zero: DefaultMigrationMaxTokens.
	MigrationMaxTokens int
	// TLS, when set, makes Run and Serve speak HTTPS (HTTP/2 and HTTP/1.1); with ClientCAs
	// and RequireAndVerifyClientCert, mutual TLS. See tlsconfig.Files.Server.
	TLS *tls.Config
	// Gatherer, when set, is served on /metrics.
	Gatherer prometheus.Gatherer
	// Transport overrides the upstream transport (tests).
	Transport http.RoundTripper
	// EngineTLS is the client TLS configuration the default transport uses for endpoints
	// with TLS set (router.Endpoint.TLS; HTTP/2 when the engine offers it); nil means the
	// system roots and no client certificate. Plain http endpoints are unaffected.
	EngineTLS *tls.Config
	// P2PTransferPort, when set, is the port engines serve KV block pulls on (as llm-d's
	// sidecar --p2p-connector-port): a request the router tells to pull its prefix from
	// another engine then also carries kv_transfer_params.remote_kv_source for that engine at
	// this port. Zero: router.HeaderKVCacheSource alone names the source (docs/OFFLOAD.md).
	P2PTransferPort int
	// Tracer, when set, records each completion request as a server span (continuing a
	// client's traceparent), the router's decision under it, and one client span per
	// upstream attempt whose trace context the engine receives (traceparent); nil records
	// nothing at no cost. See docs/TRACING.md.
	Tracer trace.Tracer
}

// Defaults for Config's zero values.
const (
	DefaultAddr                  = "127.0.0.1:8000"
	DefaultBodyTimeout           = 30 * time.Second
	DefaultMaxHeaderBytes        = 64 << 10
	DefaultMaxAttempts           = 3
	DefaultDialTimeout           = 5 * time.Second
	DefaultResponseHeaderTimeout = 10 * time.Minute
	DefaultMigrationLimit        = 3
	DefaultMigrationStall        = 30 * time.Second
	DefaultMigrationMaxTokens    = 32768
)

// Gateway is the OpenAI front door; it is an http.Handler and, with Run, a server.
type Gateway struct {
	cfg       Config
	router    ModelRouter
	epp       *epp // the remote EPP; nil when router picks in-process
	log       *slog.Logger
	metrics   *metrics
	transport http.RoundTripper
	mux       *http.ServeMux
	created   int64
	bufs      sync.Pool // *[]byte of copyBuffer bytes

	mu   sync.Mutex
	addr net.Addr
	up   chan struct{}
}

var _ http.Handler = (*Gateway)(nil)

// New returns a Gateway routing with rt. reg receives its metrics (nil: none).
func New(cfg Config, rt ModelRouter, log *slog.Logger, reg prometheus.Registerer) (*Gateway, error) {
	return newGateway(cfg, rt, log, reg, nil)
}

// newGateway builds a Gateway that routes with rt or, when e is set, asks the remote EPP e.
func newGateway(cfg Config, rt ModelRouter, log *slog.Logger, reg prometheus.Registerer, e *epp) (*Gateway, error) {
	if rt == nil {
		return nil, errors.New("gateway: nil router")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Addr == "" {
		cfg.Addr = DefaultAddr
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.MaxHeaderBytes <= 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = openai.DefaultMaxBodyBytes
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if cfg.MigrationLimit == 0 {
		cfg.MigrationLimit = DefaultMigrationLimit
	}
	if cfg.MigrationStall == 0 {
		cfg.MigrationStall = DefaultMigrationStall
	}
	if cfg.MigrationMaxTokens <= 0 {
		cfg.MigrationMaxTokens = DefaultMigrationMaxTokens
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	g := &Gateway{cfg: cfg, router: rt, epp: e, log: log, metrics: m, created: time.Now().Unix(), up: make(chan struct{})}
	g.bufs.New = func() any { b := make([]byte, copyBuffer); return &b }
	g.transport = cfg.Transport
	if g.transport == nil {
		g.transport = &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:          1024,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: cfg.ResponseHeaderTimeout,
			DisableCompression:    true,
			TLSClientConfig:       cfg.EngineTLS.Clone(), // a Transport adds its ALPN protocols to its config: one each
			ForceAttemptHTTP2:     true,                  // over TLS only; plain http stays HTTP/1.1
		}
	}
	g.mux = http.NewServeMux()
	complete := g.proxy
	if e != nil {
		complete = g.proxyEPP
	}
	g.mux.HandleFunc("POST /v1/chat/completions", complete)
	g.mux.HandleFunc("POST /v1/completions", complete)
	g.mux.HandleFunc("POST "+router.PathResponses, complete)
	g.mux.HandleFunc("POST "+router.PathEmbeddings, complete)
	g.mux.HandleFunc("POST "+anthropic.Path, messages(complete))
	g.mux.HandleFunc(patternPassthrough, g.passthrough(complete))
	g.mux.HandleFunc("GET /v1/models", g.models)
	g.mux.HandleFunc("GET /health", g.health)
	if cfg.Gatherer != nil {
		g.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	return g, nil
}

// copyBuffer is the size of the buffer a response is copied through.
const copyBuffer = 32 << 10

// ServeHTTP serves the OpenAI API, /health and /metrics; anything else is an OpenAI 404 (or
// 405 for a path served with another method), and headers over MaxHeaderBytes an OpenAI 431.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if headerBytes(r.Header) > g.cfg.MaxHeaderBytes {
		if r.ProtoMajor == 1 {
			w.Header().Set(headerConnection, "close")
		}
		writeErr(w, headersTooLarge(g.cfg.MaxHeaderBytes))
		return
	}
	h, pattern := g.mux.Handler(r)
	if pattern == "" {
		for _, m := range [...]string{http.MethodPost, http.MethodGet} {
			if _, p := g.mux.Handler(&http.Request{Method: m, URL: r.URL, Host: r.Host}); p != "" {
				w.Header().Set("Allow", m)
				writeErr(w, methodNotAllowed(r.Method, r.URL.Path))
				return
			}
		}
		writeErr(w, notFound(r.Method, r.URL.Path))
		return
	}
	h.ServeHTTP(w, r)
}

// Addr returns the bound address of Run, waiting until it is bound or ctx ends.
func (g *Gateway) Addr(ctx context.Context) (net.Addr, error) {
	select {
	case <-g.up:
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.addr, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run listens on cfg.Addr (with TLS when cfg.TLS is set) and serves until ctx ends, then
// shuts down gracefully.
func (g *Gateway) Run(ctx context.Context) error {
	lis, err := net.Listen("tcp", g.cfg.Addr)
	if err != nil {
		return fmt.Errorf("gateway: listen: %w", err)
	}
	return g.Serve(ctx, lis)
}

// Serve serves on lis (TLS on top when cfg.TLS is set) until ctx ends, then waits up to 10s
// for open requests.
func (g *Gateway) Serve(ctx context.Context, lis net.Listener) error {
	srv := &http.Server{
		Handler:           g,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    max(2*g.cfg.MaxHeaderBytes, http.DefaultMaxHeaderBytes),
		ErrorLog:          slog.NewLogLogger(g.log.Handler(), slog.LevelDebug),
	}
	if g.cfg.TLS != nil {
		srv.TLSConfig = g.cfg.TLS.Clone()
	}
	g.mu.Lock()
	g.addr = lis.Addr()
	g.mu.Unlock()
	close(g.up)
	g.log.Info("gateway listening", "addr", lis.Addr().String(), "tls", g.cfg.TLS != nil)
	if err := httpproxy.Serve(ctx, srv, lis); err != nil {
		return fmt.Errorf("gateway: serve: %w", err)
	}
	return nil
}

func (g *Gateway) models(w http.ResponseWriter, _ *http.Request) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	names := g.router.Models()
	sort.Strings(names)
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, n := range names {
		list.Data = append(list.Data, model{ID: n, Object: "model", Created: g.created, OwnedBy: "kvgate"})
	}
	writeJSON(w, http.StatusOK, list)
}

func (g *Gateway) health(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}
