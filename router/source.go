package router

import (
	"context"
	"strings"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/trtllm"
)

// EventSource is where one endpoint's KV events come from: the engine's own ZMQ publisher
// (engine.Subscriber, the default) or a relay in front of it (relay.Client, wired by the
// command through Config.EventSource).
//
// Run delivers batches to h until ctx ends, then returns nil; a non-nil error means the
// source failed: it is logged and Run is called again after a pause. Run calls
// h.Batch and h.Gap from one goroutine at a time; h also has Load (relay.LoadHandler), which a source
// that carries the engine's load may call from another goroutine. A source that restarts
// its stream must begin it with an AllBlocksCleared event (a snapshot) or call Gap first.
type EventSource interface {
	Run(ctx context.Context, h engine.Handler) error
}

var (
	_ EventSource = (*engine.Subscriber)(nil)
	_ EventSource = (*trtllm.Poller)(nil)
)

// Load is how a source that carries the engine's load and health (relay.Client, through its
// relay.LoadHandler) reports them: the load counts as a fresh scrape, healthy false takes the
// endpoint out of rotation for UnhealthyFor and healthy true puts it back. Safe for concurrent
// use. Load records a source-reported load, unless the endpoint has been removed or replaced.
func (h *eventHandler) Load(l engine.Load, healthy bool) {
	r, s := h.r, h.s
	if r.state(s.ep.Name) != s {
		return
	}
	now := r.cfg.Now()
	if !healthy {
		if s.healthy(now) {
			r.log.Warn("event source reports the engine unhealthy, out of rotation", "endpoint", s.ep.Name, "for", r.cfg.UnhealthyFor)
		}
		s.markUnhealthy(now, r.cfg.UnhealthyFor, "the event source reports the engine unhealthy")
		return
	}
	s.reading.Store(&loadReading{Load: l, at: now})
	s.unhealthyUntil.Store(0)
}

// eventSource picks the source of s's events. Config.EventSource is asked first; a source
// it returns also owns the endpoint's load and health (ownsLoad: no scraping). Otherwise an
// endpoint with KVEvents gets a ZMQ subscriber and is scraped; one without gets nothing.
func (r *Router) eventSource(s *epState) (src EventSource, ownsLoad bool) {
	if r.cfg.EventSource != nil {
		if src := r.cfg.EventSource(s.ep); src != nil {
			return src, true
		}
	}
	if s.ep.KVEvents == "" {
		return nil, false
	}
	if strings.HasPrefix(s.ep.KVEvents, "http://") || strings.HasPrefix(s.ep.KVEvents, "https://") {
		// TensorRT-LLM's trtllm-serve: its KV-cache events are polled over HTTP (this router
		// must be their only reader: each poll drains the engine's buffer).
		return trtllm.NewPoller(trtllm.PollerConfig{URL: s.ep.KVEvents, BlockSize: s.bs(),
			Client: r.cfg.HTTPClient, Logger: r.log.With("endpoint", s.ep.Name)}), false
	}
	return engine.NewSubscriber(engine.SubscriberConfig{
		Endpoint: s.ep.KVEvents, Bind: s.ep.KVBind, Topic: s.ep.KVTopic,
		ReplayEndpoint: s.ep.KVReplay, Logger: r.log.With("endpoint", s.ep.Name),
		Limits: r.cfg.KVEventLimits, Metrics: r.zmq,
	}), false
}

// loadOnly is the handler of an endpoint whose source carries load but whose engine
// publishes no KV events: the relay's (empty) snapshots must not make the router believe it
// knows the cache, so batches and gaps are dropped and the endpoint stays approximate.
type loadOnly struct{ h *eventHandler }

func (l loadOnly) Batch(uint64, engine.EventBatch)   {}
func (l loadOnly) Gap(uint64, uint64)                {}
func (l loadOnly) Load(ld engine.Load, healthy bool) { l.h.Load(ld, healthy) }

// handler is what s's source delivers to.
func (r *Router) handler(s *epState) engine.Handler {
	h := &eventHandler{r: r, s: s}
	if s.ep.KVEvents == "" {
		return loadOnly{h}
	}
	return h
}
