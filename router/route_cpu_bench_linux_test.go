package router_test

import (
	"context"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/kvgate/kvgate/router"
)

// BenchmarkRouteCPU times Route on a 4,096-token chat by the CPU time of the goroutine's
// locked thread (Linux), which other processes on a loaded machine do not inflate as they do
// wall time; it reports the p50 and mean CPU per decision. Same source in two trees gives a
// before/after ratio (docs/bench/tracing.md).
func BenchmarkRouteCPU(b *testing.B) {
	body, _ := benchChat(b, 4096)
	r, _ := newRouter(b, endpoints(8), func(rc *router.Config) { rc.Seed = 1 })
	req := router.Request{Path: "/v1/chat/completions", Body: body}
	ctx := context.Background()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := make([]time.Duration, 0, 4096)
	var total time.Duration
	b.ReportAllocs()
	for b.Loop() {
		c0 := threadCPU()
		d, err := r.Route(ctx, req)
		c := threadCPU() - c0
		if err != nil {
			b.Fatal(err)
		}
		d.Done(nil, nil)
		cpu = append(cpu, c)
		total += c
	}
	slices.Sort(cpu)
	b.ReportMetric(float64(cpu[len(cpu)/2].Nanoseconds())/1e3, "cpu-p50-µs")
	b.ReportMetric(float64(total.Nanoseconds())/1e3/float64(len(cpu)), "cpu-mean-µs")
}
