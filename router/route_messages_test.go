package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// TestRouteMessages: an Anthropic Messages request is tokenized as the chat vLLM converts
// it to (system message, tool call, tool message, function tools), so the prefix an engine
// reported for those tokens is matched and the request goes there.
func TestRouteMessages(t *testing.T) {
	r, _ := newRouter(t, endpoints(3), nil)
	body := []byte(`{"model":"` + model + `","max_tokens":16,"system":"You are terse.",
		"tools":[{"name":"get_weather","description":"Weather.","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
		"messages":[{"role":"user","content":"Weather in Paris? Please answer in one long sentence with the temperature and the sky."},
		{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
		{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"18 C, sunny"}]}]}`)
	// What vLLM renders for it, written out as its chat request.
	chatMsgs := `[{"role":"system","content":"You are terse."},
		{"role":"user","content":"Weather in Paris? Please answer in one long sentence with the temperature and the sky."},
		{"role":"assistant","tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
		{"role":"tool","tool_call_id":"toolu_1","content":"18 C, sunny"},{"role":"user","content":""}]`
	chatTools := `[{"type":"function","function":{"name":"get_weather","description":"Weather.","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}]`
	tok, err := tokenizer.Default()
	if err != nil {
		t.Fatal(err)
	}
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: json.RawMessage(chatMsgs), Tools: json.RawMessage(chatTools), AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	tokens := tok.Encode(text)
	r.ApplyEvents("e2", stored(tokens, 16, 1, ""))

	d := route(t, r, anthropic.Path, body)
	defer d.Done(nil, nil)
	if d.Endpoint.Name != "e2" || d.PromptTokens != len(tokens) || d.CachedBlocks != len(tokens)/16 {
		t.Fatalf("picked %s with %d prompt tokens, %d cached blocks; want e2, %d, %d", d.Endpoint.Name, d.PromptTokens, d.CachedBlocks, len(tokens), len(tokens)/16)
	}
	if d.Stream || string(d.Body) != string(body) {
		t.Errorf("stream %v; body changed: %s", d.Stream, d.Body)
	}
}

// TestRouteMessagesStream: a streamed Messages request is not given OpenAI's stream_options
// (its events always carry usage).
func TestRouteMessagesStream(t *testing.T) {
	r, _ := newRouter(t, endpoints(1), func(c *router.Config) { c.ForceStreamUsage = true })
	body := []byte(`{"model":"` + model + `","max_tokens":4,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	d := route(t, r, anthropic.Path, body)
	defer d.Done(nil, nil)
	if !d.Stream || d.UsageForced || string(d.Body) != string(body) {
		t.Fatalf("stream %v forced %v body %s", d.Stream, d.UsageForced, d.Body)
	}
}

func TestRouteMessagesErrors(t *testing.T) {
	r, _ := newRouter(t, endpoints(1), func(c *router.Config) { c.MaxBodyBytes = 4096 })
	for _, tc := range []struct {
		name, body string
		status     int
		param      string
	}{
		{"no max_tokens", `{"model":"` + model + `","messages":[{"role":"user","content":"x"}]}`, 400, "max_tokens"},
		{"bad block", `{"model":"` + model + `","max_tokens":3,"messages":[{"role":"user","content":[{"type":"text","text":1}]}]}`, 400, "messages.0.content.0.text"},
		{"unknown model", `{"model":"claude-x","max_tokens":3,"messages":[{"role":"user","content":"x"}]}`, 404, "model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := r.Route(context.Background(), router.Request{Path: anthropic.Path, Body: []byte(tc.body)})
			var e *openai.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v %v, want *openai.Error", d, err)
			}
			if e.Status != tc.status || (tc.param != "" && e.Param != tc.param) {
				t.Fatalf("status %d param %q (%s), want %d %q", e.Status, e.Param, e.Message, tc.status, tc.param)
			}
		})
	}
}
