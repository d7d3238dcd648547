package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/engine/sim/simtest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// TestAdapterBlocksMatchTheirRequests is the regression test for adapter requests that never
// match the cache: vLLM names the adapter in lora_name and again first in every block's
// extra_keys, and a consumer that reads that key as one more extra key (a multimodal hash or
// a salt) hashes the blocks under a seed no request has. The events go over real ZMQ in both
// of vLLM's shapes; the adapter's blocks must match the adapter's request and only it, and
// the base model's blocks of the same tokens must not match it.
func TestAdapterBlocksMatchTheirRequests(t *testing.T) {
	for _, shape := range []engine.Shape{engine.ShapeMap, engine.ShapeArray} {
		t.Run(map[engine.Shape]string{engine.ShapeMap: "map", engine.ShapeArray: "array"}[shape], func(t *testing.T) {
			eps := endpoints(3)
			pubs := make([]*engine.Publisher, len(eps))
			for i := range eps {
				p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Shape: shape, HashFormat: engine.HashInt, Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = p.Close() })
				pubs[i], eps[i].KVEvents = p, p.Addr()
				eps[i].Models = []string{model, "sql"}
			}
			r, _ := newRouter(t, eps, func(c *router.Config) { c.Adapters = map[string]string{"sql": model} })
			run(t, r)

			content := longText("adapter", 300)
			tokens := chatTokens(t, content)
			blocks := len(tokens) / 16
			adapter := stored(tokens, 16, 1000, "")
			ev := &adapter.Events[0]
			one := 1
			ev.LoRAName, ev.LoRAID = "sql", &one
			for range ev.BlockHashes {
				ev.BlockExtraKeys = append(ev.BlockExtraKeys, []string{"sql"})
			}
			base := stored(tokens, 16, 5000, "")
			eventually(t, "the adapter's blocks on e1, the base model's on e2", func() bool {
				if _, err := pubs[1].Publish(adapter); err != nil {
					t.Fatal(err)
				}
				if _, err := pubs[2].Publish(base); err != nil {
					t.Fatal(err)
				}
				return loadOf(r, "e1").CachedBlocks == blocks && loadOf(r, "e2").CachedBlocks == blocks
			})
			body, _ := json.Marshal(map[string]any{"model": "sql", "messages": []map[string]string{{"role": "user", "content": content}}})
			d := route(t, r, "/v1/chat/completions", body)
			if d.Endpoint.Name != "e1" || d.CachedBlocks != blocks {
				t.Errorf("adapter request went to %s with %d cached blocks, want e1 with %d: the adapter's blocks do not match its requests",
					d.Endpoint.Name, d.CachedBlocks, blocks)
			}
			d.Done(nil, nil)
			d = route(t, r, "/v1/chat/completions", chatBody(content, false))
			if d.Endpoint.Name != "e2" || d.CachedBlocks != blocks {
				t.Errorf("base request went to %s with %d cached blocks, want e2 with %d", d.Endpoint.Name, d.CachedBlocks, blocks)
			}
			d.Done(nil, nil)
		})
	}
}

// loraSim starts a simulated engine that serves vLLM's runtime adapter API.
func loraSim(t *testing.T, maxLoRAs int, static ...string) *sim.Server {
	t.Helper()
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0", RuntimeLoRA: true, LoRAs: static}
	cfg.Engine.NumBlocks, cfg.Engine.MaxLoRAs, cfg.Engine.LoRALoad = 512, maxLoRAs, 50*time.Millisecond
	s := simtest.Start(t, cfg, nil, nil)
	return s
}

func loraRouter(t *testing.T, sims ...*sim.Server) (*router.Router, *prometheus.Registry) {
	t.Helper()
	var eps []router.Endpoint
	for i, s := range sims {
		// As discovery does: the models (and adapters) the engine lists.
		models, err := openai.ListModels(context.Background(), http.DefaultClient, "http://"+s.Addr(), "")
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, router.Endpoint{Name: fmt.Sprint("e", i), Address: s.Addr(), Models: models, BlockSize: 16})
	}
	r, reg := newRouter(t, eps, func(c *router.Config) {
		c.Adapters = map[string]string{"sql": model, "chat": model, "code": model}
		c.LoRA.Paths = map[string]string{"sql": "/adapters/sql", "chat": "/adapters/chat", "code": "/adapters/code"}
		c.ScrapeInterval = 10 * time.Millisecond
	})
	run(t, r)
	return r, reg
}

