package router

import (
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/kvindex"
)

// eventHandler feeds one endpoint's KV events into the index; it is the engine.Handler of
// that endpoint's subscription.
type eventHandler struct {
	r *Router
	s *epState
}

var _ engine.Handler = (*eventHandler)(nil)

// Batch applies b's events while the endpoint is still the one subscribed (see apply).
func (h *eventHandler) Batch(_ uint64, b engine.EventBatch) {
	h.r.apply(h.s, b)
}

func (h *eventHandler) Gap(expected, got uint64) {
	h.r.mu.RLock()
	defer h.r.mu.RUnlock()
	if !h.r.currentLocked(h.s) {
		return
	}
	h.s.gaps.Add(1)
	h.r.m.gaps.Inc()
	if expected == 0 { // joining a publisher mid-stream (the engine package logs it): nothing known was lost
		h.r.log.Debug("kv events: joined mid-stream, clearing the endpoint's cache state", "endpoint", h.s.ep.Name, "got", got)
	} else {
		h.s.gapLog.Warn("kv events: gap, clearing the endpoint's cache state", "endpoint", h.s.ep.Name,
			"expected", expected, "got", got)
	}
	h.r.clear(h.s)
}

// GapLogEvery is how often one endpoint logs its KV-event gaps at most: a publisher that
// skips sequence numbers on purpose costs a line per interval (with the count), not one per
// batch; kvgate_router_kv_event_gaps_total counts every gap.
const GapLogEvery = 10 * time.Second

// currentLocked reports whether s is still the live state of its endpoint; r.mu must be
// held. The state pointer is the endpoint's generation: a removed or replaced endpoint gets a
// new one (and the index may hand its ID to another name), so events of the old one must
// not be applied.
func (r *Router) currentLocked(s *epState) bool { return r.eps[s.ep.Name] == s }

// clear forgets what the router believes s caches: its blocks in the index and the
// prefixes it was sent whose events have not come (after a restart or lost events neither
// can be trusted).
func (r *Router) clear(s *epState) {
	r.index.ApplyCleared(s.id)
	r.pending.RemoveEndpoint(s.id)
}

// ApplyEvents applies a KV-event batch from the endpoint called name as if it had arrived on
// its subscription (replays and relays feed events this way). Unknown names are ignored.
func (r *Router) ApplyEvents(name string, b engine.EventBatch) {
	if s := r.state(name); s != nil {
		r.apply(s, b)
	}
}

// ClearEndpoint forgets every cached block of the endpoint called name, as a gap does.
func (r *Router) ClearEndpoint(name string) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if s := r.eps[name]; s != nil {
		r.clear(s)
	}
}

// apply applies b's events to s. Each event is checked and applied under the read side of
// the lock SetEndpoints changes endpoints under, so an endpoint removed or replaced midway
// (its index ID possibly reused by another name) receives none of the rest: they are
// dropped and counted.
func (r *Router) apply(s *epState, b engine.EventBatch) {
	for i := range b.Events {
		if !r.applyEvent(s, &b.Events[i]) {
			r.m.staleEvents.Add(float64(len(b.Events) - i))
			return
		}
	}
	s.fed.Store(true)
	s.batches.Add(1)
	r.m.batches.Inc()
}

func (r *Router) applyEvent(s *epState, ev *engine.Event) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if !r.currentLocked(s) {
		return false
	}
	s.fed.Store(true)
	switch ev.Kind {
	case engine.BlockStored:
		r.applyStored(s, ev)
	case engine.BlockRemoved:
		hs := make([]kvindex.ExternalHash, len(ev.BlockHashes))
		for j, h := range ev.BlockHashes {
			hs[j] = kvindex.ExternalHash(h.Uint64())
		}
		r.index.ApplyRemoved(s.id, kvindex.Removed{Hashes: hs, Tier: kvindex.TierFromMedium(ev.Medium)})
	case engine.AllBlocksCleared:
		r.clear(s)
	}
	return true
}

// applyStored splits a BlockStored's concatenated token ids into its blocks. Blocks without
// a full set of tokens are dropped with those after them (the chain would break there).
func (r *Router) applyStored(s *epState, ev *engine.Event) {
	bs := ev.BlockSize
	if bs <= 0 {
		bs = s.bs()
	}
	if bs != s.bs() {
		if s.ep.BlockSize == 0 {
			// Not configured: the engine's events are the truth (SGLang pages, vLLM flags).
			r.log.Info("kv events: learned the endpoint's block size", "endpoint", s.ep.Name, "block_size", bs, "was", s.bs())
			s.blockSize.Store(int64(bs))
		} else if s.warnedBS.CompareAndSwap(false, true) {
			r.log.Warn("kv events: block size differs from the configured one; its blocks will not match requests",
				"endpoint", s.ep.Name, "event_block_size", bs, "endpoint_block_size", s.bs())
		}
	}
	if len(ev.TokenIDs) == 0 && len(ev.BlockHashes) > 0 {
		// No token ids: a copy of blocks the engine reported before, on another tier (vLLM's
		// offloading connector stores to CPU this way). Only known hashes can be placed.
		hs := make([]kvindex.ExternalHash, len(ev.BlockHashes))
		for j, h := range ev.BlockHashes {
			hs[j] = kvindex.ExternalHash(h.Uint64())
		}
		r.index.ApplyStoredCopies(s.id, kvindex.TierFromMedium(ev.Medium), hs)
		return
	}
	n := len(ev.BlockHashes)
	if bs > 0 {
		n = min(n, len(ev.TokenIDs)/bs)
	}
	if n == 0 {
		return
	}
	st := kvindex.Stored{
		HasParent: ev.Parent != "",
		Blocks:    make([]kvindex.Block, n),
		Tier:      kvindex.TierFromMedium(ev.Medium),
		Seed:      eventSeed(ev),
	}
	if st.HasParent {
		st.Parent = kvindex.ExternalHash(ev.Parent.Uint64())
	}
	for i := range n {
		st.Blocks[i] = kvindex.Block{External: kvindex.ExternalHash(ev.BlockHashes[i].Uint64()), Tokens: ev.TokenIDs[i*bs : (i+1)*bs]}
	}
	r.index.ApplyStored(s.id, st)
}
