package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

func TestRouteErrors(t *testing.T) {
	eps := endpoints(2)
	r, reg := newRouter(t, eps, func(c *router.Config) { c.MaxBodyBytes = 4096 })
	tests := []struct {
		name, path, body string
		subset           []string
		status           int
		param            string
	}{
		{"malformed", "/v1/chat/completions", `{"messages":`, nil, 400, ""},
		{"no messages", "/v1/chat/completions", `{"model":"` + model + `"}`, nil, 400, "messages"},
		{"bad max_tokens", "/v1/completions", `{"model":"` + model + `","prompt":"x","max_tokens":0}`, nil, 400, "max_tokens"},
		{"unknown model", "/v1/chat/completions", `{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}`, nil, 404, "model"},
		{"too large", "/v1/completions", `{"model":"` + model + `","prompt":"` + strings.Repeat("x", 5000) + `"}`, nil, 413, ""},
		{"other path", "/v2/embeddings", `{}`, nil, 404, ""},
		{"subset excludes all", "/v1/chat/completions", string(chatBody("x", false)), []string{"10.0.0.1:80"}, 503, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := r.Route(context.Background(), router.Request{Path: tt.path, Body: []byte(tt.body), Subset: tt.subset})
			var e *openai.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v %v, want *openai.Error", d, err)
			}
			if e.Status != tt.status || e.Param != tt.param {
				t.Errorf("status %d param %q, want %d %q (%s)", e.Status, e.Param, tt.status, tt.param, e.Message)
			}
		})
	}
	if v := metricstest.Value(reg, router.MetricRequests, "outcome", router.OutcomeBadRequest); v != 3 {
		t.Errorf("bad_request count %v", v)
	}
	for _, l := range r.Load() {
		if l.Requests != 0 {
			t.Errorf("refused requests left load: %+v", l)
		}
	}
}

func TestRouteSubsetAndModels(t *testing.T) {
	eps := endpoints(3)
	eps[2].Models = []string{"other-model"}
	r, _ := newRouter(t, eps, func(c *router.Config) {
		mm, err := tokenizer.NewModelMap([]tokenizer.Model{{Name: model}, {Name: "other-model", BlockSize: 32}})
		if err != nil {
			t.Fatal(err)
		}
		c.Models = mm
		c.Policy = router.PolicyRoundRobin
	})
	if got := r.Models(); !slices.Equal(got, []string{model, "other-model"}) {
		t.Errorf("Models() = %v", got)
	}
	for range 4 {
		d, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody("x", false), Subset: []string{eps[1].Address}})
		if err != nil {
			t.Fatal(err)
		}
		if d.Endpoint.Name != "e1" || len(d.Fallbacks) != 0 {
			t.Errorf("subset [e1]: picked %s, fallbacks %v", d.Endpoint.Name, d.Fallbacks)
		}
		d.Done(nil, nil)
	}
	body := `{"model":"other-model","messages":[{"role":"user","content":"x"}]}`
	d := route(t, r, "/v1/chat/completions", []byte(body))
	if d.Endpoint.Name != "e2" || d.Model != "other-model" {
		t.Errorf("other-model went to %s", d.Endpoint.Name)
	}
	d.Done(nil, nil)
}

