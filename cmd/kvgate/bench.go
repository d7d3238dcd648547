package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/bench"
	"github.com/kvgate/kvgate/workload"
)

func init() { register(newBenchCmd) }

// workloadFlags are the trace flags shared by bench and replay.
type workloadFlags struct {
	trace       string
	maxRequests int
	rateScale   float64
	syn         workload.Synthetic
	synthetic   bool
}

func (w *workloadFlags) add(cmd *cobra.Command) {
	w.syn = workload.DefaultSynthetic()
	f := cmd.Flags()
	f.StringVar(&w.trace, "trace", "", "Mooncake-format trace file (timestamp, input_length, output_length, hash_ids)")
	f.BoolVar(&w.synthetic, "synthetic", false, "generate a synthetic multi-turn workload instead of reading --trace")
	f.IntVar(&w.maxRequests, "max-requests", 0, "send only the first N requests of the trace (0 = all)")
	f.Float64Var(&w.rateScale, "rate-scale", 1, "replay the trace X times faster (arrival times divided by X)")
	f.IntVar(&w.syn.SystemPrompts, "syn-system-prompts", w.syn.SystemPrompts, "synthetic: distinct shared system prompts")
	f.IntVar(&w.syn.SystemTokens, "syn-system-tokens", w.syn.SystemTokens, "synthetic: tokens per system prompt")
	f.IntVar(&w.syn.Conversations, "syn-conversations", w.syn.Conversations, "synthetic: conversations")
	f.IntVar(&w.syn.Turns, "syn-turns", w.syn.Turns, "synthetic: turns per conversation")
	f.IntVar(&w.syn.UserTokens, "syn-user-tokens", w.syn.UserTokens, "synthetic: tokens per user message")
	f.IntVar(&w.syn.OutputTokens, "syn-output-tokens", w.syn.OutputTokens, "synthetic: completion tokens per turn")
	f.Float64Var(&w.syn.Rate, "syn-rate", w.syn.Rate, "synthetic: new conversations per second")
	f.DurationVar(&w.syn.ThinkTime, "syn-think-time", w.syn.ThinkTime, "synthetic: time between turns of a conversation")
	f.Uint64Var(&w.syn.Seed, "seed", w.syn.Seed, "random seed")
}

func (w *workloadFlags) load() (*workload.Trace, error) {
	var tr *workload.Trace
	var err error
	switch {
	case w.synthetic && w.trace != "":
		return nil, fmt.Errorf("--trace and --synthetic are exclusive")
	case w.synthetic:
		tr, err = w.syn.Generate()
	case w.trace != "":
		tr, err = workload.ReadFile(w.trace)
	default:
		return nil, fmt.Errorf("give --trace FILE or --synthetic")
	}
	if err != nil {
		return nil, err
	}
	tr.Limit(w.maxRequests)
	if err := tr.ScaleRate(w.rateScale); err != nil {
		return nil, err
	}
	return tr, nil
}

func newBenchCmd(g *globals) *cobra.Command {
	var (
		wf          workloadFlags
		cfg         bench.Config
		headers     []string
		asJSON      bool
		noProgress  bool
		concurrency int
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load-test any OpenAI-compatible URL with a trace or a synthetic workload",
		Long: `bench replays a trace (Mooncake format) or a synthetic multi-turn workload against an
OpenAI-compatible server, streaming every response, and reports TTFT, inter-token latency,
end-to-end latency, throughput, prompt cache hits (usage.prompt_tokens_details.cached_tokens),
errors, and how requests spread over endpoints (x-kvgate-endpoint).

Requests go out at the trace's arrival times (open loop), or with --concurrency N in flight
(closed loop). The completions API sends prompts as token ids, so equal trace blocks are equal
tokens on the engine; the chat API sends them as words.`,
		Example: `  kvgate bench --url http://127.0.0.1:8000 --synthetic --syn-conversations 50
  kvgate bench --url http://127.0.0.1:8000 --trace mooncake.jsonl --max-requests 200 --rate-scale 4 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tr, err := wf.load()
			if err != nil {
				return err
			}
			cfg.Trace, cfg.Concurrency = tr, concurrency
			cfg.Header = http.Header{}
			for _, h := range headers {
				k, v, ok := strings.Cut(h, ":")
				if !ok {
					return fmt.Errorf("--header %q: want 'Name: value'", h)
				}
				cfg.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
			if !noProgress && !asJSON {
				cfg.Progress = cmd.ErrOrStderr()
			}
			g.log.Info("bench starting", "url", cfg.URL, "requests", len(tr.Requests), "api", cfg.API, "concurrency", concurrency)
			res, err := bench.Run(cmd.Context(), cfg)
			if res == nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if e := enc.Encode(res); e != nil {
					return e
				}
			} else {
				printBench(cmd.OutOrStdout(), res)
			}
			if err != nil {
				return fmt.Errorf("interrupted: %w", err)
			}
			return nil
		},
	}
	wf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&cfg.URL, "url", "http://127.0.0.1:8000", "base URL of the OpenAI-compatible server")
	f.StringVar(&cfg.Model, "model", "Qwen/Qwen3-8B", "model name to request")
	f.StringVar(&cfg.API, "api", "completions", "API to call: completions (token-id prompts) or chat")
	f.IntVar(&concurrency, "concurrency", 0, "requests in flight (closed loop); 0 follows the trace's arrival times")
	f.BoolVar(&cfg.IgnoreEOS, "ignore-eos", true, "ask for exactly the trace's output length (vLLM's ignore_eos)")
	f.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "per-request timeout")
	f.StringArrayVar(&headers, "header", nil, "extra request header 'Name: value' (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object instead of a table")
	f.BoolVar(&noProgress, "no-progress", false, "do not draw the progress line")
	return cmd
}

func printBench(w io.Writer, r *bench.Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "requests\t%d (%d errors)\n", r.Requests, r.Errors)
	for k, n := range r.ErrorsByKind {
		fmt.Fprintf(tw, "  %s\t%d\n", k, n)
	}
	fmt.Fprintf(tw, "duration\t%.2f s\n", r.Duration)
	fmt.Fprintf(tw, "throughput\t%.0f tokens/s, %.2f requests/s\n", r.ThroughputTokens, r.RequestsPerS)
	fmt.Fprintf(tw, "prompt cache hits\t%.1f%% (%d of %d prompt tokens)\n", 100*r.HitRatio, r.CachedTokens, r.PromptTokens)
	fmt.Fprintf(tw, "\tp50 ms\tp90 ms\tp99 ms\tmax ms\n")
	for _, d := range []struct {
		name string
		d    bench.Dist
	}{{"TTFT", r.TTFT}, {"ITL", r.ITL}, {"end-to-end", r.E2E}} {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\n", d.name, d.d.P50, d.d.P90, d.d.P99, d.d.Max)
	}
	if len(r.ByEndpoint) > 0 {
		names := make([]string, 0, len(r.ByEndpoint))
		for n := range r.ByEndpoint {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(tw, "by endpoint\t")
		for _, n := range names {
			fmt.Fprintf(tw, "%s=%d ", n, r.ByEndpoint[n])
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}
