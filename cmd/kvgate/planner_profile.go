package main

import (
	"bytes"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/planner/profiler"
	"github.com/kvgate/kvgate/tokenizer"
)

func init() { registerPlannerSub(newPlannerProfileCmd) }

// newPlannerProfileCmd is `kvgate planner profile`.
func newPlannerProfileCmd(g *globals) *cobra.Command {
	var (
		cfg profiler.Config
		out string
	)
	cmd := &cobra.Command{
		Use:   "profile",
		Short: "Measure one engine's capacity for the sla planner: prefill throughput vs TTFT, decode throughput vs ITL",
		Long: `profile sweeps one engine (vLLM, SGLang or kvgate sim) with kvgate bench's load generator at
rising concurrency, for each prompt length: prefill (one output token) gives prompt tokens per
second against p90 TTFT, decode (--decode-tokens outputs) gives output tokens per second against
mean ITL. Every prompt is new (no prefix-cache hits). The result is a profile file (JSON, which
the planner also reads as YAML) for 'kvgate planner --profile' and 'kvgate replay --profile'.
A level with any failed request fails the sweep. See docs/PLANNER.md.`,
		Example: `  kvgate sim --port 8000 &
  kvgate planner profile --url http://127.0.0.1:8000 --out sim-profile.json
  kvgate planner profile --url http://gpu-1:8000 --model Qwen/Qwen3-8B --lengths 1024,4096,16384 --out qwen3-8b-h100.json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return fmt.Errorf("--out is required")
			}
			cfg.Log = cmd.ErrOrStderr()
			g.log.Info("profiling", "url", cfg.URL, "lengths", cfg.Lengths, "concurrency", cfg.Concurrency)
			p, err := profiler.Sweep(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := p.Write(&buf); err != nil {
				return err
			}
			if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: %d prefill and %d decode curves\n", out, len(p.Prefill), len(p.Decode))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.URL, "url", "", "the engine's OpenAI API base URL, e.g. http://127.0.0.1:8000 (required)")
	f.StringVar(&cfg.Model, "model", tokenizer.DefaultModel, "model name to request")
	f.StringVar(&cfg.API, "api", "completions", "completions (token-id prompts, exact lengths) or chat")
	f.StringVar(&out, "out", "", "profile file to write (required)")
	f.IntSliceVar(&cfg.Lengths, "lengths", []int{512, 2048, 8192}, "prompt lengths (and decode contexts) to measure")
	f.IntSliceVar(&cfg.Concurrency, "concurrency", []int{1, 2, 4, 8, 16, 32}, "rising load levels (requests in flight)")
	f.IntVar(&cfg.Requests, "requests", 16, "requests per level at least (and four per request in flight)")
	f.IntVar(&cfg.DecodeTokens, "decode-tokens", 128, "output tokens of each decode-sweep request")
	f.IntVar(&cfg.GPUsPerEngine, "gpus-per-engine", 1, "GPUs the engine holds (recorded in the profile)")
	f.StringVar(&cfg.Name, "name", "", "a name recorded in the profile, e.g. qwen3-8b-h100-tp1")
	f.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "per-request timeout")
	return cmd
}
