package vllm_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/kvgate/kvgate/engine/vllm"
)

func flag(args []string, name string) (string, bool) {
	i := slices.Index(args, name)
	if i < 0 || i+1 >= len(args) {
		return "", false
	}
	return args[i+1], true
}

func TestCommand(t *testing.T) {
	args := vllm.Command(vllm.Options{
		Model: "Qwen/Qwen3-0.6B", Port: 8001, BlockSize: 16, KVEventsPort: 5557, ReplayPort: 5558,
		ServedNames: []string{"qwen"}, Role: "decode", Extra: []string{"--max-model-len", "4096"},
	})
	if !slices.Equal(args[:3], []string{"vllm", "serve", "Qwen/Qwen3-0.6B"}) {
		t.Fatalf("argv starts %v", args[:3])
	}
	for _, c := range []struct{ flag, want string }{
		{"--host", "127.0.0.1"}, {"--port", "8001"}, {"--block-size", "16"},
		{"--served-model-name", "qwen"}, {"--max-model-len", "4096"},
	} {
		if got, _ := flag(args, c.flag); got != c.want {
			t.Errorf("%s = %q, want %q (argv %v)", c.flag, got, c.want, args)
		}
	}
	if !slices.Contains(args, "--enable-prefix-caching") {
		t.Error("prefix caching off")
	}
	raw, ok := flag(args, "--kv-events-config")
	if !ok {
		t.Fatal("no --kv-events-config")
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "topic": "kv-events"}
	for k, v := range want {
		if cfg[k] != v {
			t.Errorf("kv-events-config[%s] = %v, want %v", k, cfg[k], v)
		}
	}
	if _, ok := flag(args, "--kv-transfer-config"); !ok {
		t.Error("decode role without --kv-transfer-config")
	}
}

func TestCommandMinimal(t *testing.T) {
	args := vllm.Command(vllm.Options{Binary: "/opt/vllm", Model: "m", Port: 1})
	for _, f := range []string{"--kv-events-config", "--block-size", "--kv-transfer-config", "--served-model-name"} {
		if slices.Contains(args, f) {
			t.Errorf("minimal argv has %s: %v", f, args)
		}
	}
	if args[0] != "/opt/vllm" {
		t.Fatalf("binary = %q", args[0])
	}
}
