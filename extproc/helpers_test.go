package extproc_test

import (
	"testing"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router/routertest"
)

// waitReleased waits until no stream is open and the router holds no load for any request.
func waitReleased(t *testing.T, f *fixture) {
	t.Helper()
	routertest.WaitReleased(t, f.router, "streams open", func() float64 { return metricstest.Value(f.reg, extproc.MetricStreamsActive) })
}
