// Package fleet is the planner's loop: each interval it reads demand from the routers and the
// engines from the nodes (workerds), asks package planner how many engines each pool (model x
// role) needs, and starts engines on nodes with free GPUs or drains and stops them.
package fleet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	fleetv1 "github.com/kvgate/kvgate/api/fleet/v1"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/router"
)

// Node is one place engines run: a workerd over gRPC (GRPCNode), or kvgate up's in-process
// simulators. Implementations are safe for concurrent use.
type Node interface {
	// Name identifies the node in logs.
	Name() string
	// State lists its templates, engines and GPUs.
	State(ctx context.Context) (*fleetv1.NodeResponse, error)
	// Start launches count engines of the template and returns their names.
	Start(ctx context.Context, template string, count int) ([]string, error)
	// Drain drains and stops the named engines (timeout 0: the node's default) and returns
	// at once; State shows them draining until they are gone.
	Drain(ctx context.Context, engines []string, timeout time.Duration) error
}

// NodeSource returns the nodes to plan over now (from Consul, a list, or in-process).
type NodeSource func(ctx context.Context) ([]Node, error)

// DemandSource returns every pool's stats as the routers see them, summed over routers.
type DemandSource func(ctx context.Context) ([]router.PoolStats, error)

// Config is one Loop. Zero fields take the defaults noted.
type Config struct {
	// Planner configures the decision; Interval is the loop's period. Pools get their min and
	// max replicas from the nodes' templates (summed over nodes) unless Limits names them.
	Planner planner.Config
	// Advisory only recommends: decisions are logged and exported, nothing is started or
	// stopped.
	Advisory bool
	// DrainTimeout bounds how long a drained engine may finish its requests (0: the node's).
	DrainTimeout time.Duration
	// CallTimeout bounds each call to a node or router (5s).
	CallTimeout time.Duration
	Nodes       NodeSource
	Demand      DemandSource
}

// Loop runs the planner against the fleet. Step is not safe for concurrent use; Run calls
// it once per interval.
type Loop struct {
	cfg  Config
	log  *slog.Logger
	m    *metrics
	plan *planner.Planner // made at the first Step that sees templates (their limits)

	prev   map[planner.Pool]router.PoolStats
	prevAt time.Time
}

// New checks cfg; log nil discards, reg nil exports nothing.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Loop, error) {
	if cfg.Nodes == nil || cfg.Demand == nil {
		return nil, errors.New("fleet: a node source and a demand source are required")
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 5 * time.Second
	}
	cfg.Planner = cfg.Planner.WithDefaults()
	if err := cfg.Planner.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(reg, cfg.Planner.GPUBudget)
	if err != nil {
		return nil, err
	}
	return &Loop{cfg: cfg, log: log.With("component", "planner"), m: m, prev: map[planner.Pool]router.PoolStats{}}, nil
}

