package workerd

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/gpu"
)

func fakeBinary(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewRefuses(t *testing.T) {
	vllmBin := fakeBinary(t, "vllm")
	tests := []struct {
		name    string
		gpus    int
		reason  string
		engines []EngineSpec
		want    []string
	}{
		{name: "no GPU on the node", gpus: 0, reason: "nvml init: libnvidia-ml.so.1 not found (no NVIDIA driver on this node)",
			engines: []EngineSpec{{Kind: KindVLLM, Model: "m", Binary: vllmBin}},
			want:    []string{`engine "vllm-0" (vllm): gpu: need 1 GPU(s), 0 free of 0`, "no NVIDIA driver"}},
		{name: "binary absent", gpus: 1,
			engines: []EngineSpec{{Kind: KindVLLM, Model: "m", Binary: "/nonexistent/vllm"}},
			want:    []string{`vLLM executable "/nonexistent/vllm" not found`}},
		{name: "python without sglang", gpus: 1,
			engines: []EngineSpec{{Kind: KindSGLang, Model: "m", Binary: "/nonexistent/python3"}},
			want:    []string{`python "/nonexistent/python3" not found`}},
		{name: "GPUs oversubscribed", gpus: 3,
			engines: []EngineSpec{{Kind: KindVLLM, Model: "m", GPUs: 2, Binary: vllmBin}, {Kind: KindVLLM, Model: "m", GPUs: 2, Binary: vllmBin}},
			want:    []string{`engine "vllm-1" (vllm): gpu: need 2 GPU(s), 1 free of 3`}},
		{name: "sim binary absent", gpus: 0,
			engines: []EngineSpec{{Kind: KindSim, Binary: "/nonexistent/kvgate"}},
			want:    []string{`simulator "/nonexistent/kvgate" not found`}},
		{name: "every problem reported", gpus: 0,
			engines: []EngineSpec{{Kind: KindVLLM, Model: "m", Binary: "/nonexistent/vllm"}, {Kind: KindSim, Binary: "/nonexistent/kvgate"}},
			want:    []string{"need 1 GPU", `"/nonexistent/vllm" not found`, `"/nonexistent/kvgate" not found`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			inv := gpu.FakeInventory(tc.gpus, "H100", 80<<30)
			inv.Reason = tc.reason
			_, err := New(context.Background(), Config{Engines: tc.engines}, Options{GPUs: gpu.NewFake(inv), SimCommand: []string{"/nonexistent/kvgate", "sim"}})
			if err == nil {
				t.Fatal("New accepted a config that cannot work")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestPlansAssignGPUsAndCommands(t *testing.T) {
	vllmBin := fakeBinary(t, "vllm")
	inv := gpu.FakeInventory(4, "H100", 80<<30)
	inv.Devices[0].MemoryUsed = 79 << 30 // busy: placed last
	cfg := Config{Node: "n", Engines: []EngineSpec{
		{Name: "a", Kind: KindVLLM, Model: "Qwen/Qwen3-8B", GPUs: 2, Port: 8001, KVEventsPort: 5557, Binary: vllmBin, Env: map[string]string{"X": "1"}},
		{Name: "b", Kind: KindVLLM, Model: "m", Port: 8002, NoKVEvents: true, Binary: vllmBin, Role: "decode"},
		{Name: "c", Kind: KindSim, Model: "s", Port: 8003, KVEventsPort: 5559},
	}}
	w, err := New(context.Background(), cfg, Options{GPUs: gpu.NewFake(inv), SimCommand: []string{vllmBin, "sim"}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.lis.Close()
	st := w.Engines()
	if !slices.Equal(st[0].GPUs, []int{1, 2}) || !slices.Equal(st[1].GPUs, []int{3}) || len(st[2].GPUs) != 0 {
		t.Fatalf("GPUs: %v %v %v", st[0].GPUs, st[1].GPUs, st[2].GPUs)
	}
	if !slices.Contains(w.plans[0].env, "CUDA_VISIBLE_DEVICES=1,2") || !slices.Contains(w.plans[0].env, "X=1") {
		t.Fatalf("env %v", w.plans[0].env)
	}
	if st[0].Name != "n-a" || st[0].Address != "127.0.0.1:8001" || st[0].KVEvents != "tcp://127.0.0.1:5557" {
		t.Fatalf("engine a: %+v", st[0])
	}
	if !slices.Contains(st[0].Argv, "--kv-events-config") || slices.Contains(st[1].Argv, "--kv-events-config") || st[1].KVEvents != "" {
		t.Fatalf("kv events flags: %v / %v", st[0].Argv, st[1].Argv)
	}
	want := []string{vllmBin, "sim", "--host", "127.0.0.1", "--port", "8003", "--kv-events", "tcp://127.0.0.1:5559",
		"--kv-events-replay", w.plans[2].kvReplay, "--model", "s", "--block-size", "16"}
	if !slices.Equal(st[2].Argv, want) || !strings.HasPrefix(w.plans[2].kvReplay, "tcp://127.0.0.1:") {
		t.Fatalf("sim argv %v, want %v", st[2].Argv, want)
	}
}

// TestPlansPortsDistinct: every port workerd picks for its engines (HTTP, KV events, replay)
// is a different one: picks are held until all are made, so the kernel cannot hand the same
// free port out twice (independent pick-and-close calls repeat one within a few hundred).
func TestPlansPortsDistinct(t *testing.T) {
	sim := fakeBinary(t, "sim")
	var specs []EngineSpec
	for i := range 100 {
		specs = append(specs, EngineSpec{Name: "e" + strconv.Itoa(i), Kind: KindSim})
	}
	plans, err := makePlans(context.Background(), Config{Engines: specs}, specs, gpu.Inventory{}, map[int]bool{}, []string{sim})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	for _, p := range plans {
		for _, a := range []string{p.addr, strings.TrimPrefix(p.kvEvents, "tcp://"), strings.TrimPrefix(p.kvReplay, "tcp://")} {
			if other, ok := seen[a]; ok {
				t.Fatalf("%s given to %s and %s", a, other, p.instance)
			}
			seen[a] = p.instance
		}
	}
}
