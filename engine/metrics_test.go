package engine_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/engine"
)

const vllmMetrics = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen3-0.6B"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen3-0.6B"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen3-0.6B"} 7.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen3-0.6B"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen3-0.6B"} 0.5
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="Qwen/Qwen3-0.6B"} 1024.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen3-0.6B"} 0.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="Qwen/Qwen3-0.6B"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="Qwen/Qwen3-0.6B"} 4.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="Qwen/Qwen3-0.6B"} 0.5
`

const vllmOldMetrics = `# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 1
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 2
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.75
`

const sglangMetrics = `# HELP sglang:token_usage The token usage
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.28
# HELP sglang:cache_hit_rate The cache hit rate
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.007507552643049313
# HELP sglang:num_running_reqs The number of running requests
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 162.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2826.0
`

func TestParseLoad(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    engine.Load
		wantErr string
	}{
		{"vllm with two DP engines", vllmMetrics, engine.Load{Running: 5, Waiting: 7, KVUsage: 0.5}, ""},
		{"vllm before v0.10", vllmOldMetrics, engine.Load{Running: 1, Waiting: 2, KVUsage: 0.75}, ""},
		{"sglang", sglangMetrics, engine.Load{Running: 162, Waiting: 2826, KVUsage: 0.28}, ""},
		{"usage clamped, NaN ignored", "vllm:kv_cache_usage_perc 1.5\nvllm:num_requests_running NaN\n",
			engine.Load{KVUsage: 1}, ""},
		{"vllm with LoRA: the newest series", "vllm:num_requests_running 2\n" +
			"vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"old\",waiting_lora_adapters=\"\"} 1.7e9\n" +
			"vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql,chat\",waiting_lora_adapters=\"code\"} 1.8e9\n",
			engine.Load{Running: 2, LoRA: true, MaxLoRA: 2, RunningLoRAs: []string{"sql", "chat"}, WaitingLoRAs: []string{"code"}}, ""},
		{"unrelated metrics", "# TYPE up gauge\nup 1\n", engine.Load{}, "no vLLM or SGLang"},
		{"empty", "", engine.Load{}, "no vLLM or SGLang"},
		{"malformed", "vllm:num_requests_running{ 1\n", engine.Load{}, "parse metrics"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := engine.ParseLoad(strings.NewReader(tc.text))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseLoad = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func FuzzParseLoad(f *testing.F) {
	for _, s := range []string{vllmMetrics, vllmOldMetrics, sglangMetrics, "vllm:kv_cache_usage_perc 1.5\n",
		"vllm:num_requests_running 1\nvllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"\"} 5\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		l, err := engine.ParseLoad(strings.NewReader(text))
		if err != nil {
			return
		}
		if l.Running < 0 || l.Waiting < 0 || !(l.KVUsage >= 0 && l.KVUsage <= 1) {
			t.Fatalf("ParseLoad(%q) = %+v: out of range", text, l)
		}
	})
}

// TestParseLoadStartTime: process_start_time_seconds, which vLLM's and SGLang's Prometheus
// clients export, is read as Load.StartTime (0 when absent).
func TestParseLoadStartTime(t *testing.T) {
	text := "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n" +
		"# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n" +
		"# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1.76466e+09\n"
	l, err := engine.ParseLoad(strings.NewReader(text))
	if err != nil || l.StartTime != 1.76466e9 {
		t.Fatalf("ParseLoad = %+v, %v; want StartTime 1.76466e9", l, err)
	}
	l, err = engine.ParseLoad(strings.NewReader("vllm:num_requests_running 1\n"))
	if err != nil || l.StartTime != 0 {
		t.Fatalf("without the gauge: %+v, %v", l, err)
	}
}
