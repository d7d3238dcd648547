// Package router picks the engine for each OpenAI request: it tracks the endpoint set, their
// KV-cache contents (from KV events, or approximately from its own decisions) and their load,
// and scores them as Dynamo's KV router does.
// In a request's path it owns R5 (score and pick; it drives R3 and R4) and R8 (load release);
// in a KV event's path, E4 (reading it from a relay or the engine, endpoint identity).
package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/backoff"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/kvindex"
)

// Router is the endpoint picker. Route, Pick and the Decision methods are safe for concurrent
// use, and so are SetEndpoints and the event and load feeds.
type Router struct {
	cfg    Config
	log    *slog.Logger
	m      *metrics
	zmq    *engine.ZMQMetrics // connections the KV-event subscribers reject
	index  *kvindex.Index     // exact, from KV events
	approx *kvindex.Approx    // endpoints without events: prompt blocks routed there
	// pending: endpoints with events, prompt blocks routed there in the last PendingTTL,
	// whose BlockStored events may not have arrived yet (the prefill is still running).
	pending *kvindex.Approx
	text    *kvindex.Approx // approx-prefix: text chunks routed there

	pickMu sync.Mutex
	ranker *Ranker

	lora     loraState  // adapters loaded by the router (lora.go)
	loraPick sync.Mutex // serialises picks of loadable adapters

	mu   sync.RWMutex
	eps  map[string]*epState
	list []*epState // sorted by name
	// gone: models no endpoint serves any more, with when the last one left (ModelGrace).
	gone   map[string]time.Time
	runCtx context.Context
	runWG  *sync.WaitGroup // goroutines of the running Run

	adm      *admission // requests waiting for room
	sessions *sessions  // session affinity's bindings

	pool      sync.Pool // *scratch
	hashBufs  sync.Pool // *[]kvindex.BlockHash: approximate-mode prompts kept until Done
	tokenBufs sync.Pool // *[]uint32: a chat prompt's token ids, for the length of a Route
	textBufs  sync.Pool // *[]byte: a chat prompt's rendered text, for the length of a Route
	tokBytes  sync.Map  // *tokenizer.Tokenizer -> the most bytes one of its tokens stands for

	poolCounts sync.Map // Pool -> *poolCounters (pools.go)
}

// New builds a Router from cfg; log may be nil (discard) and reg may be nil (no metrics).
// Nothing runs until Run; Route works without Run, with the state fed to it.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Router, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	p, err := NewRanker(cfg.Policy, cfg.Scoring, rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)))
	if err != nil {
		return nil, err
	}
	r := &Router{
		cfg:     cfg,
		log:     log.With("component", "router"),
		ranker:  p,
		approx:  kvindex.NewApprox(cfg.ApproxTTL, cfg.ApproxCapacity),
		pending: kvindex.NewApprox(cfg.PendingTTL, cfg.ApproxCapacity),
		text:    kvindex.NewApprox(cfg.ApproxTTL, cfg.TextCapacity),
		eps:     map[string]*epState{},
	}
	r.index = kvindex.New(reg)
	r.m = newMetrics(reg, r)
	r.adm = newAdmission(reg)
	r.sessions = newSessions(cfg.SessionTTL, reg)
	r.zmq = engine.NewZMQMetrics(reg)
	r.pool.New = func() any { return &scratch{} }
	if err := r.setEndpoints(cfg.Endpoints); err != nil {
		return nil, err
	}
	r.loadTokenizers(cfg.Endpoints)
	return r, nil
}

// Policy returns the routing policy.
func (r *Router) Policy() string { return r.cfg.Policy }

// Run subscribes to every endpoint's KV events and scrapes its metrics until ctx is done,
// then stops them and returns nil. Endpoints added later by SetEndpoints start at once.
func (r *Router) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.runCtx != nil {
		r.mu.Unlock()
		return fmt.Errorf("router: Run is already running")
	}
	r.runCtx = ctx
	wg := &sync.WaitGroup{} // this Run's goroutines; a later Run gets its own
	r.runWG = wg
	for _, s := range r.list {
		r.startLocked(s)
	}
	r.mu.Unlock()

	<-ctx.Done()

	r.mu.Lock()
	for _, s := range r.list {
		r.stopLocked(s)
	}
	r.runCtx, r.runWG = nil, nil
	r.mu.Unlock()
	wg.Wait()
	return nil
}

