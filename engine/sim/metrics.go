package sim

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
)

// vLLM's metric names, from the engine package, so that a scraper treats the simulator and a
// real vLLM alike. Counters carry their exposition name, _total included.
const (
	MetricRunning          = engine.VLLMNumRequestsRunning
	MetricWaiting          = engine.VLLMNumRequestsWaiting
	MetricKVUsage          = engine.VLLMKVCacheUsage
	MetricPrefixQueries    = engine.VLLMPrefixCacheQueries
	MetricPrefixHits       = engine.VLLMPrefixCacheHits
	MetricPreemptions      = engine.VLLMNumPreemptions
	MetricPromptTokens     = engine.VLLMPromptTokens
	MetricGenerationTokens = engine.VLLMGenerationTokens
	MetricRequestSuccess   = engine.VLLMRequestSuccess
	MetricTTFT             = engine.VLLMTimeToFirstToken
	MetricITL              = engine.VLLMInterTokenLatency
	MetricE2E              = engine.VLLME2ERequestLatency
	MetricQueueTime        = engine.VLLMRequestQueueTime
	MetricReqPromptTokens  = engine.VLLMRequestPromptTokens
	MetricReqGenTokens     = engine.VLLMRequestGenerationTokens
	MetricCacheConfig      = engine.VLLMCacheConfigInfo
	// The simulator's own P/D transfer metrics (vLLM's NIXL ones have no stable names).
	MetricTransferBytes    = "kvgate_sim_kv_transfer_bytes_total"
	MetricTransferBlocks   = "kvgate_sim_kv_transfer_blocks_total"
	MetricTransferSeconds  = "kvgate_sim_kv_transfer_seconds"
	MetricTransferFailures = "kvgate_sim_kv_transfer_failures_total"
	MetricTransferServed   = "kvgate_sim_kv_transfer_served_bytes_total"
	// Peer-to-peer prefix pulls (docs/OFFLOAD.md): the puller's side, then the source's.
	MetricP2PPulledBytes  = "kvgate_sim_kv_p2p_pulled_bytes_total"
	MetricP2PPulledBlocks = "kvgate_sim_kv_p2p_pulled_blocks_total"
	MetricP2PFailures     = "kvgate_sim_kv_p2p_failures_total" // label reason
	MetricP2PSeconds      = "kvgate_sim_kv_p2p_seconds"
	MetricP2PServedBytes  = "kvgate_sim_kv_p2p_served_bytes_total"
	MetricP2PServedBlocks = "kvgate_sim_kv_p2p_served_blocks_total" // label medium
)

// metrics are one server's collectors, registered on the registerer it was given.
type metrics struct {
	running, waiting, kvUsage        prometheus.Gauge
	prefixQueries, prefixHits        prometheus.Counter
	preemptions, promptTok, genTok   prometheus.Counter
	success                          *prometheus.CounterVec
	ttft, itl, e2e, queue            prometheus.Observer
	reqPrompt, reqGen                prometheus.Observer
	xferBytes, xferBlocks, xferFails prometheus.Counter
	xferServed                       prometheus.Counter
	xferSeconds                      prometheus.Observer
	p2pBytes, p2pBlocks, p2pServed   prometheus.Counter
	p2pFails, p2pServedBlocks        *prometheus.CounterVec
	p2pSeconds                       prometheus.Observer
	lora                             *loraInfo // nil without LoRA

	last Stats // counters already added
}

var latencyBuckets = []float64{0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560}

