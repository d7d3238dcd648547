package router

import (
	"slices"
	"time"
)

// Why a request stayed aggregated: the reason label of MetricAggregatedReasons and
// Decision.AggregatedReason.
const (
	// ReasonNoPrefillPool: no prefill-role endpoint serves the model.
	ReasonNoPrefillPool = "no_prefill_pool"
	// ReasonShort: the uncached prompt is under DisaggMinUncachedTokens (or the prompt's
	// tokens are unknown).
	ReasonShort = "short_uncached"
	// ReasonCached: the uncached part is under DisaggMinUncachedRatio of the prompt.
	ReasonCached = "mostly_cached"
	// ReasonSaturated: every healthy prefill endpoint is over its prefill-token or queue
	// threshold.
	ReasonSaturated = "prefill_saturated"
	// ReasonUnavailable: prefill endpoints exist but none is healthy.
	ReasonUnavailable = "prefill_unavailable"
)

// Paths of a request, the path label of MetricRequestsByPath.
const (
	PathAggregated    = "aggregated"
	PathDisaggregated = "disaggregated"
)

// prefillFor decides whether the request just targeted at t is disaggregated (conditional
// disaggregation, as Dynamo's router does it) and, when it is, picks its prefill endpoint.
//
// A request goes to a prefill endpoint only when:
//   - some prefill-role endpoint serves the model;
//   - the uncached prompt (prompt tokens less what the decode target already holds) is at
//     least DisaggMinUncachedTokens and at least DisaggMinUncachedRatio of the prompt: a
//     short or mostly cached prompt prefills faster where it will decode than it moves;
//   - some healthy prefill endpoint is under DisaggMaxPrefillTokens in-flight prefill tokens
//     and DisaggMaxPrefillQueue waiting requests: a saturated prefill pool would only add
//     queueing, so the decode endpoint prefills instead.
//
// The prefill endpoint is then scored like any pick (its own cache overlap and load). It
// returns the pick and the scratch to give back to the pool, or nil and the reason the
// request stays aggregated.
func (r *Router) prefillFor(states []*epState, p Prompt, t *picked, now time.Time) (*picked, *scratch, string) {
	inPool := func(s *epState) bool { return s.ep.role() == RolePrefill && s.ep.Serves(p.Model) }
	if !slices.ContainsFunc(states, inPool) { // aggregated clusters stop here, allocating nothing
		return nil, nil, ReasonNoPrefillPool
	}
	prompt := len(p.Tokens)
	uncached := max(prompt-t.cand.CachedBlocks()*t.s.bs(), 0)
	switch {
	case prompt == 0 || uncached < r.cfg.DisaggMinUncachedTokens:
		return nil, nil, ReasonShort
	case float64(uncached) < r.cfg.DisaggMinUncachedRatio*float64(prompt):
		return nil, nil, ReasonCached
	}
	var open []*epState
	healthy := 0
	for _, s := range states {
		if !inPool(s) || !s.healthy(now) {
			continue
		}
		healthy++
		if !r.prefillSaturated(s, now) {
			open = append(open, s)
		}
	}
	switch {
	case healthy == 0:
		return nil, nil, ReasonUnavailable
	case len(open) == 0:
		return nil, nil, ReasonSaturated
	}
	sp := r.pool.Get().(*scratch)
	pf, err := r.pickAmong(sp, open, p, nil, isPrefillRole, now)
	if err != nil {
		r.pool.Put(sp)
		r.log.Debug("no prefill endpoint available; the decode endpoint prefills", "err", err)
		return nil, nil, ReasonUnavailable
	}
	return pf, sp, ""
}

// prefillSaturated reports whether prefill endpoint s is past the disaggregation thresholds:
// the router's in-flight prefill tokens on it, or the engine's reported queue.
func (r *Router) prefillSaturated(s *epState, now time.Time) bool {
	if r.cfg.DisaggMaxPrefillTokens > 0 && s.prefillTokens.Load() > r.cfg.DisaggMaxPrefillTokens {
		return true
	}
	if r.cfg.DisaggMaxPrefillQueue > 0 {
		if l, ok := s.load(now, r.cfg.MetricsStaleAfter); ok && l.Waiting > r.cfg.DisaggMaxPrefillQueue {
			return true
		}
	}
	return false
}

// countPath records the request's path and, when it stayed aggregated, why.
func (r *Router) countPath(why string) {
	if why == "" {
		r.m.paths.WithLabelValues(PathDisaggregated).Inc()
		return
	}
	r.m.paths.WithLabelValues(PathAggregated).Inc()
	r.m.aggregated.WithLabelValues(why).Inc()
}
