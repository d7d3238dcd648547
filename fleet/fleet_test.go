package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	fleetv1 "github.com/kvgate/kvgate/api/fleet/v1"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/router"
)

// fakeNode is a workerd as the loop sees it: one template, engines that start "starting".
type fakeNode struct {
	name string
	mu   sync.Mutex
	st   *fleetv1.NodeResponse
	next int
	log  []string // "start t", "drain e"
}

func newFakeNode(name string, gpus int, tmpl *fleetv1.Template, running ...string) *fakeNode {
	n := &fakeNode{name: name, st: &fleetv1.NodeResponse{Node: name, GpusTotal: int32(gpus), Templates: []*fleetv1.Template{tmpl}}}
	for _, e := range running {
		n.st.Engines = append(n.st.Engines, &fleetv1.Engine{Name: e, Template: tmpl.Name, State: stateRunning})
		n.next++
	}
	n.recount()
	return n
}

func (n *fakeNode) recount() {
	used, reps := 0, 0
	for _, e := range n.st.Engines {
		used += int(n.st.Templates[0].GpusPerEngine)
		if e.State != stateDraining {
			reps++
		}
	}
	n.st.GpusFree = n.st.GpusTotal - int32(used)
	n.st.Templates[0].Replicas = int32(reps)
}

func (n *fakeNode) recountAny() {
	if len(n.st.Templates) > 1 {
		n.recountAll()
		return
	}
	n.recount()
}

func (n *fakeNode) Name() string { return n.name }

func (n *fakeNode) State(context.Context) (*fleetv1.NodeResponse, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return cloneResp(n.st), nil
}

func cloneResp(r *fleetv1.NodeResponse) *fleetv1.NodeResponse {
	out := &fleetv1.NodeResponse{Node: r.Node, GpusTotal: r.GpusTotal, GpusFree: r.GpusFree}
	for _, t := range r.Templates {
		out.Templates = append(out.Templates, proto.Clone(t).(*fleetv1.Template))
	}
	for _, e := range r.Engines {
		c := &fleetv1.Engine{Name: e.Name, Template: e.Template, State: e.State, Running: e.Running}
		out.Engines = append(out.Engines, c)
	}
	return out
}

func (n *fakeNode) Start(_ context.Context, template string, count int) ([]string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	var names []string
	for range count {
		name := fmt.Sprintf("%s-%s-%d", n.name, template, n.next)
		n.next++
		n.st.Engines = append(n.st.Engines, &fleetv1.Engine{Name: name, Template: template, State: "starting"})
		names = append(names, name)
	}
	n.log = append(n.log, "start "+template)
	n.recountAny()
	return names, nil
}

func (n *fakeNode) Drain(_ context.Context, engines []string, _ time.Duration) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, name := range engines {
		i := slices.IndexFunc(n.st.Engines, func(e *fleetv1.Engine) bool { return e.Name == name })
		if i < 0 {
			return errors.New("no such engine")
		}
		n.st.Engines[i].State = stateDraining
		n.log = append(n.log, "drain "+name)
	}
	n.recountAny()
	return nil
}

// ready marks every starting engine running, as workerd does once they pass their health check.
func (n *fakeNode) ready() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, e := range n.st.Engines {
		if e.State == "starting" {
			e.State = stateRunning
		}
	}
}

func (n *fakeNode) actions() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.log)
}

type fakeDemand struct {
	mu    sync.Mutex
	pools []router.PoolStats
	err   error
}

func (d *fakeDemand) set(p router.PoolStats, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pools, d.err = []router.PoolStats{p}, err
}

func (d *fakeDemand) source(context.Context) ([]router.PoolStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.pools), d.err
}

func tmpl(name string, min, max int) *fleetv1.Template {
	return &fleetv1.Template{Name: name, Kind: "sim", Model: "m", Role: "aggregated", GpusPerEngine: 1, MinReplicas: int32(min), MaxReplicas: int32(max)}
}

