// Package planner decides how many engines each pool (model x role) needs: from the demand
// and latency observed over the last interval, a forecast of the next intervals and an engine
// performance profile, within a GPU budget. It is a deterministic core without I/O,
// goroutines or clock: the caller observes, calls Decide with the time, and acts.
package planner

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Role is what the engines of a pool do.
type Role string

// Roles of a pool.
const (
	RoleAggregated Role = "aggregated"
	RolePrefill    Role = "prefill"
	RoleDecode     Role = "decode"
)

// Pool is one set of interchangeable engines: a model served in one role.
type Pool struct {
	Model string
	Role  Role
}

func (p Pool) String() string { return p.Model + "/" + string(p.Role) }

// PoolState is what was observed for one pool over the last interval.
type PoolState struct {
	Pool                Pool
	ArrivalRate         float64       // requests/s
	PromptTokens        float64       // mean prompt tokens per request
	OutputTokens        float64       // mean output tokens per request
	PrefixHitRate       float64       // 0..1, fraction of prompt tokens served from cache
	TTFTP90, ITLP90     time.Duration // observed; 0 when nothing was measured
	QueuedPrefillTokens float64       // prompt tokens waiting for prefill, summed over the pool
	RunningSeqs         int
	KVUsage             float64 // 0..1, mean over the pool's engines
	Ready, Pending      int     // engines serving / starting
	GPUsPerEngine       int     // 0 means 1
}

// current is the replica count the pool has or will have once its pending engines are up.
func (s PoolState) current() int { return s.Ready + s.Pending }

func (s PoolState) gpus() int { return max(1, s.GPUsPerEngine) }

// Decision is the replica count wanted for one pool, with the reason (a Reason* constant).
type Decision struct {
	Pool             Pool
	Current, Desired int
	Reason           string
	// Forecast is the demand sla mode sized the pool for (zero in other modes).
	Forecast Forecast
	// Need is the fractional engines sla mode computed for Forecast, after its latency
	// correction (Correction, 1 when none); load and static modes set it to Desired.
	Need, Correction float64
	// Upper is the upper band of Need that sla mode's scale-down must fit (Config.DownBand;
	// Need when it is off; zero in other modes).
	Upper float64
}

// Forecast is the demand a decision was sized for: requests/s and mean lengths over the
// forecast horizon (an engine's start-up plus one interval).
type Forecast struct {
	Rate                       float64 // requests/s
	PromptTokens, OutputTokens float64 // mean per request
	PrefixHitRate              float64
}

// Limits bound one pool's replicas. Max 0 means no limit but the GPU budget; Static is the
// count static mode holds (0 keeps the current count).
type Limits struct {
	Pool             Pool
	Min, Max, Static int
}

// LoadThresholds are load mode's triggers. Queue thresholds are prompt tokens waiting for
// prefill per ready engine; KV thresholds are the pool's mean KV-cache usage.
type LoadThresholds struct {
	QueueHigh, QueueLow float64
	KVHigh, KVLow       float64
}

