package router

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
)

// kvSource is kv_transfer_params.remote_kv_source: where the target engine pulls the
// prompt's cached prefix from (llm-d's routing sidecar builds the same object for vLLM's
// offloading connector from HeaderKVCacheSource and its P2P connector port).
type kvSource struct {
	KVRequestID string `json:"kv_request_id"`
	RemoteHost  string `json:"remote_host"`
	RemotePort  int    `json:"remote_port"`
}

// PullBody returns body (a JSON object: a routed request) with
// kv_transfer_params.remote_kv_source naming d's pull source at transferPort, the port the
// engines serve block pulls on; other kv_transfer_params fields are kept. It returns body
// itself when d has no pull or transferPort is 0 (then HeaderKVCacheSource alone names the
// source). The caller owns the result.
func (d *Decision) PullBody(body []byte, transferPort int) ([]byte, error) {
	if d.Pull == nil || transferPort <= 0 {
		return body, nil
	}
	if transferPort > 65535 {
		return nil, fmt.Errorf("router: P2P transfer port %d out of range", transferPort)
	}
	host, _, err := net.SplitHostPort(d.Pull.From.Address)
	if err != nil {
		return nil, fmt.Errorf("router: pull source %q: %w", d.Pull.From.Address, err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("router: the request body is not a JSON object: %v", err)
	}
	params := map[string]json.RawMessage{}
	if raw, ok := obj["kv_transfer_params"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &params); err != nil || params == nil {
			return nil, fmt.Errorf("router: kv_transfer_params is not an object: %v", err)
		}
	}
	var id [16]byte
	_, _ = rand.Read(id[:])
	src, err := json.Marshal(kvSource{KVRequestID: hex.EncodeToString(id[:]), RemoteHost: host, RemotePort: transferPort})
	if err != nil {
		return nil, err
	}
	params["remote_kv_source"] = src
	if obj["kv_transfer_params"], err = json.Marshal(params); err != nil {
		return nil, err
	}
	return json.Marshal(obj)
}
