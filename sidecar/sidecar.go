// Package sidecar is the P/D proxy in front of a decode engine. In a disaggregated request's
// path it owns the step after the router's pick: the remote prefill on the engine the router
// named, then the local decode whose answer streams back. It owns no step of a KV event.
package sidecar

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/openai"
	"github.com/prometheus/client_golang/prometheus"
)

// Headers the sidecar reads and writes. HeaderPrefiller and HeaderPrefillEndpoint are the
// router's names (router.HeaderPrefiller, router.HeaderPrefillEndpoint); the sidecar sits
// below the router and repeats them.
const (
	// HeaderPrefiller names the prefill engine (ip:port) on a request; llm-d's decode
	// sidecars read the same header.
	HeaderPrefiller = "x-prefiller-host-port"
	// HeaderPrefillEndpoint is set on a response whose prompt was prefilled remotely.
	HeaderPrefillEndpoint = "x-kvgate-prefill-endpoint"
	// HeaderPrefillFallback is set on a response whose remote prefill failed and whose
	// prompt the local engine prefilled instead; the value is the reason.
	HeaderPrefillFallback = "x-kvgate-prefill-fallback"
	// HeaderDestination is the router's pick, then its ordered fallbacks, comma-separated
	// (router.HeaderDestination); the fallbacks are where a failed decode half migrates.
	HeaderDestination = "x-gateway-destination-endpoint"
	// headerRequestID is the request id both engines see (vLLM's X-Request-Id).
	headerRequestID = "X-Request-Id"
)

// Sidecar metric names.
const (
	MetricRemotePrefills = "kvgate_sidecar_remote_prefills_total"
	MetricFallbacks      = "kvgate_sidecar_prefill_fallbacks_total"
	MetricPrefillSeconds = "kvgate_sidecar_prefill_seconds"
	MetricRefused        = "kvgate_sidecar_prefill_refused_total"
	// MetricMigrations counts decode streams moved to a fallback decode endpoint, by reason.
	MetricMigrations = "kvgate_sidecar_migrations_total"
	// MetricMigratedRequests counts decode streams that needed migration, by outcome.
	MetricMigratedRequests = "kvgate_sidecar_migrated_requests_total"
	// MetricMigrationRefused counts fallbacks in HeaderDestination skipped because they are
	// not known decode endpoints (Config.Decode).
	MetricMigrationRefused = "kvgate_sidecar_migration_refused_total"
)

// Why a remote prefill was given up: the reason label of MetricFallbacks and the value
// of HeaderPrefillFallback.
const (
	FallbackBadAddress  = "bad_address"  // the header is not host:port
	FallbackBadRequest  = "bad_request"  // the body is not a JSON object
	FallbackConnect     = "connect"      // the prefill engine could not be reached
	FallbackTimeout     = "timeout"      // no answer within PrefillTimeout
	FallbackStatus      = "status"       // it answered an HTTP error
	FallbackBadResponse = "bad_response" // its answer is not JSON, or cut short
	FallbackNoParams    = "no_params"    // its answer has no kv_transfer_params
)

