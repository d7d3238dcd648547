package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/kvgate/kvgate/xds"
)

func init() { register(newXDSCmd) }

// newXDSCmd runs the xDS control plane that configures Envoy from discovery.
func newXDSCmd(g *globals) *cobra.Command {
	var (
		f           xds.Flags
		metricsAddr string
	)
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Serve Envoy its configuration (LDS/RDS/CDS/EDS over ADS) from discovered engines",
		Long: `kvgate xds is the control plane of an Envoy data plane: Envoy connects to it over ADS
(state of the world or delta; print its bootstrap with 'kvgate bootstrap') and gets a listener
with the ext_proc filter that asks 'kvgate router' for an endpoint, the ORIGINAL_DST cluster
that honours the pick, and an EDS pool per model, updated as engines come and go in Consul
(--consul) or in an endpoints file (--endpoints, the same file 'kvgate router' reads).
It listens on loopback unless --listen says otherwise. See docs/XDS.md.`,
		Example: `  kvgate xds --router 10.0.0.5:9002 --endpoints engines.yaml --listen 0.0.0.0:18000
  kvgate xds --config xds.yaml --consul 127.0.0.1:8500 --tls-cert xds.crt --tls-key xds.key --tls-ca ca.crt`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg := newRegistry()
			cfg, err := f.Config(g.log, reg)
			if err != nil {
				return err
			}
			if f.DryRun {
				return xds.PrintOnce(cmd.Context(), cfg, cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			srv, err := xds.New(cfg)
			if err != nil {
				return err
			}
			grp, ctx := errgroup.WithContext(cmd.Context())
			grp.Go(func() error { return srv.Run(ctx) })
			if metricsAddr != "" {
				grp.Go(func() error { return serveMetrics(ctx, metricsAddr, reg, g.log) })
			}
			if err := grp.Wait(); err != nil && !errors.Is(err, context.Canceled) {
				return err
			}
			return nil
		},
	}
	f.Register(cmd.Flags())
	addMetricsFlag(cmd.Flags(), &metricsAddr, "xds server")
	return cmd
}
