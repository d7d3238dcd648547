package gateway_test

import (
	"testing"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router/routertest"
)

// waitReleased waits until no request is in flight and the router holds no load.
func waitReleased(t *testing.T, f *fixture) {
	t.Helper()
	routertest.WaitReleased(t, f.rt, "in flight", func() float64 { return metricstest.Value(f.reg, gateway.MetricInflight) })
}
