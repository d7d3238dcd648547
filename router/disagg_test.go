package router_test

import (
	"testing"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
)

func pdEndpoints() []router.Endpoint {
	eps := endpoints(4)
	eps[0].Role, eps[1].Role = router.RolePrefill, router.RolePrefill
	eps[2].Role, eps[3].Role = router.RoleDecode, router.RoleDecode
	return eps
}

// TestDisaggregated: with prefill endpoints present, the target is a decode endpoint, the
// prefill endpoint holding the prompt is named in the headers, and the prefill load sits on
// it until the first token.
func TestDisaggregated(t *testing.T) {
	r, _ := newRouter(t, pdEndpoints(), func(c *router.Config) { c.DisaggMinUncachedTokens, c.DisaggMinUncachedRatio = 0, 0 })
	content := longText("pd", 200)
	tokens := chatTokens(t, content)
	half := tokens[:len(tokens)/32*16]
	r.ApplyEvents("e1", stored(half, 16, 1, ""))
	d := route(t, r, "/v1/chat/completions", chatBody(content, true))
	if d.Endpoint.Role != router.RoleDecode || d.Prefill == nil || d.Prefill.Name != "e1" {
		t.Fatalf("target %s (%s), prefill %v; want a decode target and prefill e1", d.Endpoint.Name, d.Endpoint.Role, d.Prefill)
	}
	for _, f := range d.Fallbacks {
		if f.Role == router.RolePrefill {
			t.Errorf("prefill endpoint %s offered as a fallback target", f.Name)
		}
	}
	h := d.Header()
	if h.Get(router.HeaderPrefiller) != d.Prefill.Address || h.Get(router.HeaderPrefillEndpoint) != d.Prefill.Address {
		t.Errorf("prefill headers %v", h)
	}
	wantPrefill := int64(len(tokens) - len(half))
	if l := loadOf(r, "e1"); l.PrefillTokens != wantPrefill || l.DecodeBlocks != 0 || l.Requests != 0 {
		t.Errorf("prefill endpoint load %+v, want %d prefill tokens only", l, wantPrefill)
	}
	if l := loadOf(r, d.Endpoint.Name); l.PrefillTokens != 0 || l.DecodeBlocks == 0 || l.Requests != 1 {
		t.Errorf("decode endpoint load %+v", l)
	}
	// The fallback path moves only the decode load.
	other := "127.0.0.1:3"
	if d.Endpoint.Address == other {
		other = "127.0.0.1:4"
	}
	d.Served(other)
	d.FirstToken()
	if l := loadOf(r, "e1"); l.PrefillTokens != 0 {
		t.Errorf("prefill load left after the first token: %+v", l)
	}
	d.Done(nil, nil)
	for _, l := range r.Load() {
		if l.PrefillTokens != 0 || l.DecodeBlocks != 0 || l.Requests != 0 {
			t.Errorf("leak on %s: %+v", l.Name, l)
		}
	}
}

// TestLearnedBlockSize: an endpoint configured without a block size takes its engine's from
// the KV events (SGLang's page size, say) and matches requests in those blocks.
func TestLearnedBlockSize(t *testing.T) {
	eps := endpoints(2)
	eps[0].BlockSize, eps[1].BlockSize = 0, 0
	r, _ := newRouter(t, eps, nil)
	content := longText("pages", 100)
	tokens := chatTokens(t, content)
	r.ApplyEvents("e1", stored(tokens, 4, 1, ""))
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	defer d.Done(nil, nil)
	if d.Endpoint.Name != "e1" || d.CachedBlocks != len(tokens)/4 {
		t.Errorf("picked %s with %d cached blocks, want e1 with %d blocks of 4", d.Endpoint.Name, d.CachedBlocks, len(tokens)/4)
	}
}

// seqTokens is n distinct token ids starting at base (a prompt nobody else shares).
func seqTokens(base, n int) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = uint32(base + i)
	}
	return out
}

