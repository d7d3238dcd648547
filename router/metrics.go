package router

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names.
const (
	MetricRequests        = "kvgate_router_requests_total"
	MetricDecisionSeconds = "kvgate_router_decision_seconds"
	MetricOverlapBlocks   = "kvgate_router_overlap_blocks"
	MetricPromptBlocks    = "kvgate_router_prompt_blocks_total"
	MetricCachedBlocks    = "kvgate_router_cached_blocks_total"
	MetricReportedCached  = "kvgate_router_reported_cached_tokens_total"
	MetricReportedPrompt  = "kvgate_router_reported_prompt_tokens_total"
	MetricEventBatches    = "kvgate_router_kv_event_batches_total"
	MetricEventGaps       = "kvgate_router_kv_event_gaps_total"
	// MetricStaleEvents counts KV events dropped because their endpoint was removed or
	// replaced while their batch was being applied.
	MetricStaleEvents    = "kvgate_router_kv_events_stale_total"
	MetricScrapeErrors   = "kvgate_router_scrape_errors_total"
	MetricPrefillTokens  = "kvgate_router_endpoint_prefill_tokens"
	MetricDecodeBlocks   = "kvgate_router_endpoint_decode_blocks"
	MetricInflight       = "kvgate_router_endpoint_requests"
	MetricWaiting        = "kvgate_router_endpoint_waiting"
	MetricKVUsage        = "kvgate_router_endpoint_kv_usage"
	MetricHealthy        = "kvgate_router_endpoint_healthy"
	MetricEndpointBlocks = "kvgate_router_endpoint_cached_blocks"
	// MetricRequestsByPath counts picks by path (aggregated, disaggregated);
	// MetricAggregatedReasons says why requests stayed aggregated.
	MetricRequestsByPath    = "kvgate_router_requests_by_path_total"
	MetricAggregatedReasons = "kvgate_router_aggregated_reasons_total"
	// MetricServedUnknown counts served reports naming an endpoint that was not among the
	// request's candidates (ignored).
	MetricServedUnknown = "kvgate_router_served_unknown_total"
	// MetricPulls counts decisions that told the target to pull its prefix from another
	// endpoint (P2P), MetricPulledBlocks the blocks beyond the target's own cache.
	MetricPulls        = "kvgate_router_pulls_total"
	MetricPulledBlocks = "kvgate_router_pulled_blocks_total"
	// MetricLoRALoads counts LoRA adapter loads the router made on engines, by outcome
	// (loaded, failed); MetricLoRAUnloads the idle adapters it unloaded to make room.
	MetricLoRALoads   = "kvgate_router_lora_loads_total"
	MetricLoRAUnloads = "kvgate_router_lora_unloads_total"
	// MetricApproxCorrections counts corrections of approximate mode's view of an engine's
	// cache, by reason (CorrectionCachedTokens, CorrectionRestart).
	MetricApproxCorrections = "kvgate_router_approx_corrections_total"
	// MetricDownRetries counts picks of an endpoint that was out after a refused connection,
	// made because every candidate was (the one down longest is tried).
	MetricDownRetries = "kvgate_router_down_retries_total"
	// MetricLoadSource is 1 for where each endpoint's load comes from now (source label:
	// engine, router or unknown; LoadSource* constants).
	MetricLoadSource = "kvgate_router_endpoint_load_source"

	// Admission queue, by model, band (priority) and fairness ID (docs/TRAFFIC.md).
	MetricQueued        = "kvgate_router_queue_requests"
	MetricQueueWait     = "kvgate_router_queue_wait_seconds"
	MetricQueueDispatch = "kvgate_router_queue_dispatched_total"
	MetricQueueRejected = "kvgate_router_queue_rejected_total"
	MetricSessions      = "kvgate_router_sessions"
	MetricSessionPicks  = "kvgate_router_session_picks_total"
	// Per pool (model x role), the signals a planner or an autoscaler (KEDA) scales on.
	MetricPoolEndpoints     = "kvgate_router_pool_endpoints"
	MetricPoolHealthy       = "kvgate_router_pool_healthy_endpoints"
	MetricPoolQueuedPrefill = "kvgate_router_pool_queued_prefill_tokens"
	MetricPoolRunning       = "kvgate_router_pool_running_requests"
	MetricPoolWaiting       = "kvgate_router_pool_waiting_requests"
	MetricPoolKVUsage       = "kvgate_router_pool_kv_usage"
	MetricPoolRequests      = "kvgate_router_pool_requests_total"
	MetricPoolPromptTokens  = "kvgate_router_pool_prompt_tokens_total"
	MetricPoolCachedTokens  = "kvgate_router_pool_cached_prompt_tokens_total"
	MetricPoolOutputTokens  = "kvgate_router_pool_output_tokens_total"
	MetricPoolTTFT          = "kvgate_router_pool_ttft_seconds" // histogram, streamed requests
	MetricPoolITL           = "kvgate_router_pool_itl_seconds"  // histogram, streamed requests
)

