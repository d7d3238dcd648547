package engine_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
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

// loadPages are the seeds of the full-parse comparison: the test constants above, a page of
// kvgate sim after traffic, and texts that probe which lines ParseLoad skips.
func loadPages(t testing.TB) []string {
	sim, err := os.ReadFile("testdata/sim_metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	return []string{vllmMetrics, vllmOldMetrics, sglangMetrics, string(sim),
		"vllm:kv_cache_usage_perc 1.5\n",
		"vllm:num_requests_running 1\nvllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"\"} 5\n",
		// Summaries and histograms under a read name, its suffixes, a longer name beginning with it.
		"# TYPE vllm:num_requests_running summary\nvllm:num_requests_running{quantile=\"0.5\"} 1\nvllm:num_requests_running_sum 2\nvllm:num_requests_running_count 3\nvllm:num_requests_waiting 4\n",
		"# TYPE vllm:num_requests_waiting histogram\nvllm:num_requests_waiting_bucket{le=\"+Inf\"} 1\nvllm:num_requests_waiting_sum 1\nvllm:num_requests_waiting_count 1\nvllm:num_requests_running 2\n",
		"vllm:num_requests_running_x 7\nvllm:num_requests_running 1\n",
		// Leading blanks, comments of every shape, a line without its end.
		"  \t# HELP vllm:num_requests_running a\\nb \\\\ c\n\t# TYPE vllm:num_requests_running gauge\n # other comment\n#HELPx y\n# HELP\n  vllm:num_requests_running 3 1700000000000\nvllm:kv_cache_usage_perc 0.5",
		// Quoted (UTF-8) names.
		"# TYPE \"vllm:num_requests_running\" gauge\n{\"vllm:num_requests_running\",engine=\"0\"} 2\n",
		// Malformed lines: in a family it reads (an error) and in one it skips.
		"vllm:num_requests_running{ 1\n",
		"vllm:num_requests_running 1\nsomething{ broken\n",
		"vllm:num_requests_running 1\n# TYPE vllm:num_requests_running counter\n",
		"vllm:num_requests_running 1\nvllm:num_requests_running 1\n",
		"process_start_time_seconds 5\nvllm:gpu_cache_usage_perc 0.2\nvllm:kv_cache_usage_perc 0.1\n",
	}
}

// TestParseLoadMatchesFullParse: ParseLoad, which parses only the lines of the families it
// reads, returns what parsing the whole page returns (parseLoadFull, the reference) wherever
// the whole page parses.
func TestParseLoadMatchesFullParse(t *testing.T) {
	for i, text := range loadPages(t) {
		checkLoadMatchesFull(t, fmt.Sprint("page ", i), text)
	}
}

func FuzzParseLoadMatchesFullParse(f *testing.F) {
	for _, s := range loadPages(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) { checkLoadMatchesFull(t, "fuzz", text) })
}

func checkLoadMatchesFull(t *testing.T, name, text string) {
	t.Helper()
	want, wantErr := parseLoadFull(strings.NewReader(text))
	got, err := engine.ParseLoad(strings.NewReader(text))
	if wantErr != nil {
		if err == nil && !strings.Contains(wantErr.Error(), "parse metrics") {
			// The whole page carries no load gauge; neither may the lines kept of it.
			t.Fatalf("%s: ParseLoad(%q) = %+v, nil; the full parse: %v", name, text, got, wantErr)
		}
		return // malformed lines in families ParseLoad skips need not fail it
	}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: ParseLoad(%q) = %+v, %v; the full parse: %+v", name, text, got, err, want)
	}
}

// BenchmarkParseLoad parses a page of kvgate sim (30 KB, about vLLM's) as the router does
// every scrape interval, against parsing the whole page (the reference, as before).
func BenchmarkParseLoad(b *testing.B) {
	page, err := os.ReadFile("testdata/sim_metrics.txt")
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name  string
		parse func(io.Reader) (engine.Load, error)
	}{{"lines", engine.ParseLoad}, {"full", parseLoadFull}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(page)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.parse(bytes.NewReader(page)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
