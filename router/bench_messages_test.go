package router_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/router"
)

// BenchmarkRouteMessages times the decision for the same 4,096-token conversation sent as a
// chat completion and as an Anthropic Messages request (parse, conversion to chat messages,
// template, tokenize, match, pick), against an index holding the prompt's first half on one
// endpoint: the conversion's cost is the difference. The tokenizer's caches are warm after the
// first round, as a running router's are for a repeated conversation.
func BenchmarkRouteMessages(b *testing.B) {
	chat, tokens := benchChat(b, 4096)
	var cr struct {
		Messages []struct{ Content string } `json:"messages"`
	}
	if err := json.Unmarshal(chat, &cr); err != nil {
		b.Fatal(err)
	}
	msgs, _ := json.Marshal(map[string]any{"model": model, "stream": true, "max_tokens": 128, "system": cr.Messages[0].Content,
		"messages": []map[string]string{{"role": "user", "content": cr.Messages[1].Content}}})
	for _, tc := range []struct {
		name, path string
		body       []byte
	}{{"chat", "/v1/chat/completions", chat}, {"messages", anthropic.Path, msgs}} {
		b.Run(tc.name, func(b *testing.B) {
			r, _ := newRouter(b, endpoints(8), func(c *router.Config) { c.Seed = 1 })
			r.ApplyEvents("e3", stored(tokens[:2048], 16, 1, ""))
			b.ReportAllocs()
			for b.Loop() {
				d, err := r.Route(context.Background(), router.Request{Path: tc.path, Body: tc.body})
				if err != nil {
					b.Fatal(err)
				}
				if d.CachedBlocks < 2048/16 { // later rounds also see their predecessors' pending prefix

					b.Fatalf("cached blocks %d", d.CachedBlocks)
				}
				d.Done(nil, nil)
			}
		})
	}
}