func TestRouteDefaultModelAndStreamUsage(t *testing.T) {
	r, _ := newRouter(t, endpoints(1), nil)
	tests := []struct {
		name, body string
		forced     bool
	}{
		{"stream without usage", `{"stream":true,"messages":[{"role":"user","content":"x"}],"zzz":1}`, true},
		{"stream with usage", `{"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}`, false},
		{"not streamed", `{"messages":[{"role":"user","content":"x"}]}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := route(t, r, "/v1/chat/completions", []byte(tt.body))
			defer d.Done(nil, nil)
			if d.Model != model {
				t.Errorf("model %q, want the only one served", d.Model)
			}
			if d.UsageForced != tt.forced {
				t.Errorf("UsageForced = %v", d.UsageForced)
			}
			req, err := openai.ParseChatRequest(d.Body)
			if err != nil {
				t.Fatal(err)
			}
			if req.Stream && !req.IncludeUsage() {
				t.Errorf("forwarded stream body lacks include_usage: %s", d.Body)
			}
			if !tt.forced && string(d.Body) != tt.body {
				t.Errorf("body rewritten: %s", d.Body)
			}
			if tt.forced && string(req.Extra["zzz"]) != "1" {
				t.Errorf("unknown field lost: %s", d.Body)
			}
		})
	}
}

func TestDecisionHeader(t *testing.T) {
	r, _ := newRouter(t, endpoints(3), func(c *router.Config) { c.Policy = router.PolicyRoundRobin })
	d := route(t, r, "/v1/chat/completions", chatBody("x", false))
	defer d.Done(nil, nil)
	h := d.Header()
	want := strings.Join([]string{d.Endpoint.Address, d.Fallbacks[0].Address, d.Fallbacks[1].Address}, ",")
	if got := h.Get(router.HeaderDestination); got != want {
		t.Errorf("%s = %q, want %q", router.HeaderDestination, got, want)
	}
	if h.Get(router.HeaderEndpoint) != d.Endpoint.Address || h.Get(router.HeaderCachedBlocks) != "0" {
		t.Errorf("headers %v", h)
	}
	if h.Get(router.HeaderPrefiller) != "" {
		t.Errorf("aggregated decision names a prefiller: %v", h)
	}
}

// TestCompletionsTokenPrompt: a completion whose prompt is token ids is matched on those ids
// as they are.
func TestCompletionsTokenPrompt(t *testing.T) {
	eps := endpoints(3)
	r, _ := newRouter(t, eps, nil)
	ids := make([]uint32, 160)
	for i := range ids {
		ids[i] = uint32(1000 + i)
	}
	r.ApplyEvents("e2", stored(ids, 16, 1, ""))
	body, _ := json.Marshal(map[string]any{"model": model, "prompt": ids, "max_tokens": 4})
	d := route(t, r, "/v1/completions", body)
	defer d.Done(nil, nil)
	if d.Endpoint.Name != "e2" || d.CachedBlocks != 10 || d.PromptTokens != 160 {
		t.Errorf("picked %s with %d cached blocks, %d tokens", d.Endpoint.Name, d.CachedBlocks, d.PromptTokens)
	}
	// The text form of a prompt is tokenized.
	tok, _ := tokenizer.Default()
	text := longText("completion", 200)
	r.ApplyEvents("e0", stored(tok.Encode(text), 16, 500, ""))
	body, _ = json.Marshal(map[string]any{"model": model, "prompt": []string{text, "second prompt"}})
	d2 := route(t, r, "/v1/completions", body)
	defer d2.Done(nil, nil)
	if d2.Endpoint.Name != "e0" || d2.CachedBlocks != len(tok.Encode(text))/16 {
		t.Errorf("text prompt: picked %s with %d cached blocks", d2.Endpoint.Name, d2.CachedBlocks)
	}
	if d2.PromptTokens != len(tok.Encode(text))+len(tok.Encode("second prompt")) {
		t.Errorf("prompt tokens %d do not count the second prompt", d2.PromptTokens)
	}
}

// TestTierCredit: a prefix on GPU beats the same prefix on CPU, which beats disk.
func TestTierCredit(t *testing.T) {
	r, _ := newRouter(t, endpoints(3), nil)
	content := longText("tier", 200)
	tokens := chatTokens(t, content)
	r.ApplyEvents("e0", stored(tokens, 16, 1, "disk"))
	r.ApplyEvents("e1", stored(tokens, 16, 1, "CPU"))
	r.ApplyEvents("e2", stored(tokens, 16, 1, "GPU"))
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	d.Done(nil, nil)
	if d.Endpoint.Name != "e2" || d.Fallbacks[0].Name != "e1" || d.Fallbacks[1].Name != "e0" {
		t.Errorf("order %s, %s, %s; want e2 (GPU), e1 (CPU), e0 (disk)", d.Endpoint.Name, d.Fallbacks[0].Name, d.Fallbacks[1].Name)
	}
}

// TestLoadBeatsCache: the holder of a prefix stops winning once its in-flight load outweighs
// the prefill it saves.
func TestLoadBeatsCache(t *testing.T) {
	r, _ := newRouter(t, endpoints(2), nil)
	content := longText("busy", 100)
	tokens := chatTokens(t, content)
	r.ApplyEvents("e0", stored(tokens, 16, 1, ""))
	var held []*router.Decision
	defer func() {
		for _, d := range held {
			d.Done(nil, nil)
		}
	}()
	first := route(t, r, "/v1/chat/completions", chatBody(content, false))
	held = append(held, first)
	if first.Endpoint.Name != "e0" {
		t.Fatalf("first pick %s", first.Endpoint.Name)
	}
	// 11 uncached tokens each: a full miss (24 blocks) outweighs that queue only after a few
	// hundred requests under the default weights.
	for i := 0; i < 2000; i++ {
		d := route(t, r, "/v1/chat/completions", chatBody(content, false))
		held = append(held, d)
		if d.Endpoint.Name == "e1" {
			if i < 20 {
				t.Errorf("e0 lost its cached prefix after only %d requests in flight", i+1)
			}
			return
		}
	}
	t.Errorf("e0 kept winning under load: %+v", r.Load())
}

func TestSetEndpoints(t *testing.T) {
	eps := endpoints(2)
	r, _ := newRouter(t, eps, nil)
	content := longText("keep", 100)
	tokens := chatTokens(t, content)
	r.ApplyEvents("e1", stored(tokens, 16, 1, ""))
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	// Same set again: state kept.
	r.SetEndpoints(eps)
	if l := loadOf(r, "e1"); l.CachedBlocks != len(tokens)/16 || l.Requests != 1 {
		t.Errorf("state lost on an identical SetEndpoints: %+v", l)
	}
	// e1 leaves: its cache is forgotten and requests go elsewhere.
	r.SetEndpoints(eps[:1])
	if got := r.Endpoints(); len(got) != 1 || got[0].Name != "e0" {
		t.Errorf("Endpoints() = %v", got)
	}
	d.Done(nil, nil) // releasing onto a removed endpoint is harmless
	d2 := route(t, r, "/v1/chat/completions", chatBody(content, false))
	d2.Done(nil, nil)
	if d2.Endpoint.Name != "e0" || d2.CachedBlocks != 0 {
		t.Errorf("after removal: %s with %d cached", d2.Endpoint.Name, d2.CachedBlocks)
	}
	// Back again: it starts empty.
	r.SetEndpoints(eps)
	if l := loadOf(r, "e1"); l.CachedBlocks != 0 || l.Requests != 0 {
		t.Errorf("re-added endpoint not fresh: %+v", l)
	}
	// Invalid entries are skipped.
	r.SetEndpoints(append(slices.Clone(eps), router.Endpoint{Name: "bad", Address: "nope"}))
	if len(r.Endpoints()) != 2 {
		t.Errorf("invalid endpoint accepted: %v", r.Endpoints())
	}
}

func TestNewRejects(t *testing.T) {
	cfg := router.DefaultConfig()
	cfg.Policy = "best"
	if _, err := router.New(cfg, nil, nil); err == nil {
		t.Error("unknown policy accepted")
	}
	cfg = router.DefaultConfig()
	cfg.Endpoints = []router.Endpoint{{Name: "x", Address: "127.0.0.1:1", Role: "leader"}}
	if _, err := router.New(cfg, nil, nil); err == nil {
		t.Error("unknown role accepted")
	}
}

// TestPolicies runs every policy over the same traffic: a repeated prompt and distinct ones.
func TestPolicies(t *testing.T) {
	repeated := chatBody(longText("repeat", 150), false)
	tests := []struct {
		policy string
		check  func(t *testing.T, picks []string, repeatPicks []string)
	}{
		{router.PolicyRoundRobin, func(t *testing.T, picks, _ []string) {
			if strings.Join(picks[:6], ",") != "e0,e1,e2,e3,e0,e1" {
				t.Errorf("round-robin order %v", picks)
			}
		}},
		{router.PolicyRandom, func(t *testing.T, picks, _ []string) {
			for _, e := range []string{"e0", "e1", "e2", "e3"} {
				if !slices.Contains(picks, e) {
					t.Errorf("random never picked %s: %v", e, picks)
				}
			}
		}},
		{router.PolicyLeastLoad, func(t *testing.T, picks, _ []string) {
			// Load is held, so the first four requests spread over all four endpoints.
			s := slices.Clone(picks[:4])
			slices.Sort(s)
			if !slices.Equal(s, []string{"e0", "e1", "e2", "e3"}) {
				t.Errorf("least-load did not spread: %v", picks)
			}
		}},
		{router.PolicyApproxPrefix, func(t *testing.T, _, rep []string) {
			for _, p := range rep {
				if p != rep[0] {
					t.Errorf("approx-prefix moved a repeated prompt: %v", rep)
				}
			}
		}},
		{router.PolicyKV, func(t *testing.T, _, rep []string) {
			// No events: approximate mode remembers where the prompt went.
			for _, p := range rep {
				if p != rep[0] {
					t.Errorf("kv (approximate) moved a repeated prompt: %v", rep)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			r, reg := newRouter(t, endpoints(4), func(c *router.Config) { c.Policy = tt.policy })
			var picks, rep []string
			var held []*router.Decision
			for i := range 16 {
				d := route(t, r, "/v1/chat/completions", chatBody(fmt.Sprintf("distinct prompt %d %s", i, longText("d", 20)), false))
				picks = append(picks, d.Endpoint.Name)
				held = append(held, d)
			}
			for _, d := range held {
				d.Done(nil, nil)
			}
			for range 6 {
				d := route(t, r, "/v1/chat/completions", repeated)
				rep = append(rep, d.Endpoint.Name)
				d.FirstToken()
				d.Done(nil, nil)
			}
			tt.check(t, picks, rep)
			if v := metricstest.Value(reg, router.MetricRequests, "policy", tt.policy, "outcome", router.OutcomeRouted); v != 22 {
				t.Errorf("routed counter %v", v)
			}
			if v := metricstest.Value(reg, router.MetricDecisionSeconds); v != 22 {
				t.Errorf("decision histogram count %v", v)
			}
		})
	}
}

// TestApproxPrefixSpreads: different long prompts spread by load; the same one sticks.
func TestApproxPrefixSpreads(t *testing.T) {
	r, _ := newRouter(t, endpoints(2), func(c *router.Config) { c.Policy = router.PolicyApproxPrefix })
	a := route(t, r, "/v1/chat/completions", chatBody(longText("alpha", 100), false))
	b := route(t, r, "/v1/chat/completions", chatBody(longText("beta", 100), false))
	if a.Endpoint.Name == b.Endpoint.Name {
		t.Errorf("two new prompts on one endpoint while the other was idle")
	}
	a2 := route(t, r, "/v1/chat/completions", chatBody(longText("alpha", 100), false))
	if a2.Endpoint.Name != a.Endpoint.Name {
		t.Errorf("repeated prompt moved from %s to %s", a.Endpoint.Name, a2.Endpoint.Name)
	}
	for _, d := range []*router.Decision{a, b, a2} {
		d.Done(nil, nil)
	}
}

// TestApproxModeExpires: approximate mode forgets after its TTL (virtual clock).
func TestApproxModeExpires(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	r, _ := newRouter(t, endpoints(8), func(c *router.Config) {
		c.ApproxTTL = 10e9
		c.Now = func() time.Time { return now }
	})
	body := chatBody(longText("ttl", 150), false)
	d := route(t, r, "/v1/chat/completions", body)
	d.Done(nil, nil)
	d2 := route(t, r, "/v1/chat/completions", body)
	d2.Done(nil, nil)
	if d2.Endpoint.Name != d.Endpoint.Name || d2.CachedBlocks == 0 {
		t.Fatalf("approximate mode did not remember: %s then %s (%d cached)", d.Endpoint.Name, d2.Endpoint.Name, d2.CachedBlocks)
	}
	now = now.Add(11e9)
	d3 := route(t, r, "/v1/chat/completions", body)
	d3.Done(nil, nil)
	if d3.CachedBlocks != 0 {
		t.Errorf("remembered past the TTL: %d cached", d3.CachedBlocks)
	}
}

// TestTemplateKwargs: chat_template_kwargs reach the template, nested values included.
func TestTemplateKwargs(t *testing.T) {
	r, _ := newRouter(t, endpoints(1), nil)
	plain := route(t, r, "/v1/chat/completions", []byte(`{"messages":[{"role":"user","content":"x"}]}`))
	plain.Done(nil, nil)
	off := route(t, r, "/v1/chat/completions", []byte(`{"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"enable_thinking":false,"meta":{"b":1,"a":[2]}}}`))
	off.Done(nil, nil)
	// Qwen3's template adds an empty think block when thinking is off.
	if off.PromptTokens <= plain.PromptTokens {
		t.Errorf("enable_thinking=false did not reach the template: %d vs %d tokens", off.PromptTokens, plain.PromptTokens)
	}
}

// TestModelGoneBriefly: when discovery briefly lists no endpoint for a model it served (a
// Consul dev agent restarting forgets every registration), requests get 503 (retry), not
// 404 (no such model); a model never served is still 404, and with the grace off or past it
// the model is gone for good.
func TestModelGoneBriefly(t *testing.T) {
	status := func(r *router.Router, m string) int {
		t.Helper()
		body := `{"model":"` + m + `","messages":[{"role":"user","content":"x"}]}`
		_, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: []byte(body)})
		var e *openai.Error
		if !errors.As(err, &e) {
			t.Fatalf("Route(%s) = %v, want *openai.Error", m, err)
		}
		return e.Status
	}
	for _, tt := range []struct {
		name  string
		grace time.Duration
		want  int
	}{
		{"default grace", 0, 503},
		{"grace off", -1, 404},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := newRouter(t, endpoints(2), func(c *router.Config) { c.ModelGrace = tt.grace })
			r.SetEndpoints(nil)
			if got := status(r, model); got != tt.want {
				t.Errorf("model just left: status %d, want %d", got, tt.want)
			}
			if got := status(r, "gpt-9"); got != 404 {
				t.Errorf("model never served: status %d, want 404", got)
			}
			r.SetEndpoints(endpoints(1))
			route(t, r, "/v1/chat/completions", chatBody("back", false)).Done(nil, nil)
		})
	}
}

