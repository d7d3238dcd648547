package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// benchChat builds a two-message chat whose rendered prompt is about n tokens.
func benchChat(b *testing.B, n int) ([]byte, []uint32) {
	b.Helper()
	tok, err := tokenizer.Default()
	if err != nil {
		b.Fatal(err)
	}
	words := strings.Fields("the router hashes every block of the prompt and asks the index which engine holds the longest prefix while load decides the rest of the story for each request")
	rng := rand.New(rand.NewPCG(1, 1))
	var sb strings.Builder
	for len(tok.Encode(sb.String())) < n-40 {
		for range 64 {
			sb.WriteString(words[rng.IntN(len(words))])
			sb.WriteByte(' ')
		}
	}
	body, _ := json.Marshal(map[string]any{"model": model, "stream": true, "max_tokens": 128, "messages": []map[string]string{
		{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": sb.String()}}})
	msgs, _ := json.Marshal([]map[string]string{{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": sb.String()}})
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: msgs, AddGenerationPrompt: true})
	if err != nil {
		b.Fatal(err)
	}
	return body, tok.Encode(text)
}

// BenchmarkRoute4096 times the whole decision for a 4,096-token chat (parse, chat template,
// tokenize, hash, match, score, pick, load accounting) against an index holding 8 endpoints
// x 64 cached conversations of 4,096 tokens (about 130,000 blocks), the request's first half
// cached on one endpoint. It reports p50 and p99 per decision.
func BenchmarkRoute4096(b *testing.B) {
	body, tokens := benchChat(b, 4096)
	r, _ := newRouter(b, endpoints(8), func(c *router.Config) { c.Seed = 1 })
	rng := rand.New(rand.NewPCG(2, 2))
	conv := make([]uint32, 4096)
	for e := range 8 {
		for c := range 64 {
			for i := range conv {
				conv[i] = uint32(rng.IntN(150000))
			}
			r.ApplyEvents(endpoints(8)[e].Name, stored(conv, 16, uint64(e*1_000_000+c*1000), ""))
		}
	}
	half := tokens[:len(tokens)/2/16*16]
	r.ApplyEvents("e3", stored(half, 16, 9_000_000, ""))
	ctx := context.Background()
	req := router.Request{Path: "/v1/chat/completions", Body: body}
	// Warm the tokenizer's caches as a running router's would be.
	for range 3 {
		d, err := r.Route(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		d.Done(nil, nil)
	}
	durs := make([]time.Duration, 0, 1024)
	gc := startGCMeter()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		d, err := r.Route(ctx, req)
		durs = append(durs, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		// At least the half stored by events; the warm-up decisions' own credit (the prompt
		// was just routed there) may cover the rest.
		if d.Endpoint.Name != "e3" || d.CachedBlocks < len(half)/16 {
			b.Fatalf("picked %s with %d cached", d.Endpoint.Name, d.CachedBlocks)
		}
		d.Done(nil, nil)
	}
	gc.report(b, len(durs))
	slices.Sort(durs)
	b.ReportMetric(float64(durs[len(durs)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(durs[len(durs)*99/100].Microseconds()), "p99-us")
	b.ReportMetric(float64(len(tokens)), "tokens")
}

// BenchmarkPick times the scoring core alone (matching and picking over 8 endpoints, tokens
// given), what a replay calls per request.
func BenchmarkPick(b *testing.B) {
	_, tokens := benchChat(b, 4096)
	r, _ := newRouter(b, endpoints(8), nil)
	r.ApplyEvents("e3", stored(tokens[:2048], 16, 1, ""))
	p := router.Prompt{Model: model, Tokens: tokens}
	b.ReportAllocs()
	for b.Loop() {
		d, err := r.Pick(p)
		if err != nil {
			b.Fatal(err)
		}
		d.Done(nil, nil)
	}
}

// BenchmarkPickApprox times a pick among 8 endpoints without KV events (approximate mode:
// the prompt's blocks are recorded where it goes) and its Done with the engine's usage,
// which approximate mode is checked against (docs/ROUTER.md, "Engines that restart").
func BenchmarkPickApprox(b *testing.B) {
	_, tokens := benchChat(b, 4096)
	r, _ := newRouter(b, endpoints(8), nil)
	p := router.Prompt{Model: model, Tokens: tokens}
	usage := &openai.Usage{PromptTokens: len(tokens), PromptTokensDetails: &openai.PromptTokensDetails{CachedTokens: len(tokens)}}
	b.ReportAllocs()
	for b.Loop() {
		d, err := r.Pick(p)
		if err != nil {
			b.Fatal(err)
		}
		d.Done(usage, nil)
	}
}

// BenchmarkRouteOverlong routes a 10 MB chat prompt to a model of 40,960 tokens: with the
// context length known the router refuses it from its bytes before tokenizing; unknown, it
// tokenizes the whole prompt (what every overlong prompt cost before the check).
func BenchmarkRouteOverlong(b *testing.B) {
	body := chatBody(strings.Repeat("lorem ipsum dolor sit amet ", 10<<20/27), false)
	for _, known := range []bool{true, false} {
		b.Run(fmt.Sprint("max_model_len_known=", known), func(b *testing.B) {
			r, _ := newRouter(b, endpoints(2), func(c *router.Config) {
				if known {
					c.MaxModelLen = map[string]int{model: 40960}
				}
			})
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				d, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: body})
				if known != (err != nil) {
					b.Fatalf("known=%v: err %v", known, err)
				}
				if d != nil {
					d.Done(nil, nil)
				}
			}
		})
	}
}

// BenchmarkApplyEvents applies a relay-snapshot-like batch: 256 BlockStored events of 4
// blocks each to one endpoint (the identity check runs per event).
func BenchmarkApplyEvents(b *testing.B) {
	r, _ := newRouter(b, endpoints(4), nil)
	const bs = 16
	var batch engine.EventBatch
	for e := range 256 {
		toks := make([]uint32, 4*bs)
		for i := range toks {
			toks[i] = uint32(e*1000 + i)
		}
		ev := stored(toks, bs, uint64(e)<<8, "").Events[0]
		batch.Events = append(batch.Events, ev)
	}
	b.ReportAllocs()
	for b.Loop() {
		r.ApplyEvents("e1", batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch.Events)), "ns/event")
}