// startLocked starts s's event subscription and scraping under the running context.
func (r *Router) startLocked(s *epState) {
	if r.runCtx == nil || s.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(r.runCtx)
	s.cancel = cancel
	src, ownsLoad := r.eventSource(s)
	if src != nil {
		r.runWG.Go(func() { r.subscribe(ctx, s, src) })
	}
	if r.cfg.ScrapeInterval > 0 && !ownsLoad {
		r.runWG.Go(func() { r.scrapeLoop(ctx, s) })
	}
}

// subscribe runs s's KV-event source until ctx ends; a source that fails (a bind refused,
// say) is retried after a jittered pause that grows to subscribeRetry.
func (r *Router) subscribe(ctx context.Context, s *epState, src EventSource) {
	retry := backoff.New(subscribeRetry/8, subscribeRetry)
	for {
		err := src.Run(ctx, r.handler(s))
		if ctx.Err() != nil {
			return
		}
		r.log.Error("kv events: source failed; retrying", "endpoint", s.ep.Name, "err", err)
		if !retry.Wait(ctx) {
			return
		}
	}
}

// subscribeRetry is the longest wait between attempts of a failed KV-event subscription.
const subscribeRetry = 2 * time.Second

func (r *Router) stopLocked(s *epState) {
	if s.cancel != nil {
		s.cancel()
		s.cancel = nil
	}
}

// SetEndpoints replaces the endpoint set (discovery calls it on every change). Endpoints that
// stay (same Name, same settings) keep their state, load and cache; changed ones are
// restarted; removed ones are forgotten. Invalid endpoints are skipped and logged.
func (r *Router) SetEndpoints(eps []Endpoint) {
	if err := r.setEndpoints(eps); err != nil {
		r.log.Error("endpoints", "err", err)
	}
	r.loadTokenizers(eps)
}

// loadTokenizers loads the tokenizer of every model eps serve (an adapter's base model's)
// now, so that no request pays for it: loading Qwen3's takes about 0.3-0.5 s of CPU, and the
// requests that arrive while the first one loads it all wait (New and SetEndpoints call it,
// outside r.mu; a tokenizer already loaded costs a map lookup). Models the model map does
// not list are skipped: they are routed by load alone. Config.LazyTokenizers turns it off.
func (r *Router) loadTokenizers(eps []Endpoint) {
	if r.cfg.LazyTokenizers {
		return
	}
	known := r.cfg.Models.Names()
	var done []string
	for _, e := range eps {
		for _, m := range e.Models {
			if base, ok := r.cfg.Adapters[m]; ok {
				m = base
			}
			if slices.Contains(done, m) || !slices.Contains(known, m) {
				continue
			}
			done = append(done, m)
			tok := r.tokenizer(m)
			if tok == nil {
				r.log.Warn("model's tokenizer does not load; its requests are routed by load alone", "model", m)
				continue
			}
			r.maxTokenBytes(tok) // the length check's bound, a walk over the vocabulary
		}
	}
}

func (r *Router) setEndpoints(eps []Endpoint) error {
	var errs []error
	next := make(map[string]Endpoint, len(eps))
	for _, e := range eps {
		if err := e.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if _, dup := next[e.Name]; dup {
			errs = append(errs, fmt.Errorf("router: endpoint %s listed twice", e.Name))
			continue
		}
		e.Models = slices.Clone(e.Models)
		next[e.Name] = e
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.noteGoneLocked(next, time.Now())
	var removed []*epState
	for name, s := range r.eps {
		if e, ok := next[name]; !ok || !same(s.ep, e) {
			r.stopLocked(s)
			delete(r.eps, name)
			removed = append(removed, s)
		}
	}
	for _, s := range removed {
		r.index.RemoveEndpoint(s.id)
		r.approx.RemoveEndpoint(s.id)
		r.pending.RemoveEndpoint(s.id)
		r.text.RemoveEndpoint(s.id)
	}
	for name, e := range next {
		if _, ok := r.eps[name]; ok {
			continue
		}
		s := &epState{ep: e, id: r.index.Endpoint(name), gapLog: engine.NewLogLimiter(r.log, GapLogEvery), pool: r.poolCountersOf(e),
			recheck: make(chan struct{}, 1)}
		bs := e.BlockSize
		if bs == 0 {
			bs = r.modelBlockSize(e.Models)
		}
		s.blockSize.Store(int64(bs))
		r.eps[name] = s
		r.startLocked(s)
	}
	r.list = r.list[:0:0]
	for _, s := range r.eps {
		r.list = append(r.list, s)
	}
	slices.SortFunc(r.list, func(a, b *epState) int { return cmpString(a.ep.Name, b.ep.Name) })
	if len(errs) > 0 {
		return fmt.Errorf("router: %d endpoints skipped: %v", len(errs), errs)
	}
	return nil
}

func (r *Router) modelBlockSize(models []string) int {
	for _, m := range models {
		if base, ok := r.cfg.Adapters[m]; ok {
			m = base
		}
		for _, mm := range r.cfg.Models.Models() {
			if mm.Name == m {
				return mm.BlockSize
			}
		}
	}
	return 16
}

// Endpoints returns the current endpoint set, sorted by name. The caller owns the slice.
func (r *Router) Endpoints() []Endpoint {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]Endpoint, len(r.list))
	for i, s := range r.list {
		out[i] = s.ep
		out[i].Models = slices.Clone(s.ep.Models)
	}
	return out
}