// Config configures a Sidecar. Zero fields take the defaults noted.
type Config struct {
	// Addr is the listen address ("127.0.0.1:0").
	Addr string
	// Engine is the local decode engine's OpenAI address, host:port (required).
	Engine string
	// Name labels the metrics (engine="..."); "" = Engine.
	Name string
	// PrefillTimeout bounds one remote prefill, queueing included (30s).
	PrefillTimeout time.Duration
	// DialTimeout bounds connecting to either engine (2s).
	DialTimeout time.Duration
	// MaxBodyBytes bounds the request bodies the sidecar reads (openai.DefaultMaxBodyBytes).
	MaxBodyBytes int64
	// Prefill is the set of prefill engines a request may name in HeaderPrefiller: the ones
	// the router could have named. A request naming another one is refused (403) and counted
	// in MetricRefused: nothing, prompt or credentials, is sent there. nil = none (every
	// request naming a prefill engine is refused).
	Prefill *PrefillSet
	// MigrationLimit bounds how often one disaggregated stream's decode half moves to a
	// fallback decode endpoint after the local engine failed or stalled. Zero:
	// DefaultMigrationLimit; negative: never (the stream is cut).
	MigrationLimit int
	// MigrationStall is how long a decode stream may go without an event after its first
	// token before it is migrated. Zero: DefaultMigrationStall; negative: only failures.
	MigrationStall time.Duration
	// MigrationMaxTokens is the most generated tokens a stream may have and still be
	// migrated. Zero: DefaultMigrationMaxTokens.
	MigrationMaxTokens int
	// Decode is the set of decode endpoints (as the router names them, usually their
	// sidecars) a continuation may be sent to, with the prompt and the client's credentials:
	// the fallbacks the router names that are not in it are skipped. nil = none (no
	// migration).
	Decode *PrefillSet
	// DecodeTLS, when set, is the client TLS config for the fallback decode endpoints (their
	// sidecars serve HTTPS).
	DecodeTLS *tls.Config
	// TLS, when set, makes the sidecar serve HTTPS (mutual TLS when it requires client certs).
	TLS *tls.Config
	// Transport overrides the HTTP transport to both engines (tests).
	Transport http.RoundTripper
}

// Migration defaults.
const (
	DefaultMigrationLimit     = 3
	DefaultMigrationStall     = 30 * time.Second
	DefaultMigrationMaxTokens = 32768
)

// Server is the decode node's P/D proxy, in front of the local decode engine. A completion
// request that names a prefill engine in HeaderPrefiller is first sent there with
// kv_transfer_params.do_remote_decode (max_tokens 1, not streamed); the kv_transfer_params it
// answers with go to the local engine with the original request, which pulls the prompt's KV
// blocks instead of computing them, and its answer streams back unbuffered. When the remote
// prefill fails the local engine prefills, and the client sees a normal answer. Everything
// else passes through. It is safe for concurrent use.
type Server struct {
	cfg       Config
	log       *slog.Logger
	lis       net.Listener
	transport http.RoundTripper
	proxy     *httputil.ReverseProxy

	decodeTransport http.RoundTripper // to fallback decode endpoints
	decodeScheme    string            // "http://" or "https://"

	remote         prometheus.Counter
	refused        prometheus.Counter
	fallback       *prometheus.CounterVec
	latency        prometheus.Histogram
	migrations     *prometheus.CounterVec
	migrated       *prometheus.CounterVec
	migrateRefused prometheus.Counter

	mu      sync.Mutex
	running bool

	refusedMu     sync.Mutex
	refusedLogged time.Time // last refusal logged
	refusedQuiet  int       // refusals since, not logged
}

// logRefused logs a refused prefill engine at most once every 10s, with the count of those
// not logged since: a flood of forged headers must not flood the log too.
func (s *Server) logRefused(prefiller, client string) {
	s.refusedMu.Lock()
	defer s.refusedMu.Unlock()
	if now := time.Now(); now.Sub(s.refusedLogged) >= 10*time.Second {
		s.log.Warn("request names an unknown prefill engine; refused", "prefill", prefiller, "client", client,
			"refused_since_last_log", s.refusedQuiet)
		s.refusedLogged, s.refusedQuiet = now, 0
		return
	}
	s.refusedQuiet++
}

var _ http.Handler = (*Server)(nil)

