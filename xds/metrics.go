package xds

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one Server; all nil-safe through a disabled registry.
type metrics struct {
	snapshots prometheus.Counter
	problems  prometheus.Gauge
	streams   prometheus.Gauge
	nacks     *prometheus.CounterVec
	endpoints prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: metricSnapshots, Help: "Snapshots put in the cache (new configuration versions served).",
		}),
		problems: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricProblems, Help: "Non-fatal problems in the last translation (endpoints left out, models without engines).",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricStreams, Help: "xDS streams open (state of the world and delta).",
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricNACKs, Help: "Configurations Envoy rejected, by resource type URL.",
		}, []string{"type"}),
		endpoints: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: metricEndpoints, Help: "Engines in the last discovery report.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.snapshots, m.problems, m.streams, m.nacks, m.endpoints)
	}
	return m
}