// Run calls Step every interval until ctx ends. A step that cannot observe the fleet is
// logged and counted; the next one tries again.
func (l *Loop) Run(ctx context.Context) error {
	t := time.NewTicker(l.cfg.Planner.Interval)
	defer t.Stop()
	for {
		if _, err := l.Step(ctx, time.Now()); err != nil && ctx.Err() == nil {
			l.log.Warn("planner step skipped", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Step is one interval: observe, decide, act. It returns the decisions (nil when the fleet
// could not be observed: a planner that cannot see demand does not scale).
func (l *Loop) Step(ctx context.Context, now time.Time) ([]planner.Decision, error) {
	l.m.steps.Inc()
	fleet, err := l.observeNodes(ctx)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, l.cfg.CallTimeout)
	demand, err := l.cfg.Demand(cctx)
	cancel()
	if err != nil {
		l.m.observeErrors.WithLabelValues("router").Inc()
		return nil, fmt.Errorf("fleet: demand: %w", err)
	}
	if len(fleet.pools) == 0 {
		return nil, nil // nothing to scale
	}
	states := l.poolStates(fleet, demand, now)
	if l.plan == nil {
		if l.plan, err = planner.New(l.withLimits(fleet)); err != nil {
			return nil, err
		}
	}
	ds := l.plan.Decide(now, states)
	for i := range ds {
		ds[i] = fleet.clamp(ds[i])
	}
	l.export(fleet, states, ds)
	for _, d := range ds {
		if d.Desired != d.Current {
			l.log.Info("planner decision", "pool", d.Pool.String(), "current", d.Current, "desired", d.Desired, "reason", d.Reason, "advisory", l.cfg.Advisory)
		}
		l.act(ctx, fleet, d)
	}
	return ds, nil
}

// withLimits is the planner config with each pool's min and max from the templates, unless
// the config limits the pool itself.
func (l *Loop) withLimits(f *fleetView) planner.Config {
	cfg := l.cfg.Planner
	cfg.Limits = slices.Clone(cfg.Limits)
	for _, p := range f.sortedPools() {
		if slices.ContainsFunc(cfg.Limits, func(x planner.Limits) bool { return x.Pool == p.pool }) {
			continue
		}
		cfg.Limits = append(cfg.Limits, planner.Limits{Pool: p.pool, Min: p.min, Max: p.max})
	}
	return cfg
}

// poolStates turns the fleet and the routers' counters into the planner's input: rates
// are the counters' growth since the previous step (zero on the first step, and after a
// router restart made a counter go down).
func (l *Loop) poolStates(f *fleetView, demand []router.PoolStats, now time.Time) []planner.PoolState {
	byPool := map[planner.Pool]router.PoolStats{}
	for _, d := range demand {
		byPool[planner.Pool{Model: d.Model, Role: planner.Role(d.Role)}] = d
	}
	dt := now.Sub(l.prevAt).Seconds()
	var out []planner.PoolState
	for _, p := range f.sortedPools() {
		cur := byPool[p.pool]
		st := planner.PoolState{
			Pool: p.pool, Ready: p.ready, Pending: p.pending, GPUsPerEngine: p.gpusPerEngine,
			QueuedPrefillTokens: float64(cur.QueuedPrefillTokens), RunningSeqs: int(cur.RunningRequests), KVUsage: cur.KVUsage,
		}
		if prev, ok := l.prev[p.pool]; ok && dt > 0 && cur.Requests >= prev.Requests && cur.PromptTokens >= prev.PromptTokens &&
			cur.OutputTokens >= prev.OutputTokens && cur.CachedTokens >= prev.CachedTokens {
			reqs := float64(cur.Requests - prev.Requests)
			st.ArrivalRate = reqs / dt
			if reqs > 0 {
				st.PromptTokens = float64(cur.PromptTokens-prev.PromptTokens) / reqs
				st.OutputTokens = float64(cur.OutputTokens-prev.OutputTokens) / reqs
			}
			if pt := cur.PromptTokens - prev.PromptTokens; pt > 0 {
				st.PrefixHitRate = min(1, float64(cur.CachedTokens-prev.CachedTokens)/float64(pt))
			}
		}
		if prev, ok := l.prev[p.pool]; ok {
			st.TTFTP90 = intervalP90(cur.TTFT, prev.TTFT)
			st.ITLP90 = intervalP90(cur.ITL, prev.ITL)
		}
		out = append(out, st)
	}
	l.prev, l.prevAt = byPool, now
	return out
}

// intervalP90 is the p90 of the observations between two reads of a router latency
// histogram; 0 when there were none or the reads do not match (a router restarted).
func intervalP90(cur, prev *router.Histogram) time.Duration {
	d, ok := cur.Sub(prev)
	if !ok || d.Count == 0 {
		return 0
	}
	return time.Duration(d.Quantile(0.9) * float64(time.Second))
}

// act starts or drains engines to move the pool from Current to Desired.
func (l *Loop) act(ctx context.Context, f *fleetView, d planner.Decision) {
	p := f.pools[d.Pool]
	if p == nil {
		return
	}
	switch delta := d.Desired - d.Current; {
	case delta > 0:
		for range delta {
			t := f.placeStart(p)
			if t == nil {
				l.log.Warn("no node has free GPUs for the pool", "pool", d.Pool.String(), "gpus_per_engine", p.gpusPerEngine)
				l.m.actions.WithLabelValues(ActionStart, OutcomeFailed).Inc()
				return
			}
			if l.cfg.Advisory {
				l.m.actions.WithLabelValues(ActionStart, OutcomeAdvisory).Inc()
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, l.cfg.CallTimeout)
			names, err := t.node.Start(cctx, t.name, 1)
			cancel()
			if err != nil {
				l.log.Warn("start refused", "node", t.node.Name(), "template", t.name, "err", err)
				l.m.actions.WithLabelValues(ActionStart, OutcomeFailed).Inc()
				continue
			}
			l.log.Info("engine started", "node", t.node.Name(), "template", t.name, "engines", names)
			l.m.actions.WithLabelValues(ActionStart, OutcomeOK).Inc()
		}
	case delta < 0:
		for _, e := range f.pickDrain(p, -delta) {
			if l.cfg.Advisory {
				l.m.actions.WithLabelValues(ActionDrain, OutcomeAdvisory).Inc()
				continue
			}
			cctx, cancel := context.WithTimeout(ctx, l.cfg.CallTimeout)
			err := e.node.Drain(cctx, []string{e.name}, l.cfg.DrainTimeout)
			cancel()
			if err != nil {
				l.log.Warn("drain refused", "node", e.node.Name(), "engine", e.name, "err", err)
				l.m.actions.WithLabelValues(ActionDrain, OutcomeFailed).Inc()
				continue
			}
			l.log.Info("engine draining", "node", e.node.Name(), "engine", e.name)
			l.m.actions.WithLabelValues(ActionDrain, OutcomeOK).Inc()
		}
	}
}

// fleetView is one observation of the nodes, by pool.
type fleetView struct {
	pools map[planner.Pool]*poolView
	free  map[Node]int // free GPUs per node, updated as starts are placed
}

type poolView struct {
	pool           planner.Pool
	gpusPerEngine  int
	min, max       int // summed over the nodes' templates; max 0 = some template is unbounded
	ready, pending int
	templates      []*templateRef
	engines        []engineRef // not draining
}

type templateRef struct {
	pool     planner.Pool
	node     Node
	name     string
	gpus     int
	replicas int
	max      int
	min      int
}

type engineRef struct {
	node    Node
	tmpl    *templateRef
	name    string
	running bool
	load    uint32
}

func (l *Loop) observeNodes(ctx context.Context) (*fleetView, error) {
	cctx, cancel := context.WithTimeout(ctx, l.cfg.CallTimeout)
	nodes, err := l.cfg.Nodes(cctx)
	cancel()
	if err != nil {
		l.m.observeErrors.WithLabelValues("nodes").Inc()
		return nil, fmt.Errorf("fleet: nodes: %w", err)
	}
	f := &fleetView{pools: map[planner.Pool]*poolView{}, free: map[Node]int{}}
	for _, n := range nodes {
		cctx, cancel := context.WithTimeout(ctx, l.cfg.CallTimeout)
		st, err := n.State(cctx)
		cancel()
		if err != nil {
			// A node that cannot be read is left out of this step: its engines are neither
			// counted nor touched.
			l.m.observeErrors.WithLabelValues("node").Inc()
			l.log.Warn("node not readable; left out of this step", "node", n.Name(), "err", err)
			continue
		}
		f.add(n, st)
	}
	return f, nil
}

func (f *fleetView) add(n Node, st *fleetv1.NodeResponse) {
	f.free[n] = int(st.GetGpusFree())
	refs := map[string]*templateRef{}
	for _, t := range st.GetTemplates() {
		pool := planner.Pool{Model: t.GetModel(), Role: planner.Role(t.GetRole())}
		p := f.pools[pool]
		if p == nil {
			p = &poolView{pool: pool, gpusPerEngine: int(t.GetGpusPerEngine())}
			f.pools[pool] = p
		} else if p.max > 0 && t.GetMaxReplicas() == 0 {
			p.max = -1 // unbounded from here on (reported as 0)
		}
		ref := &templateRef{pool: pool, node: n, name: t.GetName(), gpus: int(t.GetGpusPerEngine()), replicas: int(t.GetReplicas()),
			max: int(t.GetMaxReplicas()), min: int(t.GetMinReplicas())}
		refs[t.GetName()] = ref
		p.templates = append(p.templates, ref)
		p.min += ref.min
		if p.max >= 0 {
			if ref.max == 0 {
				p.max = -1
			} else {
				p.max += ref.max
			}
		}
	}
	for _, e := range st.GetEngines() {
		ref := refs[e.GetTemplate()]
		if ref == nil || e.GetState() == stateDraining || e.GetState() == stateStopped {
			continue
		}
		p := f.pools[ref.pool]
		running := e.GetState() == stateRunning
		if running {
			p.ready++
		} else {
			p.pending++
		}
		p.engines = append(p.engines, engineRef{node: n, tmpl: ref, name: e.GetName(), running: running, load: e.GetRunning() + e.GetWaiting()})
	}
}

func (f *fleetView) sortedPools() []*poolView {
	out := make([]*poolView, 0, len(f.pools))
	for _, p := range f.pools {
		if p.max < 0 {
			p.max = 0
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *poolView) int {
		return cmp.Or(cmp.Compare(a.pool.Model, b.pool.Model), cmp.Compare(a.pool.Role, b.pool.Role))
	})
	return out
}

// clamp keeps a decision within the templates' bounds (the planner's limits are fixed when
// it is made; templates may change).
func (f *fleetView) clamp(d planner.Decision) planner.Decision {
	p := f.pools[d.Pool]
	if p == nil {
		return d
	}
	if d.Desired < p.min {
		d.Desired, d.Reason = p.min, planner.ReasonMinReplicas
	}
	if p.max > 0 && d.Desired > p.max {
		d.Desired, d.Reason = p.max, planner.ReasonMaxReplicas
	}
	return d
}

// placeStart picks the template to start one engine of the pool from: on the node with the
// most free GPUs, among templates below their max; nil when none fits. It books the GPUs.
func (f *fleetView) placeStart(p *poolView) *templateRef {
	var best *templateRef
	for _, t := range p.templates {
		if t.max > 0 && t.replicas >= t.max || f.free[t.node] < t.gpus {
			continue
		}
		if best == nil || f.free[t.node] > f.free[best.node] ||
			f.free[t.node] == f.free[best.node] && t.replicas < best.replicas {
			best = t
		}
	}
	if best != nil {
		f.free[best.node] -= best.gpus
		best.replicas++
	}
	return best
}

// pickDrain picks n engines of the pool to drain: those not serving yet first, then the
// least busy; never a template below its min.
func (f *fleetView) pickDrain(p *poolView, n int) []engineRef {
	es := slices.Clone(p.engines)
	slices.SortStableFunc(es, func(a, b engineRef) int {
		if a.running != b.running {
			if !a.running {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.load, b.load), cmp.Compare(b.name, a.name))
	})
	var out []engineRef
	for _, e := range es {
		if len(out) == n {
			break
		}
		if e.tmpl.replicas <= e.tmpl.min {
			continue
		}
		e.tmpl.replicas--
		out = append(out, e)
	}
	return out
}

// export sets the metrics of one step.
func (l *Loop) export(f *fleetView, states []planner.PoolState, ds []planner.Decision) {
	used := 0
	for _, st := range states {
		lv := []string{st.Pool.Model, string(st.Pool.Role)}
		l.m.arrival.WithLabelValues(lv...).Set(st.ArrivalRate)
		l.m.prompt.WithLabelValues(lv...).Set(st.PromptTokens)
		l.m.output.WithLabelValues(lv...).Set(st.OutputTokens)
		l.m.hit.WithLabelValues(lv...).Set(st.PrefixHitRate)
		l.m.queued.WithLabelValues(lv...).Set(st.QueuedPrefillTokens)
		l.m.kv.WithLabelValues(lv...).Set(st.KVUsage)
		l.m.ttft.WithLabelValues(lv...).Set(st.TTFTP90.Seconds())
		l.m.itl.WithLabelValues(lv...).Set(st.ITLP90.Seconds())
		l.m.replicas.WithLabelValues(append(lv, "ready")...).Set(float64(st.Ready))
		l.m.replicas.WithLabelValues(append(lv, "pending")...).Set(float64(st.Pending))
		used += (st.Ready + st.Pending) * max(1, st.GPUsPerEngine)
	}
	for _, d := range ds {
		lv := []string{d.Pool.Model, string(d.Pool.Role)}
		l.m.desired.WithLabelValues(lv...).Set(float64(d.Desired))
		l.m.forecastRate.WithLabelValues(lv...).Set(d.Forecast.Rate)
		l.m.forecastPrompt.WithLabelValues(lv...).Set(d.Forecast.PromptTokens)
		l.m.forecastOutput.WithLabelValues(lv...).Set(d.Forecast.OutputTokens)
		l.m.needed.WithLabelValues(lv...).Set(d.Need)
		l.m.neededUpper.WithLabelValues(lv...).Set(d.Upper)
		l.m.correction.WithLabelValues(lv...).Set(d.Correction)
		l.m.decisions.WithLabelValues(append(lv, d.Reason)...).Inc()
	}
	l.m.gpusUsed.Set(float64(used))
}
