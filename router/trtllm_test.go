package router_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/kvgate/kvgate/engine/trtllm"
)

// TestTRTLLMEventsPolled: an endpoint whose KVEvents is trtllm-serve's /kv_cache_events is
// polled over HTTP (POST, as trtllm-serve serves it) and its stored blocks land in the index:
// a prompt made of them is routed with them counted cached.
func TestTRTLLMEventsPolled(t *testing.T) {
	text := longText("trt", 120)
	tokens := chatTokens(t, text)
	const bs = 16
	n := len(tokens) / bs
	var blocks []map[string]any
	for i := range n {
		toks := make([]map[string]any, bs)
		for j := range bs {
			toks[j] = map[string]any{"type": "unique_token", "token_id": tokens[i*bs+j], "token_extra_id": 0}
		}
		blocks = append(blocks, map[string]any{"type": "stored_block", "block_hash": 1000 + i, "tokens": toks, "cache_level": 0, "priority": 35})
	}
	events := []map[string]any{
		{"event_id": 0, "window_size": 4096, "data": map[string]any{"type": "created", "num_blocks_per_cache_level": []int{4096, 0}}},
		{"event_id": 1, "window_size": 4096, "data": map[string]any{"type": "stored", "parent_hash": nil, "blocks": blocks}},
	}
	var polls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != trtllm.EventsPath {
			http.NotFound(w, r) // trtllm-serve's /metrics is not Prometheus text either
			return
		}
		if polls.Add(1) == 1 {
			_ = json.NewEncoder(w).Encode(events)
			return
		}
		_, _ = w.Write([]byte("[]"))
	}))
	t.Cleanup(srv.Close)
	eps := endpoints(1)
	eps[0].Address = srv.Listener.Addr().String()
	eps[0].KVEvents = srv.URL + trtllm.EventsPath
	r, _ := newRouter(t, eps, nil)
	run(t, r)
	eventually(t, "the engine's blocks in the index", func() bool { return loadOf(r, "e0").CachedBlocks >= n })
	d := route(t, r, "/v1/chat/completions", chatBody(text, false))
	defer d.Done(nil, nil)
	if d.CachedBlocks != n {
		t.Fatalf("cached blocks %d, want %d (every block the engine reported)", d.CachedBlocks, n)
	}
	eventually(t, "polling goes on", func() bool { return polls.Load() >= 2 })
}
