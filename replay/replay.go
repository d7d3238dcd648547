// Package replay runs a whole cluster in virtual time: simulated engines (the sim's state
// machine) behind the router's real code (kvindex, scoring, load accounting, KV-event flow with
// a delay), replaying a trace as fast as the CPU allows, deterministically for a seed.
// It runs every step of a request and of a KV event in virtual time, with the real router.
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
	return c.Engine.WithDefaults().Validate()
}

// event kinds of the simulation, in the order simultaneous events are handled.
const (
	evStepEnd  = iota // an engine's step finished: deliver its outputs
	evKV              // an engine's KV events reach the router
	evTransfer        // a remote prefill's blocks reached the decode engine
	evArrival         // a request arrives
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
	prefill       int // prefill engine when disaggregated, else -1
	remote        int // blocks pulled from the prefill engine
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
	if cfg.TransferBandwidth == 0 {
		cfg.TransferBandwidth = 25e9
	}
	if cfg.TransferLatency == 0 {
		cfg.TransferLatency = time.Millisecond
	}
	engines := make([]engineState, cfg.engines())
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
	var transferred int64
	rejected, disagg := 0, 0
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
			eng, pre, tk, err := p.pick(now, tokens)
			if err != nil {
				rejected++
				st.done = true
				continue
			}
			st.eng, st.prefill, st.ticket = eng, pre, tk
			target, req := eng, sim.Request{ID: strconv.Itoa(ev.req), Prompt: tokens, MaxTokens: max(1, r.OutputLength)}
			if pre >= 0 {
				// Remote prefill: one token on the prefill engine, blocks held for the pull.
				disagg++
				target, req = pre, sim.Request{ID: "p" + req.ID, Prompt: tokens, MaxTokens: 1, Hold: true}
			}
			if err := engines[target].sim.Add(req); err != nil {
				p.done(tk)
				rejected++
				st.done = true
				continue
			}
			if !engines[target].stepping {
				kick(target, now)
			}
		case evStepEnd:
			for _, o := range ev.step.Outputs {
				if o.ID[0] == 'p' { // a remote prefill finished: move its blocks
					id, _ := strconv.Atoi(o.ID[1:])
					st := &reqs[id]
					st.cached, st.remote = o.CachedTokens, len(o.BlockIDs)
					bytes := int64(st.remote) * int64(ecfg.BlockBytes())
					transferred += bytes
					xfer := cfg.TransferLatency + time.Duration(float64(bytes)/cfg.TransferBandwidth*float64(time.Second))
					push(&event{at: now + xfer, kind: evTransfer, eng: ev.eng, req: id})
					continue
				}
				id, _ := strconv.Atoi(o.ID)
				st := &reqs[id]
				if !st.got {
					st.got, st.first = true, now
					if st.prefill < 0 {
						st.cached = o.CachedTokens
					}
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
		case evTransfer:
			st, r := &reqs[ev.req], &tr.Requests[ev.req]
			engines[ev.eng].sim.Release("p" + strconv.Itoa(ev.req))
			err := engines[st.eng].sim.Add(sim.Request{ID: strconv.Itoa(ev.req), Prompt: r.Tokens(), MaxTokens: max(1, r.OutputLength), RemoteBlocks: st.remote})
			if err != nil {
				p.done(st.ticket)
				rejected++
				st.done = true
				continue
			}
			if !engines[st.eng].stepping {
				kick(st.eng, now)
			}
		}
	}
	res := summarize(cfg, ecfg, tr, reqs, engines, itl, rejected, time.Since(wall))
	res.Disaggregated, res.TransferredBytes = disagg, transferred
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
