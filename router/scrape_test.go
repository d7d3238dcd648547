package router_test

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// metricsEngine serves /metrics with whatever text is current.
type metricsEngine struct {
	srv  *httptest.Server
	text atomic.Pointer[string]
	hits atomic.Int64
}

func newMetricsEngine(t *testing.T, text string) *metricsEngine {
	t.Helper()
	e := &metricsEngine{}
	e.set(text)
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		e.hits.Add(1)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, *e.text.Load())
	}))
	t.Cleanup(e.srv.Close)
	return e
}

func (e *metricsEngine) set(s string) { e.text.Store(&s) }
func (e *metricsEngine) addr() string { return e.srv.Listener.Addr().String() }

func vllmMetrics(waiting, running int, usage float64) string {
	return fmt.Sprintf(`# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} %d
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} %d
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} %g
`, running, waiting, usage)
}

func oldVLLMMetrics(waiting int, usage float64) string {
	return fmt.Sprintf("# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} %d\n# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc{model_name=\"m\"} %g\n", waiting, usage)
}

func sglangMetrics(queue int, usage float64) string {
	return fmt.Sprintf("# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{model_name=\"m\"} %d\n# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs{model_name=\"m\"} 3\n# TYPE sglang:token_usage gauge\nsglang:token_usage{model_name=\"m\"} %g\n", queue, usage)
}

// TestScrapeSaturation scrapes real HTTP /metrics in each engine's format: saturated
// endpoints are avoided, 429 when all are saturated and shedding is on, picked anyway when
// it is off.
func TestScrapeSaturation(t *testing.T) {
	formats := []struct {
		name              string
		idle, queue, full string
	}{
		{"vLLM", vllmMetrics(0, 1, 0.1), vllmMetrics(40, 8, 0.5), vllmMetrics(0, 8, 0.99)},
		{"vLLM before v0.10", oldVLLMMetrics(0, 0.1), oldVLLMMetrics(40, 0.5), oldVLLMMetrics(0, 0.99)},
		{"SGLang", sglangMetrics(0, 0.1), sglangMetrics(40, 0.5), sglangMetrics(0, 0.99)},
	}
	for _, f := range formats {
		t.Run(f.name, func(t *testing.T) {
			a, b := newMetricsEngine(t, f.idle), newMetricsEngine(t, f.queue)
			eps := endpoints(2)
			eps[0].Address, eps[1].Address = a.addr(), b.addr()
			r, reg := newRouter(t, eps, func(c *router.Config) {
				c.Policy = router.PolicyRoundRobin
				c.ScrapeInterval = 10e6 // 10ms
				c.Shed = true
			})
			run(t, r)
			eventually(t, "scraped load", func() bool {
				l := loadOf(r, "e1")
				return l.EngineFresh && l.Engine.Waiting == 40 && loadOf(r, "e0").EngineFresh
			})
			// e1's queue is over the threshold: round-robin only ever picks e0.
			for range 4 {
				d := route(t, r, "/v1/chat/completions", chatBody("x", false))
				if d.Endpoint.Name != "e0" {
					t.Fatalf("picked saturated %s", d.Endpoint.Name)
				}
				d.Done(nil, nil)
			}
			// Both saturated (e0 by KV usage): shed.
			a.set(f.full)
			eventually(t, "e0 full", func() bool { return loadOf(r, "e0").Engine.KVUsage > 0.95 })
			_, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody("x", false)})
			var e *openai.Error
			if !errors.As(err, &e) || e.Status != http.StatusTooManyRequests {
				t.Fatalf("all saturated with shedding: %v, want 429", err)
			}
			if v := metricstest.Value(reg, router.MetricRequests, "outcome", router.OutcomeShed); v != 1 {
				t.Errorf("shed counter %v", v)
			}
			if v := metricstest.Value(reg, router.MetricWaiting, "endpoint", "e1"); v != 40 {
				t.Errorf("%s{e1} = %v", router.MetricWaiting, v)
			}
		})
	}
}

