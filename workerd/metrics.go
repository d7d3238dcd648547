package workerd

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metric names exported by workerd.
const (
	MetricEngineUp       = "kvgate_workerd_engine_up"
	MetricEngineRestarts = "kvgate_workerd_engine_restarts_total"
	MetricRelaySeq       = "kvgate_workerd_relay_sequence"
	MetricRelayBlocks    = "kvgate_workerd_relay_blocks"
)

// registerMetrics exports per-engine state, read at scrape time from the supervisors.
func (w *Workerd) registerMetrics(reg prometheus.Registerer) error {
	return reg.Register(&collector{w: w})
}

type collector struct{ w *Workerd }

var (
	descUp       = prometheus.NewDesc(MetricEngineUp, "1 when the engine's /health passes.", []string{"engine", "kind"}, nil)
	descRestarts = prometheus.NewDesc(MetricEngineRestarts, "Times workerd restarted the engine.", []string{"engine", "kind"}, nil)
	descSeq      = prometheus.NewDesc(MetricRelaySeq, "Last relay sequence number sent for the engine.", []string{"engine", "kind"}, nil)
	descBlocks   = prometheus.NewDesc(MetricRelayBlocks, "KV blocks the relay holds for the engine.", []string{"engine", "kind"}, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descUp
	ch <- descRestarts
	ch <- descSeq
	ch <- descBlocks
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, st := range c.w.Engines() {
		up := 0.0
		if st.Healthy {
			up = 1
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, up, st.Name, st.Kind)
		ch <- prometheus.MustNewConstMetric(descRestarts, prometheus.CounterValue, float64(st.Restarts), st.Name, st.Kind)
		ch <- prometheus.MustNewConstMetric(descSeq, prometheus.GaugeValue, float64(st.RelaySeq), st.Name, st.Kind)
		ch <- prometheus.MustNewConstMetric(descBlocks, prometheus.GaugeValue, float64(st.Blocks), st.Name, st.Kind)
	}
}
