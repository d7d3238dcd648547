package gateway_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/gateway"
)

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

// waitReleased waits until no request is in flight and the router holds no load.
func waitReleased(t *testing.T, f *fixture) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		inflight := metricValue(f.reg, gateway.MetricInflight)
		load := routerLoad(f)
		if inflight == 0 && load == 0 {
			return
		}
		if load < 0 {
			t.Fatalf("router load went negative (%v): a decision was released twice", load)
		}
		if time.Now().After(deadline) {
			t.Fatalf("not released: %v in flight, router load %v", inflight, load)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
