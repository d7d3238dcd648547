package sglang_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/kvgate/kvgate/engine/sglang"
)

func TestCommand(t *testing.T) {
	tests := []struct {
		name  string
		opt   sglang.Options
		want  map[string]string // flag -> value
		never []string
	}{
		{
			name: "full",
			opt:  sglang.Options{Model: "Qwen/Qwen3-0.6B", Port: 30000, PageSize: 16, KVEventsPort: 5558, ReplayPort: 5559, Role: "prefill", ServedName: "q"},
			want: map[string]string{"--model-path": "Qwen/Qwen3-0.6B", "--port": "30000", "--page-size": "16",
				"--disaggregation-mode": "prefill", "--served-model-name": "q", "--host": "127.0.0.1"},
			never: []string{"--disable-radix-cache"},
		},
		{
			name:  "minimal",
			opt:   sglang.Options{Model: "m", Port: 1, Role: "aggregated"},
			want:  map[string]string{"--model-path": "m"},
			never: []string{"--kv-events-config", "--page-size", "--disaggregation-mode", "--disable-radix-cache"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := sglang.Command(tc.opt)
			if !slices.Equal(args[:3], []string{"python3", "-m", "sglang.launch_server"}) {
				t.Fatalf("argv starts %v", args[:3])
			}
			if !slices.Contains(args, "--enable-metrics") {
				t.Error("metrics off")
			}
			for f, v := range tc.want {
				i := slices.Index(args, f)
				if i < 0 || i+1 >= len(args) || args[i+1] != v {
					t.Errorf("%s != %q in %v", f, v, args)
				}
			}
			for _, f := range tc.never {
				if slices.Contains(args, f) {
					t.Errorf("argv has %s: %v", f, args)
				}
			}
			if i := slices.Index(args, "--kv-events-config"); i >= 0 {
				var cfg map[string]any
				if err := json.Unmarshal([]byte(args[i+1]), &cfg); err != nil || cfg["endpoint"] != "tcp://*:5558" || cfg["replay_endpoint"] != "tcp://*:5559" || cfg["enable_kv_cache_events"] != true {
					t.Fatalf("kv-events-config %q: %v", args[i+1], err)
				}
			}
		})
	}
}
