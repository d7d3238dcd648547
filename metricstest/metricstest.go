// Package metricstest reads Prometheus registries in tests: the value of a metric summed over
// its series (optionally those with given labels) and the number of its series.
package metricstest

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"
)

// Value sums the series of name in g whose labels include every name/value pair of labels
// (given as name1, value1, name2, value2, ...): counters and gauges by value, histograms and
// summaries by sample count. It is 0 when no series matches and NaN when g fails to gather,
// so a broken registry never satisfies a wait or an equality.
func Value(g prometheus.Gatherer, name string, labels ...string) float64 {
	fams, err := g.Gather()
	if err != nil {
		return math.NaN()
	}
	var v float64
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
	metric:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metric
				}
			}
			switch {
			case m.GetCounter() != nil:
				v += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				v += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				v += float64(m.GetHistogram().GetSampleCount())
			case m.GetSummary() != nil:
				v += float64(m.GetSummary().GetSampleCount())
			case m.GetUntyped() != nil:
				v += m.GetUntyped().GetValue()
			}
		}
	}
	return v
}

// Series counts the series of name in g (-1 when g fails to gather).
func Series(g prometheus.Gatherer, name string) int {
	fams, err := g.Gather()
	if err != nil {
		return -1
	}
	for _, f := range fams {
		if f.GetName() == name {
			return len(f.GetMetric())
		}
	}
	return 0
}
