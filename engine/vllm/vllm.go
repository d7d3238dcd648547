// Package vllm builds vLLM's command line with KV events, prefix caching and metrics on
// (metric names live in package engine).
package vllm

import (
	"encoding/json"
	"strconv"
)

// DefaultTopic is the ZMQ topic workerd asks engines to publish KV events on.
const DefaultTopic = "kv-events"

// Options is one vLLM server.
type Options struct {
	Binary       string   // executable; "" = "vllm"
	Model        string   // Hugging Face id or path (required)
	ServedNames  []string // --served-model-name values; none = the model id
	Host         string   // listen host; "" = 127.0.0.1
	Port         int      // OpenAI HTTP port (required)
	BlockSize    int      // --block-size; 0 = vLLM's default (16)
	KVEventsPort int      // ZMQ PUB port vLLM binds (tcp://*:PORT); 0 = no KV events
	ReplayPort   int      // ZMQ ROUTER port resending recent batches (tcp://*:PORT); 0 = none
	Topic        string   // "" = DefaultTopic
	Role         string   // "prefill" or "decode" add a NIXL --kv-transfer-config; "" or "aggregated" none
	Offload      Offload  // KV offloading below the GPU (OffloadArgs; its environment is OffloadEnv)
	Extra        []string // appended last, so they can override anything above
}

// KVEventsConfig returns the JSON of vLLM's --kv-events-config for a ZMQ publisher bound at
// endpoint, with a replay socket at replay ("" = none) that lets a subscriber that joined
// late or lost messages fetch the batches it missed.
func KVEventsConfig(endpoint, replay, topic string) string {
	b, _ := json.Marshal(struct {
		Enable    bool   `json:"enable_kv_cache_events"`
		Publisher string `json:"publisher"`
		Endpoint  string `json:"endpoint"`
		Replay    string `json:"replay_endpoint,omitempty"`
		Topic     string `json:"topic"`
	}{true, "zmq", endpoint, replay, topic})
	return string(b)
}

func replayEndpoint(port int) string {
	if port <= 0 {
		return ""
	}
	return "tcp://*:" + strconv.Itoa(port)
}

// Command returns argv: `vllm serve MODEL --host H --port P --enable-prefix-caching ...`.
// vLLM always serves /metrics and /health on the API port.
func Command(o Options) []string {
	bin := o.Binary
	if bin == "" {
		bin = "vllm"
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	args := []string{bin, "serve", o.Model, "--host", host, "--port", strconv.Itoa(o.Port), "--enable-prefix-caching"}
	if len(o.ServedNames) > 0 {
		args = append(args, "--served-model-name")
		args = append(args, o.ServedNames...)
	}
	if o.BlockSize > 0 {
		args = append(args, "--block-size", strconv.Itoa(o.BlockSize))
	}
	if o.KVEventsPort > 0 {
		topic := o.Topic
		if topic == "" {
			topic = DefaultTopic
		}
		args = append(args, "--kv-events-config", KVEventsConfig("tcp://*:"+strconv.Itoa(o.KVEventsPort), replayEndpoint(o.ReplayPort), topic))
	}
	switch o.Role {
	case "prefill", "decode":
		args = append(args, "--kv-transfer-config", `{"kv_connector":"NixlConnector","kv_role":"kv_both"}`)
	}
	args = append(args, OffloadArgs(o.Offload)...)
	return append(args, o.Extra...)
}
