package extproc_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// startP2P is an ext_proc server over a kv router with P2P on and two endpoints: e0
// (127.0.0.1:11) holds content's prompt on its CPU tier and is saturated, so every request
// for it goes to e1 (127.0.0.1:12) told to pull from e0, unless pull is false.
func startP2P(t *testing.T, cfg extproc.Config, content string, pull bool) *extproctest.Client {
	t.Helper()
	rc := router.DefaultConfig()
	rc.Models = tokenizer.DefaultModelMap()
	rc.ScrapeInterval = -1
	rc.PendingTTL = -1
	rc.P2P, rc.P2PMinTokens = true, 16
	rc.Endpoints = []router.Endpoint{
		{Name: "e0", Address: "127.0.0.1:11", Models: []string{model}, BlockSize: 16},
		{Name: "e1", Address: "127.0.0.1:12", Models: []string{model}, BlockSize: 16},
	}
	reg := prometheus.NewRegistry()
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Default()
	if err != nil {
		t.Fatal(err)
	}
	msgs, _ := json.Marshal([]map[string]string{{"role": "user", "content": content}})
	text, err := tok.RenderChat(tokenizer.ChatInput{Messages: msgs, AddGenerationPrompt: true})
	if err != nil {
		t.Fatal(err)
	}
	ids := tok.Encode(text)
	n := (len(ids) - 1) / 16
	ev := engine.Event{Kind: engine.BlockStored, BlockSize: 16, TokenIDs: ids[:n*16], Medium: "CPU"}
	for i := range n {
		ev.BlockHashes = append(ev.BlockHashes, engine.HashFromUint64(uint64(100+i)))
	}
	rt.ApplyEvents("e0", engine.EventBatch{TS: 1, Events: []engine.Event{ev}})
	busy, idle := "e0", "e1"
	if !pull {
		busy, idle = idle, busy
	}
	rt.SetLoad(busy, engine.Load{Waiting: 100, KVUsage: 1})
	rt.SetLoad(idle, engine.Load{})
	cfg.Addr = "127.0.0.1:0"
	srv, err := extproc.New(cfg, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := srv.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := extproctest.Dial(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("Run did not return")
		}
	})
	return c
}

// TestP2PPullHeaderAndBody: a pick that pulls names the source upstream in
// x-kv-cache-source-host-port (a client's own value replaced); with P2PTransferPort the body
// also gets kv_transfer_params.remote_kv_source at that port, the client's other
// kv_transfer_params kept and content-length matching. A pick that does not pull removes a
// client's header and leaves the body alone. In every processing mode.
func TestP2PPullHeaderAndBody(t *testing.T) {
	content := strings.Repeat("The cluster-wide cache moves blocks between engines. ", 40)
	body, _ := json.Marshal(map[string]any{"model": model, "messages": []map[string]string{{"role": "user", "content": content}},
		"kv_transfer_params": map[string]any{"keep": 1}})
	answer := [][]byte{[]byte(`{"choices":[{"index":0,"message":{"role":"assistant","content":"x"}}]}`)}
	tests := []struct {
		name     string
		port     int
		pull     bool
		wantHdr  string
		wantBody bool // remote_kv_source in the body
	}{
		{"pull, header only", 0, true, "127.0.0.1:11", false},
		{"pull, header and body", 7777, true, "127.0.0.1:11", true},
		{"no pull", 7777, false, "", false},
	}
	for _, tc := range tests {
		for _, m := range modes {
			t.Run(tc.name+"/"+m.name, func(t *testing.T) {
				// A router each: endpoints without KV events are indexed by what was routed
				// to them, so a second request would find the prefix on e1 and pull nothing.
				c := startP2P(t, extproc.Config{P2PTransferPort: tc.port}, content, tc.pull)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				h := http.Header{"Content-Type": {"application/json"}}
				h.Set(router.HeaderKVCacheSource, "10.9.9.9:80")
				res, err := c.Do(ctx, m.mode, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Header: h, Body: body},
					func(r *extproctest.Result) extproctest.Upstream {
						return extproctest.Upstream{Header: http.Header{"Content-Type": {"application/json"}}, Chunks: answer,
							Served: strings.Split(r.Header.Get(router.HeaderDestination), ",")[0]}
					})
				if err != nil {
					t.Fatal(err)
				}
				if res.Immediate != nil {
					t.Fatalf("immediate %s", res.Immediate.GetBody())
				}
				if got := res.Header.Get(router.HeaderKVCacheSource); got != tc.wantHdr {
					t.Errorf("upstream %s = %q, want %q", router.HeaderKVCacheSource, got, tc.wantHdr)
				}
				if cl := res.Header.Get("content-length"); cl != "" && cl != strconv.Itoa(len(res.Body)) {
					t.Errorf("content-length %s for a %d-byte body", cl, len(res.Body))
				}
				var sent struct {
					KV map[string]json.RawMessage `json:"kv_transfer_params"`
				}
				if err := json.Unmarshal(res.Body, &sent); err != nil {
					t.Fatalf("upstream body %q: %v", res.Body, err)
				}
				src, ok := sent.KV["remote_kv_source"]
				if ok != tc.wantBody {
					t.Fatalf("remote_kv_source in the body: %v, want %v (%s)", ok, tc.wantBody, res.Body)
				}
				if string(sent.KV["keep"]) != "1" {
					t.Errorf("the client's kv_transfer_params were not kept: %s", res.Body)
				}
				if !tc.wantBody {
					if string(res.Body) != string(body) {
						t.Errorf("body changed without a pull to write: %s", res.Body)
					}
					return
				}
				var s struct {
					ID   string `json:"kv_request_id"`
					Host string `json:"remote_host"`
					Port int    `json:"remote_port"`
				}
				if err := json.Unmarshal(src, &s); err != nil || s.Host != "127.0.0.1" || s.Port != tc.port || s.ID == "" {
					t.Errorf("remote_kv_source %s (%v)", src, err)
				}
			})
		}
	}
}