// TestTokenlessCopyOnLowerTier: vLLM's offloading connector reports a CPU copy of blocks as a
// BlockStored without token ids; the router places it by the hashes the engine reported
// with tokens before, so after the GPU copy is evicted the endpoint still counts the prefix
// (on CPU) and wins the request.
func TestTokenlessCopyOnLowerTier(t *testing.T) {
	r, _ := newRouter(t, endpoints(2), func(c *router.Config) { c.PendingTTL = -1 })
	content := longText("offload", 200)
	tokens := chatTokens(t, content)
	gpu := stored(tokens, 16, 1, engine.MediumGPU)
	r.ApplyEvents("e0", gpu)
	hashes := gpu.Events[0].BlockHashes
	r.ApplyEvents("e0", engine.EventBatch{TS: 2, Events: []engine.Event{
		{Kind: engine.BlockStored, BlockSize: 16, BlockHashes: hashes, Medium: "CPU"},
		{Kind: engine.BlockRemoved, BlockHashes: hashes, Medium: engine.MediumGPU},
	}})
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	defer d.Done(nil, nil)
	if d.Endpoint.Name != "e0" || d.CachedBlocks != len(hashes) {
		t.Errorf("picked %s with %d cached blocks; want e0 with its %d blocks on CPU", d.Endpoint.Name, d.CachedBlocks, len(hashes))
	}
}
