package replay

import (
	"container/heap"
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/workload"
)

// event kinds of the simulation, in the order simultaneous events are handled.
const (
	evStepEnd  = iota // an engine's step finished: deliver its outputs
	evKV              // an engine's KV events reach the router
	evTransfer        // a remote prefill's blocks reached the decode engine
	evReady           // a started engine finished loading (planner runs)
	evTick            // the planner decides (planner runs)
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
	phase    phase
	// launched and stopped bound the engine's GPU time (stopped is -1 while it holds one).
	launched, stopped time.Duration
}

// phase is an engine's place in its life; a fixed cluster's engines are all phaseReady.
type phase uint8

const (
	phaseReady    phase = iota // serving
	phaseStarting              // loading the model: holds a GPU, serves nothing
	phaseDraining              // out of the router's set, finishing its requests
	phaseStopped               // gone
)

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

// leg is what a simulated engine request does for a trace request.
type leg uint8

const (
	legServe   leg = iota // the whole request, or its decode after a remote prefill
	legPrefill            // a remote prefill: one token, blocks held for the pull
)

// simRequest names the engine request of one leg of trace request i; parseSimRequest reads
// it back. The two are the only places that know the encoding.
func simRequest(l leg, i int) string {
	if l == legPrefill {
		return "prefill-" + strconv.Itoa(i)
	}
	return strconv.Itoa(i)
}

func parseSimRequest(id string) (leg, int) {
	if rest, ok := strings.CutPrefix(id, "prefill-"); ok {
		i, _ := strconv.Atoi(rest)
		return legPrefill, i
	}
	i, _ := strconv.Atoi(id)
	return legServe, i
}

// cluster is the virtual-time simulation: engines, the router between them, and a
// queue of timed events. It is single-threaded and deterministic.
type cluster struct {
	cfg     Config
	ecfg    sim.Config
	tr      *workload.Trace
	p       *virtualRouter
	engines []engineState
	reqs    []reqState
	q       queue
	n       uint64

	itl              []time.Duration
	transferred      int64
	rejected, disagg int

	plan *planLoop // nil without a planner
}

func newCluster(cfg Config, tr *workload.Trace) (*cluster, error) {
	c := &cluster{cfg: cfg, ecfg: cfg.Engine.WithDefaults(), tr: tr}
	p, err := newVirtualRouter(cfg, c.ecfg)
	if err != nil {
		return nil, err
	}
	c.p = p
	c.engines = make([]engineState, cfg.engines())
	for i := range c.engines {
		e, err := sim.New(c.ecfg)
		if err != nil {
			return nil, err
		}
		c.engines[i] = engineState{sim: e, stopped: -1}
	}
	c.reqs = make([]reqState, len(tr.Requests))
	for i := range tr.Requests {
		c.push(&event{at: tr.Requests[i].Arrival, kind: evArrival, req: i})
	}
	return c, nil
}

func (c *cluster) push(e *event) { c.n++; e.n = c.n; c.q.push(e) }

// run handles events in time order until none is left.
func (c *cluster) run(ctx context.Context) error {
	for steps := 1; c.q.Len() > 0; steps++ {
		ev := heap.Pop(&c.q).(*event)
		if steps%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		switch ev.kind {
		case evArrival:
			c.arrive(ev.at, ev.req)
		case evStepEnd:
			c.stepEnd(ev.at, ev.eng, ev.step)
		case evKV:
			c.p.apply(ev.at, ev.eng, ev.kv)
		case evTransfer:
			c.transfer(ev.at, ev.eng, ev.req)
		case evReady:
			c.plan.ready(c, ev.at, ev.eng)
		case evTick:
			c.plan.tick(c, ev.at)
		}
	}
	return nil
}

