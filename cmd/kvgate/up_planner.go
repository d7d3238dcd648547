package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/fleet"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/router"
)

// upPlannerFlags are kvgate up's --planner flags: simulated engines started and stopped
// in-process by the planner loop within a virtual GPU budget (docs/FLEET.md).
type upPlannerFlags struct {
	mode      string
	budget    int
	min       int
	interval  time.Duration
	ttft, itl time.Duration

	node *fleet.LocalNode
	rt   *router.Router
}

func (p *upPlannerFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&p.mode, "planner", "", "run the planner: sla, load or static; simulated engines start and stop with the load within --gpu-budget")
	f.IntVar(&p.budget, "gpu-budget", 0, "with --planner: virtual GPUs, one per simulated engine (0: --engines)")
	f.IntVar(&p.min, "planner-min", 1, "with --planner: engines always running")
	f.DurationVar(&p.interval, "planner-interval", 5*time.Second, "with --planner: time between decisions")
	f.DurationVar(&p.ttft, "ttft", 500*time.Millisecond, "with --planner sla: p90 time-to-first-token target")
	f.DurationVar(&p.itl, "itl", 50*time.Millisecond, "with --planner sla: inter-token latency target")
}

func (p *upPlannerFlags) on() bool { return p.mode != "" }

// startNode starts the in-process node with its minimum engines and returns their endpoints.
func (p *upPlannerFlags) startNode(ctx context.Context, log *slog.Logger, o *upOptions) ([]router.Endpoint, error) {
	if p.budget == 0 {
		p.budget = max(o.engines, 1)
	}
	if p.min < 0 || p.min > p.budget {
		return nil, fmt.Errorf("--planner-min %d: want 0..--gpu-budget (%d)", p.min, p.budget)
	}
	node, err := fleet.NewLocalNode(fleet.LocalNodeConfig{
		Name: "local", GPUs: p.budget, Template: "sim", Model: o.simModel, Min: p.min, Log: log,
		Start: func(name string) (fleet.LocalEngine, error) {
			sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			grp := &errgroup.Group{}
			s, ep, err := startSim(sctx, grp, log, o, name)
			if err != nil {
				cancel()
				return nil, err
			}
			ep.Role = router.RoleAggregated
			return &upSim{s: s, ep: ep, stop: func() { cancel(); _ = grp.Wait() }}, nil
		},
		Publish: func(eps []router.Endpoint) {
			if p.rt != nil {
				p.rt.SetEndpoints(eps)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	p.node = node
	return node.Endpoints(), nil
}

// run runs the planner loop over the node until ctx ends, then stops the node's engines.
func (p *upPlannerFlags) run(ctx context.Context, grp *errgroup.Group, log *slog.Logger, reg prometheus.Registerer, rt *router.Router, o *upOptions) error {
	if p.node == nil {
		return errors.New("--planner starts its own simulated engines: it cannot be combined with --endpoint or --prefill-engines/--decode-engines")
	}
	p.rt = rt
	pc := planner.Config{Mode: p.mode, TTFT: p.ttft, ITL: p.itl, GPUBudget: p.budget, Interval: p.interval, Startup: time.Second}
	if p.mode == planner.ModeSLA {
		timing := sim.DefaultTiming()
		timing.Speed = o.simSpeed
		pc.Profile = planner.ProfileFromSim(sim.Config{Timing: timing, NumBlocks: o.simBlocks})
	}
	loop, err := fleet.New(fleet.Config{
		Planner: pc,
		Nodes:   func(context.Context) ([]fleet.Node, error) { return []fleet.Node{p.node}, nil },
		Demand:  func(context.Context) ([]router.PoolStats, error) { return rt.Pools(), nil },
	}, log, reg)
	if err != nil {
		p.node.Close()
		return err
	}
	grp.Go(func() error {
		defer p.node.Close()
		return loop.Run(ctx)
	})
	return nil
}

func (p *upPlannerFlags) banner(w io.Writer) {
	fmt.Fprintf(w, "  planner     %s, virtual GPU budget %d (one per engine), at least %d engine(s), every %s;\n"+
		"              engines start and stop with the load (kvgate_planner_* and kvgate_router_pool_* at /metrics)\n",
		p.mode, p.budget, p.min, p.interval)
}

// upSim is one of kvgate up's simulated engines as the planner's local node runs it.
type upSim struct {
	s    *sim.Server
	ep   router.Endpoint
	stop func()
}

func (u *upSim) Endpoint() router.Endpoint { return u.ep }
func (u *upSim) Busy() int                 { st := u.s.Stats(); return st.Running + st.Waiting }
func (u *upSim) Stop()                     { u.stop() }