// The loop in load mode against two fake nodes: a queue makes it start engines on the node
// with the most free GPUs (then the other), the GPU budget stops it, a quiet pool after the
// cooldown is drained from its least busy engine, never below a template's minimum, and a
// router that cannot be read stops everything.
func TestLoopScalesWithinBudget(t *testing.T) {
	a := newFakeNode("a", 2, tmpl("agg", 1, 0), "a-agg-0")
	b := newFakeNode("b", 1, tmpl("agg", 0, 0))
	demand := &fakeDemand{}
	reg := prometheus.NewRegistry()
	l, err := New(Config{
		Planner: planner.Config{Mode: planner.ModeLoad, GPUBudget: 3, Interval: time.Second, Cooldown: 5 * time.Second,
			Load: planner.LoadThresholds{QueueHigh: 100, QueueLow: 10, KVHigh: 0.9, KVLow: 0.5}},
		Nodes:  func(context.Context) ([]Node, error) { return []Node{a, b}, nil },
		Demand: demand.source,
	}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t0 := time.Unix(1000, 0)
	pool := router.PoolStats{Pool: router.Pool{Model: "m", Role: router.RoleAggregated}}
	step := func(at time.Duration) []planner.Decision {
		t.Helper()
		ds, err := l.Step(ctx, t0.Add(at))
		if err != nil {
			t.Fatal(err)
		}
		return ds
	}

	busy := pool
	busy.QueuedPrefillTokens, busy.Requests = 500, 10
	demand.set(busy, nil)
	step(0) // 1 -> 2: node b has as many free GPUs as a and no engine of the template
	if got := b.actions(); !slices.Equal(got, []string{"start agg"}) || len(a.actions()) != 0 {
		t.Fatalf("first start: a %v, b %v", a.actions(), got)
	}
	busy.Requests = 30
	demand.set(busy, nil)
	step(time.Second) // 2 -> 3 on a, the only node with a free GPU
	if got := a.actions(); !slices.Equal(got, []string{"start agg"}) {
		t.Fatalf("second start: a %v", got)
	}
	if v := metricstest.Value(reg, MetricArrivalRate, "model", "m"); v != 20 {
		t.Errorf("arrival rate %v, want 20/s", v)
	}
	ds := step(2 * time.Second) // 3 -> 4 wanted, the budget says 3
	if ds[0].Desired != 3 || ds[0].Reason != planner.ReasonGPUBudget || len(a.actions())+len(b.actions()) != 2 {
		t.Fatalf("at the budget: %+v; a %v, b %v", ds, a.actions(), b.actions())
	}
	if v := metricstest.Value(reg, MetricDecisions, "reason", planner.ReasonGPUBudget); v != 1 {
		t.Errorf("gpu-budget decisions %v", v)
	}
	if v := metricstest.Value(reg, MetricGPUsUsed); v != 3 {
		t.Errorf("gpus used %v", v)
	}

	// Quiet: engines ready, nothing queued. The cooldown holds, then one engine goes, the
	// least busy one; a's min_replicas 1 keeps its last engine.
	a.ready()
	b.ready()
	a.mu.Lock()
	a.st.Engines[1].Running = 0
	a.st.Engines[0].Running = 5
	a.mu.Unlock()
	b.mu.Lock()
	b.st.Engines[0].Running = 3
	b.mu.Unlock()
	quiet := pool
	quiet.KVUsage, quiet.KVReporting, quiet.Requests = 0.1, 3, 30
	demand.set(quiet, nil)
	if ds := step(3 * time.Second); ds[0].Desired != 3 || ds[0].Reason != planner.ReasonCooldown {
		t.Fatalf("within the cooldown: %+v", ds)
	}
	step(8 * time.Second)
	if got := a.actions(); !slices.Equal(got, []string{"start agg", "drain a-agg-1"}) {
		t.Fatalf("drain: a %v, b %v", got, b.actions())
	}

	// A router that cannot be read: no decision, no action, counted.
	demand.set(quiet, errors.New("connection refused"))
	if _, err := l.Step(ctx, t0.Add(20*time.Second)); err == nil {
		t.Fatal("a step without demand succeeded")
	}
	if len(a.actions())+len(b.actions()) != 3 {
		t.Fatalf("acted without demand: a %v, b %v", a.actions(), b.actions())
	}
	if v := metricstest.Value(reg, MetricStepErrors, "source", "router"); v != 1 {
		t.Errorf("observe errors %v", v)
	}
}

// Advisory mode decides and exports but starts nothing.
func TestLoopAdvisory(t *testing.T) {
	a := newFakeNode("a", 4, tmpl("agg", 1, 0), "a-agg-0")
	demand := &fakeDemand{}
	demand.set(router.PoolStats{Pool: router.Pool{Model: "m", Role: router.RoleAggregated}, QueuedPrefillTokens: 1e6}, nil)
	reg := prometheus.NewRegistry()
	l, err := New(Config{
		Planner:  planner.Config{Mode: planner.ModeLoad, Interval: time.Second},
		Advisory: true,
		Nodes:    func(context.Context) ([]Node, error) { return []Node{a}, nil },
		Demand:   demand.source,
	}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := l.Step(context.Background(), time.Unix(0, 0))
	if err != nil || ds[0].Desired != 2 {
		t.Fatalf("decisions %+v, %v", ds, err)
	}
	if len(a.actions()) != 0 {
		t.Fatalf("advisory acted: %v", a.actions())
	}
	if v := metricstest.Value(reg, MetricActions, "action", ActionStart, "outcome", OutcomeAdvisory); v != 1 {
		t.Errorf("advisory starts %v", v)
	}
	if v := metricstest.Value(reg, MetricDesired, "model", "m"); v != 2 {
		t.Errorf("desired %v", v)
	}
}

// finishDrains removes the drained engines, as workerd does once they have stopped.
func (n *fakeNode) finishDrains() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.st.Engines = slices.DeleteFunc(n.st.Engines, func(e *fleetv1.Engine) bool { return e.State == stateDraining })
	n.recountAll()
}

// recountAll is recount for a node with several templates (one GPU per engine).
func (n *fakeNode) recountAll() {
	n.st.GpusFree = n.st.GpusTotal - int32(len(n.st.Engines))
	for _, t := range n.st.Templates {
		t.Replicas = 0
		for _, e := range n.st.Engines {
			if e.Template == t.Name && e.State != stateDraining {
				t.Replicas++
			}
		}
	}
}

// When the work shifts from prompts to outputs on a full node, the prefill engine is drained
// and, once its GPU is free, a decode engine takes it.
func TestLoopShiftsRoles(t *testing.T) {
	pre := &fleetv1.Template{Name: "p", Kind: "sim", Model: "m", Role: "prefill", GpusPerEngine: 1}
	dec := &fleetv1.Template{Name: "d", Kind: "sim", Model: "m", Role: "decode", GpusPerEngine: 1}
	n := &fakeNode{name: "a", st: &fleetv1.NodeResponse{Node: "a", GpusTotal: 2, Templates: []*fleetv1.Template{pre, dec},
		Engines: []*fleetv1.Engine{{Name: "a-p-0", Template: "p", State: stateRunning}, {Name: "a-d-0", Template: "d", State: stateRunning}}}}
	n.recountAll()
	demand := func(context.Context) ([]router.PoolStats, error) {
		return []router.PoolStats{
			{Pool: router.Pool{Model: "m", Role: router.RolePrefill}, KVUsage: 0.1, KVReporting: 1},
			{Pool: router.Pool{Model: "m", Role: router.RoleDecode}, KVUsage: 0.95, KVReporting: 1},
		}, nil
	}
	l, err := New(Config{
		Planner: planner.Config{Mode: planner.ModeLoad, Interval: time.Second, GPUBudget: 2,
			Load: planner.LoadThresholds{QueueHigh: 100, QueueLow: 10, KVHigh: 0.9, KVLow: 0.5}},
		Nodes:  func(context.Context) ([]Node, error) { return []Node{n}, nil },
		Demand: demand,
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(0, 0)
	if _, err := l.Step(context.Background(), t0); err != nil {
		t.Fatal(err)
	}
	if got := n.actions(); !slices.Equal(got, []string{"drain a-p-0"}) {
		t.Fatalf("first interval: %v, want the prefill engine drained (no GPU free for decode yet)", got)
	}
	n.finishDrains()
	if _, err := l.Step(context.Background(), t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := n.actions(); !slices.Equal(got, []string{"drain a-p-0", "start d"}) {
		t.Fatalf("second interval: %v, want a decode engine started", got)
	}
}