// New checks cfg and binds the listener; reg (nil: none) receives the metrics.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if _, _, err := net.SplitHostPort(cfg.Engine); err != nil {
		return nil, fmt.Errorf("sidecar: engine address %q is not host:port", cfg.Engine)
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Name == "" {
		cfg.Name = cfg.Engine
	}
	if cfg.PrefillTimeout <= 0 {
		cfg.PrefillTimeout = 30 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 2 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = openai.DefaultMaxBodyBytes
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
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log.With("component", "sidecar", "engine", cfg.Name), transport: cfg.Transport}
	if s.transport == nil {
		s.transport = &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        512,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
	}
	s.proxy = s.newProxy()
	s.decodeTransport, s.decodeScheme = s.transport, "http://"
	if cfg.DecodeTLS != nil {
		s.decodeScheme = "https://"
		if cfg.Transport == nil {
			t := s.transport.(*http.Transport).Clone()
			t.TLSClientConfig = cfg.DecodeTLS
			s.decodeTransport = t
		}
	}
	labels := prometheus.Labels{"engine": cfg.Name}
	s.remote = prometheus.NewCounter(prometheus.CounterOpts{Name: MetricRemotePrefills, ConstLabels: labels,
		Help: "Requests whose prompt a remote prefill engine computed (its KV then pulled by the local engine)."})
	s.refused = prometheus.NewCounter(prometheus.CounterOpts{Name: MetricRefused, ConstLabels: labels,
		Help: "Requests refused (403) because they named a prefill engine outside the known prefill set."})
	s.fallback = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricFallbacks, ConstLabels: labels,
		Help: "Remote prefills given up, by reason; the local engine prefilled instead."}, []string{"reason"})
	s.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricPrefillSeconds, ConstLabels: labels,
		Help:    "Time of successful remote prefill requests (queueing and prefill on the prefill engine).",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)})
	s.migrations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricMigrations, ConstLabels: labels,
		Help: "Decode streams moved to a fallback decode endpoint after the local engine failed or stalled, by reason."}, []string{"reason"})
	s.migrated = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricMigratedRequests, ConstLabels: labels,
		Help: "Decode streams that needed migration, by outcome (completed, limit, too_long, unsupported, no_endpoint, client_gone)."}, []string{"outcome"})
	s.migrateRefused = prometheus.NewCounter(prometheus.CounterOpts{Name: MetricMigrationRefused, ConstLabels: labels,
		Help: "Fallback decode endpoints named in x-gateway-destination-endpoint and skipped: not known decode endpoints."})
	if reg != nil {
		for _, c := range []prometheus.Collector{s.remote, s.refused, s.fallback, s.latency, s.migrations, s.migrated, s.migrateRefused} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("sidecar: metrics: %w", err)
			}
		}
	}
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("sidecar: listen: %w", err)
	}
	s.lis = lis
	return s, nil
}

// Addr is the bound listen address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close releases the listener of a server that will not Run.
func (s *Server) Close() error { return s.lis.Close() }

// Run serves until ctx ends, then closes the listener and waits up to 10s for open requests.
// It can be called once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("sidecar: Run called twice")
	}
	s.running = true
	s.mu.Unlock()
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, TLSConfig: s.cfg.TLS}
	s.log.Info("sidecar listening", "addr", s.Addr(), "decode_engine", s.cfg.Engine, "tls", s.cfg.TLS != nil,
		"prefill_engines", s.cfg.Prefill.Len(), "migration_limit", max(s.cfg.MigrationLimit, 0), "decode_fallbacks", s.cfg.Decode.Len())
	if err := httpproxy.Serve(ctx, srv, s.lis); err != nil {
		return fmt.Errorf("sidecar: serve: %w", err)
	}
	return nil
}

