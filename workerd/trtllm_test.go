package workerd

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/relay"
	"github.com/kvgate/kvgate/relay/relaytest"
)

// trtllmChildEnv makes the test binary act as trtllm-serve: it takes trtllm-serve's command
// line, checks the LLM API options file workerd wrote, and serves /health, a JSON (not
// Prometheus) /metrics as trtllm-serve does, and POST /kv_cache_events.
const trtllmChildEnv = "KVGATE_WORKERD_TEST_TRTLLM_CHILD"

func trtllmChild(args []string) int {
	if len(args) < 2 || args[0] != "serve" {
		fmt.Fprintln(os.Stderr, "trtllm child: want serve MODEL ...")
		return 2
	}
	fs := flag.NewFlagSet("trtllm-serve", flag.ContinueOnError)
	host := fs.String("host", "", "")
	port := fs.String("port", "", "")
	fs.String("backend", "", "")
	opts := fs.String("extra_llm_api_options", "", "")
	if err := fs.Parse(args[2:]); err != nil {
		return 2
	}
	yaml, err := os.ReadFile(*opts)
	if err != nil || !strings.Contains(string(yaml), "enable_block_reuse: true") || !strings.Contains(string(yaml), "event_buffer_max_size: 10000") {
		fmt.Fprintf(os.Stderr, "trtllm child: options file %q: %v\n%s", *opts, err, yaml)
		return 3
	}
	var polls atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`[]`)) })
	mux.HandleFunc("POST /kv_cache_events", func(w http.ResponseWriter, _ *http.Request) {
		if polls.Add(1) > 1 {
			_, _ = w.Write([]byte(`[]`))
			return
		}
		events := []map[string]any{
			{"event_id": 0, "window_size": 64, "data": map[string]any{"type": "created", "num_blocks_per_cache_level": []int{100, 0}}},
			{"event_id": 1, "window_size": 64, "data": map[string]any{"type": "stored", "parent_hash": nil, "blocks": []map[string]any{
				{"type": "stored_block", "block_hash": 4242, "cache_level": 0, "priority": 35, "tokens": tokensJSON(16)},
			}}},
		}
		_ = json.NewEncoder(w).Encode(events)
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	srv := &http.Server{Addr: net.JoinHostPort(*host, *port), Handler: mux}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.ListenAndServe(); err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, "trtllm child:", err)
		return 1
	}
	return 0
}

func tokensJSON(n int) []map[string]any {
	out := make([]map[string]any, n)
	for i := range out {
		out[i] = map[string]any{"type": "unique_token", "token_id": 1000 + i, "token_extra_id": 0}
	}
	return out
}

