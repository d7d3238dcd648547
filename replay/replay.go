// Package replay runs a whole cluster in virtual time: simulated engines (the sim's state
// machine) behind the router's real code (kvindex, scoring, load accounting, KV-event flow with
// a delay), replaying a trace as fast as the CPU allows, deterministically for a seed.
package replay

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/kvgate/kvgate/bench"
	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/workload"
)

// DefaultMaxModelLen is the context length of replayed engines: 128k tokens, as Llama 3.1 8B
// serves, so that long trace prompts (Mooncake's reach 80k tokens) are not refused.
const DefaultMaxModelLen = 131072

// Config is one replay.
type Config struct {
	Engines    int           // aggregated engines
	Policy     string        // router policy: kv, round-robin, random, least-load, approx-prefix
	Engine     sim.Config    // every engine's configuration (zero fields take the sim's defaults)
	EventDelay time.Duration // time from an engine's step to its KV events reaching the router
	Seed       uint64
	// OverlapWeight, when > 0, replaces the router's prefill weight in the kv cost.
	OverlapWeight float64
}

// Result is what one replay measured.
type Result struct {
	Policy           string  `json:"policy"`
	Engines          int     `json:"engines"`
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
	MaxLoadImbalance float64 `json:"max_load_imbalance"`
	Preemptions      uint64  `json:"preemptions"`
	VirtualSeconds   float64 `json:"virtual_s"`
	WallSeconds      float64 `json:"wall_s"`
	// TTFTs are every request's TTFT in milliseconds, sorted (for CDF plots).
	TTFTs []float64 `json:"-"`
}

// Validate reports the first configuration error.
func (c Config) Validate() error {
	if c.Engines < 1 {
		return fmt.Errorf("replay: engines must be >= 1, got %d", c.Engines)
	}
	if c.EventDelay < 0 {
		return errors.New("replay: event delay must be >= 0")
	}
	return c.Engine.WithDefaults().Validate()
}

// event kinds of the simulation, in the order simultaneous events are handled.
const (
	evStepEnd = iota // an engine's step finished: deliver its outputs
	evKV             // an engine's KV events reach the router
	evArrival        // a request arrives
)

type event struct {
	at   time.Duration
	kind int
	n    uint64 // insertion order, for determinism among equal times
	eng  int
	req  int
	step *sim.StepResult
	kv   []sim.KVEvent
}

type queue []*event

func (q queue) Len() int { return len(q) }
func (q queue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	if q[i].kind != q[j].kind {
		return q[i].kind < q[j].kind
	}
	return q[i].n < q[j].n
}
func (q queue) Swap(i, j int)  { q[i], q[j] = q[j], q[i] }
func (q *queue) Push(x any)    { *q = append(*q, x.(*event)) }
func (q *queue) Pop() any      { old := *q; x := old[len(old)-1]; *q = old[:len(old)-1]; return x }
func (q *queue) push(e *event) { heap.Push(q, e) }

type engineState struct {
	sim      *sim.Engine
	stepping bool
	busy     time.Duration
}

type reqState struct {
	eng           int
	ticket        ticket
	arrival       time.Duration
	first, last   time.Duration
	got           bool
	prompt        int
	cached        int
	output        int
	done          bool
	cacheableBlks int
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
	ecfg := cfg.Engine.WithDefaults()
	p, err := newPicker(cfg, ecfg)
	if err != nil {
		return nil, err
	}
	engines := make([]engineState, cfg.Engines)
	for i := range engines {
		e, err := sim.New(ecfg)
		if err != nil {
			return nil, err
		}
		engines[i].sim = e
	}
	reqs := make([]reqState, len(tr.Requests))
	var q queue
	var n uint64
	push := func(e *event) { n++; e.n = n; q.push(e) }
	for i := range tr.Requests {
		push(&event{at: tr.Requests[i].Arrival, kind: evArrival, req: i})
	}

	var itl []time.Duration
	var now time.Duration
	rejected := 0
	kick := func(i int, at time.Duration) {
		es := &engines[i]
		res := es.sim.Step(at)
		if len(res.Events) > 0 {
			push(&event{at: at + cfg.EventDelay, kind: evKV, eng: i, kv: res.Events})
		}
		if res.End == at && len(res.Outputs) == 0 && res.PrefillTokens+res.DecodeTokens == 0 {
			es.stepping = false
			return
		}
		es.stepping = true
		es.busy += res.End - res.Start
		r := res
		push(&event{at: res.End, kind: evStepEnd, eng: i, step: &r})
	}
	steps := 0
	for q.Len() > 0 {
		ev := heap.Pop(&q).(*event)
		now = ev.at
		if steps++; steps%4096 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		switch ev.kind {
		case evArrival:
			r := &tr.Requests[ev.req]
			tokens := r.Tokens()
			st := &reqs[ev.req]
			st.arrival, st.prompt = r.Arrival, len(tokens)
			st.cacheableBlks = cacheableBlocks(len(tokens), ecfg.BlockSize)
			eng, tk, err := p.pick(now, tokens)
			if err != nil {
				rejected++
				st.done = true
				continue
			}
			st.eng, st.ticket = eng, tk
			err = engines[eng].sim.Add(sim.Request{ID: strconv.Itoa(ev.req), Prompt: tokens, MaxTokens: max(1, r.OutputLength)})
			if err != nil {
				p.done(tk)
				rejected++
				st.done = true
				continue
			}
			if !engines[eng].stepping {
				kick(eng, now)
			}
		case evStepEnd:
			for _, o := range ev.step.Outputs {
				id, _ := strconv.Atoi(o.ID)
				st := &reqs[id]
				if !st.got {
					st.got, st.first, st.cached = true, now, o.CachedTokens
					p.firstToken(st.ticket)
				} else {
					itl = append(itl, now-st.last)
				}
				st.last = now
				st.output++
				if o.Finish != sim.NotFinished {
					st.done = true
					p.done(st.ticket)
				}
			}
			kick(ev.eng, now)
			p.load(now, ev.eng, engines[ev.eng].sim.Stats())
		case evKV:
			p.apply(now, ev.eng, ev.kv)
		}
	}
	return summarize(cfg, ecfg, tr, reqs, engines, itl, rejected, time.Since(wall)), nil
}

func summarize(cfg Config, ecfg sim.Config, tr *workload.Trace, reqs []reqState, engines []engineState, itl []time.Duration, rejected int, wall time.Duration) *Result {
	res := &Result{Policy: cfg.Policy, Engines: cfg.Engines, Requests: len(reqs), Rejected: rejected, WallSeconds: wall.Seconds()}
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
	res.BoundHitRatio = round4(BoundHitRatio(tr, ecfg.BlockSize, ecfg.NumBlocks*cfg.Engines))
	return res
}

func round4(x float64) float64 { return float64(int64(x*10000+0.5)) / 10000 }