// Config is one Planner. Zero fields take the defaults of WithDefaults.
type Config struct {
	Mode      string        // ModeSLA, ModeLoad or ModeStatic
	TTFT, ITL time.Duration // sla: the targets (p90 TTFT, ITL)
	GPUBudget int           // most GPUs all pools may hold; 0 means no budget
	Interval  time.Duration // time between Decide calls (30s)
	Startup   time.Duration // an engine's start-up time; the forecast looks Startup+Interval ahead
	Profile   *Profile      // sla: one engine's capacity (required in sla mode)
	// Limits per pool; a pool without an entry has Min 1 and no Max.
	Limits []Limits
	// MaxStep is the most replicas one decision adds to or removes from a pool (0: no limit).
	MaxStep int
	// Cooldown is how long after a pool's last change it may not scale down (4 intervals).
	// In sla mode it counts from the last scale-up: scale-downs do not restart it, and the
	// pool steps down one engine per decision.
	Cooldown time.Duration
	// Hysteresis: sla scales a pool down only when the most engines it needed over the
	// cooldown (the last Cooldown/Interval decisions) fit the smaller count with this
	// fraction to spare (0.2), one engine per decision.
	Hysteresis float64
	// Window is the number of intervals the forecast fits (6).
	Window int
	// Headroom (sla) sizes the pool for an upper bound of the forecast instead of the forecast:
	// the rate plus Headroom standard deviations of the window's rate, grown with the square
	// root of the intervals an engine takes to start (start-up + one interval), so the longer
	// a new engine takes, the more of the load's swing is held in advance. 0 disables it.
	Headroom float64
	// DownBand (sla) is how wide the upper band of the forecast is that a scale-down must
	// fit, in standard deviations: the engines the pool needs plus DownBand standard
	// deviations of what each interval of the window needed at its own rate and lengths
	// (both swing), grown with the square root of the intervals a new engine needs to serve
	// (start-up + one interval). Scale-ups still go to the forecast itself; a pool is taken
	// down only when the load's swing over the time it would take to bring an engine back
	// fits the smaller count. 0 takes the default, 1; negative turns it off (the peak of the
	// forecast's needs alone, as before the planner4 branch).
	DownBand float64
	// Foresight (sla) marks a planner that is told the future: each PoolState's
	// ArrivalRate, PromptTokens, OutputTokens and PrefixHitRate are the demand of the coming
	// forecast horizon, known in advance. It sizes the pool for that demand instead of a
	// forecast of it, with no band (it knows the swing); the profile, the latency correction
	// and the scale-down rule are sla mode's. Only a replay can know the future: it bounds
	// what a forecast-driven planner with this sizing can reach (kvgate replay --planner
	// oracle).
	Foresight bool
	// Backlog (sla) adds the prefill engines that clear, within the forecast horizon, the
	// queued prompt tokens beyond what the pool holds in flight at the TTFT target: the work
	// a burst left waiting while engines started.
	Backlog bool
	Load    LoadThresholds
}

// WithDefaults returns c with its zero fields set.
func (c Config) WithDefaults() Config {
	if c.Interval == 0 {
		c.Interval = 30 * time.Second
	}
	if c.Cooldown == 0 {
		c.Cooldown = 4 * c.Interval
	}
	if c.Hysteresis == 0 {
		c.Hysteresis = 0.2
	}
	if c.Window == 0 {
		c.Window = 6
	}
	if c.DownBand == 0 {
		c.DownBand = 1
	}
	if c.Load == (LoadThresholds{}) {
		c.Load = LoadThresholds{QueueHigh: 16384, QueueLow: 2048, KVHigh: 0.9, KVLow: 0.5}
	}
	return c
}

// Validate reports the configuration's errors.
func (c Config) Validate() error {
	var errs []error
	switch c.Mode {
	case ModeStatic, ModeLoad:
	case ModeSLA:
		if c.TTFT <= 0 || c.ITL <= 0 {
			errs = append(errs, errors.New("planner: sla mode needs positive TTFT and ITL targets"))
		}
		if c.Profile == nil {
			errs = append(errs, errors.New("planner: sla mode needs an engine profile"))
		} else if err := c.Profile.Validate(); err != nil {
			errs = append(errs, err)
		}
	default:
		errs = append(errs, fmt.Errorf("planner: unknown mode %q (want %s, %s or %s)", c.Mode, ModeSLA, ModeLoad, ModeStatic))
	}
	if c.Headroom < 0 {
		errs = append(errs, fmt.Errorf("planner: headroom %v must not be negative", c.Headroom))
	}
	if math.IsNaN(c.DownBand) || math.IsInf(c.DownBand, 0) {
		errs = append(errs, fmt.Errorf("planner: down band %v must be a number", c.DownBand))
	}
	if c.GPUBudget < 0 || c.MaxStep < 0 || c.Window < 0 {
		errs = append(errs, errors.New("planner: GPU budget, max step and window must not be negative"))
	}
	if c.Interval < 0 || c.Startup < 0 || c.Cooldown < 0 {
		errs = append(errs, errors.New("planner: interval, startup and cooldown must not be negative"))
	}
	if c.Hysteresis < 0 || c.Hysteresis > 1 {
		errs = append(errs, fmt.Errorf("planner: hysteresis %v must be within 0..1", c.Hysteresis))
	}
	if l := c.Load; l.QueueLow > l.QueueHigh || l.KVLow > l.KVHigh || l.KVHigh > 1 || l.QueueLow < 0 || l.KVLow < 0 {
		errs = append(errs, fmt.Errorf("planner: load thresholds %+v: low must not exceed high, KV usage within 0..1", l))
	}
	seen := map[Pool]bool{}
	for _, l := range c.Limits {
		if seen[l.Pool] {
			errs = append(errs, fmt.Errorf("planner: pool %s limited twice", l.Pool))
		}
		seen[l.Pool] = true
		if l.Min < 0 || l.Static < 0 || l.Max < 0 || (l.Max > 0 && (l.Min > l.Max || l.Static > l.Max)) {
			errs = append(errs, fmt.Errorf("planner: pool %s: limits min %d, max %d, static %d", l.Pool, l.Min, l.Max, l.Static))
		}
	}
	return errors.Join(errs...)
}

