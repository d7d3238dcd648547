// Package sidecar is the P/D proxy in front of a decode engine. In a disaggregated request's
// path it owns the step after the router's pick: the remote prefill on the engine the router
// named, then the local decode whose answer streams back. It owns no step of a KV event.
package sidecar

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

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
	// headerRequestID is the request id both engines see (vLLM's X-Request-Id).
	headerRequestID = "X-Request-Id"
)

// Sidecar metric names.
const (
	MetricRemotePrefills = "kvgate_sidecar_remote_prefills_total"
	MetricFallbacks      = "kvgate_sidecar_prefill_fallbacks_total"
	MetricPrefillSeconds = "kvgate_sidecar_prefill_seconds"
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
	// MaxBodyBytes bounds the request bodies the sidecar reads (16 MiB).
	MaxBodyBytes int64
	// Transport overrides the HTTP transport to both engines (tests).
	Transport http.RoundTripper
}

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

	remote    prometheus.Counter
	fallbacks *prometheus.CounterVec
	latency   prometheus.Histogram

	mu      sync.Mutex
	running bool
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
		cfg.MaxBodyBytes = 16 << 20
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
	labels := prometheus.Labels{"engine": cfg.Name}
	s.remote = prometheus.NewCounter(prometheus.CounterOpts{Name: MetricRemotePrefills, ConstLabels: labels,
		Help: "Requests whose prompt a remote prefill engine computed (its KV then pulled by the local engine)."})
	s.fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricFallbacks, ConstLabels: labels,
		Help: "Remote prefills given up, by reason; the local engine prefilled instead."}, []string{"reason"})
	s.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricPrefillSeconds, ConstLabels: labels,
		Help:    "Time of successful remote prefill requests (queueing and prefill on the prefill engine).",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)})
	if reg != nil {
		for _, c := range []prometheus.Collector{s.remote, s.fallbacks, s.latency} {
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
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	s.log.Info("sidecar listening", "addr", s.Addr(), "decode_engine", s.cfg.Engine)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(s.lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("sidecar: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return nil
}

// ServeHTTP handles one request: remote prefill then local decode when the request names a
// prefill engine, a plain pass-through otherwise.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	prefiller := r.Header.Get(HeaderPrefiller)
	chat := r.URL.Path == "/v1/chat/completions"
	if prefiller == "" || r.Method != http.MethodPost || !(chat || r.URL.Path == "/v1/completions") {
		s.forward(w, r, r.Body, r.ContentLength, nil)
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
		s.fallbacks.WithLabelValues(why).Inc()
		extra.Set(HeaderPrefillFallback, why)
		out = body
	} else {
		s.remote.Inc()
		extra.Set(HeaderPrefillEndpoint, prefiller)
	}
	s.forward(w, r, bytes.NewReader(out), int64(len(out)), extra)
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
	hreq.Header = upstreamHeader(r.Header)
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

// hopHeaders are connection-level headers a proxy does not forward (RFC 9110 7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// upstreamHeader is h less hop-by-hop headers, the body's length and the prefiller header.
func upstreamHeader(h http.Header) http.Header {
	out := h.Clone()
	for _, k := range hopHeaders {
		out.Del(k)
	}
	out.Del("Content-Length")
	out.Del("Accept-Encoding")
	out.Del(HeaderPrefiller)
	return out
}

// forward proxies r with body to the local engine and streams the answer back unbuffered,
// with extra headers added to the response.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, body io.Reader, length int64, extra http.Header) {
	u := "http://" + s.cfg.Engine + r.URL.RequestURI()
	if r.ContentLength == 0 && length <= 0 {
		body = http.NoBody
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, u, body)
	if err != nil {
		writeError(w, http.StatusBadGateway, err.Error())
		return
	}
	req.Header = upstreamHeader(r.Header)
	req.ContentLength = length
	resp, err := s.transport.RoundTrip(req)
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Warn("decode engine unreachable", "err", err)
			writeError(w, http.StatusBadGateway, "decode engine unreachable: "+err.Error())
		}
		return
	}
	defer resp.Body.Close()
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	for k, vs := range extra {
		h[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	buf := make([]byte, 32<<10)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return // the client went away; the deferred Close aborts the engine's request
			}
			if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
				return
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				// Cut the client's response too, so it sees a broken stream rather than a
				// silently short one: net/http's documented abort, as httputil.ReverseProxy.
				s.log.Debug("decode engine answer cut short", "err", rerr)
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": msg, "type": "server_error", "param": nil, "code": code,
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
