package router

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/kvindex"
	"github.com/kvgate/kvgate/openai"
)

// eventSeed is the hash seed of a BlockStored event's blocks, the one the router gives the
// same prompt on the request side: kvindex.Seed(adapter, extra keys...).
//
// vLLM names an adapter request's adapter twice: in lora_name (and lora_id) and as the first
// of every block's extra_keys (generate_block_hash_extra_keys puts the adapter's name before
// multimodal hashes and the cache salt). Reading that first key as one more extra key, as a
// multimodal hash or salt would be, gives the blocks a seed no request has, and adapter
// prompts never match the cache. So the adapter's name is taken out of each block's keys;
// an event with lora_id but no lora_name (an older shape) names its adapter only there.
func eventSeed(ev *engine.Event) uint64 {
	lora := ev.LoRAName
	if len(ev.BlockExtraKeys) == 0 {
		return kvindex.Seed(lora, ev.ExtraKeys...)
	}
	if lora == "" && ev.LoRAID != nil {
		for _, bk := range ev.BlockExtraKeys {
			if len(bk) > 0 {
				lora = bk[0]
				break
			}
		}
	}
	var keys []string
	for _, bk := range ev.BlockExtraKeys {
		if lora != "" && len(bk) > 0 && bk[0] == lora {
			bk = bk[1:]
		}
		keys = append(keys, bk...)
	}
	return kvindex.Seed(lora, keys...)
}

// LoRAConfig lets the router load adapters onto engines through vLLM's runtime API
// (POST /v1/load_lora_adapter, which vLLM serves with VLLM_ALLOW_RUNTIME_LORA_UPDATING).
type LoRAConfig struct {
	// Paths maps adapter names to the lora_path an engine loads them from. An adapter with
	// a path and a base model in Config.Adapters may be routed to any endpoint serving that
	// base; when the pick has not loaded it, the router loads it there first.
	Paths map[string]string
	// LoadTimeout bounds one load or unload call. Zero: DefaultLoRALoadTimeout.
	LoadTimeout time.Duration
	// MissBlocks is what an endpoint without the adapter costs in the score, in prompt
	// blocks to prefill (the load's time and the churn of slots). Zero: DefaultLoRAMissBlocks.
	MissBlocks float64
}

// Defaults of LoRAConfig.
const (
	DefaultLoRALoadTimeout = 30 * time.Second
	// DefaultLoRAMissBlocks is 32 blocks of 16 tokens: 512 tokens of prefill, about 30 ms
	// on the sim's H100 model, three times the 10 ms of reading a rank-16 8B adapter.
	DefaultLoRAMissBlocks = 32
)

// LoRA load outcomes, the label of MetricLoRALoads.
const (
	loraLoaded = "loaded"
	loraFailed = "failed"
)

// loraState is what the router knows of the adapters on each endpoint beyond its static
// model list and its last scrape: what it loaded (or saw there), when each was last routed,
// and the loads in flight. A load in flight counts as loaded for scoring, so requests that
// arrive during it join it instead of loading the adapter elsewhere.
type loraState struct {
	mu  sync.Mutex
	eps map[string]*epAdapters // by endpoint address
}

type epAdapters struct {
	used  map[string]time.Time    // adapter -> last routed here
	loads map[string]*adapterLoad // in flight
}

// adapterLoad is one load of an adapter on one endpoint; done closes when it ends.
type adapterLoad struct {
	done chan struct{}
	err  error
}

// adapterWait is a decision's part in a load: its owner performs it, the others wait.
type adapterWait struct {
	load  *adapterLoad
	owner bool
	name  string
	s     *epState
}

func (l *loraState) ep(addr string) *epAdapters {
	if l.eps == nil {
		l.eps = map[string]*epAdapters{}
	}
	e := l.eps[addr]
	if e == nil {
		e = &epAdapters{used: map[string]time.Time{}, loads: map[string]*adapterLoad{}}
		l.eps[addr] = e
	}
	return e
}

// loadable reports whether the router may load model (an adapter) onto endpoints.
func (r *Router) loadable(model string) bool {
	_, ok := r.cfg.LoRA.Paths[model]
	return ok && r.cfg.Adapters[model] != ""
}

// canServe reports whether s serves model or can after the router loads it.
func (r *Router) canServe(s *epState, model string) bool {
	return s.ep.Serves(model) || r.loadable(model) && s.ep.Serves(r.cfg.Adapters[model])
}

// hasAdapterLocked reports whether model is (or is being) loaded on s. r.lora.mu is held.
func (r *Router) hasAdapterLocked(s *epState, model string, now time.Time) bool {
	if s.ep.Serves(model) {
		return true
	}
	if e := r.lora.eps[s.ep.Address]; e != nil {
		if _, ok := e.used[model]; ok {
			return true
		}
		if _, ok := e.loads[model]; ok {
			return true
		}
	}
	if l, ok := s.load(now, r.cfg.MetricsStaleAfter); ok {
		return slices.Contains(l.RunningLoRAs, model) || slices.Contains(l.WaitingLoRAs, model)
	}
	return false
}

// adapterMiss is the score penalty of s for model, in prompt blocks: MissBlocks when the
// router would have to load the adapter there, else 0.
func (r *Router) adapterMiss(s *epState, model string, now time.Time) float64 {
	if !r.loadable(model) {
		return 0
	}
	r.lora.mu.Lock()
	defer r.lora.mu.Unlock()
	if r.hasAdapterLocked(s, model, now) {
		return 0
	}
	return r.cfg.LoRA.MissBlocks
}

// lockAdapter serialises the picks of a loadable adapter, so that concurrent requests for an
// adapter no endpoint has start one load, not one each. It returns the unlock.
func (r *Router) lockAdapter(model string) func() {
	if !r.loadable(model) {
		return func() {}
	}
	r.loraPick.Lock()
	return r.loraPick.Unlock
}

