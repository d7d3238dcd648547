package router_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/relay"
	"github.com/kvgate/kvgate/router"
)

// fakeSource is an EventSource the test drives: it hands the router's handler to the test
// and records when its Run starts and ends.
type fakeSource struct {
	mu      sync.Mutex
	h       engine.Handler
	running bool
	runs    int
}

func (f *fakeSource) Run(ctx context.Context, h engine.Handler) error {
	f.mu.Lock()
	f.h, f.running = h, true
	f.runs++
	f.mu.Unlock()
	<-ctx.Done()
	f.mu.Lock()
	f.running = false
	f.mu.Unlock()
	return nil
}

func (f *fakeSource) handler() engine.Handler {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.h
}

func (f *fakeSource) isRunning() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running
}

// sources hands out one fakeSource per endpoint that names a workerd, and nil for others.
type sources struct {
	mu sync.Mutex
	m  map[string]*fakeSource
}

func (s *sources) get(name string) *fakeSource {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[name]
}

func (s *sources) hook(e router.Endpoint) router.EventSource {
	if e.Workerd == "" {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*fakeSource{}
	}
	f := &fakeSource{}
	s.m[e.Name] = f
	return f
}

// metricsServer counts reads of its /metrics.
func metricsServer(t *testing.T) (*httptest.Server, *atomic.Int64) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte("vllm:num_requests_waiting 0\n"))
	}))
	t.Cleanup(srv.Close)
	return srv, &hits
}

// TestEventSourceHook checks an endpoint that names a workerd gets its events, load and
// health from the source the hook gives (and is not scraped), while an endpoint without a
// workerd keeps the default scraping; and that removing the endpoint stops its source and
// forgets its blocks.
func TestEventSourceHook(t *testing.T) {
	srv, hits := metricsServer(t)
	plain, plainHits := metricsServer(t)
	metricsURL := srv.URL + "/metrics"
	eps := []router.Endpoint{
		{Name: "relayed", Address: "127.0.0.1:1", Models: []string{model}, BlockSize: 16,
			KVEvents: "tcp://127.0.0.1:1", Workerd: "127.0.0.1:7070", MetricsURL: metricsURL},
		{Name: "plain", Address: "127.0.0.1:2", Models: []string{model}, BlockSize: 16,
			MetricsURL: plain.URL + "/metrics"},
	}
	var src sources
	r, reg := newRouter(t, eps, func(c *router.Config) {
		c.EventSource = src.hook
		c.ScrapeInterval = 10 * time.Millisecond
	})
	run(t, r)

	eventually(t, "the relayed endpoint's source runs", func() bool {
		f := src.get("relayed")
		return f != nil && f.isRunning()
	})
	if src.get("plain") != nil {
		t.Fatal("the hook's nil answer for an endpoint without a workerd was not respected")
	}
	f := src.get("relayed")
	h := f.handler()
	lh, ok := h.(relay.LoadHandler)
	if !ok {
		t.Fatalf("the handler given to a source (%T) is not a relay.LoadHandler", h)
	}

	content := longText("relay", 200)
	h.Batch(1, stored(chatTokens(t, content), 16, 1000, engine.MediumGPU))
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	if d.Endpoint.Name != "relayed" || d.CachedBlocks == 0 {
		t.Errorf("picked %s with %d cached blocks; want relayed with its blocks", d.Endpoint.Name, d.CachedBlocks)
	}
	d.Done(nil, nil)
	if got, want := metricstest.Value(reg, router.MetricEndpointBlocks, "endpoint", "relayed"), float64(d.CachedBlocks); got != want {
		t.Errorf("%s{endpoint=relayed} = %v, want %v", router.MetricEndpointBlocks, got, want)
	}

	lh.Load(engine.Load{Running: 3, Waiting: 7, KVUsage: 0.5}, true)
	l := loadOf(r, "relayed")
	if !l.EngineFresh || l.Engine.Waiting != 7 || l.Engine.Running != 3 || !l.Healthy {
		t.Errorf("load after a source report: %+v", l)
	}
	lh.Load(engine.Load{}, false)
	if l := loadOf(r, "relayed"); l.Healthy || l.Engine.Waiting != 7 {
		t.Errorf("after an unhealthy report: healthy %v, load %+v (want out of rotation, last load kept)", l.Healthy, l.Engine)
	}
	lh.Load(engine.Load{Waiting: 1}, true)
	if l := loadOf(r, "relayed"); !l.Healthy || l.Engine.Waiting != 1 {
		t.Errorf("after a healthy report: %+v", l)
	}

	eventually(t, "the plain endpoint is scraped", func() bool { return plainHits.Load() >= 2 })
	if n := hits.Load(); n != 0 {
		t.Errorf("the relayed endpoint's metrics were scraped %d times; its source owns its load", n)
	}

	// Removal stops the source and forgets the blocks; reports after that are ignored.
	r.SetEndpoints(eps[1:])
	eventually(t, "the removed endpoint's source stops", func() bool { return !f.isRunning() })
	h.Batch(2, stored(chatTokens(t, content), 16, 1000, engine.MediumGPU))
	lh.Load(engine.Load{Waiting: 9}, true)
	r.SetEndpoints(eps)
	eventually(t, "a new source for the endpoint added again", func() bool {
		g := src.get("relayed")
		return g != f && g != nil && g.isRunning()
	})
	if l := loadOf(r, "relayed"); l.CachedBlocks != 0 || l.EngineFresh {
		t.Errorf("endpoint added again remembers the old one: %+v", l)
	}
}

