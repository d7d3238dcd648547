// Package replay runs a whole cluster in virtual time: simulated engines (the sim's state
// machine) behind the router's real code (kvindex, scoring, load accounting, KV-event flow with
// a delay), replaying a trace as fast as the CPU allows, deterministically for a seed.
// It runs every step of a request and of a KV event in virtual time, with the real router.
package replay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kvgate/kvgate/bench"
	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/workload"
)

// DefaultMaxModelLen is the context length of replayed engines: 256k tokens, so that the
// longest trace prompts (Mooncake's reach 191k tokens) are not refused.
const DefaultMaxModelLen = 262144

// Config is one replay.
type Config struct {
	Engines    int           // aggregated engines
	Policy     string        // router policy: kv, round-robin, random, least-load, approx-prefix
	Engine     sim.Config    // every engine's configuration (zero fields take the sim's defaults)
	EventDelay time.Duration // time from an engine's step to its KV events reaching the router
	Seed       uint64
	// OverlapWeight, when > 0, replaces the router's prefill weight in the kv cost.
	OverlapWeight float64
	// MissWeight, when > 0, replaces the router's weight of a request's own uncached blocks.
	MissWeight float64
	// PendingTTL replaces the router's in-flight prefix credit (0 keeps its default,
	// negative turns it off, as Dynamo's router has none).
	PendingTTL time.Duration

	// Prefill and Decode, when both > 0, replace Engines with a disaggregated cluster:
	// Prefill prefill-role and Decode decode-role engines. The router decides per request
	// whether to prefill remotely; a remote prefill's KV blocks reach the decode engine after
	// TransferLatency + blocks*block_bytes/TransferBandwidth.
	Prefill, Decode   int
	TransferBandwidth float64       // bytes per second (default 25e9: one 200 Gb/s NIC, as NIXL over RDMA)
	TransferLatency   time.Duration // fixed cost per transfer (default 1 ms)
	// Disagg, when set, replaces the router's conditional-disaggregation thresholds.
	Disagg *DisaggThresholds

	// SLATTFT and SLAITL are the targets of Result.SLAAttainment: a request meets them when
	// its TTFT is at most SLATTFT and its mean ITL at most SLAITL (0: no target).
	SLATTFT, SLAITL time.Duration
	// Planner, when set, scales the (aggregated) engines with a planner in the loop; Engines
	// is then the GPU budget.
	Planner *PlannerRun
}

// Disaggregated reports whether the replay runs prefill and decode pools.
func (c Config) Disaggregated() bool { return c.Prefill > 0 && c.Decode > 0 }

// engines is the number of engines the replay runs.
func (c Config) engines() int {
	if c.Disaggregated() {
		return c.Prefill + c.Decode
	}
	return c.Engines
}

// Result is what one replay measured.
type Result struct {
	Policy           string  `json:"policy"`
	Engines          int     `json:"engines"`
	Prefill          int     `json:"prefill_engines,omitempty"`
	Decode           int     `json:"decode_engines,omitempty"`
	Disaggregated    int     `json:"disaggregated_requests"`
	TransferredBytes int64   `json:"transferred_bytes,omitempty"`
	Requests         int     `json:"requests"`
	Rejected         int     `json:"rejected"`
	HitRatio         float64 `json:"hit_ratio"`
	BoundHitRatio    float64 `json:"bound_hit_ratio"`
	TTFTP50          float64 `json:"ttft_p50_ms"`
	TTFTP90          float64 `json:"ttft_p90_ms"`
	TTFTP99          float64 `json:"ttft_p99_ms"`
	ITLP50           float64 `json:"itl_p50_ms"`
	ITLP90           float64 `json:"itl_p90_ms"`
	Throughput       float64 `json:"throughput_tokens_per_s"`
	OutputThroughput float64 `json:"output_tokens_per_s"`
	PerEngine        float64 `json:"throughput_tokens_per_s_per_engine"`
	MaxLoadImbalance float64 `json:"max_load_imbalance"`
	Preemptions      uint64  `json:"preemptions"`
	VirtualSeconds   float64 `json:"virtual_s"`
	WallSeconds      float64 `json:"wall_s"`
	// Fleet: the fraction of requests within the SLA targets, GPU time (one GPU per engine,
	// from launch to stop, start-up and draining included), the most engines held at once and
	// the planner decisions that changed the count.
	Planner        string  `json:"planner,omitempty"`
	StartupSeconds float64 `json:"startup_s,omitempty"`
	SLAAttainment  float64 `json:"sla_attainment"`
	GPUHours       float64 `json:"gpu_hours"`
	MaxEnginesUsed int     `json:"max_engines_used"`
	ScaleEvents    int     `json:"scale_events"`
	// Timeline is the fleet at every planner decision.
	Timeline []Point `json:"timeline,omitempty"`
	// TTFTs are every request's TTFT in milliseconds, sorted (for CDF plots).
	TTFTs []float64 `json:"-"`
}

// Validate reports the first configuration error.
func (c Config) Validate() error {
	if c.Prefill < 0 || c.Decode < 0 || (c.Prefill > 0) != (c.Decode > 0) {
		return fmt.Errorf("replay: give both prefill and decode engines (got %d and %d)", c.Prefill, c.Decode)
	}
	if c.engines() < 1 {
		return fmt.Errorf("replay: engines must be >= 1, got %d", c.Engines)
	}
	if c.TransferBandwidth < 0 || c.TransferLatency < 0 {
		return errors.New("replay: transfer bandwidth and latency must be >= 0")
	}
	if c.EventDelay < 0 {
		return errors.New("replay: event delay must be >= 0")
	}
	if c.SLATTFT < 0 || c.SLAITL < 0 {
		return errors.New("replay: SLA targets must be >= 0")
	}
	if p := c.Planner; p != nil {
		if c.Disaggregated() {
			return errors.New("replay: a planner scales aggregated engines only")
		}
		if p.Startup < 0 || p.Initial < 0 || p.Initial > c.Engines {
			return fmt.Errorf("replay: planner start-up %v must be >= 0, initial engines %d within 0..%d", p.Startup, p.Initial, c.Engines)
		}
	}
	return c.Engine.WithDefaults().Validate()
}