// Planner holds what decisions remember between intervals: each pool's recent demand for the
// forecast, its last change for the cooldown, its latency correction. It is not safe for
// concurrent use.
type Planner struct {
	cfg   Config
	pools map[Pool]*poolMemory
}

type poolMemory struct {
	rate, prompt, output, hit series
	raw                       series // sla: engines each interval's own demand needed, uncorrected
	needs                     series // sla: engines needed, one per decision over the cooldown
	lastChange, lastUp        time.Time
	changed, upped            bool
	correction                float64 // sla: multiplies the profile's demand, learnt from missed targets
	misses                    int     // sla: intervals in a row with a missed target
}

// New returns a Planner for cfg (after WithDefaults).
func New(cfg Config) (*Planner, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &Planner{cfg: cfg, pools: map[Pool]*poolMemory{}}, nil
}

// Config returns the planner's configuration with its defaults.
func (p *Planner) Config() Config { return p.cfg }

func (p *Planner) limits(pool Pool) Limits {
	for _, l := range p.cfg.Limits {
		if l.Pool == pool {
			return l
		}
	}
	return Limits{Pool: pool, Min: 1}
}

func (p *Planner) memory(pool Pool) *poolMemory {
	m := p.pools[pool]
	if m == nil {
		w := p.cfg.Window
		m = &poolMemory{rate: newSeries(w), raw: newSeries(w), prompt: newSeries(w), output: newSeries(w), hit: newSeries(w), correction: 1,
			needs: newSeries(max(1, int(p.cfg.Cooldown/max(1, p.cfg.Interval))))}
		p.pools[pool] = m
	}
	return m
}

// Decide returns one Decision per pool, in the order of pools. now is the caller's clock
// (virtual in a replay); calls should come every Config.Interval. The result is within the
// GPU budget and each pool's limits. Decide keeps no reference to pools.
func (p *Planner) Decide(now time.Time, pools []PoolState) []Decision {
	ds := make([]Decision, len(pools))
	needs := make([]float64, len(pools))
	for i, st := range pools {
		m := p.memory(st.Pool)
		m.rate.add(math.Max(0, st.ArrivalRate))
		if st.ArrivalRate > 0 {
			m.prompt.add(math.Max(0, st.PromptTokens))
			m.output.add(math.Max(0, st.OutputTokens))
			m.hit.add(clamp01(st.PrefixHitRate))
		}
		cur := st.current()
		var d Decision
		switch p.cfg.Mode {
		case ModeStatic:
			d = Decision{Desired: cur, Reason: ReasonStatic}
			if s := p.limits(st.Pool).Static; s > 0 {
				d.Desired = s
			}
			needs[i] = float64(d.Desired)
		case ModeLoad:
			d = p.decideLoad(st)
			needs[i] = float64(d.Desired)
		case ModeSLA:
			d, needs[i] = p.decideSLA(now, st, m)
		}
		d.Pool, d.Current, d.Need = st.Pool, cur, needs[i]
		if d.Correction == 0 {
			d.Correction = 1
		}
		d = p.bound(now, d, m)
		ds[i] = d
	}
	p.fitBudget(ds, pools, needs)
	for i := range ds {
		if ds[i].Desired != ds[i].Current {
			m := p.memory(ds[i].Pool)
			m.lastChange, m.changed = now, true
		}
		if ds[i].Desired > ds[i].Current {
			m := p.memory(ds[i].Pool)
			m.lastUp, m.upped = now, true
		}
	}
	return ds
}

