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
	// MetricResponseTimeouts counts picks whose response did not start within
	// ResponseTimeout (their load was released); MetricIdleStreams streams closed by
	// IdleTimeout; MetricBufferFull bodies refused because the buffered total was reached;
	// MetricBufferedBytes is that total now.
	MetricResponseTimeouts = "kvgate_extproc_response_timeouts_total"
	MetricIdleStreams      = "kvgate_extproc_idle_streams_total"
	MetricBufferFull       = "kvgate_extproc_buffer_full_total"
	MetricBufferedBytes    = "kvgate_extproc_buffered_bytes"
	// MetricBodiesSkipped counts responses whose body the server asked the proxy not to
	// send (Config.SkipResponseBody).
	MetricBodiesSkipped = "kvgate_extproc_response_bodies_skipped_total"
)

// Stream outcomes, the label of MetricStreams.
const (
	outcomeCompleted = "completed"   // the response ended normally
	outcomeRejected  = "rejected"    // an ImmediateResponse ended it
	outcomePassed    = "passthrough" // no body to route on: passed on unpicked
	outcomeAborted   = "aborted"     // the stream broke before the response ended
	outcomeIdle      = "idle"        // closed after IdleTimeout without a message
)

type metrics struct {
	streams   *prometheus.CounterVec
	active    prometheus.Gauge
	messages  *prometheus.CounterVec
	immediate *prometheus.CounterVec
	pick      prometheus.Histogram
	ttft      prometheus.Histogram

	responseTimeouts prometheus.Counter
	idle             prometheus.Counter
	bufferFull       prometheus.Counter
	skipped          prometheus.Counter

	// Children of messages and streams resolved once: a label lookup per message costs
	// a hash and a lock.
	msg      messageCounters
	outcomes map[string]prometheus.Counter
}

// messageCounters are the children of MetricMessages, one per kind of message.
type messageCounters struct {
	requestHeaders, requestBody, requestTrailers    prometheus.Counter
	responseHeaders, responseBody, responseTrailers prometheus.Counter
	unknown                                         prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, buffered func() float64) (*metrics, error) {
	m := &metrics{
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: MetricStreams, Help: "ext_proc streams by outcome (completed, rejected, passthrough, aborted, idle).",
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
		responseTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricResponseTimeouts, Help: "Picks whose response did not start within the response timeout; their load was released.",
		}),
		idle: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricIdleStreams, Help: "Streams closed after the idle timeout without a message from the proxy.",
		}),
		bufferFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricBufferFull, Help: "Request bodies refused with 503 because the buffered total across streams was reached.",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: MetricBodiesSkipped, Help: "Responses whose body the proxy was asked not to send (mode_override); their load is released when the stream ends.",
		}),
	}
	m.msg = messageCounters{
		requestHeaders: m.messages.WithLabelValues("request_headers"), requestBody: m.messages.WithLabelValues("request_body"),
		requestTrailers: m.messages.WithLabelValues("request_trailers"), responseHeaders: m.messages.WithLabelValues("response_headers"),
		responseBody: m.messages.WithLabelValues("response_body"), responseTrailers: m.messages.WithLabelValues("response_trailers"),
		unknown: m.messages.WithLabelValues("unknown"),
	}
	m.outcomes = map[string]prometheus.Counter{}
	for _, o := range []string{outcomeCompleted, outcomeRejected, outcomePassed, outcomeAborted, outcomeIdle} {
		m.outcomes[o] = m.streams.WithLabelValues(o)
	}
	bufferedGauge := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: MetricBufferedBytes, Help: "Request body bytes buffered across all open streams.",
	}, buffered)
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.streams, m.active, m.messages, m.immediate, m.pick, m.ttft,
		m.responseTimeouts, m.idle, m.bufferFull, m.skipped, bufferedGauge} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("extproc: register metrics: %w", err)
		}
	}
	return m, nil
}