// TestEventSourceWithoutKVEvents checks that a source for an engine that publishes no KV
// events feeds load only: its (empty) snapshots must not make the router treat the endpoint
// as exactly known, so approximate mode keeps working for it.
func TestEventSourceWithoutKVEvents(t *testing.T) {
	eps := []router.Endpoint{{Name: "w", Address: "127.0.0.1:1", Models: []string{model}, BlockSize: 16, Workerd: "127.0.0.1:7070"}}
	var src sources
	r, _ := newRouter(t, eps, func(c *router.Config) { c.EventSource = src.hook })
	run(t, r)
	eventually(t, "the source runs", func() bool { f := src.get("w"); return f != nil && f.isRunning() })
	h := src.get("w").handler()
	h.Batch(1, engine.EventBatch{Events: []engine.Event{{Kind: engine.AllBlocksCleared}}})
	h.(relay.LoadHandler).Load(engine.Load{Waiting: 4}, true)
	if l := loadOf(r, "w"); l.Engine.Waiting != 4 {
		t.Errorf("load %+v", l.Engine)
	}
	content := longText("approx", 200)
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	d.Done(nil, nil)
	d = route(t, r, "/v1/chat/completions", chatBody(content, false))
	d.Done(nil, nil)
	if d.CachedBlocks == 0 {
		t.Error("approximate mode did not remember the routed prompt: the empty batch was taken as the cache's truth")
	}
}

// TestEventSourceHookNil checks a hook that answers nil leaves the ZMQ subscription in place.
func TestEventSourceHookNil(t *testing.T) {
	pub, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	eps := []router.Endpoint{{Name: "z", Address: "127.0.0.1:1", Models: []string{model}, BlockSize: 16, KVEvents: pub.Addr()}}
	var asked atomic.Int64
	r, _ := newRouter(t, eps, func(c *router.Config) {
		c.EventSource = func(router.Endpoint) router.EventSource { asked.Add(1); return nil }
	})
	run(t, r)
	tokens := chatTokens(t, longText("zmq", 200))
	eventually(t, "events over ZMQ reach the index", func() bool {
		if _, err := pub.Publish(stored(tokens, 16, 5000, engine.MediumGPU)); err != nil {
			t.Fatal(err)
		}
		return loadOf(r, "z").CachedBlocks > 0
	})
	if asked.Load() == 0 {
		t.Error("the hook was never asked")
	}
}

// lineCounter counts the log records whose message is msg.
type lineCounter struct {
	msg string
	n   atomic.Int64
}

func (c *lineCounter) Enabled(context.Context, slog.Level) bool { return true }
func (c *lineCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Message == c.msg {
		c.n.Add(1)
	}
	return nil
}
func (c *lineCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *lineCounter) WithGroup(string) slog.Handler      { return c }

// TestGapWarningsRateLimited: a publisher that skips sequence numbers on every batch costs
// one warning line per endpoint per GapLogEvery, while the metric counts every gap (each
// gap still clears the endpoint).
func TestGapWarningsRateLimited(t *testing.T) {
	eps := []router.Endpoint{{Name: "relayed", Address: "127.0.0.1:1", Models: []string{model}, BlockSize: 16,
		KVEvents: "tcp://127.0.0.1:1", Workerd: "127.0.0.1:7070"}}
	var src sources
	cfg := router.DefaultConfig()
	cfg.Endpoints, cfg.Seed, cfg.ScrapeInterval, cfg.EventSource = eps, 42, -1, src.hook
	lines := &lineCounter{msg: "kv events: gap, clearing the endpoint's cache state"}
	reg := prometheus.NewRegistry()
	r, err := router.New(cfg, slog.New(lines), reg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	eventually(t, "the endpoint's source runs", func() bool {
		f := src.get("relayed")
		return f != nil && f.isRunning()
	})
	h := src.get("relayed").handler()
	const gaps = 500
	for i := range gaps {
		h.Gap(uint64(10*i+1), uint64(10*i+5))
	}
	if got := metricstest.Value(reg, router.MetricEventGaps); got != gaps {
		t.Errorf("%s = %v, want %d", router.MetricEventGaps, got, gaps)
	}
	if n := lines.n.Load(); n != 1 {
		t.Errorf("%d gap warnings for %d gaps within %v, want 1", n, gaps, router.GapLogEvery)
	}
}
