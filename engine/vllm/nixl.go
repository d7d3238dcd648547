package vllm

import (
	"encoding/json"
	"strconv"
)

// NixlConnector's side channel: the decode engine asks the prefill engine's side channel for
// its NIXL agent metadata (memory registrations) before it reads the blocks. vLLM takes its
// address from these variables; with tensor parallelism rank r listens on PORT + r.
const (
	EnvNixlSideChannelHost = "VLLM_NIXL_SIDE_CHANNEL_HOST"
	EnvNixlSideChannelPort = "VLLM_NIXL_SIDE_CHANNEL_PORT"
)

// KVTransferConfig is the --kv-transfer-config of a P/D engine: NixlConnector, both roles
// (the request's kv_transfer_params say which side of a transfer it is on).
func KVTransferConfig() string {
	b, _ := json.Marshal(struct {
		Connector string `json:"kv_connector"`
		Role      string `json:"kv_role"`
	}{"NixlConnector", "kv_both"})
	return string(b)
}

// Disaggregated reports whether role is a P/D role (prefill or decode).
func Disaggregated(role string) bool { return role == "prefill" || role == "decode" }

// NixlEnv is the environment of a P/D engine whose NIXL side channel listens on host:port;
// nil for other roles. host must be reachable from the other engines of the P/D pool.
func NixlEnv(role, host string, port int) []string {
	if !Disaggregated(role) || port <= 0 {
		return nil
	}
	return []string{EnvNixlSideChannelHost + "=" + host, EnvNixlSideChannelPort + "=" + strconv.Itoa(port)}
}
