package router_test

import (
	"context"
	"slices"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/kvgate/kvgate/router"
)

// BenchmarkRouteTracing routes a 4,096-token chat alternately through two routers, one with
// tracing off (nil tracer, the default) and one with it on (every request sampled, spans built
// and dropped without an exporter, so the figure is the instrumentation's own cost), and
// reports both medians and their ratio. Allocations are the pair's. "Off" against the code
// before tracing is BenchmarkRouteCPU's: docs/bench/tracing.md.
func BenchmarkRouteTracing(b *testing.B) {
	body, _ := benchChat(b, 4096)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	off, _ := newRouter(b, endpoints(8), func(rc *router.Config) { rc.Seed = 1 })
	on, _ := newRouter(b, endpoints(8), func(rc *router.Config) { rc.Seed = 1; rc.Tracer = tp.Tracer("bench") })
	req := router.Request{Path: "/v1/chat/completions", Body: body}
	ctx := context.Background()
	route := func(r *router.Router) time.Duration {
		t0 := time.Now()
		d, err := r.Route(ctx, req)
		el := time.Since(t0)
		if err != nil {
			b.Fatal(err)
		}
		d.Done(nil, nil)
		return el
	}
	route(off)
	route(on)
	var a, c []time.Duration
	b.ReportAllocs()
	for b.Loop() {
		a = append(a, route(off))
		c = append(c, route(on))
	}
	b.StopTimer()
	med := func(x []time.Duration) float64 {
		slices.Sort(x)
		return float64(x[len(x)/2].Nanoseconds()) / 1e3
	}
	moff, mon := med(a), med(c)
	b.ReportMetric(moff, "off-p50-µs")
	b.ReportMetric(mon, "on-p50-µs")
	b.ReportMetric(mon/moff, "on/off")
}