func adapterBody(adapter, content string) []byte {
	b, _ := json.Marshal(map[string]any{"model": adapter, "prompt": content, "max_tokens": 4})
	return b
}

// TestAdapterLoadedOnce sends concurrent requests for an adapter no engine has: the router
// loads it once, on one engine, and every request goes there; later requests stay there.
func TestAdapterLoadedOnce(t *testing.T) {
	sims := []*sim.Server{loraSim(t, 0), loraSim(t, 0), loraSim(t, 0)}
	r, reg := loraRouter(t, sims...)
	if !slices.Contains(r.Models(), "sql") {
		t.Fatalf("models %v lack the loadable adapter", r.Models())
	}
	const n = 8
	picked := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			d, err := r.Route(context.Background(), router.Request{Path: "/v1/completions", Body: adapterBody("sql", fmt.Sprint("question ", i))})
			if err != nil {
				t.Error(err)
				return
			}
			picked[i] = d.Endpoint.Address
			d.Done(nil, nil)
		})
	}
	wg.Wait()
	loads := int64(0)
	for _, s := range sims {
		loads += s.LoRALoads()
	}
	if loads != 1 {
		t.Errorf("%d loads on the engines, want 1", loads)
	}
	for _, p := range picked[1:] {
		if p != picked[0] {
			t.Errorf("requests went to %v, want all on the engine that loaded the adapter", picked)
			break
		}
	}
	if got := metricstest.Value(reg, router.MetricLoRALoads, "outcome", "loaded"); got != 1 {
		t.Errorf("%s{outcome=loaded} = %v, want 1", router.MetricLoRALoads, got)
	}
	// The adapter is served there: a request straight to that engine succeeds.
	resp, err := http.Post("http://"+picked[0]+"/v1/completions", "application/json", bytes.NewReader(adapterBody("sql", "direct")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("the engine answered %d for the adapter the router loaded", resp.StatusCode)
	}
}

// TestAdapterPreferredWhereLoaded: an engine that has the adapter (statically) wins over idle
// engines without it.
func TestAdapterPreferredWhereLoaded(t *testing.T) {
	sims := []*sim.Server{loraSim(t, 0), loraSim(t, 0, "chat"), loraSim(t, 0)}
	r, reg := loraRouter(t, sims...)
	for i := range 5 {
		d := route(t, r, "/v1/completions", adapterBody("chat", fmt.Sprint("q", i)))
		if d.Endpoint.Address != sims[1].Addr() {
			t.Errorf("request %d went to %s, not to the engine holding the adapter", i, d.Endpoint.Name)
		}
		d.Done(nil, nil)
	}
	if got := metricstest.Value(reg, router.MetricLoRALoads); got != 0 {
		t.Errorf("%v loads, want none", got)
	}
}

// TestAdapterUnloadsColdest: on an engine at its max_lora, loading one more adapter first
// unloads the least recently used idle one.
func TestAdapterUnloadsColdest(t *testing.T) {
	s := loraSim(t, 2)
	r, reg := loraRouter(t, s)
	eventually(t, "max_lora scraped", func() bool {
		l := r.Load()
		return len(l) == 1 && l[0].EngineFresh && l[0].Engine.MaxLoRA == 2
	})
	for _, a := range []string{"sql", "chat", "code"} {
		d := route(t, r, "/v1/completions", adapterBody(a, "hello "+a))
		d.Done(nil, nil)
	}
	if got := metricstest.Value(reg, router.MetricLoRAUnloads); got != 1 {
		t.Errorf("%s = %v, want 1", router.MetricLoRAUnloads, got)
	}
	resp, err := http.Post("http://"+s.Addr()+"/v1/completions", "application/json", bytes.NewReader(adapterBody("sql", "x")))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("the coldest adapter (sql) answered %d, want 404 (unloaded)", resp.StatusCode)
	}
}
