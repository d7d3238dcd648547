// Package profiler measures one engine's planner profile: it sweeps the engine with package
// bench at rising concurrency, per prompt length, and records prefill throughput against p90
// TTFT and decode throughput against mean ITL (`kvgate planner profile`).
package profiler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/kvgate/kvgate/bench"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/workload"
)

// Config is one sweep.
type Config struct {
	URL   string // the engine's OpenAI API base URL
	Model string
	API   string // bench's API: "completions" (default) or "chat"
	// Lengths are the prompt lengths (and decode contexts) measured (512, 2048, 8192).
	Lengths []int
	// Concurrency are the load levels, rising (1, 2, 4, 8, 16, 32); a prefill sweep stops
	// early once a level adds less than 5% throughput.
	Concurrency []int
	// Requests per level: at least this many, and four per concurrent request (16).
	Requests int
	// DecodeTokens is the output of a decode-sweep request (128).
	DecodeTokens  int
	GPUsPerEngine int
	Name          string
	Timeout       time.Duration // per request (bench's default when 0)
	Client        *http.Client
	Header        http.Header
	Log           io.Writer // one line per level when not nil
}

func (c Config) withDefaults() Config {
	if c.API == "" {
		c.API = "completions"
	}
	if len(c.Lengths) == 0 {
		c.Lengths = []int{512, 2048, 8192}
	}
	if len(c.Concurrency) == 0 {
		c.Concurrency = []int{1, 2, 4, 8, 16, 32}
	}
	if c.Requests == 0 {
		c.Requests = 16
	}
	if c.DecodeTokens == 0 {
		c.DecodeTokens = 128
	}
	if c.GPUsPerEngine == 0 {
		c.GPUsPerEngine = 1
	}
	return c
}

func (c Config) validate() error {
	if c.URL == "" {
		return errors.New("profiler: an engine URL is needed")
	}
	for _, l := range c.Lengths {
		if l < 1 {
			return fmt.Errorf("profiler: prompt length %d must be >= 1", l)
		}
	}
	prev := 0
	for _, n := range c.Concurrency {
		if n <= prev {
			return fmt.Errorf("profiler: concurrency levels %v must rise from >= 1", c.Concurrency)
		}
		prev = n
	}
	if c.Requests < 1 || c.DecodeTokens < 1 || c.GPUsPerEngine < 1 {
		return errors.New("profiler: requests, decode tokens and GPUs per engine must be >= 1")
	}
	return nil
}

// Sweep measures the engine and returns its profile. Every request of a level must succeed:
// a level with errors fails the sweep, as a profile from a failing engine would mislead the
// planner.
func Sweep(ctx context.Context, cfg Config) (*planner.Profile, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &planner.Profile{Name: cfg.Name, GPUsPerEngine: cfg.GPUsPerEngine}
	seed := uint64(time.Now().UnixNano()) // fresh prompts: no cache hits from an earlier sweep
	for _, l := range cfg.Lengths {
		pc := planner.PrefillCurve{PromptTokens: l}
		dc := planner.DecodeCurve{ContextTokens: l}
		best := 0.0
		for _, n := range cfg.Concurrency {
			seed++
			r, err := cfg.level(ctx, n, l, 1, seed)
			if err != nil {
				return nil, fmt.Errorf("profiler: prefill, prompt %d, concurrency %d: %w", l, n, err)
			}
			tps := float64(r.PromptTokens-r.CachedTokens) / r.Duration
			pc.Points = append(pc.Points, planner.PrefillPoint{TTFTMs: r.TTFT.P90, TokensPerS: tps})
			cfg.logf("prefill prompt=%d concurrency=%d ttft_p90_ms=%.1f tokens_per_s=%.0f\n", l, n, r.TTFT.P90, tps)
			if tps < best*1.05 {
				break
			}
			best = tps
		}
		for _, n := range cfg.Concurrency {
			seed++
			r, err := cfg.level(ctx, n, l, cfg.DecodeTokens, seed)
			if err != nil {
				return nil, fmt.Errorf("profiler: decode, context %d, concurrency %d: %w", l, n, err)
			}
			tps := float64(r.OutputTokens) / r.Duration
			dc.Points = append(dc.Points, planner.DecodePoint{ITLMs: r.ITL.Mean, TokensPerS: tps})
			cfg.logf("decode context=%d concurrency=%d itl_mean_ms=%.2f tokens_per_s=%.0f\n", l, n, r.ITL.Mean, tps)
		}
		p.Prefill = append(p.Prefill, pc)
		p.Decode = append(p.Decode, dc)
	}
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("profiler: the measured profile is unusable: %w", err)
	}
	p.Sort()
	return p, nil
}

// level runs one closed-loop load level: n requests in flight, each with its own prompt.
func (c Config) level(ctx context.Context, n, prompt, output int, seed uint64) (*bench.Result, error) {
	tr, err := workload.Uniform(max(c.Requests, 4*n), prompt, output, seed)
	if err != nil {
		return nil, err
	}
	r, err := bench.Run(ctx, bench.Config{
		URL: c.URL, Model: c.Model, API: c.API, Trace: tr, Concurrency: n, IgnoreEOS: true,
		Timeout: c.Timeout, Client: c.Client, Header: c.Header,
	})
	if err != nil {
		return nil, err
	}
	if r.Errors > 0 {
		return nil, fmt.Errorf("%d of %d requests failed: %v", r.Errors, r.Requests, r.ErrorsByKind)
	}
	if r.Duration <= 0 || r.TTFT.N == 0 {
		return nil, errors.New("no request completed")
	}
	if output > 1 && r.ITL.N == 0 {
		return nil, errors.New("no inter-token latency measured (does the engine stream?)")
	}
	return r, nil
}

func (c Config) logf(format string, a ...any) {
	if c.Log != nil {
		fmt.Fprintf(c.Log, format, a...)
	}
}