// Reasons of MetricApproxCorrections.
const (
	// CorrectionCachedTokens: the engine's usage reported fewer cached prompt tokens than
	// approximate mode predicted; what it remembered past them was dropped.
	CorrectionCachedTokens = "cached_tokens"
	// CorrectionRestart: the endpoint answered again after being out; everything
	// approximate mode remembered for it was dropped.
	CorrectionRestart = "restart"
)

// PoolsPath is where the router's metrics listener serves the pools as JSON (PoolsHandler).
const PoolsPath = "/v1/pools"

// Outcomes of a Route, the outcome label of MetricRequests.
const (
	OutcomeRouted      = "routed"
	OutcomeBadRequest  = "bad_request"
	OutcomeNotFound    = "model_not_found"
	OutcomeTooLarge    = "too_large"
	OutcomeShed        = "shed"
	OutcomeUnavailable = "unavailable"
	OutcomeError       = "error"
)

type metrics struct {
	requests       *prometheus.CounterVec
	decision       prometheus.Histogram
	overlap        prometheus.Histogram
	promptBlocks   prometheus.Counter
	cachedBlocks   prometheus.Counter
	reportedCached prometheus.Counter
	reportedPrompt prometheus.Counter
	batches        prometheus.Counter
	gaps           prometheus.Counter
	staleEvents    prometheus.Counter
	scrapeErrors   prometheus.Counter
	paths          *prometheus.CounterVec
	aggregated     *prometheus.CounterVec
	servedUnknown  prometheus.Counter
	pulls          prometheus.Counter
	pulledBlocks   prometheus.Counter
	loraLoads      *prometheus.CounterVec
	loraUnloads    prometheus.Counter

	approxCorrections *prometheus.CounterVec
	downRetries       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, r *Router) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRequests,
			Help: "Routing decisions by policy and outcome."}, []string{"policy", "outcome"}),
		decision: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricDecisionSeconds,
			Help:    "Time to route one request: parse, template, tokenize, hash, match, score.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 14)}),
		overlap: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MetricOverlapBlocks,
			Help:    "Cached prompt blocks the router saw on the endpoint it picked.",
			Buckets: []float64{0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048}}),
		promptBlocks: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricPromptBlocks,
			Help: "Full prompt blocks of routed requests."}),
		cachedBlocks: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricCachedBlocks,
			Help: "Prompt blocks the router saw cached on the picked endpoint (predicted hits)."}),
		reportedCached: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricReportedCached,
			Help: "Cached prompt tokens the engines reported in usage (actual hits)."}),
		reportedPrompt: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricReportedPrompt,
			Help: "Prompt tokens the engines reported in usage."}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricEventBatches,
			Help: "KV-event batches applied to the index."}),
		gaps: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricEventGaps,
			Help: "KV-event sequence gaps and publisher restarts (each clears the endpoint)."}),
		staleEvents: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricStaleEvents,
			Help: "KV events dropped because their endpoint was removed or replaced while their batch was applied."}),
		scrapeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricScrapeErrors,
			Help: "Failed reads of engines' /metrics."}),
		paths: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRequestsByPath,
			Help: "Picks by path: aggregated (one endpoint) or disaggregated (remote prefill)."}, []string{"path"}),
		aggregated: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricAggregatedReasons,
			Help: "Picks that stayed aggregated, by reason."}, []string{"reason"}),
		servedUnknown: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricServedUnknown,
			Help: "Served reports ignored because they named an endpoint that was not among the request's candidates."}),
		pulls: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricPulls,
			Help: "Picks that told the target to pull its prompt prefix from another endpoint's cache (P2P)."}),
		pulledBlocks: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricPulledBlocks,
			Help: "Prompt blocks those pulls fetch beyond what the target already held."}),
		loraLoads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricLoRALoads,
			Help: "LoRA adapter loads the router made on engines (/v1/load_lora_adapter), by outcome."}, []string{"outcome"}),
		loraUnloads: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricLoRAUnloads,
			Help: "Idle LoRA adapters the router unloaded to stay within an engine's max_lora."}),
		approxCorrections: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricApproxCorrections,
			Help: "Corrections of approximate mode's view of an engine's cache, by reason."}, []string{"reason"}),
		downRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: MetricDownRetries,
			Help: "Picks of an endpoint out after a refused connection, made because every candidate was out."}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.decision, m.overlap, m.promptBlocks, m.cachedBlocks,
			m.reportedCached, m.reportedPrompt, m.batches, m.gaps, m.scrapeErrors, m.paths, m.aggregated,
			m.servedUnknown, m.staleEvents, m.pulls, m.pulledBlocks, m.loraLoads, m.loraUnloads,
			m.approxCorrections, m.downRetries,
			newLoadCollector(r), newPoolCollector(r))
	}
	return m
}

