package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// MetricZMQRejected counts the ZMQ connections kvgate's sockets closed because the peer
// broke the protocol or the size limits (ZMQLimits), by socket kind and reason.
const MetricZMQRejected = "kvgate_zmq_rejected_connections_total"

// Metric names of vLLM's /metrics (v1 engine), as they appear in the text
// exposition: counters carry their _total suffix, histograms are named
// without _bucket/_sum/_count. The simulator exports the same names.
const (
	VLLMNumRequestsRunning = "vllm:num_requests_running" // gauge
	VLLMNumRequestsWaiting = "vllm:num_requests_waiting" // gauge
	// VLLMKVCacheUsage is the fraction (0..1, despite the name) of KV-cache
	// blocks in use.
	VLLMKVCacheUsage = "vllm:kv_cache_usage_perc"
	// VLLMGPUCacheUsage is VLLMKVCacheUsage's name in older vLLM releases.
	VLLMGPUCacheUsage           = "vllm:gpu_cache_usage_perc"
	VLLMPrefixCacheQueries      = "vllm:prefix_cache_queries_total" // counter, tokens
	VLLMPrefixCacheHits         = "vllm:prefix_cache_hits_total"    // counter, tokens
	VLLMTimeToFirstToken        = "vllm:time_to_first_token_seconds"
	VLLMInterTokenLatency       = "vllm:inter_token_latency_seconds"
	VLLMTimePerOutputToken      = "vllm:time_per_output_token_seconds" // older name of the ITL histogram
	VLLME2ERequestLatency       = "vllm:e2e_request_latency_seconds"
	VLLMRequestQueueTime        = "vllm:request_queue_time_seconds"
	VLLMRequestPrefillTime      = "vllm:request_prefill_time_seconds"
	VLLMRequestDecodeTime       = "vllm:request_decode_time_seconds"
	VLLMPromptTokens            = "vllm:prompt_tokens_total"       // counter
	VLLMGenerationTokens        = "vllm:generation_tokens_total"   // counter
	VLLMRequestSuccess          = "vllm:request_success_total"     // counter, label finished_reason
	VLLMNumPreemptions          = "vllm:num_preemptions_total"     // counter
	VLLMRequestPromptTokens     = "vllm:request_prompt_tokens"     // histogram
	VLLMRequestGenerationTokens = "vllm:request_generation_tokens" // histogram
	VLLMCacheConfigInfo         = "vllm:cache_config_info"         // gauge 1, labels block_size, num_gpu_blocks, ...
	// VLLMLoRARequestsInfo is set to the current time, labelled max_lora and the
	// comma-separated running_lora_adapters and waiting_lora_adapters (with LoRA enabled).
	VLLMLoRARequestsInfo = "vllm:lora_requests_info"
)

// Metric names of SGLang's /metrics (--enable-metrics).
const (
	SGLangNumRunningReqs     = "sglang:num_running_reqs" // gauge
	SGLangNumQueueReqs       = "sglang:num_queue_reqs"   // gauge
	SGLangTokenUsage         = "sglang:token_usage"      // gauge, fraction 0..1 of KV tokens in use
	SGLangCacheHitRate       = "sglang:cache_hit_rate"   // gauge, 0..1
	SGLangNumUsedTokens      = "sglang:num_used_tokens"  // gauge
	SGLangGenThroughput      = "sglang:gen_throughput"   // gauge, tokens/s
	SGLangTimeToFirstToken   = "sglang:time_to_first_token_seconds"
	SGLangTimePerOutputToken = "sglang:time_per_output_token_seconds"
	SGLangInterTokenLatency  = "sglang:inter_token_latency_seconds"
	SGLangE2ERequestLatency  = "sglang:e2e_request_latency_seconds"
	SGLangPromptTokens       = "sglang:prompt_tokens_total"     // counter
	SGLangGenerationTokens   = "sglang:generation_tokens_total" // counter
)

// ProcessStartTime is the Prometheus client libraries' process collector gauge (Unix
// seconds) that vLLM and SGLang export: a new value means a new engine process.
const ProcessStartTime = "process_start_time_seconds"

// Load is what the router reads from an engine's /metrics.
type Load struct {
	Running float64 // requests running (summed over label sets, e.g. DP engines)
	Waiting float64 // requests queued (summed)
	KVUsage float64 // fraction of the KV cache in use, 0..1 (the highest over label sets)
	// LoRA, from vllm:lora_requests_info's newest series (the one with the largest value,
	// a timestamp): max_lora and the adapters of the running and waiting requests. LoRA is
	// false when the engine exports no such series.
	LoRA                       bool
	MaxLoRA                    int
	RunningLoRAs, WaitingLoRAs []string
	// StartTime is process_start_time_seconds (the latest over series), 0 when absent.
	StartTime float64
}

// MaxLoadBytes bounds the metrics page read from an engine for ParseLoad.
const MaxLoadBytes = 16 << 20

// loadNames are the metric families ParseLoad reads.
var loadNames = [...]string{VLLMNumRequestsRunning, VLLMNumRequestsWaiting, VLLMKVCacheUsage, VLLMGPUCacheUsage,
	SGLangNumRunningReqs, SGLangNumQueueReqs, SGLangTokenUsage, VLLMLoRARequestsInfo, ProcessStartTime}

