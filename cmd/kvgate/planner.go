package main

import (
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/fleet"
	"github.com/kvgate/kvgate/planner"
)

func init() { register(newPlannerCmd) }

// plannerSubcommands are the subcommands of `kvgate planner` (`profile`), each registered
// by its own file's init.
var plannerSubcommands []func(*globals) *cobra.Command

func registerPlannerSub(f func(*globals) *cobra.Command) {
	plannerSubcommands = append(plannerSubcommands, f)
}

// newPlannerCmd runs the planner loop against the fleet.
func newPlannerCmd(g *globals) *cobra.Command {
	var (
		s           fleet.Settings
		metricsAddr string
	)
	cmd := &cobra.Command{
		Use:   "planner",
		Short: "Scale the fleet: start and drain engines on the workerds to meet TTFT and ITL targets within a GPU budget",
		Long: `kvgate planner finds the workerds and the routers (Consul, or --workerd and --router) and
reads demand from the routers' metrics listeners (/v1/pools). Every interval it decides how many engines each
pool (model x role) of the workerds' templates needs (package planner: sla, load or static
mode) and starts engines on nodes with free GPUs, or drains and stops them. With --advisory it
only logs and exports its decisions. See docs/FLEET.md.

  kvgate planner --consul 127.0.0.1:8500 --ttft 500ms --itl 50ms --gpu-budget 16 --profile qwen3-8b.yaml
  kvgate planner --workerd 10.0.0.7:7070 --router http://127.0.0.1:9090 --mode load --advisory`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg := newRegistry()
			loop, closeNodes, err := s.Build(g.log, reg)
			if err != nil {
				return err
			}
			defer closeNodes()
			ctx := cmd.Context()
			if metricsAddr != "" {
				ms, err := listenMetrics(metricsAddr, reg, g.log)
				if err != nil {
					return err
				}
				go func() { _ = ms.Serve(ctx) }()
			}
			return loop.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Consul, "consul", "", "Consul agent HTTP address: find the workerds registered there")
	f.StringVar(&s.ConsulTag, "consul-tag", "", "only workerds registered with this tag")
	f.StringArrayVar(&s.Workerds, "workerd", nil, "workerd gRPC address (host:port), besides Consul's (repeatable)")
	f.StringArrayVar(&s.Routers, "router", nil, "router metrics base URL, e.g. http://127.0.0.1:9090: demand is read from its /v1/pools (repeatable), besides the routers registered in Consul")
	f.StringVar(&s.RouterTag, "consul-router-tag", "", "only routers registered in Consul with this tag")
	f.StringVar(&s.Mode, "mode", planner.ModeSLA, "sla (profile against --ttft/--itl), load (queue and KV-usage thresholds) or static")
	f.DurationVar(&s.TTFT, "ttft", 500*time.Millisecond, "sla: p90 time-to-first-token target")
	f.DurationVar(&s.ITL, "itl", 50*time.Millisecond, "sla: inter-token latency target")
	f.IntVar(&s.GPUBudget, "gpu-budget", 0, "most GPUs all planned engines may hold (0: no budget)")
	f.DurationVar(&s.Interval, "interval", 30*time.Second, "time between decisions")
	f.DurationVar(&s.Startup, "startup", 60*time.Second, "an engine's start-up time: how far ahead the forecast looks")
	f.Float64Var(&s.DownBand, "down-band", 0, "sla: scale down only when the forecast's upper band fits, this many standard deviations of the intervals' needs (0: the default, 1; negative: off)")
	f.StringVar(&s.Profile, "profile", "", "engine profile file (from kvgate planner profile), required in sla mode")
	f.BoolVar(&s.Advisory, "advisory", false, "only recommend: log and export decisions, start and stop nothing")
	f.DurationVar(&s.DrainTimeout, "drain-timeout", 0, "how long a drained engine may finish its requests (0: the workerd's drain_timeout)")
	s.TLS.AddClientFlags(f, "", "the workerds' gRPC (fleet API)")
	addMetricsFlag(f, &metricsAddr, "kvgate_planner_*")
	for _, sub := range plannerSubcommands {
		cmd.AddCommand(sub(g))
	}
	return cmd
}

// consulAPI is a Consul client for the agent at addr.
func consulAPI(addr string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address = addr
	return api.NewClient(cfg)
}
