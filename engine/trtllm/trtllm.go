// Package trtllm holds what is specific to TensorRT-LLM: trtllm-serve's command line and LLM
// API options with KV-cache events on, the decoder of its KV-cache event lists, and a
// source that polls them from trtllm-serve's /kv_cache_events endpoint.
package trtllm

import (
	"strconv"
	"strings"
)

// DefaultEventBuffer is the kv_cache_config.event_buffer_max_size workerd asks for: how many
// events trtllm-serve keeps between two polls of /kv_cache_events (0 turns events off).
const DefaultEventBuffer = 10000

// EventsPath is trtllm-serve's KV-cache event endpoint (POST; each call drains the buffer).
const EventsPath = "/kv_cache_events"

// Options is one trtllm-serve server.
type Options struct {
	Binary         string // executable; "" = "trtllm-serve"
	Model          string // Hugging Face id, checkpoint or engine directory (required)
	Host           string // listen host; "" = 127.0.0.1
	Port           int    // OpenAI HTTP port (required)
	Backend        string // --backend; "" = "pytorch"
	TPSize         int    // --tp_size; 0 or 1 = not given
	TokensPerBlock int    // kv_cache_config.tokens_per_block; 0 = TRT-LLM's default (32)
	// EventBuffer is kv_cache_config.event_buffer_max_size; 0 = no KV-cache events.
	EventBuffer int
	// HostCacheBytes is kv_cache_config.host_cache_size: the secondary (host memory) pool
	// blocks are offloaded to; 0 = none.
	HostCacheBytes int64
	// OptionsFile is the path of the YAML written from OptionsYAML, passed as
	// --extra_llm_api_options.
	OptionsFile string
	Extra       []string // appended last
}

// Command returns argv: `trtllm-serve serve MODEL --host H --port P --backend pytorch
// --extra_llm_api_options FILE ...`. The KV-cache settings live in the options file
// (OptionsYAML), which the caller writes to OptionsFile before starting the server.
func Command(o Options) []string {
	bin := o.Binary
	if bin == "" {
		bin = "trtllm-serve"
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	backend := o.Backend
	if backend == "" {
		backend = "pytorch"
	}
	args := []string{bin, "serve", o.Model, "--host", host, "--port", strconv.Itoa(o.Port), "--backend", backend}
	if o.TPSize > 1 {
		args = append(args, "--tp_size", strconv.Itoa(o.TPSize))
	}
	if o.OptionsFile != "" {
		args = append(args, "--extra_llm_api_options", o.OptionsFile)
	}
	return append(args, o.Extra...)
}

// OptionsYAML returns the LLM API options file: block reuse (TRT-LLM's prefix cache) on,
// the block size, and the KV-cache event buffer that /kv_cache_events drains.
func OptionsYAML(o Options) []byte {
	var b strings.Builder
	b.WriteString("# written by kvgate workerd: trtllm-serve --extra_llm_api_options\n")
	b.WriteString("kv_cache_config:\n")
	b.WriteString("  enable_block_reuse: true\n")
	if o.TokensPerBlock > 0 {
		b.WriteString("  tokens_per_block: " + strconv.Itoa(o.TokensPerBlock) + "\n")
	}
	if o.EventBuffer > 0 {
		b.WriteString("  event_buffer_max_size: " + strconv.Itoa(o.EventBuffer) + "\n")
	}
	if o.HostCacheBytes > 0 {
		b.WriteString("  host_cache_size: " + strconv.FormatInt(o.HostCacheBytes, 10) + "\n")
	}
	return []byte(b.String())
}