// ServeHTTP handles one request: remote prefill then local decode when the request names a
// prefill engine, a plain pass-through otherwise.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	prefiller := r.Header.Get(HeaderPrefiller)
	chat := r.URL.Path == "/v1/chat/completions"
	if prefiller == "" || r.Method != http.MethodPost || !(chat || r.URL.Path == "/v1/completions") {
		s.forward(w, r, nil, nil)
		return
	}
	if !s.cfg.Prefill.Has(prefiller) {
		// Not an engine the router could have named: a client (or anyone who can reach the
		// sidecar) is steering the prompt and its Authorization elsewhere.
		s.refused.Inc()
		s.logRefused(prefiller, r.RemoteAddr)
		writeErrorType(w, http.StatusForbidden, "permission_error",
			fmt.Sprintf("%s names %q, which is not a known prefill endpoint of this cluster", HeaderPrefiller, prefiller))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", s.cfg.MaxBodyBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "reading the request body: "+err.Error())
		return
	}
	if r.Header.Get(headerRequestID) == "" {
		r.Header.Set(headerRequestID, newRequestID())
	}
	out, why := s.remotePrefill(r, prefiller, body, chat)
	if r.Context().Err() != nil {
		return // the client went away during the prefill; nobody reads an answer
	}
	extra := http.Header{}
	if why != "" {
		s.fallback.WithLabelValues(why).Inc()
		extra.Set(HeaderPrefillFallback, why)
		out = body
	} else {
		s.remote.Inc()
		extra.Set(HeaderPrefillEndpoint, prefiller)
	}
	if m, cands := s.migratable(r, body); m != nil {
		s.decodeMigrating(w, r, out, extra, m, cands)
		return
	}
	s.forward(w, r, out, extra)
}

