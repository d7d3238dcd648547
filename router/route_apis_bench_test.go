package router_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/router"
)

// BenchmarkRouteAPIs times Route for the same ~2k-token conversation sent as a chat request
// and as the equivalent Responses request (string input: string contents; a message item with
// an input_text part: a text part, as the chat request with a content-part array), an
// embeddings request of the same text, and a passthrough request (no parsing but "model").
func BenchmarkRouteAPIs(b *testing.B) {
	text := strings.Repeat("Routing by cached prefix keeps a long shared context on one engine. ", 150)
	chat, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{
		{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}}})
	resp, _ := json.Marshal(map[string]any{"model": model, "instructions": "Be brief.",
		"input": []map[string]any{{"type": "message", "role": "user", "content": []map[string]string{{"type": "input_text", "text": text}}}}})
	chatParts, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]any{
		{"role": "system", "content": "Be brief."}, {"role": "user", "content": []map[string]string{{"type": "text", "text": text}}}}})
	respString, _ := json.Marshal(map[string]any{"model": model, "instructions": "Be brief.", "input": text})
	embed, _ := json.Marshal(map[string]any{"model": model, "input": []string{text}})
	pass, _ := json.Marshal(map[string]any{"model": model, "text_1": text, "text_2": "x"})
	for _, c := range []struct {
		name, path string
		body       []byte
	}{
		{"chat", "/v1/chat/completions", chat},
		{"responses-string", router.PathResponses, respString},
		{"chat-parts", "/v1/chat/completions", chatParts},
		{"responses-parts", router.PathResponses, resp},
		{"embeddings", router.PathEmbeddings, embed},
		{"passthrough", "/v1/score", pass},
	} {
		b.Run(c.name, func(b *testing.B) {
			r, _ := newRouter(b, endpoints(8), func(cfg *router.Config) { cfg.Seed = 1 })
			ctx := context.Background()
			req := router.Request{Path: c.path, Body: c.body}
			for range 3 { // warm the tokenizer's caches
				d, err := r.Route(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				d.Done(nil, nil)
			}
			b.ReportAllocs()
			for b.Loop() {
				d, err := r.Route(ctx, req)
				if err != nil {
					b.Fatal(err)
				}
				d.Done(nil, nil)
			}
		})
	}
}
