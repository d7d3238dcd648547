package main

import (
	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/bootstrap"
)

func init() { register(newBootstrapCmd) }

// newBootstrapCmd prints the Envoy bootstrap that connects Envoy to 'kvgate xds'.
func newBootstrapCmd(g *globals) *cobra.Command {
	var (
		cfg bootstrap.Config
		t   bootstrap.TLS
	)
	cmd := &cobra.Command{
		Use:   "bootstrap",
		Short: "Print an Envoy bootstrap (YAML) that takes its configuration from 'kvgate xds'",
		Example: `  kvgate bootstrap --xds 10.0.0.2:18000 --node-id envoy-0 > envoy.yaml
  envoy -c envoy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if t != (bootstrap.TLS{}) {
				cfg.TLS = &t
			}
			out, err := bootstrap.YAML(cfg)
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.XDS, "xds", "", "address of 'kvgate xds', host:port (required)")
	f.StringVar(&cfg.NodeID, "node-id", "kvgate-envoy", "Envoy node id")
	f.StringVar(&cfg.Cluster, "cluster", "kvgate", "Envoy node cluster")
	f.StringVar(&cfg.Admin, "admin", "127.0.0.1:9901", "Envoy admin interface address")
	f.BoolVar(&cfg.Delta, "delta", false, "use incremental (delta) xDS")
	f.StringVar(&t.CA, "tls-ca", "", "connect to xDS over TLS, verifying the server with this CA (path on Envoy's host)")
	f.StringVar(&t.Cert, "tls-cert", "", "Envoy's client certificate for mTLS (path on Envoy's host)")
	f.StringVar(&t.Key, "tls-key", "", "key of --tls-cert (path on Envoy's host)")
	f.StringVar(&t.SNI, "tls-server-name", "", "name Envoy sends (SNI) and verifies the xDS server's certificate for")
	f.StringVar(&t.SNI, "tls-sni", "", "old name of --tls-server-name")
	_ = f.MarkDeprecated("tls-sni", "use --tls-server-name")
	_ = cmd.MarkFlagRequired("xds")
	return cmd
}
