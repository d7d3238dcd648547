package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

const model = tokenizer.DefaultModel

// testLogger logs to the test's output, at debug level in tests (every decision explained)
// and info level in benchmarks.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelDebug
	if _, bench := t.(*testing.B); bench {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: level}))
}

// endpoints returns n aggregated endpoints e0..e(n-1) at unreachable loopback addresses.
func endpoints(n int) []router.Endpoint {
	out := make([]router.Endpoint, n)
	for i := range out {
		out[i] = router.Endpoint{Name: fmt.Sprint("e", i), Address: fmt.Sprintf("127.0.0.1:%d", 1+i), Models: []string{model}, BlockSize: 16}
	}
	return out
}

// newRouter builds a router over eps with cfg's defaults changed by edit; it does not Run.
func newRouter(t testing.TB, eps []router.Endpoint, edit func(*router.Config)) (*router.Router, *prometheus.Registry) {
	t.Helper()
	cfg := router.DefaultConfig()
	cfg.Endpoints = eps
	cfg.Seed = 42
	cfg.ScrapeInterval = -1
	if edit != nil {
		edit(&cfg)
	}
	reg := prometheus.NewRegistry()
	r, err := router.New(cfg, testLogger(t), reg)
	if err != nil {
		t.Fatal(err)
	}
	return r, reg
}

// run runs r until the test ends.
func run(t testing.TB, r *router.Router) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
}

func chatBody(content string, stream bool) []byte {
	b, _ := json.Marshal(map[string]any{"model": model, "stream": stream,
		"messages": []map[string]string{{"role": "user", "content": content}}})
	return b
}

// chatTokens renders and tokenizes a one-message chat as the engine (and the router) do.
func chatTokens(t testing.TB, content string) []uint32 {
	t.Helper()
	tok, err := tokenizer.Default()
	if err != nil {
		t.Fatal(err)
	}
	msgs, _ := json.Marshal([]map[string]string{{"role": "user", "content": content}})
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: msgs, AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Encode(text)
}

// stored is a BlockStored batch of tokens' full blocks, hashed base, base+1, ...
func stored(tokens []uint32, bs int, base uint64, medium string) engine.EventBatch {
	n := len(tokens) / bs
	ev := engine.Event{Kind: engine.BlockStored, BlockSize: bs, TokenIDs: tokens[:n*bs], Medium: medium}
	for i := range n {
		ev.BlockHashes = append(ev.BlockHashes, engine.HashFromUint64(base+uint64(i)))
	}
	return engine.EventBatch{TS: 1, Events: []engine.Event{ev}}
}

func route(t testing.TB, r *router.Router, path string, body []byte) *router.Decision {
	t.Helper()
	d, err := r.Route(context.Background(), router.Request{Path: path, Body: body})
	if err != nil {
		t.Fatalf("Route: %v", err)
	}
	return d
}

func loadOf(r *router.Router, name string) router.EndpointLoad {
	for _, l := range r.Load() {
		if l.Name == name {
			return l
		}
	}
	return router.EndpointLoad{}
}

// eventually waits up to 10s for cond.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, 10*time.Second, what, cond)
}

func longText(seed string, words int) string {
	b := make([]byte, 0, words*8)
	for i := range words {
		b = fmt.Appendf(b, "%s%d ", seed, i*7919%1000)
	}
	return string(b)
}

func loadFull() engine.Load { return engine.Load{Waiting: 100, KVUsage: 1} }
