package replay

import (
	"cmp"
	"slices"
	"time"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/workload"
)

// PlannerRun puts a planner in the loop of a replay of aggregated engines. Config.Engines is
// then the GPU budget: the most engines that may hold a GPU at once (starting, serving or
// draining).
type PlannerRun struct {
	// Planner is the planner's configuration; its GPUBudget is Config.Engines and its Startup
	// defaults to Startup.
	Planner planner.Config
	// Startup is how long a started engine loads before it serves.
	Startup time.Duration
	// Initial is the number of engines serving at time 0 (0 means Config.Engines).
	Initial int
}

// replayPool is the one pool of a planner replay.
var replayPool = planner.Pool{Model: replayModel, Role: planner.RoleAggregated}

// Point is the cluster at one planner interval, for plots.
type Point struct {
	At         float64 `json:"t_s"`
	Rate       float64 `json:"rate"` // requests/s over the interval
	Ready      int     `json:"ready"`
	Starting   int     `json:"starting"`
	Draining   int     `json:"draining"`
	Current    int     `json:"current"` // serving + starting when the planner decided
	Desired    int     `json:"desired"`
	TTFTP90    float64 `json:"ttft_p90_ms"`
	Attainment float64 `json:"attainment"` // of the requests that finished in the interval
	Reason     string  `json:"reason"`
	// sla: the rate the planner sized for, the fractional engines it needed for it and its
	// latency correction.
	ForecastRate float64 `json:"forecast_rate,omitempty"`
	Need         float64 `json:"need,omitempty"`
	Correction   float64 `json:"correction,omitempty"`
	// sla: the upper band of the need that a scale-down must fit (planner.Config.DownBand).
	Upper  float64 `json:"upper,omitempty"`
	Prompt float64 `json:"prompt_tokens"` // mean over the interval
}

// planLoop is a planner replay's state: the planner, what was observed since its last
// decision, and the fleet's history.
type planLoop struct {
	run       PlannerRun
	budget    int
	p         *planner.Planner
	sla       func(*reqState) bool
	remaining int // requests neither finished nor refused

	// since the last tick
	arrivals             int
	promptSum, outputSum float64
	ttfts                []time.Duration
	cached, prompts      float64
	itlFrom              int // index into cluster.itl
	met, finished        int

	maxHeld, scaleEvents int
	timeline             []Point
	future               []workload.Request // the oracle's: the trace by arrival
}

// ModeOracle is the sla planner told the future (planner.Config.Foresight): at each decision
// it sees the demand of the coming start-up + one interval, from the trace. Replay only: the
// bound of what a forecast-driven planner with the same sizing can reach.
const ModeOracle = "oracle"

// plannerConfig is the planner configuration a run uses: ModeOracle is sla with foresight.
func (run PlannerRun) plannerConfig() planner.Config {
	pc := run.Planner
	if pc.Mode == ModeOracle {
		pc.Mode, pc.Foresight = planner.ModeSLA, true
	}
	return pc
}

func newPlanLoop(c *cluster, run PlannerRun) (*planLoop, error) {
	pc := run.plannerConfig()
	pc.GPUBudget = c.cfg.Engines
	if pc.Startup == 0 {
		pc.Startup = run.Startup
	}
	p, err := planner.New(pc)
	if err != nil {
		return nil, err
	}
	l := &planLoop{run: run, budget: c.cfg.Engines, p: p, remaining: len(c.tr.Requests)}
	l.sla = c.meetsSLA
	return l, nil
}

// start brings up the initial engines, serving at time 0, and schedules the first decision.
func (l *planLoop) start(c *cluster) {
	l.maxHeld = len(c.engines)
	c.push(&event{at: l.p.Config().Interval, kind: evTick})
}

func (l *planLoop) arrived(st *reqState, output int) {
	l.arrivals++
	l.promptSum += float64(st.prompt)
	l.outputSum += float64(max(1, output))
}

func (l *planLoop) firstToken(now time.Duration, st *reqState) {
	l.ttfts = append(l.ttfts, now-st.arrival)
	l.cached += float64(st.cached)
	l.prompts += float64(st.prompt)
}

// finished counts a request that ended (served or refused) for the interval's attainment.
func (l *planLoop) finish(st *reqState) {
	l.remaining--
	l.finished++
	if l.sla(st) {
		l.met++
	}
}

