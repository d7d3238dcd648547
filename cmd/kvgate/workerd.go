package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/workerd"
)

func init() { register(newWorkerdCmd) }

// newWorkerdCmd runs the node daemon: engines, KV-event relay, Consul registration.
func newWorkerdCmd(g *globals) *cobra.Command {
	var (
		f           workerd.Flags
		metricsAddr string
	)
	cmd := &cobra.Command{
		Use:   "workerd",
		Short: "Run the node daemon: start and supervise engines, relay their KV events, register them in Consul",
		Long: `kvgate workerd starts the engines of this node (vLLM, SGLang or the built-in simulator) on
the GPUs it finds, restarts them when they exit, relays their KV events and load to routers
over gRPC, and registers each one in Consul. Engines come from --config (YAML) and/or
--engine flags; see docs/WORKERD.md. The config's templates are engines a planner starts and
drains through the fleet API on the same gRPC listener (kvgate planner, docs/FLEET.md).

  kvgate workerd --engine kind=sim,model=Qwen/Qwen3-0.6B --consul 127.0.0.1:8500
  kvgate workerd --config /etc/kvgate/workerd.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, warnings, err := f.Config()
			if err != nil {
				return err
			}
			for _, w := range warnings {
				g.log.Warn("workerd config uses a deprecated key", "path", f.ConfigFile, "warning", w)
			}
			ctx := cmd.Context()
			reg := newRegistry()
			mon, err := gpu.NewMonitor(ctx, gpu.NewNVML(), 10*time.Second, reg, g.log)
			if err != nil {
				return err
			}
			go func() { _ = mon.Run(ctx) }()
			w, err := workerd.New(ctx, cfg, workerd.Options{Log: g.log, Registerer: reg, GPUs: mon})
			if err != nil {
				return err
			}
			if metricsAddr != "" {
				ms, err := listenMetrics(metricsAddr, reg, g.log)
				if err != nil {
					return fmt.Errorf("--metrics-addr: %w", err)
				}
				go func() { _ = ms.Serve(ctx) }()
			}
			return w.Run(ctx)
		},
	}
	f.Register(cmd.Flags())
	addMetricsFlag(cmd.Flags(), &metricsAddr, "GPU and engine gauges")
	cmd.AddCommand(newWorkerdGPUsCmd())
	return cmd
}

// newWorkerdGPUsCmd prints the NVML inventory.
func newWorkerdGPUsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "gpus",
		Short: "Print this node's GPUs as NVML reports them (a table, or --json)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			inv := gpu.NewNVML().Inventory(cmd.Context())
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(inv)
			}
			return printInventory(out, inv)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printInventory(out io.Writer, inv gpu.Inventory) error {
	if len(inv.Devices) == 0 {
		_, err := fmt.Fprintf(out, "no GPUs: %s\n", inv.Reason)
		return err
	}
	fmt.Fprintf(out, "driver %s, CUDA %s\n", inv.Driver, inv.CUDA)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tNAME\tUUID\tMEMORY\tUSED\tUTIL\tTEMP\tMIG")
	for _, d := range inv.Devices {
		mig := "off"
		if d.MIG {
			mig = "on"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.1f GiB\t%.1f GiB\t%d%%\t%d C\t%s\n", d.Index, d.Name, d.UUID,
			float64(d.MemoryTotal)/(1<<30), float64(d.MemoryUsed)/(1<<30), d.UtilizationGPU, d.TemperatureC, mig)
		if len(d.Errors) > 0 {
			fmt.Fprintf(tw, "\t  errors: %s\n", strings.Join(d.Errors, "; "))
		}
	}
	return tw.Flush()
}
