package e2e

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3/option"

	"github.com/kvgate/kvgate/peertest"
	"github.com/kvgate/kvgate/porttest"
)

// peer returns the path of a program scripts/peers.sh builds (into the user's cache
// directory, keyed by version), building it the first time on a machine.
func peer(t *testing.T, name string) string {
	t.Helper()
	p, err := peertest.Paths(name)
	if err != nil {
		t.Fatal(err)
	}
	return p[0]
}

// TestForeignEngine routes to llm-d-inference-sim, a vLLM simulator written elsewhere, with
// its KV events (it dials; the router binds) ingested by the router.
func TestForeignEngine(t *testing.T) {
	bin := peer(t, "llm-d-inference-sim")
	port, zport := porttest.Free(t), porttest.Free(t)
	// It names itself in its event topic by $POD_IP, and refuses to start without one.
	sim := startProcEnv(t, []string{"POD_IP=127.0.0.1"}, bin,
		"--port", fmt.Sprint(port), "--model", model,
		// Offline: the dummy tokenizer, so no download is tried.
		"--force-dummy-tokenizer",
		"--enable-kvcache", "--kv-cache-size", "1024", "--block-size", "16",
		"--zmq-endpoint", fmt.Sprintf("tcp://127.0.0.1:%d", zport), "--event-batch-size", "1",
		// The map-encoded events (vLLM since mid-2026) say "no parent" with nil.
		"--use-vllm-map-event-format",
		"--max-model-len", "8192", "--max-num-seqs", "16", "--mode", "echo",
	)
	waitHTTP(t, sim, fmt.Sprintf("http://127.0.0.1:%d/health", port), 30*time.Second)

	engineAddr := fmt.Sprintf("127.0.0.1:%d", port)
	base, _ := up(t, "--endpoint", "http://"+engineAddr, "--kv-events", fmt.Sprintf("bind:tcp://127.0.0.1:%d", zport))
	c := client(base)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// The simulator dials the router's socket with a 1s retry and drops what it publishes
	// before it is connected, so new prompts go on until their BlockStored events land.
	before := routerEvents(t, base)
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; routerEvents(t, base) <= before; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("the router's index learned no blocks from the foreign engine (before %v, batches %v)",
				before, metric(t, base, "kvgate_router_kv_event_batches_total"))
		}
		var resp *http.Response
		cc, err := c.Chat.Completions.New(ctx, userChat(longPrompt(fmt.Sprint("foreign", i), 100), 4), option.WithResponseInto(&resp))
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Header.Get("x-kvgate-endpoint"); got != engineAddr {
			t.Errorf("request %d served by %q, want %s", i, got, engineAddr)
		}
		if len(cc.Choices) == 0 || cc.Usage.PromptTokens == 0 {
			t.Errorf("request %d: %+v", i, cc)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if got := metric(t, base, "kvgate_router_kv_event_batches_total"); got == 0 {
		t.Errorf("no KV event batches counted")
	}
}

// routerEvents is the number of (block, endpoint) pairs the KV index of the router behind
// base holds: it grows only from the engines' BlockStored events.
func routerEvents(t *testing.T, base string) float64 {
	return metric(t, base, "kvgate_kvindex_resident_blocks")
}