// counts returns the engines serving, starting and draining.
func (c *cluster) counts() (ready, starting, draining int) {
	for i := range c.engines {
		switch c.engines[i].phase {
		case phaseReady:
			ready++
		case phaseStarting:
			starting++
		case phaseDraining:
			draining++
		}
	}
	return
}

// serving lists the ready engines.
func (c *cluster) serving() []int {
	var s []int
	for i := range c.engines {
		if c.engines[i].phase == phaseReady {
			s = append(s, i)
		}
	}
	return s
}

// observe is the pool's state over the interval that ends at now.
func (l *planLoop) observe(c *cluster, now time.Duration) planner.PoolState {
	iv := l.p.Config().Interval.Seconds()
	ready, starting, _ := c.counts()
	st := planner.PoolState{Pool: replayPool, ArrivalRate: float64(l.arrivals) / iv, Ready: ready, Pending: starting, GPUsPerEngine: 1}
	if l.arrivals > 0 {
		st.PromptTokens, st.OutputTokens = l.promptSum/float64(l.arrivals), l.outputSum/float64(l.arrivals)
	}
	if l.prompts > 0 {
		st.PrefixHitRate = l.cached / l.prompts
	}
	st.TTFTP90 = p90(l.ttfts)
	st.ITLP90 = p90(c.itl[l.itlFrom:])
	for i := range c.reqs {
		r := &c.reqs[i]
		if r.prompt > 0 && !r.got && !r.done {
			st.QueuedPrefillTokens += float64(r.prompt)
		}
	}
	var kv float64
	for _, i := range c.serving() {
		s := c.engines[i].sim.Stats()
		kv += s.KVUsage
		st.RunningSeqs += s.Running
	}
	if ready > 0 {
		st.KVUsage = kv / float64(ready)
	}
	return st
}

// tick runs one planner decision and carries it out.
func (l *planLoop) tick(c *cluster, now time.Duration) {
	st := l.observe(c, now)
	rate, prompt := st.ArrivalRate, st.PromptTokens
	if l.p.Config().Foresight {
		l.foresee(c, now, &st)
	}
	d := l.p.Decide(epoch.Add(now), []planner.PoolState{st})[0]
	pt := Point{At: now.Seconds(), Rate: rate, Current: d.Current, Desired: d.Desired, TTFTP90: ms(st.TTFTP90), Reason: d.Reason,
		ForecastRate: d.Forecast.Rate, Need: d.Need, Correction: d.Correction, Upper: d.Upper, Prompt: prompt}
	if l.finished > 0 {
		pt.Attainment = float64(l.met) / float64(l.finished)
	}
	if d.Desired != d.Current {
		l.scaleEvents++
	}
	for n := d.Current; n < d.Desired; n++ {
		_, _, draining := c.counts()
		if st.Ready+st.Pending+draining >= l.budget {
			break // a draining engine still holds its GPU
		}
		l.launch(c, now)
		st.Pending++
	}
	if d.Desired < d.Current {
		l.shrink(c, now, d.Current-d.Desired)
	}
	pt.Ready, pt.Starting, pt.Draining = c.counts()
	l.timeline = append(l.timeline, pt)
	l.arrivals, l.promptSum, l.outputSum, l.cached, l.prompts = 0, 0, 0, 0, 0
	l.ttfts, l.itlFrom, l.met, l.finished = l.ttfts[:0], len(c.itl), 0, 0
	if l.remaining > 0 {
		c.push(&event{at: now + l.p.Config().Interval, kind: evTick})
	}
}

