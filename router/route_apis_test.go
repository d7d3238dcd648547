package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

var apiText = strings.Repeat("A long shared document about routing requests by their cached prefix. ", 30)

// TestResponsesTokensAsChat: a Responses request is routed on the tokens of the equivalent
// chat request (vLLM's conversion, the same template), so a chat turn's cache serves it.
func TestResponsesTokensAsChat(t *testing.T) {
	r, _ := newRouter(t, endpoints(4), nil)
	chat, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{
		{"role": "system", "content": "Be brief."}, {"role": "user", "content": apiText}}})
	dc, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chat})
	if err != nil {
		t.Fatal(err)
	}
	dc.Done(nil, nil)
	resp, _ := json.Marshal(map[string]any{"model": model, "instructions": "Be brief.", "input": apiText, "stream": true})
	dr, err := r.Route(context.Background(), router.Request{Path: router.PathResponses, Body: resp})
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Done(nil, nil)
	if dr.PromptTokens != dc.PromptTokens || dr.PromptTokens < 300 {
		t.Errorf("responses prompt %d tokens, chat %d", dr.PromptTokens, dc.PromptTokens)
	}
	if dr.Endpoint.Name != dc.Endpoint.Name || dr.CachedBlocks != dc.RequestBlocks {
		t.Errorf("responses went to %s with %d cached blocks; the chat turn left %d blocks on %s",
			dr.Endpoint.Name, dr.CachedBlocks, dc.RequestBlocks, dc.Endpoint.Name)
	}
	if !dr.Stream || dr.UsageForced || string(dr.Body) != string(resp) {
		t.Errorf("stream %v usage forced %v body changed %v: a Responses body goes as it came",
			dr.Stream, dr.UsageForced, string(dr.Body) != string(resp))
	}
}

// TestEmbeddingsLeastLoad: embeddings go to the least loaded endpoint whatever it holds
// cached, and count their tokens as load until they end.
func TestEmbeddingsLeastLoad(t *testing.T) {
	r, _ := newRouter(t, endpoints(2), nil)
	// A chat turn puts the text (and load) on one endpoint.
	busy, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody(apiText, false)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"model": model, "input": []string{apiText}})
	d, err := r.Route(context.Background(), router.Request{Path: router.PathEmbeddings, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	if d.Endpoint.Name == busy.Endpoint.Name || d.CachedBlocks != 0 {
		t.Errorf("embedding went to %s (busy: %s) with %d cached blocks", d.Endpoint.Name, busy.Endpoint.Name, d.CachedBlocks)
	}
	if d.PromptTokens < 300 {
		t.Errorf("embedding load %d tokens", d.PromptTokens)
	}
	busy.Done(nil, nil)
	d.Done(nil, nil)
	for _, l := range r.Load() {
		if l.Requests != 0 || l.PrefillTokens != 0 {
			t.Errorf("load left after Done: %+v", l)
		}
	}
}

// TestPassthroughPick: other /v1/ paths go to the least loaded endpoint of the body's model,
// or of any model; an unknown model is a 404, no endpoint a 503.
func TestPassthroughPick(t *testing.T) {
	eps := endpoints(2)
	r, _ := newRouter(t, eps, nil)
	busy, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody(apiText, false)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Done(nil, nil)
	for _, body := range []string{"", `{"model":"` + model + `"}`, "\x00binary"} {
		d, err := r.Route(context.Background(), router.Request{Path: "/v1/files/f1", Body: []byte(body)})
		if err != nil {
			t.Fatalf("%q: %v", body, err)
		}
		if d.Endpoint.Name == busy.Endpoint.Name || d.Model != model || string(d.Body) != body {
			t.Errorf("%q: picked %s (busy %s), model %q", body, d.Endpoint.Name, busy.Endpoint.Name, d.Model)
		}
		d.Done(nil, nil)
	}
	_, err = r.Route(context.Background(), router.Request{Path: "/v1/score", Body: []byte(`{"model":"nope"}`)})
	var e *openai.Error
	if !errors.As(err, &e) || e.Status != 404 || e.Code != openai.CodeModelNotFound {
		t.Errorf("unknown model: %v", err)
	}
	_, err = r.Route(context.Background(), router.Request{Path: "/v1/files", Subset: []string{"10.0.0.9:1"}})
	if !errors.As(err, &e) || e.Status != 503 {
		t.Errorf("empty subset: %v", err)
	}
	for _, p := range []string{"/v1/", "/v2/x", "/health"} {
		if _, err := r.Route(context.Background(), router.Request{Path: p}); !errors.As(err, &e) || e.Status != 404 {
			t.Errorf("%s: %v, want 404", p, err)
		}
	}
}

// TestResponsesLength: the context checks of chat apply, naming Responses' own field.
func TestResponsesLength(t *testing.T) {
	r, _ := newRouter(t, endpoints(1), func(c *router.Config) { c.MaxModelLen = map[string]int{model: 512} })
	for _, c := range []struct {
		body  map[string]any
		param string
	}{
		{map[string]any{"model": model, "input": strings.Repeat(apiText, 3)}, "input_tokens"},
		{map[string]any{"model": model, "input": "short", "max_output_tokens": 600}, "max_output_tokens"},
	} {
		b, _ := json.Marshal(c.body)
		_, err := r.Route(context.Background(), router.Request{Path: router.PathResponses, Body: b})
		var e *openai.Error
		if !errors.As(err, &e) || e.Status != 400 || e.Param != c.param {
			t.Errorf("%v: %v, want a 400 naming %s", c.body["max_output_tokens"], err, c.param)
		}
	}
}
