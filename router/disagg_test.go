package router_test

import (
	"testing"

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
	r, _ := newRouter(t, pdEndpoints(), nil)
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

func TestDisaggMinTokens(t *testing.T) {
	r, _ := newRouter(t, pdEndpoints(), func(c *router.Config) { c.DisaggMinTokens = 1000 })
	d := route(t, r, "/v1/chat/completions", chatBody("short", false))
	defer d.Done(nil, nil)
	if d.Prefill != nil || d.Endpoint.Role != router.RoleDecode {
		t.Errorf("short prompt disaggregated: target %s prefill %v", d.Endpoint.Name, d.Prefill)
	}
	if l := loadOf(r, d.Endpoint.Name); l.PrefillTokens == 0 {
		t.Errorf("decode endpoint should hold the prefill load: %+v", l)
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
