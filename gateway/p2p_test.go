package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	kvengine "github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// simEngine runs a simulated engine until the test ends.
func simEngine(t *testing.T) (*sim.Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := sim.NewServer(sim.ServerConfig{Addr: "127.0.0.1:0", BlockBytes: 4096, Engine: sim.Config{NumBlocks: 1024}}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("sim did not stop")
		}
	})
	return s, reg
}

// chatPromptTokens is the prompt the router and the sims tokenize for chat(content).
func chatPromptTokens(t *testing.T, content string) []uint32 {
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

// storedOn is a BlockStored batch saying an engine holds tokens' full blocks on medium.
func storedOn(tokens []uint32, base uint64, medium string) kvengine.EventBatch {
	n := (len(tokens) - 1) / 16
	ev := kvengine.Event{Kind: kvengine.BlockStored, BlockSize: 16, TokenIDs: tokens[:n*16], Medium: medium}
	for i := range n {
		ev.BlockHashes = append(ev.BlockHashes, kvengine.HashFromUint64(base+uint64(i)))
	}
	return kvengine.EventBatch{TS: 1, Events: []kvengine.Event{ev}}
}

func usageCached(t *testing.T, body string) int {
	t.Helper()
	var r struct {
		Usage struct {
			Details *struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	if r.Usage.Details == nil {
		return 0
	}
	return r.Usage.Details.Cached
}

func longContent(seed string, words int) string {
	var b strings.Builder
	for i := range words {
		fmt.Fprintf(&b, "%s-%d lorem ipsum. ", seed, i%89)
	}
	return b.String()
}

// TestGatewayP2PPull: engine A holds a prompt (on its CPU tier, as far as the router knows)
// but is saturated, so the router with P2P picks B and names A as the pull source. The
// gateway passes that on: B, a real simulated engine, pulls the blocks from A and reports them
// cached. With P2PTransferPort the gateway also writes kv_transfer_params.remote_kv_source
// at that port (here a closed one: B's pull then fails over the body's address, which the
// engine prefers, and B recomputes). A client's own x-kv-cache-source-host-port is dropped.
func TestGatewayP2PPull(t *testing.T) {
	a, aReg := simEngine(t)
	b, bReg := simEngine(t)

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()

	for i, tc := range []struct {
		name       string
		port       int
		wantCached bool
		wantFail   string
	}{
		{"header only", 0, true, ""},
		{"kv_transfer_params at a closed port", closedPort, false, "connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startP2P(t, gateway.Config{P2PTransferPort: tc.port}, a.Addr(), b.Addr())
			content := longContent(fmt.Sprint("gw-p2p-", i), 120)
			// A computes the prompt for real, so that B has something to pull.
			if resp, body := post(t, "http://"+a.Addr()+"/v1/chat/completions", chat(content, false)); resp.StatusCode != 200 {
				t.Fatalf("engine A: %d %s", resp.StatusCode, body)
			}
			tokens := chatPromptTokens(t, content)
			f.rt.ApplyEvents("e0", storedOn(tokens, uint64(1000*(i+1)), sim.MediumCPU.String()))
			f.rt.SetLoad("e0", kvengine.Load{Waiting: 100, KVUsage: 1})
			f.rt.SetLoad("e1", kvengine.Load{})

			failsBefore := metricstest.Value(bReg, sim.MetricP2PFailures, "reason", "connect")
			resp, body := post(t, f.url+"/v1/chat/completions", chat(content, false))
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			if got := resp.Header.Get(router.HeaderEndpoint); got != b.Addr() {
				t.Fatalf("served by %s, want B %s", got, b.Addr())
			}
			full := (len(tokens) - 1) / 16 * 16
			cached := usageCached(t, body)
			if tc.wantCached && cached != full {
				t.Fatalf("B reports %d cached tokens, want %d pulled from A", cached, full)
			}
			if !tc.wantCached && cached != 0 {
				t.Fatalf("B reports %d cached tokens, want 0 (its pull could not work)", cached)
			}
			if tc.wantFail != "" {
				if got := metricstest.Value(bReg, sim.MetricP2PFailures, "reason", tc.wantFail) - failsBefore; got != 1 {
					t.Fatalf("B counted %v pull failures (%s), want 1: the body's source was not used", got, tc.wantFail)
				}
			}
		})
	}

	// No pull decided: a client's header naming B is not passed to A.
	f := startP2P(t, gateway.Config{}, a.Addr(), b.Addr())
	f.rt.SetLoad("e0", kvengine.Load{})
	f.rt.SetLoad("e1", kvengine.Load{Waiting: 100, KVUsage: 1})
	pulledBefore := metricstest.Value(aReg, sim.MetricP2PPulledBytes)
	req, _ := http.NewRequest(http.MethodPost, f.url+"/v1/chat/completions", strings.NewReader(chat(longContent("gw-p2p-client", 120), false)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(router.HeaderKVCacheSource, b.Addr())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get(router.HeaderEndpoint) != a.Addr() {
		t.Fatalf("status %d from %s, want 200 from A", resp.StatusCode, resp.Header.Get(router.HeaderEndpoint))
	}
	for _, reason := range []string{"miss", "resolve", "connect"} {
		if got := metricstest.Value(aReg, sim.MetricP2PFailures, "reason", reason); got != 0 {
			t.Errorf("A tried a pull the client asked for (%s: %v)", reason, got)
		}
	}
	if got := metricstest.Value(aReg, sim.MetricP2PPulledBytes); got != pulledBefore {
		t.Errorf("A pulled %v bytes on the client's word", got-pulledBefore)
	}
}

// startP2P is a gateway over engines with a kv router that may decide P2P pulls of any
// prefix of at least a block, scraping turned off (the test sets the load).
func startP2P(t *testing.T, cfg gateway.Config, engines ...string) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	rc.Policy = router.PolicyKV
	rc.Models = tokenizer.DefaultModelMap()
	rc.P2P, rc.P2PMinTokens = true, 16
	rc.ScrapeInterval = -1
	rc.PendingTTL = -1
	for i, a := range engines {
		rc.Endpoints = append(rc.Endpoints, router.Endpoint{Name: fmt.Sprint("e", i), Address: a, Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16})
	}
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = "127.0.0.1:0"
	cfg.Gatherer = reg
	gw, err := gateway.New(cfg, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("gateway did not stop")
		}
	})
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := gw.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{url: "http://" + addr.String(), reg: reg, rt: rt}
}