func TestSaturatedWithoutSheddingStillRoutes(t *testing.T) {
	r, _ := newRouter(t, endpoints(2), nil)
	r.SetLoad("e0", loadFull())
	r.SetLoad("e1", loadFull())
	d := route(t, r, "/v1/chat/completions", chatBody("x", false))
	d.Done(nil, nil)
}

// TestScrapeUnreachable: an engine whose /metrics cannot be reached is out of rotation; with
// no other endpoint it is tried anyway (it may be back before UnhealthyFor ends), counted in
// MetricDownRetries, rather than answered 503.
func TestScrapeUnreachable(t *testing.T) {
	live := newMetricsEngine(t, vllmMetrics(0, 0, 0))
	dead := httptest.NewServer(http.NotFoundHandler())
	deadAddr := dead.Listener.Addr().String()
	dead.Close()
	eps := endpoints(2)
	eps[0].Address, eps[1].Address = live.addr(), deadAddr
	r, reg := newRouter(t, eps, func(c *router.Config) { c.ScrapeInterval = 10e6 })
	run(t, r)
	eventually(t, "dead endpoint out", func() bool { return !loadOf(r, "e1").Healthy })
	for range 4 {
		d := route(t, r, "/v1/chat/completions", chatBody("x", false))
		if d.Endpoint.Name != "e0" {
			t.Fatalf("picked unreachable %s", d.Endpoint.Name)
		}
		d.Done(nil, nil)
	}
	if metricstest.Value(reg, router.MetricScrapeErrors) < 1 {
		t.Error("no scrape errors counted")
	}
	// An endpoint that never answered is not an engine restarting: with nothing else ready
	// the answer is 503 (the down-longest retry is for engines that were up; see
	// TestRefusedConnectionDuringRestart), as the Endpoint Picker Protocol asks.
	r.SetEndpoints(eps[1:])
	eventually(t, "e1 scraped once more", func() bool { return !loadOf(r, "e1").Healthy })
	_, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody("x", false)})
	var oe *openai.Error
	if !errors.As(err, &oe) || oe.Status != http.StatusServiceUnavailable {
		t.Fatalf("only endpoint down and never up: %v, want a 503", err)
	}
	if v := metricstest.Value(reg, router.MetricDownRetries); v != 0 {
		t.Errorf("%s = %v, want 0", router.MetricDownRetries, v)
	}
}

// TestScrapeNoMetricsStaysHealthy: an engine without /metrics (404) is not taken out.
func TestScrapeNoMetricsStaysHealthy(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	eps := endpoints(1)
	eps[0].Address = srv.Listener.Addr().String()
	r, reg := newRouter(t, eps, func(c *router.Config) { c.ScrapeInterval = 10e6 })
	run(t, r)
	eventually(t, "a failed scrape", func() bool { return metricstest.Value(reg, router.MetricScrapeErrors) >= 2 })
	d := route(t, r, "/v1/chat/completions", chatBody("x", false))
	d.Done(nil, nil)
}

// TestScrapeUncompressed: the router asks engines for their /metrics page uncompressed
// (gunzipping a 30 KB page from every engine every scrape interval cost it more than parsing
// the lines it reads), and still reads the page of an engine that compresses it anyway.
func TestScrapeUncompressed(t *testing.T) {
	var asked atomic.Pointer[string]
	page := vllmMetrics(7, 1, 0.25)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/metrics" {
			http.NotFound(w, req)
			return
		}
		enc := req.Header.Get("Accept-Encoding")
		asked.Store(&enc)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Header().Set("Content-Encoding", "gzip") // whatever was asked
		zw := gzip.NewWriter(w)
		fmt.Fprint(zw, page)
		_ = zw.Close()
	}))
	t.Cleanup(srv.Close)
	eps := endpoints(1)
	eps[0].Address = srv.Listener.Addr().String()
	r, _ := newRouter(t, eps, func(c *router.Config) { c.ScrapeInterval = 10e6 })
	run(t, r)
	eventually(t, "the compressed page read", func() bool {
		l := loadOf(r, "e0")
		return l.EngineFresh && l.Engine.Waiting == 7 && l.Engine.KVUsage == 0.25
	})
	if enc := asked.Load(); *enc != "identity" {
		t.Errorf("Accept-Encoding %q, want identity", *enc)
	}
}
