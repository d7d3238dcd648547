package fleet

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/router"
)

// The live planner reads the pools' latency from a real router's GET /v1/pools: each
// interval's p90 TTFT and ITL come from the difference of the router's histograms, are
// exported, and feed the sla planner's latency correction (two settled intervals over the
// TTFT target raise it). The forecast it sized for is exported too.
func TestLoopReadsRouterLatency(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Unix(1_000_000, 0).UnixNano())
	cfg := router.DefaultConfig()
	cfg.Endpoints = []router.Endpoint{{Name: "e0", Address: "127.0.0.1:1", Models: []string{"m"}, BlockSize: 16}}
	cfg.ScrapeInterval = -1
	cfg.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	rt, err := router.New(cfg, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(rt.PoolsHandler())
	defer srv.Close()
	// serve routes n streamed requests, each with this TTFT and ITL.
	serve := func(n int, ttft, itl time.Duration) {
		t.Helper()
		for i := range n {
			body, _ := json.Marshal(map[string]any{"model": "m", "stream": true,
				"messages": []map[string]string{{"role": "user", "content": "hello " + ttft.String() + string(rune('a'+i))}}})
			d, err := rt.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: body})
			if err != nil {
				t.Fatal(err)
			}
			clock.Add(int64(ttft))
			d.FirstToken()
			clock.Add(int64(10 * itl))
			d.Done(&openai.Usage{PromptTokens: d.PromptTokens, CompletionTokens: 11}, nil)
		}
	}

	node := newFakeNode("a", 4, tmpl("agg", 1, 1), "a-agg-0")
	node.ready()
	reg := prometheus.NewRegistry()
	l, err := New(Config{
		Planner: planner.Config{Mode: planner.ModeSLA, TTFT: 2 * time.Second, ITL: 50 * time.Millisecond,
			Interval: time.Second, Profile: planner.ProfileFromSim(sim.Config{})},
		Nodes:  func(context.Context) ([]Node, error) { return []Node{node}, nil },
		Demand: RouterDemand(srv.Client(), FixedRouters([]string{srv.URL})),
	}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1000, 0)
	step := func(i int) planner.Decision {
		t.Helper()
		ds, err := l.Step(context.Background(), t0.Add(time.Duration(i)*time.Second))
		if err != nil || len(ds) != 1 {
			t.Fatalf("step %d: %+v, %v", i, ds, err)
		}
		return ds[0]
	}
	serve(5, 4*time.Second, 20*time.Millisecond) // before the first read: not an interval's
	step(0)
	if v := metricstest.Value(reg, MetricTTFTP90, "model", "m"); v != 0 {
		t.Errorf("first step: TTFT p90 %v, want 0 (no interval yet)", v)
	}
	serve(10, 3*time.Second, 30*time.Millisecond)
	step(1)
	if v := metricstest.Value(reg, MetricTTFTP90, "model", "m"); v <= 2.5 || v > 3 {
		t.Errorf("TTFT p90 %v s over the interval, want within the (2.5 s, 3 s] bucket", v)
	}
	if v := metricstest.Value(reg, MetricITLP90, "model", "m"); v <= 0.025 || v > 0.03 {
		t.Errorf("ITL p90 %v s over the interval, want within the (25 ms, 30 ms] bucket", v)
	}
	if v := metricstest.Value(reg, MetricForecastRate, "model", "m"); !(v > 0) {
		t.Errorf("forecast arrival rate %v, want the rate sized for", v)
	}
	serve(10, 3*time.Second, 30*time.Millisecond)
	d := step(2) // the second interval in a row over the 2 s target, the pool held at its max
	if math.Abs(d.Correction-1.15) > 1e-9 {
		t.Fatalf("correction %v after two intervals over the TTFT target, want 1.15 (decision %+v)", d.Correction, d)
	}
	if v := metricstest.Value(reg, MetricCorrection, "model", "m"); math.Abs(v-1.15) > 1e-9 {
		t.Errorf("%s = %v", MetricCorrection, v)
	}
	if v := metricstest.Value(reg, MetricNeededUpper, "model", "m"); v != d.Upper || !(d.Upper > d.Need) {
		t.Errorf("%s = %v, want the decision's upper band %v above its need %v (the default band of 1 over three differing intervals)", MetricNeededUpper, v, d.Upper, d.Need)
	}
	serve(10, 500*time.Millisecond, 10*time.Millisecond)
	step(3)
	if v := metricstest.Value(reg, MetricTTFTP90, "model", "m"); v > 0.5 {
		t.Errorf("TTFT p90 %v s after a fast interval, want at most 0.5 (the interval's, not the total's)", v)
	}
}
