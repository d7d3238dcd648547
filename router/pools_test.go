package router_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// Pools: per model and role, the load of requests in flight, the engines' reports, and
// cumulative counts that survive the endpoints leaving; as JSON (GET /v1/pools) and as
// Prometheus series.
func TestPools(t *testing.T) {
	eps := endpoints(3)
	eps[2].Models = []string{"other-model"}
	eps[2].Role = router.RoleDecode
	r, reg := newRouter(t, eps[:2], func(c *router.Config) { c.MetricsStaleAfter = time.Hour })
	r.SetLoad("e0", engine.Load{Waiting: 2, KVUsage: 0.5})
	r.SetLoad("e1", engine.Load{Waiting: 1, KVUsage: 0.3})

	d1 := route(t, r, "/v1/chat/completions", chatBody(longText("a", 200), false))
	d2 := route(t, r, "/v1/chat/completions", chatBody(longText("b", 200), true))
	prompt := uint64(d1.PromptTokens + d2.PromptTokens)

	srv := httptest.NewServer(r.PoolsHandler())
	defer srv.Close()
	get := func() router.PoolStats {
		t.Helper()
		resp, err := http.Get(srv.URL + router.PoolsPath)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var pr router.PoolsResponse
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET pools: %s", resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil {
			t.Fatal(err)
		}
		if len(pr.Pools) != 1 {
			t.Fatalf("pools = %+v", pr.Pools)
		}
		return pr.Pools[0]
	}
	p := get()
	if p.Model != model || p.Role != router.RoleAggregated || p.Endpoints != 2 || p.Healthy != 2 || p.Requests != 2 ||
		p.RunningRequests != 2 || p.PromptTokens != prompt || p.QueuedPrefillTokens <= 0 || p.WaitingRequests != 3 ||
		p.KVUsage != 0.4 || p.KVReporting != 2 || p.OutputTokens != 0 {
		t.Fatalf("pool while two requests run: %+v (prompt tokens %d)", p, prompt)
	}
	if got := metricstest.Value(reg, router.MetricPoolQueuedPrefill, "model", model, "role", "aggregated"); got != float64(p.QueuedPrefillTokens) {
		t.Errorf("%s = %v, want %d", router.MetricPoolQueuedPrefill, got, p.QueuedPrefillTokens)
	}
	if got := metricstest.Value(reg, router.MetricPoolKVUsage, "model", model, "role", "aggregated"); got != 0.4 {
		t.Errorf("%s = %v", router.MetricPoolKVUsage, got)
	}

	d1.FirstToken()
	d2.FirstToken()
	d1.Done(&openai.Usage{PromptTokens: d1.PromptTokens, CompletionTokens: 7}, nil)
	d2.Done(&openai.Usage{PromptTokens: d2.PromptTokens, CompletionTokens: 5}, nil)
	if p := get(); p.RunningRequests != 0 || p.QueuedPrefillTokens != 0 || p.OutputTokens != 12 {
		t.Fatalf("pool after both ended: %+v", p)
	}
	if got := metricstest.Value(reg, router.MetricPoolOutputTokens, "model", model); got != 12 {
		t.Errorf("%s = %v", router.MetricPoolOutputTokens, got)
	}

	// Replace the endpoints: the old pool keeps its counts; the new one is a decode pool.
	r.SetEndpoints(eps[2:])
	all := r.Pools()
	if len(all) != 2 || all[0].Model != model || all[0].Endpoints != 0 || all[0].Requests != 2 || all[0].OutputTokens != 12 ||
		all[1].Model != "other-model" || all[1].Role != router.RoleDecode || all[1].Endpoints != 1 || all[1].Requests != 0 {
		t.Fatalf("pools after the endpoints changed: %+v", all)
	}

	resp, err := http.Post(srv.URL+router.PoolsPath, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST pools: %s", resp.Status)
	}
}
