package kvindex

import "github.com/prometheus/client_golang/prometheus"

// Metric names exported by an Index.
const (
	MetricNodes          = "kvgate_kvindex_nodes"
	MetricBlocks         = "kvgate_kvindex_resident_blocks"
	MetricEndpoints      = "kvgate_kvindex_endpoints"
	MetricEventsApplied  = "kvgate_kvindex_events_applied_total"
	MetricEventsIgnored  = "kvgate_kvindex_events_ignored_total"
	MetricApplySeconds   = "kvgate_kvindex_apply_seconds"
	labelEvent           = "event"
	labelReason          = "reason"
	eventStored          = "stored"
	eventRemoved         = "removed"
	eventCleared         = "cleared"
	eventEndpointRemoved = "endpoint_removed"
	eventSnapshot        = "snapshot"
)

// Reasons an event (or part of one) is ignored.
const (
	ReasonUnknownParent   = "unknown_parent"
	ReasonUnknownBlock    = "unknown_block"
	ReasonUnknownEndpoint = "unknown_endpoint"
	ReasonInvalidTier     = "invalid_tier"
)

type metrics struct {
	nodes, blocks, endpoints prometheus.Gauge
	applied                  map[string]prometheus.Counter
	ignored                  map[string]prometheus.Counter
	applySeconds             map[string]prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		nodes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricNodes, Help: "Radix-tree nodes (distinct cached prefixes) in the KV index.",
		}),
		blocks: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricBlocks, Help: "Resident (block, endpoint) pairs in the KV index.",
		}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricEndpoints, Help: "Endpoints known to the KV index.",
		}),
		applied:      map[string]prometheus.Counter{},
		ignored:      map[string]prometheus.Counter{},
		applySeconds: map[string]prometheus.Observer{},
	}
	applied := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricEventsApplied, Help: "KV events applied to the index, by event type.",
	}, []string{labelEvent})
	ignored := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: MetricEventsIgnored, Help: "KV events or blocks ignored by the index, by reason.",
	}, []string{labelReason})
	lat := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    MetricApplySeconds,
		Help:    "Time to apply one KV event to the index, by event type.",
		Buckets: prometheus.ExponentialBuckets(1e-7, 4, 12),
	}, []string{labelEvent})
	for _, e := range []string{eventStored, eventRemoved, eventCleared, eventEndpointRemoved, eventSnapshot} {
		m.applied[e] = applied.WithLabelValues(e)
		m.applySeconds[e] = lat.WithLabelValues(e)
	}
	for _, r := range []string{ReasonUnknownParent, ReasonUnknownBlock, ReasonUnknownEndpoint, ReasonInvalidTier} {
		m.ignored[r] = ignored.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.nodes, m.blocks, m.endpoints, applied, ignored, lat)
	}
	return m
}