// Models returns the model names the current endpoints serve, sorted (for /v1/models).
func (r *Router) Models() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []string
	for _, s := range r.list {
		for _, m := range s.ep.Models {
			if !slices.Contains(out, m) {
				out = append(out, m)
			}
		}
	}
	out = r.loadableModels(out)
	slices.Sort(out)
	return out
}

// noteGoneLocked records the models the current endpoints serve and next does not, and
// forgets those next serves again or whose grace has passed. r.mu is held.
func (r *Router) noteGoneLocked(next map[string]Endpoint, now time.Time) {
	if r.cfg.ModelGrace < 0 {
		return
	}
	served := make(map[string]bool)
	for _, e := range next {
		for _, m := range e.Models {
			served[m] = true
		}
	}
	for _, s := range r.list {
		for _, m := range s.ep.Models {
			if !served[m] {
				if r.gone == nil {
					r.gone = make(map[string]time.Time)
				}
				r.gone[m] = now
			}
		}
	}
	for m, at := range r.gone {
		if served[m] || now.Sub(at) > r.cfg.ModelGrace {
			delete(r.gone, m)
		}
	}
}

// recentlyServed reports whether model was served until less than ModelGrace ago.
func (r *Router) recentlyServed(model string, now time.Time) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	at, ok := r.gone[model]
	return ok && now.Sub(at) <= r.cfg.ModelGrace
}

// EndpointLoad is the router's view of one endpoint's load.
type EndpointLoad struct {
	Name          string
	PrefillTokens int64 // uncached prompt tokens routed there, before their first token
	DecodeBlocks  int64 // blocks held by requests routed there, until they end
	Requests      int64 // requests routed there, until they end
	CachedBlocks  int   // blocks the index holds for it (from KV events)
	Healthy       bool
	Engine        engine.Load // last fresh scrape
	EngineFresh   bool
	// LoadSource is where its load comes from: LoadSourceEngine, LoadSourceRouter (the
	// engine serves no usable /metrics: Requests and the router's prefill and decode
	// accounting are all there is) or LoadSourceUnknown.
	LoadSource string
}

// Load returns the load of every endpoint, sorted by name.
func (r *Router) Load() []EndpointLoad {
	now := r.cfg.Now()
	var out []EndpointLoad
	for _, s := range r.states() {
		l, fresh := s.load(now, r.cfg.MetricsStaleAfter)
		out = append(out, EndpointLoad{
			Name: s.ep.Name, PrefillTokens: s.prefillTokens.Load(), DecodeBlocks: s.decodeBlocks.Load(),
			Requests: s.requests.Load(), CachedBlocks: r.index.Blocks(s.id), Healthy: s.healthy(now),
			Engine: l, EngineFresh: fresh, LoadSource: s.loadSource(now, r.cfg.MetricsStaleAfter),
		})
	}
	return out
}

func (r *Router) state(name string) *epState {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.eps[name]
}

// states returns the current states, sorted by name; the slice is a snapshot.
func (r *Router) states() []*epState {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.list)
}

// markDown takes the endpoint at address out of rotation after a connection failure.
func (r *Router) markDown(address string, err error) {
	now := r.cfg.Now()
	for _, s := range r.states() {
		if s.ep.Address == address {
			if s.healthy(now) {
				r.log.Warn("endpoint failed a request, out of rotation", "endpoint", s.ep.Name, "for", r.cfg.UnhealthyFor, "err", err)
			}
			s.markUnhealthy(now, r.cfg.UnhealthyFor, fmt.Sprint(err))
			if (isConnError(err) || errors.Is(err, errFallback)) && s.answered.Load() {
				s.downAt.Store(now.UnixNano())
			}
			s.wake() // probe it now: an engine restarting is often back within the second
		}
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
