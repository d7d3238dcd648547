package gateway

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names.
const (
	MetricRequests = "kvgate_gateway_requests_total"
	MetricDuration = "kvgate_gateway_request_duration_seconds"
	MetricTTFT     = "kvgate_gateway_time_to_first_token_seconds"
	MetricInflight = "kvgate_gateway_requests_inflight"
	MetricRetries  = "kvgate_gateway_retries_total"
	// MetricStreamsCut counts responses whose engine failed after their first byte: the
	// client got an aborted response (and, for SSE, an error event).
	MetricStreamsCut = "kvgate_gateway_streams_cut_total"
	// MetricBodyTimeouts counts requests answered 408 because their body was too slow.
	MetricBodyTimeouts = "kvgate_gateway_body_timeouts_total"
)

// Metric names of the remote-EPP data plane (kvgate gateway --epp).
const (
	// MetricEPPRequests counts requests by what the EPP did: picked, immediate, failed_open,
	// failed_close, bad_destination.
	MetricEPPRequests = "kvgate_gateway_epp_requests_total"
	// MetricEPPPickDuration is the time from opening the EPP's stream to its pick.
	MetricEPPPickDuration = "kvgate_gateway_epp_pick_duration_seconds"
)

type eppMetrics struct {
	requests     *prometheus.CounterVec
	pickDuration prometheus.Histogram
}

func newEPPMetrics(reg prometheus.Registerer) (*eppMetrics, error) {
	m := &eppMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricEPPRequests, Help: "Requests by what the remote endpoint picker did: picked, immediate, failed_open, failed_close, bad_destination.",
		}, []string{"outcome"}),
		pickDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: MetricEPPPickDuration, Help: "Time from opening the endpoint picker's stream to its pick (or failure).",
			Buckets: prometheus.ExponentialBuckets(1e-4, 2, 18),
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.pickDuration} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("gateway: register metrics: %w", err)
		}
	}
	return m, nil
}

type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	ttft         prometheus.Histogram
	inflight     prometheus.Gauge
	retries      *prometheus.CounterVec
	streamsCut   prometheus.Counter
	bodyTimeouts prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRequests, Help: "Proxied requests by path and the status the client got.",
		}, []string{"path", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: MetricDuration, Help: "Whole request time, routing to the last byte.",
			Buckets: prometheus.ExponentialBuckets(1e-3, 2, 18),
		}, []string{"path"}),
		ttft: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: MetricTTFT, Help: "Time from the routing decision to the first token (first SSE event, or first body byte).",
			Buckets: prometheus.ExponentialBuckets(1e-3, 2, 16),
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricInflight, Help: "Requests being proxied now."}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricRetries, Help: "Requests sent on to a fallback endpoint because an attempt failed before its first response byte, by reason (connect, no_answer, no_body).",
		}, []string{"reason"}),
		streamsCut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricStreamsCut, Help: "Responses aborted because the engine failed after their first byte.",
		}),
		bodyTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricBodyTimeouts, Help: "Requests answered 408 because their body did not arrive in time.",
		}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.ttft, m.inflight, m.retries, m.streamsCut, m.bodyTimeouts} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("gateway: register metrics: %w", err)
		}
	}
	return m, nil
}
