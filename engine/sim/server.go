package sim

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tokenizer"
)

// ServerConfig is one simulated engine server. Zero fields take the defaults noted.
type ServerConfig struct {
	Addr         string // HTTP listen address ("127.0.0.1:0")
	Model        string // served model name (tokenizer.DefaultModel)
	TokenizerDir string // tokenizer.json directory ("" = the embedded Qwen3 tokenizer)
	// LoRAs are adapter names served beside Model, as vLLM's --lora-modules: a request for
	// one runs with that adapter, whose name is part of its block hashes and events.
	LoRAs  []string
	Engine Config
	// ChainOutput makes every answer a run of the output words in a fixed cyclic order,
	// continuing after the prompt's last word when it is one of them: a request continued
	// on another engine (prompt plus what was generated) gets exactly the rest of the
	// answer, and a repeated or missing token shows as a break in the order.
	ChainOutput bool
	// RuntimeLoRA serves vLLM's /v1/load_lora_adapter and /v1/unload_lora_adapter, which
	// vLLM serves only with VLLM_ALLOW_RUNTIME_LORA_UPDATING set. LoRA is on (adapters
	// accepted, vllm:lora_requests_info exported) with RuntimeLoRA, LoRAs or Engine.MaxLoRAs.
	RuntimeLoRA bool

	// KV events, as vLLM's --kv-events-config: a ZMQ PUB socket bound at (or, with
	// KVEventsDial, connecting to) KVEvents; "" publishes nothing.
	KVEvents       string
	KVEventsDial   bool
	KVEventsTopic  string
	KVEventsReplay string            // ZMQ ROUTER endpoint that resends buffered batches ("" = none)
	KVEventsLimits engine.ZMQLimits  // what a subscriber or replay client may send (engine's defaults)
	HashFormat     engine.HashFormat // engine.HashInt (vLLM's default) when 0
	EventShape     engine.Shape      // engine.ShapeMap (current vLLM) when 0
	// DataParallelRank is stamped on every batch, as vLLM's publisher stamps its
	// data-parallel rank (0 by default): [ts, events, 0] in the array shape.
	DataParallelRank int

	// P/D block transfer.
	TransferAddr  string        // block-transfer listen address (HTTP host, port 0)
	AdvertiseHost string        // remote_host returned to decode engines (the transfer listener's host)
	BlockBytes    int           // bytes per KV block on the wire (Engine.BlockBytes())
	HoldTimeout   time.Duration // how long prefilled blocks wait to be pulled (480s, vLLM's abort timeout)
	EngineID      string        // remote_engine_id ("sim-" + transfer port)

	MaxBodyBytes int64 // request body limit (8 MiB)

	// TLS, when set, serves the HTTP API over HTTPS and the block-transfer listener over TLS,
	// both with this configuration (a tlsconfig server config: with ClientCAs and
	// RequireAndVerifyClientCert, both require client certificates). nil is plaintext.
	TLS *tls.Config
	// PeerTLS, when set, is the client configuration of this engine's connections to other
	// engines: P/D block pulls, and a P2P pull's lookup (HTTPS) and pull. nil is plaintext.
	PeerTLS *tls.Config
}

// Server is one simulated vLLM: the OpenAI HTTP API, the KV-event publisher, the block
// transfer endpoint, and a driver that runs the Engine in real time.
type Server struct {
	cfg     ServerConfig
	log     *slog.Logger
	tok     *tokenizer.Tokenizer
	vocab   vocabulary
	text    map[uint32]string
	reg     *prometheus.Registry
	metrics *metrics
	drv     *driver
	pub     publisher
	httpLn  net.Listener
	xferLn  net.Listener
	seq     atomic.Uint64
	created int64
	peers   *http.Client // asks P2P sources for their transfer address
	loras   *loraRegistry
	// loraLoads counts runtime adapter loads.
	loraLoads atomic.Int64

	mu      sync.Mutex
	running bool
}

// publisher is what the server needs of the engine package's ZMQ publisher.
type publisher interface {
	Publish(engine.EventBatch) (uint64, error)
	Addr() string
	ReplayAddr() string
	Close() error
}

var _ publisher = (*engine.Publisher)(nil)

func newPublisher(cfg ServerConfig, log *slog.Logger, reg prometheus.Registerer) (publisher, error) {
	return engine.NewPublisher(engine.PublisherConfig{
		Endpoint: cfg.KVEvents, Dial: cfg.KVEventsDial, Topic: cfg.KVEventsTopic,
		ReplayEndpoint: cfg.KVEventsReplay, Shape: cfg.EventShape, HashFormat: cfg.HashFormat, Logger: log,
		DPRank: &cfg.DataParallelRank,
		Limits: cfg.KVEventsLimits, Metrics: engine.NewZMQMetrics(reg),
	})
}