// reserveAdapter notes that a request for model goes to s: when s lacks the adapter, a
// load starts (owned by this decision) or one in flight is joined. nil when nothing waits.
func (r *Router) reserveAdapter(s *epState, model string, now time.Time) *adapterWait {
	if !r.loadable(model) {
		return nil
	}
	r.lora.mu.Lock()
	defer r.lora.mu.Unlock()
	e := r.lora.ep(s.ep.Address)
	if l, ok := e.loads[model]; ok {
		return &adapterWait{load: l, name: model, s: s}
	}
	if r.hasAdapterLocked(s, model, now) {
		if !s.ep.Serves(model) { // the engine's own adapters are never unloaded
			e.used[model] = now
		}
		return nil
	}
	l := &adapterLoad{done: make(chan struct{})}
	e.loads[model] = l
	return &adapterWait{load: l, owner: true, name: model, s: s}
}

// awaitAdapter makes sure the decision's adapter is loaded on its endpoint: its owner loads
// it (unloading the least recently used idle adapter first when the engine is at its
// max_lora), the others wait for that load. A failed load fails the request with a 503.
func (r *Router) awaitAdapter(ctx context.Context, w *adapterWait) error {
	if w.owner {
		w.load.err = r.loadAdapter(ctx, w.s, w.name)
		r.lora.mu.Lock()
		e := r.lora.ep(w.s.ep.Address)
		delete(e.loads, w.name)
		if w.load.err == nil {
			e.used[w.name] = r.cfg.Now()
		}
		r.lora.mu.Unlock()
		close(w.load.done)
	} else {
		select {
		case <-w.load.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if w.load.err != nil {
		return openai.Unavailable("The LoRA adapter %q could not be loaded on the endpoint picked for it; retry.", w.name)
	}
	return nil
}

// loadAdapter loads name on s, first unloading idle adapters while s is at its max_lora.
func (r *Router) loadAdapter(ctx context.Context, s *epState, name string) error {
	// Other requests may wait for this load: it outlives the client that started it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.LoRA.LoadTimeout)
	defer cancel()
	for _, victim := range r.adapterVictims(s, name) {
		if err := r.adapterCall(ctx, s, "/v1/unload_lora_adapter", map[string]string{"lora_name": victim}); err != nil {
			r.log.Warn("unloading a LoRA adapter failed", "endpoint", s.ep.Name, "adapter", victim, "err", err)
			continue
		}
		r.lora.mu.Lock()
		delete(r.lora.ep(s.ep.Address).used, victim)
		r.lora.mu.Unlock()
		r.m.loraUnloads.Inc()
		r.log.Info("unloaded a cold LoRA adapter", "endpoint", s.ep.Name, "adapter", victim, "for", name)
	}
	err := r.adapterCall(ctx, s, "/v1/load_lora_adapter", map[string]string{"lora_name": name, "lora_path": r.cfg.LoRA.Paths[name]})
	var dup *alreadyLoaded
	if errors.As(err, &dup) {
		err = nil
	}
	if err != nil {
		r.m.loraLoads.WithLabelValues(loraFailed).Inc()
		r.log.Warn("loading a LoRA adapter failed", "endpoint", s.ep.Name, "adapter", name, "err", err)
		return err
	}
	r.m.loraLoads.WithLabelValues(loraLoaded).Inc()
	r.log.Info("loaded a LoRA adapter", "endpoint", s.ep.Name, "adapter", name)
	return nil
}

// adapterVictims are the adapters to unload from s before loading one more: while the
// adapters the router knows there reach the engine's max_lora, the least recently routed
// one that no running or waiting request uses and that is not loading.
func (r *Router) adapterVictims(s *epState, adding string) []string {
	l, ok := s.load(r.cfg.Now(), r.cfg.MetricsStaleAfter)
	if !ok || l.MaxLoRA <= 0 {
		return nil
	}
	r.lora.mu.Lock()
	defer r.lora.mu.Unlock()
	e := r.lora.ep(s.ep.Address)
	type cand struct {
		name string
		at   time.Time
	}
	var idle []cand
	loaded := len(e.loads) - 1 // the one being added is among the loads
	for n, at := range e.used {
		loaded++
		if n != adding && !slices.Contains(l.RunningLoRAs, n) && !slices.Contains(l.WaitingLoRAs, n) {
			idle = append(idle, cand{n, at})
		}
	}
	slices.SortFunc(idle, func(a, b cand) int { return a.at.Compare(b.at) })
	var out []string
	for loaded >= l.MaxLoRA && len(idle) > 0 {
		out = append(out, idle[0].name)
		idle = idle[1:]
		loaded--
	}
	return out
}

// alreadyLoaded is vLLM's 400 for loading an adapter it has: the adapter is there.
type alreadyLoaded struct{ msg string }

func (e *alreadyLoaded) Error() string { return e.msg }

// adapterCall posts body to path on s and fails on any answer but 200.
func (r *Router) adapterCall(ctx context.Context, s *epState, path string, body map[string]string) error {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.ep.URL()+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	if resp.StatusCode == http.StatusBadRequest && bytes.Contains(msg, []byte("already been loaded")) {
		return &alreadyLoaded{string(msg)}
	}
	return fmt.Errorf("%s: HTTP %d: %s", path, resp.StatusCode, bytes.TrimSpace(msg))
}

// loadableModels adds to models the adapters the router may load where their base is served.
func (r *Router) loadableModels(models []string) []string {
	for a := range r.cfg.LoRA.Paths {
		if r.loadable(a) && slices.Contains(models, r.cfg.Adapters[a]) && !slices.Contains(models, a) {
			models = append(models, a)
		}
	}
	return models
}