// loadCollector reports per-endpoint load at scrape time from the live counters, so removed
// endpoints disappear and the request path updates no gauges.
type loadCollector struct {
	r                                                            *Router
	prefill, decode, inflight, waiting, kvUsage, healthy, blocks *prometheus.Desc
	source                                                       *prometheus.Desc
}

func newLoadCollector(r *Router) *loadCollector {
	l := []string{"endpoint", "address"}
	return &loadCollector{
		r:        r,
		prefill:  prometheus.NewDesc(MetricPrefillTokens, "Uncached prompt tokens routed to the endpoint and not yet past their first token.", l, nil),
		decode:   prometheus.NewDesc(MetricDecodeBlocks, "KV blocks held by requests routed to the endpoint and not yet ended.", l, nil),
		inflight: prometheus.NewDesc(MetricInflight, "Requests routed to the endpoint and not yet ended.", l, nil),
		waiting:  prometheus.NewDesc(MetricWaiting, "Waiting requests the engine reports (last fresh scrape).", l, nil),
		kvUsage:  prometheus.NewDesc(MetricKVUsage, "KV-cache usage (0..1) the engine reports (last fresh scrape).", l, nil),
		healthy:  prometheus.NewDesc(MetricHealthy, "1 when the endpoint may be picked, 0 while it is out after a failure.", l, nil),
		blocks:   prometheus.NewDesc(MetricEndpointBlocks, "KV blocks the index holds for the endpoint (from its KV events).", l, nil),
		source: prometheus.NewDesc(MetricLoadSource, "1 for where the endpoint's load comes from: engine (its /metrics), router (its own in-flight accounting: the engine has no usable /metrics) or unknown.",
			append(l, "source"), nil),
	}
}

func (c *loadCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.prefill, c.decode, c.inflight, c.waiting, c.kvUsage, c.healthy, c.blocks, c.source} {
		ch <- d
	}
}

func (c *loadCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.r.cfg.Now()
	for _, s := range c.r.states() {
		l := []string{s.ep.Name, s.ep.Address}
		ch <- prometheus.MustNewConstMetric(c.prefill, prometheus.GaugeValue, float64(s.prefillTokens.Load()), l...)
		ch <- prometheus.MustNewConstMetric(c.decode, prometheus.GaugeValue, float64(s.decodeBlocks.Load()), l...)
		ch <- prometheus.MustNewConstMetric(c.inflight, prometheus.GaugeValue, float64(s.requests.Load()), l...)
		if ld, ok := s.load(now, c.r.cfg.MetricsStaleAfter); ok {
			ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, ld.Waiting, l...)
			ch <- prometheus.MustNewConstMetric(c.kvUsage, prometheus.GaugeValue, ld.KVUsage, l...)
		}
		h := 0.0
		if s.healthy(now) {
			h = 1
		}
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, h, l...)
		ch <- prometheus.MustNewConstMetric(c.blocks, prometheus.GaugeValue, float64(c.r.index.Blocks(s.id)), l...)
		ch <- prometheus.MustNewConstMetric(c.source, prometheus.GaugeValue, 1, append(l, s.loadSource(now, c.r.cfg.MetricsStaleAfter))...)
	}
}