// Run replays tr under cfg and returns its measurements. ctx cancels a long replay.
func Run(ctx context.Context, cfg Config, tr *workload.Trace) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if tr == nil || len(tr.Requests) == 0 {
		return nil, errors.New("replay: empty trace")
	}
	wall := time.Now()
	if cfg.Engine.MaxModelLen == 0 {
		cfg.Engine.MaxModelLen = DefaultMaxModelLen
	}
	if cfg.TransferBandwidth == 0 {
		cfg.TransferBandwidth = 25e9
	}
	if cfg.TransferLatency == 0 {
		cfg.TransferLatency = time.Millisecond
	}
	ccfg := cfg
	if cfg.Planner != nil && cfg.Planner.Initial > 0 {
		ccfg.Engines = cfg.Planner.Initial
	}
	c, err := newCluster(ccfg, tr)
	if err != nil {
		return nil, err
	}
	c.cfg = cfg
	if cfg.Planner != nil {
		if c.plan, err = newPlanLoop(c, *cfg.Planner); err != nil {
			return nil, err
		}
		c.plan.start(c)
	}
	if err := c.run(ctx); err != nil {
		return nil, err
	}
	res := summarize(cfg, c.ecfg, tr, c.reqs, c.engines, c.itl, c.rejected, time.Since(wall))
	res.Disaggregated, res.TransferredBytes = c.disagg, c.transferred
	c.fleet(res)
	return res, nil
}

func summarize(cfg Config, ecfg sim.Config, tr *workload.Trace, reqs []reqState, engines []engineState, itl []time.Duration, rejected int, wall time.Duration) *Result {
	res := &Result{Policy: cfg.Policy, Engines: len(engines), Requests: len(reqs), Rejected: rejected, WallSeconds: wall.Seconds()}
	if cfg.Disaggregated() {
		res.Prefill, res.Decode = cfg.Prefill, cfg.Decode
	}
	var ttft []time.Duration
	var cachedBlks, cacheable, tokens, outTokens int64
	var start, end time.Duration = -1, 0
	for _, st := range reqs {
		if !st.got {
			continue
		}
		ttft = append(ttft, st.first-st.arrival)
		cachedBlks += int64(min(st.cached/ecfg.BlockSize, st.cacheableBlks))
		cacheable += int64(st.cacheableBlks)
		tokens += int64(st.prompt + st.output)
		outTokens += int64(st.output)
		if start < 0 || st.arrival < start {
			start = st.arrival
		}
		end = max(end, st.last)
	}
	d := bench.Summarize(ttft)
	res.TTFTP50, res.TTFTP90, res.TTFTP99 = d.P50, d.P90, d.P99
	for _, x := range ttft {
		res.TTFTs = append(res.TTFTs, float64(x)/float64(time.Millisecond))
	}
	il := bench.Summarize(itl)
	res.ITLP50, res.ITLP90 = il.P50, il.P90
	if cacheable > 0 {
		res.HitRatio = round4(float64(cachedBlks) / float64(cacheable))
	}
	if span := (end - max(start, 0)).Seconds(); span > 0 {
		res.Throughput = round4(float64(tokens) / span)
		res.OutputThroughput = round4(float64(outTokens) / span)
		res.PerEngine = round4(res.Throughput / float64(len(engines)))
		res.VirtualSeconds = round4(end.Seconds())
	}
	var sum, mx time.Duration
	for _, e := range engines {
		sum += e.busy
		mx = max(mx, e.busy)
		res.Preemptions += e.sim.Stats().Preemptions
	}
	if sum > 0 {
		res.MaxLoadImbalance = round4(float64(mx) / (float64(sum) / float64(len(engines))))
	}
	res.BoundHitRatio = round4(BoundHitRatio(tr, ecfg.BlockSize, ecfg.NumBlocks*len(engines)))
	return res
}

func round4(x float64) float64 { return float64(int64(x*10000+0.5)) / 10000 }

// fleet fills the result's SLA attainment and GPU use.
func (c *cluster) fleet(res *Result) {
	met := 0
	for i := range c.reqs {
		if c.meetsSLA(&c.reqs[i]) {
			met++
		}
	}
	if len(c.reqs) > 0 {
		res.SLAAttainment = round4(float64(met) / float64(len(c.reqs)))
	}
	var end time.Duration
	for i := range c.reqs {
		end = max(end, c.reqs[i].last)
	}
	var gpu time.Duration
	for _, e := range c.engines {
		stop := e.stopped
		if stop < 0 {
			stop = end
		}
		gpu += max(0, stop-e.launched)
	}
	res.GPUHours = round4(gpu.Hours())
	res.MaxEnginesUsed = len(c.engines)
	if c.plan != nil {
		res.Engines = c.cfg.Engines
		res.MaxEnginesUsed, res.ScaleEvents, res.Timeline = c.plan.maxHeld, c.plan.scaleEvents, c.plan.timeline
		res.Planner, res.StartupSeconds = c.cfg.Planner.Planner.Mode, c.cfg.Planner.Startup.Seconds()
		if span := res.VirtualSeconds; span > 0 && gpu > 0 {
			res.PerEngine = round4(res.Throughput / (gpu.Seconds() / span))
		}
	}
}