// KVEventsAddr is the KV-event endpoint (the bound address, dialable), "" without events.
func (s *Server) KVEventsAddr() string {
	if s.pub == nil {
		return ""
	}
	return s.pub.Addr()
}

// KVEventsReplayAddr is the bound replay endpoint, "" without one.
func (s *Server) KVEventsReplayAddr() string {
	if s.pub == nil {
		return ""
	}
	return s.pub.ReplayAddr()
}

// NewServer loads the tokenizer, builds the engine and binds the HTTP, transfer and KV-event
// sockets (so Addr is known before Run). reg receives the vLLM metrics and is what /metrics
// serves; nil makes a fresh registry. Each server needs a registry of its own, as each vLLM
// has its own /metrics.
func NewServer(cfg ServerConfig, log *slog.Logger, reg *prometheus.Registry) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Model == "" {
		cfg.Model = tokenizer.DefaultModel
	}
	if cfg.HashFormat == 0 {
		cfg.HashFormat = engine.HashInt
	}
	if cfg.HoldTimeout <= 0 {
		cfg.HoldTimeout = 480 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 8 << 20
	}
	if cfg.TLS != nil && len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil && cfg.TLS.GetConfigForClient == nil {
		return nil, errors.New("sim: the TLS configuration has no server certificate")
	}
	cfg.Engine = cfg.Engine.WithDefaults()
	if cfg.BlockBytes <= 0 {
		cfg.BlockBytes = cfg.Engine.BlockBytes()
	}
	eng, err := New(cfg.Engine)
	if err != nil {
		return nil, err
	}
	var tok *tokenizer.Tokenizer
	if cfg.TokenizerDir == "" {
		tok, err = tokenizer.Default()
	} else {
		tok, err = tokenizer.Load(cfg.TokenizerDir)
	}
	if err != nil {
		return nil, fmt.Errorf("sim: tokenizer: %w", err)
	}
	m, err := newMetrics(reg, cfg.Model, cfg.Engine)
	if err != nil {
		return nil, fmt.Errorf("sim: metrics: %w", err)
	}
	if cfg.RuntimeLoRA || len(cfg.LoRAs) > 0 || cfg.Engine.MaxLoRAs > 0 {
		if m.lora, err = newLoRAInfo(reg, cfg.Engine.MaxLoRAs); err != nil {
			return nil, fmt.Errorf("sim: metrics: %w", err)
		}
	}
	s := &Server{cfg: cfg, log: log, tok: tok, reg: reg, metrics: m, created: time.Now().Unix(), loras: newLoRARegistry(cfg.LoRAs),
		peers: &http.Client{Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: cfg.PeerTLS}, Timeout: 10 * time.Second}}
	s.vocab = newVocabulary(tok.Encode)
	s.text = make(map[uint32]string, len(s.vocab.ids))
	for i, id := range s.vocab.ids {
		s.text[id] = s.vocab.text[i]
	}

	s.httpLn, err = net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("sim: listen: %w", err)
	}
	xferAddr := cfg.TransferAddr
	if xferAddr == "" {
		host, _, _ := net.SplitHostPort(s.httpLn.Addr().String())
		xferAddr = net.JoinHostPort(host, "0")
	}
	s.xferLn, err = net.Listen("tcp", xferAddr)
	if err != nil {
		s.httpLn.Close()
		return nil, fmt.Errorf("sim: transfer listen: %w", err)
	}
	if cfg.TLS != nil {
		s.xferLn = tls.NewListener(s.xferLn, cfg.TLS.Clone())
	}
	if s.cfg.AdvertiseHost == "" {
		host, _, _ := net.SplitHostPort(s.xferLn.Addr().String())
		if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
			host = "127.0.0.1"
		}
		s.cfg.AdvertiseHost = host
	}
	if s.cfg.EngineID == "" {
		s.cfg.EngineID = "sim-" + strconv.Itoa(s.TransferPort())
	}
	if cfg.KVEvents != "" {
		s.pub, err = newPublisher(cfg, log, reg)
		if err != nil {
			s.httpLn.Close()
			s.xferLn.Close()
			return nil, fmt.Errorf("sim: kv events: %w", err)
		}
	}
	s.drv = newDriver(eng, cfg.HoldTimeout, s.publish, m)
	return s, nil
}

