// Package sglang builds SGLang's command line with KV events, the radix (prefix) cache and
// metrics on (metric names live in package engine).
package sglang

import (
	"strconv"

	"github.com/kvgate/kvgate/engine/vllm"
)

// Options is one SGLang server.
type Options struct {
	Python       string // interpreter; "" = "python3" (runs -m sglang.launch_server)
	Model        string // --model-path (required)
	ServedName   string // --served-model-name; "" = the model path
	Host         string // "" = 127.0.0.1
	Port         int    // required
	PageSize     int    // --page-size, SGLang's KV block size in tokens; 0 = SGLang's default (1)
	KVEventsPort int    // ZMQ PUB port (tcp://*:PORT); 0 = no KV events
	ReplayPort   int    // ZMQ replay port (tcp://*:PORT); 0 = none
	Topic        string // "" = vllm.DefaultTopic
	Role         string // "prefill" or "decode" set --disaggregation-mode
	Extra        []string

	// HiCache is the host and disk KV tiers (HiCache.Args; its environment is HiCache.Env).
	HiCache HiCache
}

// Command returns argv for `python3 -m sglang.launch_server`. SGLang keeps its radix cache
// (prefix caching) on unless --disable-radix-cache is given; --enable-metrics turns on
// /metrics. Its --kv-events-config takes the same JSON as vLLM's.
func Command(o Options) []string {
	py := o.Python
	if py == "" {
		py = "python3"
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	args := []string{py, "-m", "sglang.launch_server", "--model-path", o.Model,
		"--host", host, "--port", strconv.Itoa(o.Port), "--enable-metrics"}
	if o.ServedName != "" {
		args = append(args, "--served-model-name", o.ServedName)
	}
	if o.PageSize > 0 {
		args = append(args, "--page-size", strconv.Itoa(o.PageSize))
	}
	if o.KVEventsPort > 0 {
		topic := o.Topic
		if topic == "" {
			topic = vllm.DefaultTopic
		}
		replay := ""
		if o.ReplayPort > 0 {
			replay = "tcp://*:" + strconv.Itoa(o.ReplayPort)
		}
		args = append(args, "--kv-events-config", vllm.KVEventsConfig("tcp://*:"+strconv.Itoa(o.KVEventsPort), replay, topic))
	}
	switch o.Role {
	case "prefill", "decode":
		args = append(args, "--disaggregation-mode", o.Role)
	}
	args = append(args, o.HiCache.Args()...)
	return append(args, o.Extra...)
}