// remotePrefill runs the prompt on the prefill engine and returns the decode body (the
// original request carrying the prefill's kv_transfer_params), or the reason it failed.
func (s *Server) remotePrefill(r *http.Request, prefiller string, body []byte, chat bool) ([]byte, string) {
	host, port, err := net.SplitHostPort(prefiller)
	if err != nil || host == "" || port == "" || strings.ContainsAny(prefiller, "/?#@") {
		return nil, FallbackBadAddress
	}
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil || req == nil {
		return nil, FallbackBadRequest
	}
	pre := prefillBody(req, chat)
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.PrefillTimeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+prefiller+r.URL.Path, bytes.NewReader(pre))
	if err != nil {
		return nil, FallbackBadAddress
	}
	hreq.Header = prefillHeader(r)
	hreq.Header.Set("Content-Type", "application/json")
	hreq.ContentLength = int64(len(pre))
	start := time.Now()
	resp, err := s.transport.RoundTrip(hreq)
	if err != nil {
		return nil, s.failure(ctx, prefiller, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		s.log.Warn("remote prefill refused; prefilling locally", "prefill", prefiller, "status", resp.StatusCode, "body", string(msg))
		return nil, FallbackStatus
	}
	var ans struct {
		KVTransferParams json.RawMessage `json:"kv_transfer_params"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&ans); err != nil {
		if ctx.Err() != nil {
			return nil, s.failure(ctx, prefiller, err)
		}
		s.log.Warn("remote prefill answer unreadable; prefilling locally", "prefill", prefiller, "err", err)
		return nil, FallbackBadResponse
	}
	if p := bytes.TrimSpace(ans.KVTransferParams); len(p) == 0 || p[0] != '{' {
		s.log.Warn("remote prefill answered without kv_transfer_params; prefilling locally", "prefill", prefiller)
		return nil, FallbackNoParams
	}
	s.latency.Observe(time.Since(start).Seconds())
	req["kv_transfer_params"] = ans.KVTransferParams
	return encodeObject(req), ""
}

// encodeObject writes m as a JSON object, keys sorted. Its values are raw JSON that a
// json.Unmarshal (or the sidecar) produced, so they are written as they are: json.Marshal
// would validate and compact every value again, a prompt's worth of work per request.
func encodeObject(m map[string]json.RawMessage) []byte {
	keys := make([]string, 0, len(m))
	n := 2
	for k, v := range m {
		keys = append(keys, k)
		n += len(k) + len(v) + 8
	}
	slices.Sort(keys)
	out := make([]byte, 0, n)
	out = append(out, '{')
	for i, k := range keys {
		if i > 0 {
			out = append(out, ',')
		}
		kb, _ := json.Marshal(k) // a string always marshals
		out = append(out, kb...)
		out = append(out, ':')
		out = append(out, bytes.TrimSpace(m[k])...)
	}
	return append(out, '}')
}

// failure classifies a failed prefill round trip and logs it.
func (s *Server) failure(ctx context.Context, prefiller string, err error) string {
	why := FallbackConnect
	var ne net.Error
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		why = FallbackTimeout
	}
	s.log.Warn("remote prefill failed; prefilling locally", "prefill", prefiller, "reason", why, "err", err)
	return why
}

// prefillBody is the prefill engine's request: the client's, asking NixlConnector to keep
// the prompt's blocks for a remote decode, for one token, not streamed (as vLLM's P/D proxy
// builds it).
func prefillBody(req map[string]json.RawMessage, chat bool) []byte {
	pre := make(map[string]json.RawMessage, len(req)+2)
	for k, v := range req {
		pre[k] = v
	}
	one := json.RawMessage("1")
	pre["kv_transfer_params"] = json.RawMessage(`{"do_remote_decode":true,"do_remote_prefill":false,` +
		`"remote_engine_id":null,"remote_block_ids":null,"remote_host":null,"remote_port":null}`)
	pre["stream"] = json.RawMessage("false")
	pre["max_tokens"] = one
	if chat {
		pre["max_completion_tokens"] = one
	}
	delete(pre, "stream_options")
	delete(pre, "min_tokens") // more than max_tokens would be refused
	return encodeObject(pre)
}

// prefillHeader is the prefill request's header: the client's, less hop-by-hop headers (those
// Connection names too), the body's length, Accept-Encoding and the prefiller header, with the
// client's address appended to X-Forwarded-For.
func prefillHeader(r *http.Request) http.Header {
	out := r.Header.Clone()
	httpproxy.RemoveHopByHop(out)
	out.Del("Content-Length")
	out.Del("Accept-Encoding")
	out.Del(HeaderPrefiller)
	httpproxy.AddForwardedFor(out, r.RemoteAddr)
	return out
}

// extraKey carries the headers ServeHTTP adds to the decode engine's response through the
// proxy, to ModifyResponse.
type extraKey struct{}

// newProxy is the reverse proxy to the local decode engine: hop-by-hop headers (and those
// Connection names) stripped both ways, X-Forwarded-For appended, the answer flushed as it
// arrives, and a response cut short by the engine cut short for the client too.
func (s *Server) newProxy() *httputil.ReverseProxy {
	target := &url.URL{Scheme: "http", Host: s.cfg.Engine}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
			pr.SetXForwarded()
			pr.Out.Header.Del(HeaderPrefiller)
			pr.Out.Header.Del("Accept-Encoding")
		},
		Transport:     s.transport,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			if extra, ok := resp.Request.Context().Value(extraKey{}).(http.Header); ok {
				for k, vs := range extra {
					resp.Header[k] = vs
				}
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client went away; nobody reads an answer
			}
			s.log.Warn("decode engine unreachable", "err", err)
			writeError(w, http.StatusBadGateway, "decode engine unreachable")
		},
		ErrorLog:   slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BufferPool: &bufferPool{},
	}
}

// bufferPool recycles the proxy's copy buffers (32 KiB, one per response in flight).
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// forward proxies r, with body in place of its own when body is not nil, to the local engine
// and streams the answer back unbuffered, with extra headers added to the response.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, body []byte, extra http.Header) {
	if body != nil {
		r = r.WithContext(context.WithValue(r.Context(), extraKey{}, extra))
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.Header.Del("Content-Length")
	} else {
		// The engine may answer before the proxy has sent all of the client's body (or
		// before it has read the body's EOF): without full duplex the server closes the
		// body at the first write of the answer, the body copy to the engine fails and the
		// proxy drops the engine's connection mid-answer.
		_ = http.NewResponseController(w).EnableFullDuplex()
	}
	s.proxy.ServeHTTP(w, r)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	typ := "server_error"
	if code < 500 {
		typ = "invalid_request_error"
	}
	writeErrorType(w, code, typ, msg)
}

// writeErrorType writes an OpenAI-shaped error body.
func writeErrorType(w http.ResponseWriter, code int, typ, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": nil, "code": code,
	}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return "kvgate-" + hex.EncodeToString(b[:])
}