// Addr is the HTTP address the server listens on.
func (s *Server) Addr() string { return s.httpLn.Addr().String() }

// URL is the base URL of the HTTP API: https://Addr with TLS, else http://Addr.
func (s *Server) URL() string {
	if s.cfg.TLS != nil {
		return "https://" + s.Addr()
	}
	return "http://" + s.Addr()
}

// TransferAddr is the block-transfer address.
func (s *Server) TransferAddr() string { return s.xferLn.Addr().String() }

// TransferPort is the block-transfer port (remote_port in kv_transfer_params).
func (s *Server) TransferPort() int { return s.xferLn.Addr().(*net.TCPAddr).Port }

// Stats returns the engine's counters and occupancy.
func (s *Server) Stats() Stats { return s.drv.stats() }

// Run publishes AllBlocksCleared (a fresh engine holds nothing, whatever a subscriber
// remembers of a previous one), then serves until ctx ends, and closes everything it opened.
// It may be called once.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("sim: Run called twice")
	}
	s.running = true
	s.mu.Unlock()

	s.publish([]KVEvent{{Kind: AllBlocksCleared}})
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	// Failed TLS handshakes (an untrusted or missing client certificate) are logged here.
	hs.ErrorLog = slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	serve := func() error { return hs.Serve(s.httpLn) }
	if s.cfg.TLS != nil {
		hs.TLSConfig = s.cfg.TLS.Clone()
		serve = func() error { return hs.ServeTLS(s.httpLn, "", "") }
	}
	var wg sync.WaitGroup
	wg.Go(func() { s.drv.run(ctx) })
	wg.Go(func() { s.serveTransfer(ctx) })
	errc := make(chan error, 1)
	go func() { errc <- serve() }()
	s.log.Info("sim serving", "addr", s.Addr(), "tls", s.cfg.TLS != nil, "peer_tls", s.cfg.PeerTLS != nil, "model", s.cfg.Model, "kv_events", s.KVEventsAddr(), "kv_events_replay", s.KVEventsReplayAddr(),
		"transfer", s.TransferAddr(), "blocks", s.cfg.Engine.NumBlocks, "block_size", s.cfg.Engine.BlockSize,
		"cpu_blocks", s.cfg.Engine.CPUBlocks, "disk_blocks", s.cfg.Engine.DiskBlocks)

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	if e := hs.Shutdown(sctx); e != nil {
		hs.Close()
	}
	s.xferLn.Close()
	wg.Wait()
	if s.pub != nil {
		if e := s.pub.Close(); e != nil && err == nil {
			err = e
		}
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// publish sends events as one batch, translated to the wire model.
func (s *Server) publish(evs []KVEvent) {
	if s.pub == nil || len(evs) == 0 {
		return
	}
	b := engine.EventBatch{TS: float64(time.Now().UnixNano()) / 1e9, Events: make([]engine.Event, len(evs))}
	for i, ev := range evs {
		b.Events[i] = toWire(ev, s.cfg.HashFormat)
		if ev.LoRAName != "" {
			b.Events[i].LoRAID = s.loraID(ev.LoRAName)
			if ev.Kind == BlockStored {
				// vLLM's extra_keys: per block, the adapter's name first (then multimodal
				// hashes and, on a request's first block, its cache_salt).
				keys := make([][]string, len(ev.Hashes))
				for j := range keys {
					keys[j] = []string{ev.LoRAName}
				}
				b.Events[i].BlockExtraKeys = keys
			}
		}
	}
	if _, err := s.pub.Publish(b); err != nil {
		s.log.Warn("kv events: publish failed", "err", err)
	}
}

// toWire turns a KVEvent into the codec's Event. Block hashes are the 32-byte digests for
// engine.HashBytes, and for engine.HashInt their 64-bit form (the last 8 bytes, big-endian,
// as vLLM converts its hashes to integers).
func toWire(ev KVEvent, f engine.HashFormat) engine.Event {
	wireHash := func(h BlockHash) engine.BlockHash {
		if f == engine.HashBytes {
			return engine.BlockHash(h[:])
		}
		return engine.HashFromUint64(h.Uint64())
	}
	out := engine.Event{Medium: ev.Medium.String()}
	switch ev.Kind {
	case AllBlocksCleared:
		out.Kind = engine.AllBlocksCleared
	case BlockRemoved:
		out.Kind = engine.BlockRemoved
	case BlockStored:
		out.Kind = engine.BlockStored
	}
	switch ev.Kind {
	case BlockStored:
		out.BlockSize = ev.BlockSize
		out.TokenIDs = ev.Tokens
		out.LoRAName = ev.LoRAName
		if ev.HasParent {
			out.Parent = wireHash(ev.Parent)
		}
		fallthrough
	case BlockRemoved:
		out.BlockHashes = make([]engine.BlockHash, len(ev.Hashes))
		for i, h := range ev.Hashes {
			out.BlockHashes[i] = wireHash(h)
		}
	}
	return out
}

// Handler is the HTTP API: /v1/chat/completions, /v1/completions, /v1/models, /tokenize,
// /health, /metrics, and PathKVTransferSource.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", s.handleChat)
	mux.HandleFunc("POST /v1/completions", s.handleCompletion)
	mux.HandleFunc("POST /v1/responses", s.handleResponses)
	mux.HandleFunc("POST /v1/embeddings", s.handleEmbeddings)
	mux.HandleFunc("POST /v1/messages", s.handleMessages)
	mux.HandleFunc("GET /v1/models", s.handleModels)
	mux.HandleFunc("POST /tokenize", s.handleTokenize)
	mux.HandleFunc("GET "+PathKVTransferSource, s.handleTransferSource)
	if s.cfg.RuntimeLoRA {
		mux.HandleFunc("POST /v1/load_lora_adapter", s.handleLoadLoRA)
		mux.HandleFunc("POST /v1/unload_lora_adapter", s.handleUnloadLoRA)
	}
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		openai.WriteError(w, openai.Errorf(http.StatusNotFound, openai.TypeNotFound, "", "Not Found: %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func (s *Server) handleModels(w http.ResponseWriter, _ *http.Request) {
	list := openai.ModelList{Object: openai.ObjectList, Data: []openai.Model{{
		ID: s.cfg.Model, Object: openai.ObjectModel, Created: s.created, OwnedBy: "vllm", Root: s.cfg.Model,
		MaxModelLen: s.maxModelLen(),
	}}}
	for _, l := range s.loras.names() {
		parent := s.cfg.Model
		list.Data = append(list.Data, openai.Model{ID: l, Object: openai.ObjectModel, Created: s.created, OwnedBy: "vllm",
			Root: l, Parent: &parent, MaxModelLen: s.maxModelLen()})
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) maxModelLen() int { return s.drv.eng.MaxModelLen() }

// tokenizeRequest is vLLM's /tokenize body: a completion prompt or chat messages.
type tokenizeRequest struct {
	Model               string          `json:"model"`
	Prompt              *string         `json:"prompt"`
	Messages            json.RawMessage `json:"messages"`
	Tools               json.RawMessage `json:"tools"`
	AddGenerationPrompt *bool           `json:"add_generation_prompt"`
	ChatTemplateKwargs  map[string]any  `json:"chat_template_kwargs"`
}

func (s *Server) handleTokenize(w http.ResponseWriter, r *http.Request) {
	body, err := openai.ReadBody(r.Body, s.cfg.MaxBodyBytes)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	var req tokenizeRequest
	if err := json.Unmarshal(body, &req); err != nil {
		openai.WriteError(w, openai.BadRequest("", "Invalid JSON body: %v", err))
		return
	}
	if _, err := s.checkModel(req.Model); err != nil {
		openai.WriteError(w, err)
		return
	}
	var ids []uint32
	switch {
	case req.Prompt != nil:
		ids = s.tok.Encode(*req.Prompt)
	case len(req.Messages) > 0:
		gen := req.AddGenerationPrompt == nil || *req.AddGenerationPrompt
		text, err := s.renderChat(req.Messages, req.Tools, gen, req.ChatTemplateKwargs)
		if err != nil {
			openai.WriteError(w, err)
			return
		}
		ids = s.tok.Encode(text)
	default:
		openai.WriteError(w, openai.BadRequest("prompt", "Either 'prompt' or 'messages' is required."))
		return
	}
	if ids == nil {
		ids = []uint32{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"tokens": ids, "count": len(ids), "max_model_len": s.maxModelLen()})
}

// checkModel accepts the served model, one of its LoRA adapters, or no name (the base model),
// and returns the adapter's name ("" for the base model).
func (s *Server) checkModel(model string) (string, error) {
	if model == "" || model == s.cfg.Model {
		return "", nil
	}
	if _, ok := s.loras.id(model); ok {
		return model, nil
	}
	return "", openai.ModelNotFound(model)
}

// loraID is vLLM's integer id of an adapter: 1 for the first added, counting up.
func (s *Server) loraID(name string) *int {
	if id, ok := s.loras.id(name); ok {
		return &id
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		openai.WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