// foresee replaces the observed demand in st with the future's (the oracle): the trace's
// arrivals over a forecast window (Config.Window intervals), for each window that starts
// within the horizon an engine takes to be back (now to now + start-up, interval by
// interval); the one that needs the most engines at the profile gives the rate and mean
// lengths. The level to come, not the noise of each interval, which no forecast can know.
// The prefix hit rate stays the last interval's: the cache's future is not in the trace.
func (l *planLoop) foresee(c *cluster, now time.Duration, st *planner.PoolState) {
	if l.future == nil {
		l.future = slices.Clone(c.tr.Requests)
		slices.SortStableFunc(l.future, func(a, b workload.Request) int { return cmp.Compare(a.Arrival, b.Arrival) })
	}
	cfg := l.p.Config()
	at := func(t time.Duration) int {
		i, _ := slices.BinarySearchFunc(l.future, t, func(r workload.Request, t time.Duration) int { return cmp.Compare(r.Arrival, t) })
		return i
	}
	span := time.Duration(cfg.Window) * cfg.Interval
	best, bestNeed := planner.Forecast{}, -1.0
	for from := now; from <= now+cfg.Startup; from += cfg.Interval {
		f := planner.Forecast{PrefixHitRate: st.PrefixHitRate}
		rs := l.future[at(from):at(from+span)]
		for _, r := range rs {
			f.PromptTokens += float64(r.InputLength)
			f.OutputTokens += float64(max(1, r.OutputLength))
		}
		if n := float64(len(rs)); n > 0 {
			f.Rate, f.PromptTokens, f.OutputTokens = n/span.Seconds(), f.PromptTokens/n, f.OutputTokens/n
		}
		if pre, dec := cfg.Engines(replayPool.Role, f); pre+dec > bestNeed {
			best, bestNeed = f, pre+dec
		}
	}
	st.ArrivalRate, st.PromptTokens, st.OutputTokens = best.Rate, best.PromptTokens, best.OutputTokens
}

// launch starts an engine that serves after the start-up time.
func (l *planLoop) launch(c *cluster, now time.Duration) {
	e, err := newSimEngine(c)
	if err != nil {
		return // the configuration was validated; a sim that cannot start is not launched
	}
	i := c.p.addEngine()
	c.engines = append(c.engines, engineState{sim: e, phase: phaseStarting, launched: now, stopped: -1})
	c.push(&event{at: now + l.run.Startup, kind: evReady, eng: i})
	l.held(c)
}

func (l *planLoop) held(c *cluster) {
	r, s, d := c.counts()
	l.maxHeld = max(l.maxHeld, r+s+d)
}

// ready: engine i finished loading and joins the router's set (unless cancelled meanwhile).
func (l *planLoop) ready(c *cluster, now time.Duration, i int) {
	if c.engines[i].phase != phaseStarting {
		return
	}
	c.engines[i].phase = phaseReady
	c.p.setServing(now, c.serving())
}

// shrink removes n engines: starting ones first (newest first, nothing to drain), then the
// serving ones with the least work, which drain.
func (l *planLoop) shrink(c *cluster, now time.Duration, n int) {
	for i := len(c.engines) - 1; i >= 0 && n > 0; i-- {
		if c.engines[i].phase == phaseStarting {
			c.engines[i].phase, c.engines[i].stopped = phaseStopped, now
			n--
		}
	}
	serving := c.serving()
	slices.SortStableFunc(serving, func(a, b int) int { return c.work(a) - c.work(b) })
	var drain []int
	for _, i := range serving {
		if n == 0 || len(serving)-len(drain) <= 1 {
			break
		}
		drain = append(drain, i)
		n--
	}
	for _, i := range drain {
		c.engines[i].phase = phaseDraining
	}
	c.p.setServing(now, c.serving())
	for _, i := range drain {
		l.drained(c, now, i)
	}
}

// work is engine i's requests, running or waiting.
func (c *cluster) work(i int) int {
	s := c.engines[i].sim.Stats()
	return s.Running + s.Waiting
}

// drained stops a draining engine once it has no request left.
func (l *planLoop) drained(c *cluster, now time.Duration, i int) {
	if c.engines[i].phase != phaseDraining || c.engines[i].stepping || c.work(i) > 0 {
		return
	}
	c.engines[i].phase, c.engines[i].stopped = phaseStopped, now
}

func p90(xs []time.Duration) time.Duration {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)*9)/10]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func newSimEngine(c *cluster) (*sim.Engine, error) { return sim.New(c.ecfg) }

// meetsSLA reports whether request st met the targets: TTFT within SLATTFT and mean ITL
// within SLAITL. A request that was refused or never produced a token did not.
func (c *cluster) meetsSLA(st *reqState) bool {
	if !st.got {
		return false
	}
	if c.cfg.SLATTFT > 0 && st.first-st.arrival > c.cfg.SLATTFT {
		return false
	}
	if c.cfg.SLAITL > 0 && st.output > 1 && (st.last-st.first)/time.Duration(st.output-1) > c.cfg.SLAITL {
		return false
	}
	return true
}

// finish notes that request st ended (served or refused).
func (c *cluster) finish(st *reqState) {
	if c.plan != nil {
		c.plan.finish(st)
	}
}
