package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/workerd"
)

func init() { register(newWorkerdCmd) }

// newWorkerdCmd runs the node daemon: engines, KV-event relay, Consul registration.
func newWorkerdCmd(g *globals) *cobra.Command {
	var (
		configPath  string
		listen      string
		advertise   string
		node        string
		host        string
		consulAddr  string
		noConsul    bool
		engines     []string
		metricsAddr string
		relayTLS    tlsconfig.Files
		sidecarTLS  tlsconfig.Files
		prefills    []string
	)
	cmd := &cobra.Command{
		Use:   "workerd",
		Short: "Run the node daemon: start and supervise engines, relay their KV events, register them in Consul",
		Long: `kvgate workerd starts the engines of this node (vLLM, SGLang or the built-in simulator) on
the GPUs it finds, restarts them when they exit, relays their KV events and load to routers
over gRPC, and registers each one in Consul. Engines come from --config (YAML) and/or
--engine flags; see docs/WORKERD.md.

  kvgate workerd --engine kind=sim,model=Qwen/Qwen3-0.6B --consul 127.0.0.1:8500
  kvgate workerd --config /etc/kvgate/workerd.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var cfg workerd.Config
			if configPath != "" {
				var (
					warnings []string
					err      error
				)
				if cfg, warnings, err = workerd.LoadConfig(configPath); err != nil {
					return err
				}
				for _, w := range warnings {
					g.log.Warn("workerd config uses a deprecated key", "path", configPath, "warning", w)
				}
			}
			set := func(name string, dst *string, v string) {
				if cmd.Flags().Changed(name) {
					*dst = v
				}
			}
			set("listen", &cfg.Listen, listen)
			set("advertise", &cfg.Advertise, advertise)
			set("node", &cfg.Node, node)
			set("host", &cfg.Host, host)
			if cfg.Listen == "" {
				cfg.Listen = listen
			}
			if consulAddr != "" {
				if cfg.Consul == nil {
					cfg.Consul = &workerd.ConsulConfig{}
				}
				cfg.Consul.Address = consulAddr
			}
			if noConsul {
				cfg.Consul = nil
			}
			if relayTLS.Enabled() {
				cfg.TLS = relayTLS
			}
			if sidecarTLS.Enabled() {
				cfg.SidecarTLS = sidecarTLS
			}
			cfg.PrefillEndpoints = append(cfg.PrefillEndpoints, prefills...)
			for _, s := range engines {
				e, err := workerd.ParseEngineFlag(s)
				if err != nil {
					return err
				}
				cfg.Engines = append(cfg.Engines, e)
			}
			if len(cfg.Engines) == 0 {
				return errors.New("no engines: give --config or --engine")
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
	f := cmd.Flags()
	f.StringVar(&configPath, "config", "", "YAML config file (docs/WORKERD.md); flags override its fields")
	f.StringVar(&listen, "listen", "127.0.0.1:7070", "relay gRPC listen address")
	f.StringVar(&advertise, "advertise", "", "relay address written to Consul (default: the bound --listen address)")
	f.StringVar(&node, "node", "", "node name prefixed to engine instance names (default: hostname)")
	f.StringVar(&host, "host", "", "address engines listen on and are reached at (default 127.0.0.1)")
	f.StringVar(&consulAddr, "consul", "", "Consul agent HTTP address; enables registration")
	f.BoolVar(&noConsul, "no-consul", false, "do not register in Consul even if the config says so")
	f.StringArrayVar(&engines, "engine", nil, "engine as key=value pairs: kind=sim|vllm|sglang,model=M[,name=,role=,gpus=,port=,kv_events_port=,block_size=,binary=] (repeatable)")
	relayTLS.AddServerFlags(f, "", "the relay (gRPC)")
	sidecarTLS.AddServerFlags(f, "sidecar-", "the P/D sidecars (HTTPS)")
	f.StringSliceVar(&prefills, "prefill", nil, "prefill engine (host:port) on another node the sidecars may use, besides this node's and Consul's (repeatable)")
	f.StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus /metrics (GPU and engine gauges) on this address")
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
