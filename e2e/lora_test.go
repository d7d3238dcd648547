package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// TestLoRARouting runs `kvgate router` in front of sims that serve vLLM's runtime adapter
// API, one of them with an adapter of its own: requests for that adapter land on it; requests
// for an adapter no engine has, sent at once, make the router load it exactly once, on one
// engine, and all land there.
func TestLoRARouting(t *testing.T) {
	sims := startSims(t, 3, "--allow-runtime-lora-updating")
	holder := startSims(t, 1, "--allow-runtime-lora-updating", "--lora-modules", "chat=/adapters/chat")[0]
	all := append(sims, holder)
	rt := startRouter(t, all, nil, "--lora-adapter", "sql=/adapters/sql")

	send := func(adapter string, i int) (string, int) {
		body, _ := json.Marshal(map[string]any{"model": adapter, "prompt": fmt.Sprintf("Question %d for %s.", i, adapter), "max_tokens": 8})
		resp, err := http.Post(rt.base+"/v1/completions", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Error(err)
			return "", 0
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.Header.Get(router.HeaderEndpoint), resp.StatusCode
	}
	for i := range 6 {
		if ep, code := send("chat", i); code != http.StatusOK || ep != holder.addr {
			t.Errorf("chat request %d: %d from %s, want 200 from the engine holding the adapter (%s)", i, code, ep, holder.addr)
		}
	}

	const n = 8
	eps := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ep, code := send("sql", i)
			if code != http.StatusOK {
				t.Errorf("sql request %d: HTTP %d", i, code)
			}
			eps[i] = ep
		})
	}
	wg.Wait()
	var with []string
	for _, s := range all {
		models, err := openai.ListModels(context.Background(), http.DefaultClient, "http://"+s.addr, "")
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(models, "sql") {
			with = append(with, s.addr)
		}
	}
	if len(with) != 1 {
		t.Fatalf("engines serving the adapter after %d concurrent requests: %v, want exactly one", n, with)
	}
	for i, ep := range eps {
		if ep != with[0] {
			t.Errorf("sql request %d served by %s, not by the engine that loaded the adapter (%s)", i, ep, with[0])
		}
	}
	if got := metric(t, rt.base, router.MetricLoRALoads, `outcome="loaded"`); got != 1 {
		t.Errorf("%s{outcome=loaded} = %v, want 1", router.MetricLoRALoads, got)
	}
	t.Logf("%d concurrent requests for an adapter no engine had: one load on %s, every request served there", n, with[0])
}
