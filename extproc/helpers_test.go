package extproc_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kvgate/kvgate/extproc"
)

// counter returns the collector of the labelled series name in reg.
func counter(t *testing.T, reg *prometheus.Registry, name, label string) prometheus.Collector {
	t.Helper()
	return gathered{reg: reg, name: name, label: label}
}

// gathered is one series of a registry, as a collector testutil can read.
type gathered struct {
	reg         *prometheus.Registry
	name, label string
}

func (g gathered) Describe(chan<- *prometheus.Desc) {}

func (g gathered) Collect(ch chan<- prometheus.Metric) {
	mfs, _ := g.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != g.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := g.label == ""
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == g.label {
					match = true
				}
			}
			if !match {
				continue
			}
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.UntypedValue, v)
			return
		}
	}
}

// metricValue sums every series of name in reg.
func metricValue(reg *prometheus.Registry, name string) float64 {
	mfs, _ := reg.Gather()
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return sum
}

// waitReleased waits until no stream is open and the router holds no load for any request.
func waitReleased(t *testing.T, f *fixture) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		active := metricValue(f.reg, extproc.MetricStreamsActive)
		load := routerLoad(f)
		if active == 0 && load == 0 {
			return
		}
		if load < 0 {
			t.Fatalf("router load went negative (%v): a decision was released twice", load)
		}
		if time.Now().After(deadline) {
			t.Fatalf("not released: %v streams open, router load %v", active, load)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var _ = testutil.ToFloat64
