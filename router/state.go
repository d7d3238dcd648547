package router

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/kvindex"
)

// epState is the live state of one endpoint. Load counters are atomics so that scoring reads
// them without locks; the router's own accounting (prefill tokens, decode blocks, requests)
// only ever moves through Decision, which releases exactly what it added.
type epState struct {
	ep   Endpoint
	id   kvindex.EndpointID
	pool *poolCounters // the cumulative counts of its pool (Pools)
	// blockSize is ep.BlockSize, else the model map's, until KV events say otherwise.
	blockSize atomic.Int64
	warnedBS  atomic.Bool

	prefillTokens atomic.Int64 // uncached prompt tokens routed here, before their first token
	decodeBlocks  atomic.Int64 // blocks held by requests routed here, until they end
	requests      atomic.Int64 // requests routed here, until they end

	reading        atomic.Pointer[loadReading] // last successful scrape
	unhealthyUntil atomic.Int64                // unix nanoseconds; 0 = healthy
	lastErr        atomic.Pointer[string]

	// maxLens is the engine's max_model_len per model from its /v1/models; nil until asked.
	maxLens atomic.Pointer[map[string]int]

	fed     atomic.Bool   // some KV-event batch was applied
	batches atomic.Uint64 // KV-event batches applied
	gaps    atomic.Uint64 // gaps (and restarts) seen
	// gapLog rate-limits the gap warning to one line per GapLogEvery per endpoint,
	// carrying the count of gaps it stands for.
	gapLog *engine.LogLimiter

	// cancel stops the endpoint's goroutines; nil when not running. Guarded by Router.mu.
	cancel context.CancelFunc

	// noMetrics: the engine answers /metrics with something that is not vLLM's or SGLang's
	// (404, JSON): its load is the router's own in-flight accounting (LoadSourceRouter).
	noMetrics atomic.Bool
	// downAt is when a refused connection last took the endpoint out (unix nanoseconds), 0
	// once it answered again: when every endpoint is down, the one down longest is tried.
	downAt atomic.Int64
	// answered: the endpoint has answered a probe since the router learnt of it. Only such an
	// endpoint gets a downAt: one that never answered is not an engine restarting, and when
	// nothing else is ready the answer is 503 (the Endpoint Picker Protocol's "none ready").
	answered atomic.Bool
	// recheck asks the scrape loop for a health probe now (a request just failed to connect).
	recheck chan struct{}
}

// Load sources (EndpointLoad.LoadSource, MetricLoadSource's source label).
const (
	LoadSourceEngine  = "engine"  // the engine's Prometheus /metrics
	LoadSourceRouter  = "router"  // no usable /metrics: the router's own in-flight accounting
	LoadSourceUnknown = "unknown" // nothing read yet (or the last reading is stale)
)

// loadSource says where the endpoint's load comes from now.
func (s *epState) loadSource(now time.Time, staleAfter time.Duration) string {
	if _, ok := s.load(now, staleAfter); ok {
		return LoadSourceEngine
	}
	if s.noMetrics.Load() {
		return LoadSourceRouter
	}
	return LoadSourceUnknown
}

// wake asks the scrape loop for a probe now; it never blocks.
func (s *epState) wake() {
	select {
	case s.recheck <- struct{}{}:
	default:
	}
}

type loadReading struct {
	engine.Load
	at time.Time
}

// hasEvents reports whether the endpoint's cache is known from KV events (configured, or fed
// through ApplyEvents), rather than approximated from the router's own decisions.
func (s *epState) hasEvents() bool { return s.ep.KVEvents != "" || s.fed.Load() }

func (s *epState) bs() int { return int(s.blockSize.Load()) }

func (s *epState) healthy(now time.Time) bool {
	u := s.unhealthyUntil.Load()
	return u == 0 || now.UnixNano() >= u
}

func (s *epState) markUnhealthy(now time.Time, d time.Duration, why string) {
	s.unhealthyUntil.Store(now.Add(d).UnixNano())
	s.lastErr.Store(&why)
}

// load returns the engine-reported load when it is fresh.
func (s *epState) load(now time.Time, staleAfter time.Duration) (engine.Load, bool) {
	r := s.reading.Load()
	if r == nil || now.Sub(r.at) > staleAfter {
		return engine.Load{}, false
	}
	return r.Load, true
}

func (s *epState) addLoad(prefillTokens, decodeBlocks int64, requests int64) {
	s.prefillTokens.Add(prefillTokens)
	s.decodeBlocks.Add(decodeBlocks)
	s.requests.Add(requests)
}
