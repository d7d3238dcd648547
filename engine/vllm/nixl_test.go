package vllm_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/kvgate/kvgate/engine/vllm"
)

func TestNixlEnv(t *testing.T) {
	tests := []struct {
		role string
		port int
		want []string
	}{
		{"prefill", 5600, []string{"VLLM_NIXL_SIDE_CHANNEL_HOST=10.0.0.5", "VLLM_NIXL_SIDE_CHANNEL_PORT=5600"}},
		{"decode", 5601, []string{"VLLM_NIXL_SIDE_CHANNEL_HOST=10.0.0.5", "VLLM_NIXL_SIDE_CHANNEL_PORT=5601"}},
		{"aggregated", 5600, nil},
		{"", 5600, nil},
		{"prefill", 0, nil},
	}
	for _, tc := range tests {
		if got := vllm.NixlEnv(tc.role, "10.0.0.5", tc.port); !slices.Equal(got, tc.want) {
			t.Errorf("NixlEnv(%q, %d) = %v, want %v", tc.role, tc.port, got, tc.want)
		}
	}
}

func TestKVTransferConfigMatchesCommand(t *testing.T) {
	var cfg map[string]string
	if err := json.Unmarshal([]byte(vllm.KVTransferConfig()), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["kv_connector"] != "NixlConnector" || cfg["kv_role"] != "kv_both" {
		t.Errorf("kv-transfer-config %v", cfg)
	}
	for _, role := range []string{"prefill", "decode"} {
		args := vllm.Command(vllm.Options{Model: "m", Port: 1, Role: role})
		if got, _ := flag(args, "--kv-transfer-config"); got != vllm.KVTransferConfig() {
			t.Errorf("%s: --kv-transfer-config %q, want %q", role, got, vllm.KVTransferConfig())
		}
	}
}