// loadBufs holds ParseLoad's read buffers (an engine's page is about 30 KB, read every
// scrape interval).
var loadBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ParseLoad reads vLLM's or SGLang's Prometheus text exposition and returns
// the engine's load. It fails on malformed lines of the families it reads and on
// text that carries none of the running, waiting and KV-usage metrics of either
// engine.
//
// Only the lines of those families are parsed: a line is kept when its metric name (or
// the name of its # HELP or # TYPE comment) begins with one of loadNames, and every other
// line is skipped unread, so that the rest of the page (histograms, about 30 KB on vLLM
// and kvgate sim, read every scrape interval from every engine) costs a scan for its line
// ends instead of a full parse. What it returns for text Prometheus's parser accepts is
// what parsing the whole page returns (FuzzParseLoadMatchesFullParse).
func ParseLoad(r io.Reader) (Load, error) {
	buf := loadBufs.Get().(*bytes.Buffer)
	defer loadBufs.Put(buf)
	buf.Reset()
	if _, err := buf.ReadFrom(r); err != nil {
		return Load{}, fmt.Errorf("engine: read metrics: %w", err)
	}
	text := loadLines(buf.Bytes())
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return Load{}, fmt.Errorf("engine: parse metrics: %w", err)
	}
	var l Load
	found := false
	sum := func(names ...string) float64 {
		var total float64
		for _, n := range names {
			if v, ok := values(fams[n]); ok {
				found = true
				for _, x := range v {
					total += x
				}
			}
		}
		return total
	}
	l.Running = sum(VLLMNumRequestsRunning, SGLangNumRunningReqs)
	l.Waiting = sum(VLLMNumRequestsWaiting, SGLangNumQueueReqs)
	for _, n := range []string{VLLMKVCacheUsage, VLLMGPUCacheUsage, SGLangTokenUsage} {
		v, ok := values(fams[n])
		if !ok {
			continue
		}
		found = true
		for _, x := range v {
			l.KVUsage = math.Max(l.KVUsage, min(x, 1))
		}
		break // the current name wins over the older one
	}
	if !found {
		return Load{}, errors.New("engine: metrics carry no vLLM or SGLang load gauges")
	}
	loraInfo(fams[VLLMLoRARequestsInfo], &l)
	if v, ok := values(fams[ProcessStartTime]); ok {
		for _, x := range v {
			l.StartTime = max(l.StartTime, x)
		}
	}
	return l, nil
}

// loadLines compacts text in place to the lines ParseLoad reads, each with its line end
// as it was, and returns them: sample lines whose metric name begins with one of
// loadNames, the # HELP and # TYPE comments of such names, and lines in the quoted-name
// syntax of UTF-8 metric names ({"name"} or # TYPE "name"), which no engine writes and
// which are left to the parser. A family's lines are kept or skipped together, histogram
// and summary suffixes included, since they begin with the family's name.
func loadLines(text []byte) []byte {
	out := text[:0]
	for len(text) > 0 {
		line := text
		if i := bytes.IndexByte(text, '\n'); i >= 0 {
			line = text[:i+1]
		}
		text = text[len(line):]
		if keepLoadLine(line) {
			out = append(out, line...) // out never passes the line it copies: in place is safe
		}
	}
	return out
}

// keepLoadLine reports whether loadLines keeps line.
func keepLoadLine(line []byte) bool {
	line = bytes.TrimLeft(line, " \t")
	if len(line) == 0 {
		return false
	}
	if line[0] == '#' { // a comment: HELP and TYPE name a family
		line = bytes.TrimLeft(line[1:], " \t")
		if !bytes.HasPrefix(line, []byte("HELP")) && !bytes.HasPrefix(line, []byte("TYPE")) {
			return false
		}
		rest := line[4:]
		line = bytes.TrimLeft(rest, " \t")
		if len(line) == len(rest) { // HELPx: an ordinary comment
			return len(line) == 0 || line[0] == '\n'
		}
	}
	if len(line) > 0 && (line[0] == '{' || line[0] == '"') {
		return true
	}
	for _, n := range loadNames {
		if len(line) >= len(n) && string(line[:len(n)]) == n {
			return true
		}
	}
	return false
}

// loraInfo fills l's LoRA fields from the newest series of vllm:lora_requests_info.
func loraInfo(f *dto.MetricFamily, l *Load) {
	if f == nil {
		return
	}
	best := math.Inf(-1)
	for _, m := range f.GetMetric() {
		v := m.GetGauge().GetValue()
		if m.GetGauge() == nil {
			v = m.GetUntyped().GetValue()
		}
		if math.IsNaN(v) || v < best {
			continue
		}
		best, l.LoRA = v, true
		l.MaxLoRA, l.RunningLoRAs, l.WaitingLoRAs = 0, nil, nil
		for _, lp := range m.GetLabel() {
			switch lp.GetName() {
			case "max_lora":
				if n, err := strconv.Atoi(lp.GetValue()); err == nil && n > 0 {
					l.MaxLoRA = n
				}
			case "running_lora_adapters":
				l.RunningLoRAs = splitNames(lp.GetValue())
			case "waiting_lora_adapters":
				l.WaitingLoRAs = splitNames(lp.GetValue())
			}
		}
	}
}

func splitNames(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// values returns the finite, non-negative gauge (or untyped) values of a
// family.
func values(f *dto.MetricFamily) ([]float64, bool) {
	if f == nil {
		return nil, false
	}
	var out []float64
	for _, m := range f.GetMetric() {
		var v float64
		switch {
		case m.GetGauge() != nil:
			v = m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			v = m.GetUntyped().GetValue()
		case m.GetCounter() != nil:
			v = m.GetCounter().GetValue()
		default:
			continue
		}
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			continue
		}
		out = append(out, v)
	}
	return out, len(out) > 0
}
