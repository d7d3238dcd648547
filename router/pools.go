package router

import (
	"encoding/json"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Pool is a model served in one role: the unit a planner scales.
type Pool struct {
	Model string `json:"model"`
	Role  Role   `json:"role"`
}

// poolCounters are a pool's cumulative counts; they outlive the pool's endpoints so that
// rates stay right across engines coming and going.
type poolCounters struct {
	requests, promptTokens, cachedTokens, outputTokens atomic.Uint64
	// streamed requests' time from routing to the first token (on the pool that prefilled)
	// and mean time between output tokens (on the pool that decoded)
	ttft, itl *latencyHist
}

func newPoolCounters() *poolCounters {
	return &poolCounters{ttft: newLatencyHist(ttftBounds[:]), itl: newLatencyHist(itlBounds[:])}
}

// PoolStats is what the router sees of one pool now: the load of its endpoints (gauges)
// and cumulative counts since the router started (rates are their differences).
type PoolStats struct {
	Pool
	Endpoints int `json:"endpoints"` // endpoints of the pool
	Healthy   int `json:"healthy"`   // of which may be picked
	// QueuedPrefillTokens are uncached prompt tokens routed to the pool and not yet past
	// their first token; RunningRequests are requests routed there and not yet ended.
	QueuedPrefillTokens int64 `json:"queued_prefill_tokens"`
	RunningRequests     int64 `json:"running_requests"`
	// WaitingRequests is the sum and KVUsage the mean (0..1) of what the pool's engines
	// report, over those with a fresh scrape; KVReporting counts them.
	WaitingRequests float64 `json:"waiting_requests"`
	KVUsage         float64 `json:"kv_usage"`
	KVReporting     int     `json:"kv_reporting"`
	// RouterAccounted counts the pool's endpoints without usable /metrics, whose load is the
	// router's own in-flight accounting (LoadSourceRouter).
	RouterAccounted int `json:"router_accounted"`
	// Cumulative: requests routed, their prompt tokens, the prompt tokens the router saw
	// cached on the picked endpoint, and output tokens the engines reported in usage.
	Requests     uint64 `json:"requests"`
	PromptTokens uint64 `json:"prompt_tokens"`
	CachedTokens uint64 `json:"cached_prompt_tokens"`
	OutputTokens uint64 `json:"output_tokens"`
	// Cumulative latency of streamed requests: TTFT from routing to the first token (counted
	// on the pool that prefilled), ITL the mean time between a request's output tokens
	// (counted on the pool that decoded).
	TTFT *Histogram `json:"ttft_seconds,omitempty"`
	ITL  *Histogram `json:"itl_seconds,omitempty"`
}

// poolOf is the pool an endpoint belongs to: its first model, its role.
func poolOf(e Endpoint) Pool {
	p := Pool{Role: e.Role}
	if p.Role == "" {
		p.Role = RoleAggregated
	}
	if len(e.Models) > 0 {
		p.Model = e.Models[0]
	}
	return p
}

// poolCounters returns the counters of the endpoint's pool, made on first use.
func (r *Router) poolCountersOf(e Endpoint) *poolCounters {
	v, _ := r.poolCounts.LoadOrStore(poolOf(e), newPoolCounters())
	return v.(*poolCounters)
}

// Pools returns every pool's stats, sorted by model then role: pools with endpoints now and
// pools that had some (their counters, with no endpoints).
func (r *Router) Pools() []PoolStats {
	now := r.cfg.Now()
	byPool := map[Pool]*PoolStats{}
	get := func(p Pool) *PoolStats {
		ps := byPool[p]
		if ps == nil {
			ps = &PoolStats{Pool: p}
			byPool[p] = ps
		}
		return ps
	}
	for _, s := range r.states() {
		ps := get(poolOf(s.ep))
		ps.Endpoints++
		if s.healthy(now) {
			ps.Healthy++
		}
		ps.QueuedPrefillTokens += s.prefillTokens.Load()
		ps.RunningRequests += s.requests.Load()
		if l, ok := s.load(now, r.cfg.MetricsStaleAfter); ok {
			ps.WaitingRequests += l.Waiting
			ps.KVUsage += l.KVUsage
			ps.KVReporting++
		} else if s.noMetrics.Load() {
			ps.RouterAccounted++
		}
	}
	r.poolCounts.Range(func(k, v any) bool {
		ps, c := get(k.(Pool)), v.(*poolCounters)
		ps.Requests, ps.PromptTokens = c.requests.Load(), c.promptTokens.Load()
		ps.CachedTokens, ps.OutputTokens = c.cachedTokens.Load(), c.outputTokens.Load()
		ps.TTFT, ps.ITL = c.ttft.snapshot(), c.itl.snapshot()
		return true
	})
	out := make([]PoolStats, 0, len(byPool))
	for _, ps := range byPool {
		if ps.KVReporting > 0 {
			ps.KVUsage /= float64(ps.KVReporting)
		}
		out = append(out, *ps)
	}
	slices.SortFunc(out, func(a, b PoolStats) int {
		if c := cmpString(a.Model, b.Model); c != 0 {
			return c
		}
		return cmpString(string(a.Role), string(b.Role))
	})
	return out
}

// PoolsResponse is the body of GET PoolsPath.
type PoolsResponse struct {
	Pools []PoolStats `json:"pools"`
}

// PoolsHandler serves GET PoolsPath: the pools as JSON, what `kvgate planner` reads.
func (r *Router) PoolsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(PoolsResponse{Pools: r.Pools()})
	})
}

