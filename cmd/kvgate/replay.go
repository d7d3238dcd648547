package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/tokenizer"
)

func init() { register(newReplayCmd) }

func newReplayCmd(g *globals) *cobra.Command {
	var (
		wf     workloadFlags
		cfg    replay.Config
		dg     disaggFlags
		tf     replayTrafficFlags
		pf     replayPlannerFlags
		asJSON bool
		plot   string
	)
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Replay a trace through simulated engines and the real router, in virtual time",
		Long: `replay runs N simulated engines (the same engine model as 'kvgate sim', on a virtual
clock) behind the router's own code (kvindex, scoring, load accounting, KV events delivered after
--event-delay) and replays a trace as fast as the CPU allows. The same seed gives the same result.

It reports the prompt cache hit ratio (and, with --json, its split by where hits came from:
hit_ratio_gpu, hit_ratio_cpu, hit_ratio_disk, hit_ratio_remote) next to bound_hit_ratio (the same
trace through one pooled LRU cache of all engines' capacity in all tiers: the ceiling any router
can reach) and infinite_hit_ratio (the trace's own reuse), TTFT and ITL percentiles,
throughput and load imbalance (busiest engine's busy time over the mean). --policy all runs every
policy on the same trace; --plot draws their TTFT CDFs.

--planner sla|load|static|all puts a planner in the loop: engines start (--startup-s) and drain
as it decides, --engines is the GPU budget, --rate-profile changes the arrival rate in steps,
and results add sla_attainment, gpu_hours, max_engines_used and scale_events (docs/PLANNER.md).
--planner oracle is the sla planner told the trace's future over start-up + one interval (a bound).`,
		Example: `  kvgate replay --trace workload/testdata/mooncake_synthetic_trace.jsonl --engines 8 --policy all
  kvgate replay --synthetic --engines 4 --policy kv --json
  kvgate replay --trace workload/testdata/mooncake_synthetic_trace.jsonl --cpu-cache-gib 230 --p2p --json
  kvgate replay --trace workload/testdata/mooncake_synthetic_trace.jsonl --rate-scale 0.4 \
      --rate-profile 0:1,600:3,900:1 --engines 16 --planner all --startup-s 15 --plot fleet.svg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := tf.apply(&wf.syn, &cfg); err != nil {
				return err
			}
			tr, err := wf.load()
			if err != nil {
				return err
			}
			cfg.Disagg = dg.replayThresholds()
			if err := pf.prepare(&cfg, tr); err != nil {
				return err
			}
			if cfg.Planner != nil {
				return replayPlanners(cmd, &pf, cfg, tr, plot, asJSON)
			}
			policies := []string{cfg.Policy}
			if cfg.Policy == "all" {
				policies = replay.Policies()
			}
			var results []*replay.Result
			for _, p := range policies {
				c := cfg
				c.Policy = p
				g.log.Info("replaying", "policy", p, "engines", c.Engines, "requests", len(tr.Requests))
				res, err := replay.Run(cmd.Context(), c, tr)
				if err != nil {
					return fmt.Errorf("policy %s: %w", p, err)
				}
				results = append(results, res)
			}
			if plot != "" {
				f, err := os.Create(plot)
				if err != nil {
					return err
				}
				title := fmt.Sprintf("TTFT CDF: %s, %d requests, %d engines", tr.Name, len(tr.Requests), results[0].Engines)
				if err := replay.WriteTTFTCDF(f, title, results); err != nil {
					f.Close()
					return err
				}
				if err := f.Close(); err != nil {
					return err
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				if len(results) == 1 {
					return enc.Encode(results[0])
				}
				return enc.Encode(results)
			}
			printReplay(out, results)
			return nil
		},
	}
	wf.add(cmd)
	f := cmd.Flags()
	f.IntVar(&cfg.Engines, "engines", 8, "simulated engines (aggregated)")
	f.IntVar(&cfg.Prefill, "prefill-engines", 0, "disaggregated: prefill engines (with --decode-engines; replaces --engines)")
	f.IntVar(&cfg.Decode, "decode-engines", 0, "disaggregated: decode engines (with --prefill-engines)")
	f.Float64Var(&cfg.TransferBandwidth, "transfer-bandwidth", 25e9, "disaggregated and P2P: KV transfer bandwidth, bytes/s")
	f.DurationVar(&cfg.TransferLatency, "transfer-latency", time.Millisecond, "disaggregated and P2P: fixed cost of one KV transfer")
	dg.add(cmd)
	tf.add(cmd)
	pf.add(cmd)
	f.StringVar(&cfg.Policy, "policy", "kv", "routing policy: "+strings.Join(replay.Policies(), ", ")+", or all")
	f.DurationVar(&cfg.EventDelay, "event-delay", 5*time.Millisecond, "delay from an engine's step to its KV events reaching the router")
	f.IntVar(&cfg.Engine.NumBlocks, "num-blocks", 0, "KV cache blocks per engine (0 derives it from --gpu-memory and an 8B model)")
	f.IntVar(&cfg.Engine.BlockSize, "block-size", tokenizer.DefaultBlockSize, "tokens per KV block")
	f.Float64Var(&cfg.Engine.GPUMemoryGiB, "gpu-memory", 80, "simulated GPU memory per engine, GiB")
	f.IntVar(&cfg.Engine.MaxModelLen, "max-model-len", replay.DefaultMaxModelLen, "prompt plus output tokens of one request at most")
	f.IntVar(&cfg.Engine.MaxNumSeqs, "max-num-seqs", 256, "running requests per engine at most")
	f.IntVar(&cfg.Engine.MaxNumBatchedTokens, "max-num-batched-tokens", 8192, "tokens per engine step at most")
	f.Float64Var(&cfg.OverlapWeight, "overlap-weight", 0, "kv policy: weight of prefill blocks against decode blocks (0 = the router's default)")
	f.Float64Var(&cfg.MissWeight, "miss-weight", 0, "kv policy: weight of the request's own uncached blocks against queued prefill (0 = the router's default)")
	f.DurationVar(&cfg.PendingTTL, "pending-ttl", 0, "kv policy: how long a prefix just routed counts as cached before its events arrive (0 = the router's default, negative = off)")
	f.Float64Var(&cfg.Engine.CPUCacheGiB, "cpu-cache-gib", 0, "host (CPU) KV tier per engine, GiB (0: none); GPU evictions are offloaded there")
	f.IntVar(&cfg.Engine.CPUBlocks, "cpu-cache-blocks", 0, "host KV tier per engine in blocks (replaces --cpu-cache-gib)")
	f.Float64Var(&cfg.Engine.DiskCacheGiB, "disk-cache-gib", 0, "disk KV tier per engine, GiB (0: none); host-tier evictions go there")
	f.IntVar(&cfg.Engine.DiskBlocks, "disk-cache-blocks", 0, "disk KV tier per engine in blocks (replaces --disk-cache-gib)")
	f.StringVar(&cfg.TierCredits, "tier-credits", "", "kv policy: credit for CPU and disk hits, fixed (1, 0.75, 0.25) or derived (from the engines' timing model); empty: the router's default")
	f.BoolVar(&cfg.P2P, "p2p", false, "cluster-wide cache: the router may have an engine pull a long prefix from a busy engine's cache (over --transfer-bandwidth/--transfer-latency)")
	f.IntVar(&cfg.P2PMinTokens, "p2p-min-tokens", 0, "P2P: pull only this many tokens more than the target holds, at least (0: the router's crossover)")
	f.BoolVar(&asJSON, "json", false, "print JSON (one object, or an array for --policy all)")
	f.StringVar(&plot, "plot", "", "write the TTFT CDFs of the policies to this SVG file (with --planner: replicas and TTFT over time)")
	cmd.Flags().Lookup("seed").Usage = "random seed (synthetic workload and random tie-breaks)"
	cmd.PreRun = func(*cobra.Command, []string) { cfg.Seed = wf.syn.Seed }
	return cmd
}

func printReplay(w io.Writer, rs []*replay.Result) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tengines\trequests\thit ratio\tgpu/cpu/disk/remote\tbound\tinfinite\tTTFT p50 ms\tTTFT p90 ms\tITL p50 ms\tITL p90 ms\ttokens/s\tper engine\timbalance\tdisagg\trejected\t")
	for _, r := range rs {
		engines := fmt.Sprint(r.Engines)
		if r.Prefill > 0 {
			engines = fmt.Sprintf("%dP+%dD", r.Prefill, r.Decode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.3f\t%.2f/%.2f/%.2f/%.2f\t%.3f\t%.3f\t%.1f\t%.1f\t%.2f\t%.2f\t%.0f\t%.0f\t%.2f\t%d\t%d\t\n",
			r.Policy, engines, r.Requests, r.HitRatio, r.HitRatioGPU, r.HitRatioCPU, r.HitRatioDisk, r.HitRatioRemote, r.BoundHitRatio, r.InfiniteHitRatio, r.TTFTP50, r.TTFTP90, r.ITLP50, r.ITLP90, r.Throughput, r.PerEngine, r.MaxLoadImbalance, r.Disaggregated, r.Rejected)
	}
	tw.Flush()
}