// decideLoad is the reactive baseline: one engine more when the queue or the KV cache is
// over its high threshold, one fewer when both are under their low thresholds.
func (p *Planner) decideLoad(st PoolState) Decision {
	t, cur := p.cfg.Load, st.current()
	queue := st.QueuedPrefillTokens / float64(max(1, st.Ready))
	useQueue, useKV := st.Pool.Role != RoleDecode, st.Pool.Role != RolePrefill
	switch {
	case useQueue && queue > t.QueueHigh:
		return Decision{Desired: cur + 1, Reason: ReasonQueueHigh}
	case useKV && st.KVUsage > t.KVHigh:
		return Decision{Desired: cur + 1, Reason: ReasonKVHigh}
	case (!useQueue || queue < t.QueueLow) && (!useKV || st.KVUsage < t.KVLow) && st.Pending == 0:
		return Decision{Desired: cur - 1, Reason: ReasonLoadLow}
	}
	return Decision{Desired: cur, Reason: ReasonSteady}
}

// bound applies the pool's limits, the maximum step and the scale-down cooldown (counted
// from the pool's last scale-up).
func (p *Planner) bound(now time.Time, d Decision, m *poolMemory) Decision {
	since, ok := m.lastChange, m.changed // load: any change, as Dynamo's load planner
	if p.cfg.Mode == ModeSLA {
		since, ok = m.lastUp, m.upped // sla steps down one engine per decision
	}
	if d.Desired < d.Current && ok && now.Sub(since) < p.cfg.Cooldown {
		d.Desired, d.Reason = d.Current, ReasonCooldown
	}
	if s := p.cfg.MaxStep; s > 0 {
		if d.Desired > d.Current+s {
			d.Desired, d.Reason = d.Current+s, ReasonMaxStep
		} else if d.Desired < d.Current-s {
			d.Desired, d.Reason = d.Current-s, ReasonMaxStep
		}
	}
	l := p.limits(d.Pool)
	if l.Max > 0 && d.Desired > l.Max {
		d.Desired, d.Reason = l.Max, ReasonMaxReplicas
	}
	if d.Desired < l.Min {
		d.Desired, d.Reason = l.Min, ReasonMinReplicas
	}
	return d
}

// fitBudget cuts scale-ups, then pools, until every pool fits the GPU budget: one engine at a
// time from the pool whose last engine is least needed (desired over its need, largest
// first), never below a pool's minimum.
func (p *Planner) fitBudget(ds []Decision, pools []PoolState, needs []float64) {
	if p.cfg.GPUBudget <= 0 {
		return
	}
	used := 0
	for i, d := range ds {
		used += d.Desired * pools[i].gpus()
	}
	for used > p.cfg.GPUBudget {
		best, bestSlack := -1, math.Inf(-1)
		for i, d := range ds {
			if d.Desired <= p.limits(d.Pool).Min {
				continue
			}
			slack := float64(d.Desired) - needs[i]
			if d.Desired > d.Current {
				slack += 1e6 // a scale-up goes before what already runs
			}
			if slack > bestSlack {
				best, bestSlack = i, slack
			}
		}
		if best < 0 {
			return // the minimums alone exceed the budget
		}
		ds[best].Desired--
		ds[best].Reason = ReasonGPUBudget
		used -= pools[best].gpus()
	}
}

// GPUs returns the GPUs the decisions hold once carried out.
func GPUs(ds []Decision, pools []PoolState) int {
	n := 0
	for i, d := range ds {
		n += d.Desired * pools[i].gpus()
	}
	return n
}

func clamp01(x float64) float64 { return math.Min(1, math.Max(0, x)) }