// countPools adds a routed request to its pools' counters: the target's, and the prefill
// endpoint's when disaggregated (its prompt tokens go there). Route calls it before it
// returns the Decision, so no other goroutine holds d yet.
func (d *Decision) countPools() {
	cur, pre := d.cur, d.pre
	if cur == nil {
		return
	}
	if pre == nil {
		pre = cur
	}
	cur.pool.requests.Add(1)
	if pre.pool != cur.pool {
		pre.pool.requests.Add(1)
	}
	pre.pool.promptTokens.Add(uint64(max(d.PromptTokens, 0)))
	pre.pool.cachedTokens.Add(uint64(max(d.CachedBlocks, 0)) * uint64(max(pre.blockSize.Load(), 0)))
	d.routedAt = d.r.cfg.Now()
}

// observeFirstToken records a streamed request's TTFT on the pool that prefilled it, once;
// d.mu must be held.
func (d *Decision) observeFirstToken() {
	on := d.prefillOn()
	if !d.Stream || on == nil || d.routedAt.IsZero() || !d.firstAt.IsZero() {
		return
	}
	d.firstAt = d.r.cfg.Now()
	on.pool.ttft.observe(d.firstAt.Sub(d.routedAt))
}

// observeITL records a streamed request's mean time between output tokens on the pool that
// decoded it, for a request that ended well with more than one output token.
func observeITL(cur *epState, now, first time.Time, outputTokens int, err error) {
	if cur == nil || err != nil || first.IsZero() || outputTokens < 2 {
		return
	}
	cur.pool.itl.observe(now.Sub(first) / time.Duration(outputTokens-1))
}

// poolCollector exports Pools at scrape time.
type poolCollector struct {
	r                                                     *Router
	endpoints, healthy, queued, running, waiting, kvUsage *prometheus.Desc
	requests, prompt, cached, output                      *prometheus.Desc
	ttft, itl                                             *prometheus.Desc
}

func newPoolCollector(r *Router) *poolCollector {
	l := []string{"model", "role"}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, l, nil) }
	return &poolCollector{
		r:         r,
		endpoints: d(MetricPoolEndpoints, "Endpoints of the pool (model x role)."),
		healthy:   d(MetricPoolHealthy, "Endpoints of the pool that may be picked."),
		queued:    d(MetricPoolQueuedPrefill, "Uncached prompt tokens routed to the pool and not yet past their first token."),
		running:   d(MetricPoolRunning, "Requests routed to the pool and not yet ended."),
		waiting:   d(MetricPoolWaiting, "Waiting requests the pool's engines report (sum over fresh scrapes)."),
		kvUsage:   d(MetricPoolKVUsage, "KV-cache usage (0..1) the pool's engines report (mean over fresh scrapes)."),
		requests:  d(MetricPoolRequests, "Requests routed to the pool."),
		prompt:    d(MetricPoolPromptTokens, "Prompt tokens of requests routed to the pool (the prefill pool when disaggregated)."),
		cached:    d(MetricPoolCachedTokens, "Prompt tokens the router saw cached on the picked endpoint of the pool."),
		output:    d(MetricPoolOutputTokens, "Output tokens the pool's engines reported in usage."),
		ttft:      d(MetricPoolTTFT, "Streamed requests' time from routing to the first token, on the pool that prefilled them."),
		itl:       d(MetricPoolITL, "Streamed requests' mean time between output tokens, on the pool that decoded them."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.endpoints, c.healthy, c.queued, c.running, c.waiting, c.kvUsage, c.requests, c.prompt, c.cached, c.output, c.ttft, c.itl} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.r.Pools() {
		l := []string{p.Model, string(p.Role)}
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
		}
		k := func(d *prometheus.Desc, v uint64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), l...)
		}
		g(c.endpoints, float64(p.Endpoints))
		g(c.healthy, float64(p.Healthy))
		g(c.queued, float64(p.QueuedPrefillTokens))
		g(c.running, float64(p.RunningRequests))
		g(c.waiting, p.WaitingRequests)
		if p.KVReporting > 0 {
			g(c.kvUsage, p.KVUsage)
		}
		k(c.requests, p.Requests)
		k(c.prompt, p.PromptTokens)
		k(c.cached, p.CachedTokens)
		k(c.output, p.OutputTokens)
		if p.TTFT != nil {
			ch <- constHistogram(c.ttft, p.TTFT, l...)
		}
		if p.ITL != nil {
			ch <- constHistogram(c.itl, p.ITL, l...)
		}
	}
}
