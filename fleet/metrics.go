package fleet

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	arrival, prompt, output, hit, queued, kv *prometheus.GaugeVec
	ttft, itl                                *prometheus.GaugeVec
	forecastRate, forecastPrompt             *prometheus.GaugeVec
	forecastOutput, needed, correction       *prometheus.GaugeVec
	neededUpper                              *prometheus.GaugeVec
	desired, replicas                        *prometheus.GaugeVec
	decisions, actions, observeErrors        *prometheus.CounterVec
	gpusUsed, gpuBudget                      prometheus.Gauge
	steps                                    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, budget int) (*metrics, error) {
	pool := []string{"model", "role"}
	g := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, append(append([]string(nil), pool...), labels...))
	}
	m := &metrics{
		arrival:        g(MetricArrivalRate, "Requests per second the routers saw for the pool over the last interval."),
		prompt:         g(MetricPromptTokens, "Mean prompt tokens per request of the pool over the last interval."),
		output:         g(MetricOutputTokens, "Mean output tokens per request of the pool over the last interval."),
		hit:            g(MetricPrefixHitRate, "Fraction of the pool's prompt tokens the routers saw cached, last interval."),
		queued:         g(MetricQueuedPrefill, "Prompt tokens routed to the pool and not yet past their first token."),
		kv:             g(MetricKVUsage, "Mean KV-cache usage (0..1) of the pool's engines."),
		ttft:           g(MetricTTFTP90, "p90 TTFT of the pool's streamed requests over the last interval, from the routers' histograms (0: none)."),
		itl:            g(MetricITLP90, "p90 ITL of the pool's streamed requests over the last interval, from the routers' histograms (0: none)."),
		forecastRate:   g(MetricForecastRate, "Requests per second the sla planner sized the pool for (its forecast over start-up + one interval; 0 in other modes)."),
		forecastPrompt: g(MetricForecastPrompt, "Mean prompt tokens per request the sla planner sized the pool for (0 in other modes)."),
		forecastOutput: g(MetricForecastOutput, "Mean output tokens per request the sla planner sized the pool for (0 in other modes)."),
		needed:         g(MetricNeeded, "Fractional engines the planner computed the pool needs (sla: for the forecast, after the latency correction)."),
		neededUpper:    g(MetricNeededUpper, "The upper band of the engines the sla planner computed the pool needs: a scale-down happens only when this fits the smaller count (--planner-down-band standard deviations above the need; the need when the band is off; 0 in other modes)."),
		correction:     g(MetricCorrection, "The sla planner's latency correction of the profile's demand for the pool (1: none)."),
		desired:        g(MetricDesired, "Replicas the planner wants for the pool."),
		replicas:       g(MetricReplicas, "Replicas the pool has, by state (ready: serving, pending: starting).", "state"),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricDecisions,
			Help: "Planner decisions per pool, by reason."}, []string{"model", "role", "reason"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricActions,
			Help: "Engines started or drained, by outcome (advisory: recommended only)."}, []string{"action", "outcome"}),
		observeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MetricStepErrors,
			Help: "Nodes, node lists and routers that could not be read."}, []string{"source"}),
		gpusUsed:  prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricGPUsUsed, Help: "GPUs held by the planned pools' engines."}),
		gpuBudget: prometheus.NewGauge(prometheus.GaugeOpts{Name: MetricGPUBudget, Help: "The GPU budget (0: none)."}),
		steps:     prometheus.NewCounter(prometheus.CounterOpts{Name: MetricSteps, Help: "Planner intervals run."}),
	}
	m.gpuBudget.Set(float64(budget))
	if reg != nil {
		for _, c := range []prometheus.Collector{m.arrival, m.prompt, m.output, m.hit, m.queued, m.kv, m.desired, m.replicas,
			m.ttft, m.itl, m.forecastRate, m.forecastPrompt, m.forecastOutput, m.needed, m.neededUpper, m.correction,
			m.decisions, m.actions, m.observeErrors, m.gpusUsed, m.gpuBudget, m.steps} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