// TestConditionalDisaggregation: a request goes to a prefill endpoint only when the uncached
// part of its prompt (less what the decode side holds) is long enough, in tokens and as a
// share of the prompt, and the prefill pool has room.
func TestConditionalDisaggregation(t *testing.T) {
	tests := []struct {
		name    string
		eps     []router.Endpoint
		prompt  int // tokens
		decoded int // leading tokens cached on every decode endpoint
		edit    func(*router.Config)
		prefill func(r *router.Router) // prepares the prefill endpoints
		want    string                 // "" = disaggregated, else the reason
	}{
		{name: "no prefill pool", eps: endpoints(4), prompt: 8192, want: router.ReasonNoPrefillPool},
		{name: "short prompt", prompt: 2000, want: router.ReasonShort},
		{name: "unknown tokens", prompt: 0, want: router.ReasonShort},
		{name: "long cold prompt", prompt: 4096},
		{name: "exactly the threshold", prompt: 2048},
		{name: "cached on decode leaves too few uncached", prompt: 3000, decoded: 1024, want: router.ReasonShort},
		{name: "mostly cached on decode", prompt: 8192, decoded: 4096, want: router.ReasonCached},
		{name: "partly cached on decode, still worth it", prompt: 10000, decoded: 2048},
		{name: "lower thresholds", prompt: 600, edit: func(c *router.Config) { c.DisaggMinUncachedTokens = 512 }},
		{name: "ratio 0 ignores the cache share", prompt: 8192, decoded: 4096, edit: func(c *router.Config) { c.DisaggMinUncachedRatio = 0 }},
		{name: "prefill queues full", prompt: 8192, want: router.ReasonSaturated, prefill: func(r *router.Router) {
			r.SetLoad("e0", engine.Load{Waiting: 9})
			r.SetLoad("e1", engine.Load{Waiting: 20})
		}},
		{name: "one prefill queue has room", prompt: 8192, prefill: func(r *router.Router) {
			r.SetLoad("e0", engine.Load{Waiting: 9})
		}},
		{name: "queue check off", prompt: 8192, edit: func(c *router.Config) { c.DisaggMaxPrefillQueue = 0 }, prefill: func(r *router.Router) {
			r.SetLoad("e0", engine.Load{Waiting: 100})
			r.SetLoad("e1", engine.Load{Waiting: 100})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			eps := tc.eps
			if eps == nil {
				eps = pdEndpoints()
			}
			r, reg := newRouter(t, eps, tc.edit)
			tokens := seqTokens(1000, tc.prompt)
			if tc.decoded > 0 {
				for _, e := range eps {
					if e.Role == router.RoleDecode {
						r.ApplyEvents(e.Name, stored(tokens[:tc.decoded], 16, 1, ""))
					}
				}
			}
			if tc.prefill != nil {
				tc.prefill(r)
			}
			d, err := r.Pick(router.Prompt{Model: model, Tokens: tokens})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Done(nil, nil)
			if d.AggregatedReason != tc.want || (d.Prefill == nil) != (tc.want != "") {
				t.Fatalf("prefill %v, aggregated because %q; want %q", d.Prefill, d.AggregatedReason, tc.want)
			}
			if d.Endpoint.Role == router.RolePrefill {
				t.Errorf("target %s is a prefill endpoint", d.Endpoint.Name)
			}
			path := router.PathDisaggregated
			if tc.want != "" {
				path = router.PathAggregated
				if got := metricstest.Value(reg, router.MetricAggregatedReasons, "reason", tc.want); got != 1 {
					t.Errorf("%s{reason=%q} = %v, want 1", router.MetricAggregatedReasons, tc.want, got)
				}
			}
			if got := metricstest.Value(reg, router.MetricRequestsByPath, "path", path); got != 1 {
				t.Errorf("%s{path=%q} = %v, want 1", router.MetricRequestsByPath, path, got)
			}
			if d.Prefill != nil && d.Header().Get(router.HeaderPrefiller) != d.Prefill.Address {
				t.Errorf("header %s = %q, want %s", router.HeaderPrefiller, d.Header().Get(router.HeaderPrefiller), d.Prefill.Address)
			}
		})
	}
}