// kick runs engine i's next step at time at, unless it has nothing to do.
func (c *cluster) kick(i int, at time.Duration) {
	es := &c.engines[i]
	res := es.sim.Step(at)
	if len(res.Events) > 0 {
		c.push(&event{at: at + c.cfg.EventDelay, kind: evKV, eng: i, kv: res.Events})
	}
	if res.End == at && len(res.Outputs) == 0 && res.PrefillTokens+res.DecodeTokens == 0 {
		es.stepping = false
		return
	}
	es.stepping = true
	es.busy += res.End - res.Start
	c.push(&event{at: res.End, kind: evStepEnd, eng: i, step: &res})
}

// add queues req on engine eng and starts it if idle; on refusal the request is rejected.
func (c *cluster) add(now time.Duration, eng, i int, req sim.Request) {
	if err := c.engines[eng].sim.Add(req); err != nil {
		st := &c.reqs[i]
		c.p.done(st.ticket)
		c.rejected++
		st.done = true
		c.finish(st)
		return
	}
	if !c.engines[eng].stepping {
		c.kick(eng, now)
	}
}

// arrive routes trace request i and queues it (or its remote prefill) on the chosen engine.
func (c *cluster) arrive(now time.Duration, i int) {
	r := &c.tr.Requests[i]
	tokens := r.Tokens()
	st := &c.reqs[i]
	st.arrival, st.prompt = r.Arrival, len(tokens)
	st.cacheableBlks = cacheableBlocks(len(tokens), c.ecfg.BlockSize)
	if c.plan != nil {
		c.plan.arrived(st, r.OutputLength)
	}
	eng, pre, tk, err := c.p.pick(now, tokens)
	if err != nil {
		c.rejected++
		st.done = true
		c.finish(st)
		return
	}
	st.eng, st.prefill, st.ticket = eng, pre, tk
	if pre >= 0 {
		c.disagg++
		c.add(now, pre, i, sim.Request{ID: simRequest(legPrefill, i), Prompt: tokens, MaxTokens: 1, Hold: true})
		return
	}
	c.add(now, eng, i, sim.Request{ID: simRequest(legServe, i), Prompt: tokens, MaxTokens: max(1, r.OutputLength)})
}

// stepEnd delivers a finished step's outputs: tokens to their requests, finished remote
// prefills to the transfer of their blocks; then the engine steps again.
func (c *cluster) stepEnd(now time.Duration, eng int, step *sim.StepResult) {
	for _, o := range step.Outputs {
		l, i := parseSimRequest(o.ID)
		st := &c.reqs[i]
		if l == legPrefill {
			st.cached, st.remote = o.CachedTokens, len(o.BlockIDs)
			bytes := int64(st.remote) * int64(c.ecfg.BlockBytes())
			c.transferred += bytes
			xfer := c.cfg.TransferLatency + time.Duration(float64(bytes)/c.cfg.TransferBandwidth*float64(time.Second))
			c.push(&event{at: now + xfer, kind: evTransfer, eng: eng, req: i})
			continue
		}
		if !st.got {
			st.got, st.first = true, now
			if st.prefill < 0 {
				st.cached = o.CachedTokens
			}
			c.p.firstToken(st.ticket)
			if c.plan != nil {
				c.plan.firstToken(now, st)
			}
		} else {
			c.itl = append(c.itl, now-st.last)
		}
		st.last = now
		st.output++
		if o.Finish != sim.NotFinished {
			st.done = true
			c.p.done(st.ticket)
			c.finish(st)
		}
	}
	c.kick(eng, now)
	if c.engines[eng].phase == phaseDraining {
		c.plan.drained(c, now, eng)
		return
	}
	c.p.load(now, eng, c.engines[eng].sim.Stats())
}

// transfer: request i's prefilled blocks reached its decode engine; the prefill engine frees
// them and the decode engine queues the request with them.
func (c *cluster) transfer(now time.Duration, prefillEng, i int) {
	st, r := &c.reqs[i], &c.tr.Requests[i]
	c.engines[prefillEng].sim.Release(simRequest(legPrefill, i))
	c.add(now, st.eng, i, sim.Request{ID: simRequest(legServe, i), Prompt: r.Tokens(), MaxTokens: max(1, r.OutputLength), RemoteBlocks: st.remote})
}