// TestTRTLLMGolden: testdata/trtllm/engines.yaml becomes these command lines, environments,
// options files and KV-event endpoints (testdata/trtllm/engines.golden; -update rewrites it).
func TestTRTLLMGolden(t *testing.T) {
	cfg, _, err := LoadConfig("testdata/trtllm/engines.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bin := fakeBinary(t, "trtllm-serve")
	for i := range cfg.Engines {
		cfg.Engines[i].Binary = bin
	}
	plans, err := makePlans(context.Background(), cfg, cfg.Engines, gpu.FakeInventory(4, "H100", 80<<30), map[int]bool{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tmp := trtllmOptionsDir()
	var b strings.Builder
	for _, p := range plans {
		fmt.Fprintf(&b, "# %s\nargv:", p.spec.Name)
		for _, a := range p.argv {
			fmt.Fprintf(&b, " %s", strings.ReplaceAll(strings.ReplaceAll(a, bin, "<bin>"), tmp, "<tmp>"))
		}
		b.WriteString("\n")
		for _, e := range p.env {
			fmt.Fprintf(&b, "env: %s\n", e)
		}
		fmt.Fprintf(&b, "kv_events: %s\n", p.kvEvents)
		for _, f := range p.files {
			fmt.Fprintf(&b, "file %s (%o):\n%s", strings.ReplaceAll(f.path, tmp, "<tmp>"), f.perm, f.data)
		}
	}
	const golden = "testdata/trtllm/engines.golden"
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Fatalf("plans differ from %s (go test -run TRTLLMGolden -update ./workerd/ rewrites it):\n%s", golden, b.String())
	}
}

// TestTRTLLMRefusals: what workerd cannot run TensorRT-LLM with is refused, by name.
func TestTRTLLMRefusals(t *testing.T) {
	tests := []struct{ name, engine, want string }{
		{"disaggregated", "{kind: trtllm, model: m, role: prefill}", "aggregated only"},
		{"kv events port", "{kind: trtllm, model: m, kv_events_port: 5557}", "serves KV-cache events on its HTTP port"},
		{"disk tier", "{kind: trtllm, model: m, cpu_offload_gib: 8, disk_offload_path: /d, disk_offload_gib: 10}", "host-memory tier only"},
		{"lmcache", "{kind: trtllm, model: m, cpu_offload_gib: 8, offload: lmcache}", "offload: lmcache is vLLM's"},
		{"no model", "{kind: trtllm}", "model missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseConfig([]byte("engines:\n  - " + tc.engine + "\n"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := New(context.Background(), Config{Engines: []EngineSpec{{Kind: KindTRTLLM, Model: "m", Binary: "/nonexistent/trtllm-serve"}}},
		Options{GPUs: gpu.NewFake(gpu.FakeInventory(1, "H100", 80<<30))}); err == nil || !strings.Contains(err.Error(), `trtllm-serve executable "/nonexistent/trtllm-serve" not found`) {
		t.Fatalf("New with a missing trtllm-serve: %v", err)
	}
}

// TestTRTLLMEventsThroughRelay: workerd starts a trtllm-serve (the test binary standing in
// for it) with its options file written, polls its /kv_cache_events, and a router reading
// the relay receives the snapshot, the engine's start-up clear and its stored block.
func TestTRTLLMEventsThroughRelay(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	exe := selfCommand(t)[0]
	cfg := Config{
		Node:           "n1",
		ScrapeInterval: Duration(100 * time.Millisecond),
		MinBackoff:     Duration(200 * time.Millisecond),
		MaxBackoff:     Duration(time.Second),
		StopTimeout:    Duration(5 * time.Second),
		Engines: []EngineSpec{{Name: "t", Kind: KindTRTLLM, Model: "Qwen/Qwen3-8B", Binary: exe,
			Env: map[string]string{trtllmChildEnv: "1"}}},
	}
	w, err := New(ctx, cfg, Options{Log: testLog(t), GPUs: gpu.NewFake(gpu.FakeInventory(1, "H100", 80<<30)), EngineOutput: &syncBuffer{}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()

	st := w.Engines()[0]
	if st.KVEvents != "http://"+st.Address+"/kv_cache_events" {
		t.Fatalf("KV events %q, want the engine's /kv_cache_events", st.KVEvents)
	}
	client := relay.NewClientConfig(relay.ClientConfig{Addr: w.Addr(), Engine: "n1-t", MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	rec := relaytest.NewLoadRecorder()
	relaytest.Run(t, client, rec)
	relaytest.WaitFor(t, 30*time.Second, "the engine's stored block through the relay", func() bool {
		b, _ := rec.Snapshot()
		return len(storedSince(b, 0)) >= 1
	})
	b, _ := rec.Snapshot()
	if got := storedSince(b, 0); got[0] != 4242 {
		t.Fatalf("stored hashes %v, want [4242]", got)
	}
	var stored engine.Event
	for _, x := range b {
		for _, e := range x.B.Events {
			if e.Kind == engine.BlockStored {
				stored = e
			}
		}
	}
	if len(stored.TokenIDs) != 16 || stored.TokenIDs[0] != 1000 || stored.BlockSize != 16 {
		t.Fatalf("stored event %+v, want one block of tokens 1000..1015", stored)
	}
}