func newMetrics(reg prometheus.Registerer, model string, cfg Config) (*metrics, error) {
	labels := prometheus.Labels{"model_name": model, "engine": "0"}
	gauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels})
	}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels})
	}
	hist := func(name, help string, buckets []float64) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help, ConstLabels: labels, Buckets: buckets})
	}
	tokBuckets := []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000}
	m := &metrics{
		running:       gauge(MetricRunning, "Number of requests in model execution batches."),
		waiting:       gauge(MetricWaiting, "Number of requests waiting to be processed."),
		kvUsage:       gauge(MetricKVUsage, "KV-cache usage. 1 means 100 percent usage."),
		prefixQueries: counter(MetricPrefixQueries, "Prefix cache queries, in terms of number of queried tokens."),
		prefixHits:    counter(MetricPrefixHits, "Prefix cache hits, in terms of number of cached tokens."),
		preemptions:   counter(MetricPreemptions, "Cumulative number of preemption from the engine."),
		promptTok:     counter(MetricPromptTokens, "Number of prefill tokens processed."),
		genTok:        counter(MetricGenerationTokens, "Number of generation tokens processed."),
		success: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricRequestSuccess,
			Help: "Count of successfully processed requests.", ConstLabels: labels}, []string{"finished_reason"}),
		ttft:        hist(MetricTTFT, "Histogram of time to first token in seconds.", latencyBuckets),
		itl:         hist(MetricITL, "Histogram of inter-token latency in seconds.", latencyBuckets),
		e2e:         hist(MetricE2E, "Histogram of e2e request latency in seconds.", latencyBuckets),
		queue:       hist(MetricQueueTime, "Histogram of time spent in WAITING phase for request.", latencyBuckets),
		reqPrompt:   hist(MetricReqPromptTokens, "Number of prefill tokens processed.", tokBuckets),
		reqGen:      hist(MetricReqGenTokens, "Number of generation tokens processed.", tokBuckets),
		xferBytes:   counter(MetricTransferBytes, "KV bytes pulled from prefill engines."),
		xferBlocks:  counter(MetricTransferBlocks, "KV blocks pulled from prefill engines."),
		xferFails:   counter(MetricTransferFailures, "KV pulls that failed and fell back to local prefill."),
		xferServed:  counter(MetricTransferServed, "KV bytes served to decode engines."),
		xferSeconds: hist(MetricTransferSeconds, "Time to pull one request's KV blocks.", latencyBuckets),
		p2pBytes:    counter(MetricP2PPulledBytes, "KV bytes of cached prefixes pulled from peer engines."),
		p2pBlocks:   counter(MetricP2PPulledBlocks, "KV blocks of cached prefixes pulled from peer engines."),
		p2pFails: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricP2PFailures,
			Help: "Peer prefix pulls that got nothing and fell back to recomputing, by reason.", ConstLabels: labels}, []string{"reason"}),
		p2pSeconds: hist(MetricP2PSeconds, "Time to pull one request's cached prefix from a peer engine.", latencyBuckets),
		p2pServed:  counter(MetricP2PServedBytes, "KV bytes of cached prefixes served to peer engines."),
		p2pServedBlocks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricP2PServedBlocks,
			Help: "KV blocks of cached prefixes served to peer engines, by the medium they were read from.", ConstLabels: labels}, []string{"medium"}),
	}
	info := prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricCacheConfig, Help: "Information of the LLMEngine CacheConfig",
		ConstLabels: prometheus.Labels{"block_size": strconv.Itoa(cfg.BlockSize), "num_gpu_blocks": strconv.Itoa(cfg.NumBlocks),
			"enable_prefix_caching": "True", "engine": "0"}})
	info.Set(1)
	for _, c := range []prometheus.Collector{m.running, m.waiting, m.kvUsage, m.prefixQueries, m.prefixHits, m.preemptions,
		m.promptTok, m.genTok, m.success, m.ttft.(prometheus.Collector), m.itl.(prometheus.Collector), m.e2e.(prometheus.Collector),
		m.queue.(prometheus.Collector), m.reqPrompt.(prometheus.Collector), m.reqGen.(prometheus.Collector), m.xferBytes,
		m.xferBlocks, m.xferFails, m.xferServed, m.xferSeconds.(prometheus.Collector), m.p2pBytes, m.p2pBlocks, m.p2pFails,
		m.p2pSeconds.(prometheus.Collector), m.p2pServed, m.p2pServedBlocks, info} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, r := range []string{"stop", "length", "abort"} {
		m.success.WithLabelValues(r)
	}
	for _, r := range p2pReasons {
		m.p2pFails.WithLabelValues(r)
	}
	for _, md := range []Medium{MediumGPU, MediumCPU, MediumDisk} {
		m.p2pServedBlocks.WithLabelValues(md.String())
	}
	return m, nil
}

// observe brings the gauges and counters up to st.
func (m *metrics) observe(st Stats) {
	m.running.Set(float64(st.Running))
	m.waiting.Set(float64(st.Waiting))
	m.kvUsage.Set(st.KVUsage)
	m.prefixQueries.Add(float64(st.PrefixQueries - m.last.PrefixQueries))
	m.prefixHits.Add(float64(st.PrefixHits - m.last.PrefixHits))
	m.preemptions.Add(float64(st.Preemptions - m.last.Preemptions))
	m.promptTok.Add(float64(st.PromptTokens - m.last.PromptTokens))
	m.genTok.Add(float64(st.GenerationTokens - m.last.GenerationTokens))
	m.lora.observe(st)
	m.last = st
}
