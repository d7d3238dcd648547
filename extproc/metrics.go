package extproc

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names.
const (
	MetricStreams            = "kvgate_extproc_streams_total"
	MetricStreamsActive      = "kvgate_extproc_streams_active"
	MetricMessages           = "kvgate_extproc_messages_total"
	MetricImmediateResponses = "kvgate_extproc_immediate_responses_total"
	MetricPickDuration       = "kvgate_extproc_pick_duration_seconds"
	MetricTTFT               = "kvgate_extproc_time_to_first_byte_seconds"
)

// Stream outcomes, the label of MetricStreams.
const (
	outcomeCompleted = "completed"   // the response ended normally
	outcomeRejected  = "rejected"    // an ImmediateResponse ended it
	outcomePassed    = "passthrough" // no body to route on: passed on unpicked
	outcomeAborted   = "aborted"     // the stream broke before the response ended
)

type metrics struct {
	streams   *prometheus.CounterVec
	active    prometheus.Gauge
	messages  *prometheus.CounterVec
	immediate *prometheus.CounterVec
	pick      prometheus.Histogram
	ttft      prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricStreams, Help: "ext_proc streams by outcome (completed, rejected, passthrough, aborted).",
		}, []string{"outcome"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: MetricStreamsActive, Help: "ext_proc streams open now.",
		}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricMessages, Help: "ext_proc messages received, by kind.",
		}, []string{"kind"}),
		immediate: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricImmediateResponses, Help: "ImmediateResponses sent, by HTTP status.",
		}, []string{"status"}),
		pick: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: MetricPickDuration, Help: "Time the picker took to route a request.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
		}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: MetricTTFT, Help: "Time from the routing decision to the first response body byte.",
			Buckets: prometheus.ExponentialBuckets(1e-3, 2, 16),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.streams, m.active, m.messages, m.immediate, m.pick, m.ttft} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("extproc: register metrics: %w", err)
		}
	}
	return m, nil
}
