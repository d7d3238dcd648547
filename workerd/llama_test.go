package workerd

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/gpu"
)

// TestLlamaGolden: ollama and llamacpp engines of testdata/llama/engines.yaml become these
// command lines, environments, health paths and (no) KV-event endpoints
// (testdata/llama/engines.golden; -update rewrites it).
func TestLlamaGolden(t *testing.T) {
	cfg, _, err := LoadConfig("testdata/llama/engines.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bin := fakeBinary(t, "engine")
	for i := range cfg.Engines {
		cfg.Engines[i].Binary = bin
	}
	plans, err := makePlans(context.Background(), cfg, cfg.Engines, gpu.FakeInventory(3, "H100", 80<<30), map[int]bool{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, p := range plans {
		fmt.Fprintf(&b, "# %s\nargv:", p.spec.Name)
		for _, a := range p.argv {
			fmt.Fprintf(&b, " %s", strings.ReplaceAll(a, bin, "<bin>"))
		}
		fmt.Fprintf(&b, "\nhealth: http://%s%s\nkv_events: %q\nblock_size: %d\nmodels: %v\n", p.addr, p.health, p.kvEvents, p.blockSize, p.models)
		for _, e := range p.env {
			fmt.Fprintf(&b, "env: %s\n", e)
		}
	}
	const golden = "testdata/llama/engines.golden"
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
		t.Fatalf("plans differ from %s (go test -run LlamaGolden -update ./workerd/ rewrites it):\n%s", golden, b.String())
	}
}

// TestLlamaDefaults: without binary the engines are looked up as "ollama" and
// "llama-server" on PATH, and neither asks for a GPU on a node without any.
func TestLlamaDefaults(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"ollama", "llama-server"} {
		if err := os.WriteFile(dir+"/"+name, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir)
	specs := []EngineSpec{{Name: "o", Kind: KindOllama, Model: "tiny"}, {Name: "l", Kind: KindLlamaCpp, Model: "/m.gguf"}}
	plans, err := makePlans(context.Background(), Config{Engines: specs}, specs, gpu.Inventory{}, map[int]bool{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if plans[0].argv[0] != "ollama" || plans[1].argv[0] != "llama-server" {
		t.Fatalf("argv %v / %v", plans[0].argv, plans[1].argv)
	}
	for _, p := range plans {
		if len(p.gpus) != 0 || strings.Contains(strings.Join(p.env, " "), "CUDA_VISIBLE_DEVICES") {
			t.Errorf("%s: GPUs %v, env %v on a CPU node", p.instance, p.gpus, p.env)
		}
	}
}

func TestLlamaRefuses(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"ollama decode", "engines: [{kind: ollama, model: m, role: decode}]", `ollama has no KV transfer: role "decode"`},
		{"llamacpp prefill", "engines: [{kind: llamacpp, model: /m.gguf, role: prefill}]", `llamacpp has no KV transfer: role "prefill"`},
		{"llamacpp without model", "engines: [{kind: llamacpp}]", "model missing"},
		{"unknown kind lists them", "engines: [{kind: llama, model: m}]", "(vllm, sglang, trtllm, sim, ollama or llamacpp)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
	specs := []EngineSpec{{Name: "o", Kind: KindOllama, Model: "m", Binary: "/nonexistent/ollama"}, {Name: "l", Kind: KindLlamaCpp, Model: "/m.gguf", Binary: "/nonexistent/llama-server"}}
	_, err := makePlans(context.Background(), Config{Engines: specs}, specs, gpu.Inventory{}, map[int]bool{}, nil)
	for _, want := range []string{`ollama executable "/nonexistent/ollama" not found`, `llama-server executable "/nonexistent/llama-server" not found`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err %v lacks %q", err, want)
		}
	}
}