// TestPrefillPoolSaturatesOnInflightTokens: the router's own in-flight prefill tokens fill
// the prefill endpoints; past DisaggMaxPrefillTokens on all of them requests prefill on their
// decode endpoint, and the first token of an earlier request opens the pool again.
func TestPrefillPoolSaturatesOnInflightTokens(t *testing.T) {
	r, _ := newRouter(t, pdEndpoints(), func(c *router.Config) { c.DisaggMaxPrefillTokens = 5000 })
	var ds []*router.Decision
	used := map[string]bool{}
	for i := range 2 {
		d, err := r.Pick(router.Prompt{Model: model, Tokens: seqTokens(100_000*(i+1), 6000)})
		if err != nil {
			t.Fatal(err)
		}
		if d.Prefill == nil {
			t.Fatalf("request %d stayed aggregated (%s) with an idle prefill pool", i, d.AggregatedReason)
		}
		used[d.Prefill.Name] = true
		ds = append(ds, d)
	}
	if len(used) != 2 {
		t.Errorf("both long prompts went to prefill %v: load should spread them", used)
	}
	d, err := r.Pick(router.Prompt{Model: model, Tokens: seqTokens(900_000, 6000)})
	if err != nil {
		t.Fatal(err)
	}
	if d.Prefill != nil || d.AggregatedReason != router.ReasonSaturated {
		t.Errorf("third request: prefill %v, reason %q; want saturated", d.Prefill, d.AggregatedReason)
	}
	if l := loadOf(r, d.Endpoint.Name); l.PrefillTokens != 6000 {
		t.Errorf("the decode endpoint should hold the aggregated request's prefill: %+v", l)
	}
	d.Done(nil, nil)
	ds[0].FirstToken()
	d, err = r.Pick(router.Prompt{Model: model, Tokens: seqTokens(800_000, 6000)})
	if err != nil {
		t.Fatal(err)
	}
	if d.Prefill == nil || d.Prefill.Name != ds[0].Prefill.Name {
		t.Errorf("after a first token: prefill %v (%s), want %s", d.Prefill, d.AggregatedReason, ds[0].Prefill.Name)
	}
	d.Done(nil, nil)
	for _, d := range ds {
		d.Done(nil, nil)
	}
	for _, l := range r.Load() {
		if l.PrefillTokens != 0 || l.DecodeBlocks != 0 || l.Requests != 0 {
			t.Errorf("leak on %s: %+v", l.Name, l)
		}
	}
}

// TestPrefillChosenByOverlap: among prefill endpoints the one holding more of the prompt
// prefills it, and the decode target is not pulled towards it.
func TestPrefillChosenByOverlap(t *testing.T) {
	r, _ := newRouter(t, pdEndpoints(), nil)
	tokens := seqTokens(5000, 8192)
	r.ApplyEvents("e1", stored(tokens[:4096], 16, 1, ""))
	d, err := r.Pick(router.Prompt{Model: model, Tokens: tokens})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Done(nil, nil)
	if d.Prefill == nil || d.Prefill.Name != "e1" {
		t.Fatalf("prefill %v (%s), want e1 (holds half the prompt)", d.Prefill, d.AggregatedReason)
	}
	if l := loadOf(r, "e1"); l.PrefillTokens != 4096 {
		t.Errorf("prefill endpoint should hold the uncached 4096 tokens: %+v", l)
	}
}

func TestDisaggConfigRejectsNegative(t *testing.T) {
	for _, edit := range []func(*router.Config){
		func(c *router.Config) { c.DisaggMinUncachedTokens = -1 },
		func(c *router.Config) { c.DisaggMinUncachedRatio = 1.5 },
		func(c *router.Config) { c.DisaggMaxPrefillTokens = -1 },
		func(c *router.Config) { c.DisaggMaxPrefillQueue = -1 },
	} {
		cfg := router.DefaultConfig()
		edit(&cfg)
		if _, err := router.New(cfg, nil, nil); err == nil {
			t.Errorf("config %+v accepted", cfg)
		}
	}
}
