package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/sidecar"
	"github.com/kvgate/kvgate/tlsconfig"
)

func init() { register(newSidecarCmd) }

// newSidecarCmd runs workerd's P/D sidecar alone, in front of a decode engine that workerd
// does not run (a vLLM started by hand, a Kubernetes pod, an e2e test).
func newSidecarCmd(g *globals) *cobra.Command {
	var (
		cfg      sidecar.Config
		metrics  string
		prefills []string
		decodes  []string
		consul   consulFlags
		tlsFiles tlsconfig.Files
		decTLS   tlsconfig.Files
	)
	cmd := &cobra.Command{
		Use:   "sidecar",
		Short: "Serve the P/D sidecar in front of a decode engine (remote prefill, then local decode)",
		Long: `sidecar is the reverse proxy workerd puts in front of every decode engine. A completion
request carrying x-prefiller-host-port: ip:port is first sent to that prefill engine with
kv_transfer_params.do_remote_decode and max_tokens 1; the kv_transfer_params it returns go
with the original request to the decode engine, which pulls the prompt's KV blocks and
streams the answer. If the prefill fails, the decode engine prefills itself. Other requests
pass through. Only prefill engines the router could have named are used: those given with
--prefill and, with --consul, the healthy prefill engines registered there; a request naming
another one is refused (403). When the decode engine fails or stalls after the first token
of a disaggregated stream, the sidecar continues it on the next fallback decode endpoint the
router named in x-gateway-destination-endpoint (one given with --decode or, with --consul,
registered as a healthy decode engine), stitched into one stream (--migration-limit 0 turns
it off). See docs/DISAGG.md.`,
		Example: `  kvgate sidecar --listen 0.0.0.0:8200 --engine 127.0.0.1:8100 --prefill 10.0.0.5:8100 --metrics-addr :9200
  kvgate sidecar --engine 127.0.0.1:8100 --consul 127.0.0.1:8500 --tls-cert s.pem --tls-key s.key --tls-ca ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg := newRegistry()
			var err error
			if cfg.TLS, err = tlsFiles.Server(); err != nil {
				return err
			}
			cfg.Prefill = sidecar.NewPrefillSet(prefills...)
			cfg.Decode = sidecar.NewPrefillSet(decodes...)
			if cfg.DecodeTLS, err = decTLS.Client(); err != nil {
				return fmt.Errorf("--decode-tls-*: %w", err)
			}
			if cfg.MigrationLimit == 0 {
				cfg.MigrationLimit = -1 // the flag's 0 means off; the config's 0 means the default
			}
			if cfg.MigrationStall == 0 {
				cfg.MigrationStall = -1 // likewise: only failures migrate
			}
			disc, err := consul.source(g.log)
			if err != nil {
				return err
			}
			if len(prefills) == 0 && disc == nil {
				g.log.Warn("no --prefill or --consul: every request naming a prefill engine is refused")
			}
			s, err := sidecar.New(cfg, g.log, reg)
			if err != nil {
				return err
			}
			grp, ctx := errgroup.WithContext(cmd.Context())
			grp.Go(func() error { return s.Run(ctx) })
			if disc != nil {
				grp.Go(func() error {
					for eps := range disc.Watch(ctx) {
						cfg.Prefill.Set(discovery.Addresses(eps, discovery.RolePrefill))
						cfg.Decode.Set(discovery.Addresses(eps, discovery.RoleDecode))
					}
					return nil
				})
			}
			if metrics != "" {
				grp.Go(func() error { return serveMetrics(ctx, metrics, reg, g.log) })
			}
			return grp.Wait()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "listen", "127.0.0.1:8200", "listen address (routers send the decode endpoint's traffic here)")
	f.StringVar(&cfg.Engine, "engine", "", "the local decode engine's OpenAI address, host:port (required)")
	f.StringVar(&cfg.Name, "name", "", "engine label on the sidecar's metrics (default: --engine)")
	f.DurationVar(&cfg.PrefillTimeout, "prefill-timeout", 30*time.Second, "longest wait for a remote prefill before prefilling locally")
	f.Int64Var(&cfg.MaxBodyBytes, "max-body-bytes", openai.DefaultMaxBodyBytes, "largest request body read")
	f.StringVar(&metrics, "metrics-addr", "", "serve the sidecar's own Prometheus /metrics here (its /metrics is the engine's)")
	f.StringSliceVar(&prefills, "prefill", nil, "prefill engine (host:port) requests may name in x-prefiller-host-port (repeatable, comma-separated)")
	f.StringSliceVar(&decodes, "decode", nil, "decode endpoint (host:port, as the router names it) a failed decode stream may continue on (repeatable, comma-separated)")
	f.IntVar(&cfg.MigrationLimit, "migration-limit", sidecar.DefaultMigrationLimit, "most times one disaggregated stream's decode half moves to a fallback decode endpoint (0: never, the stream is cut)")
	f.DurationVar(&cfg.MigrationStall, "migration-stall", sidecar.DefaultMigrationStall, "no event for this long after the first token counts as a failed decode engine (0: only failures migrate)")
	f.IntVar(&cfg.MigrationMaxTokens, "migration-max-tokens", sidecar.DefaultMigrationMaxTokens, "most generated tokens a stream may have and still be migrated")
	decTLS.AddClientFlags(f, "decode-", "the fallback decode endpoints (their sidecars)")
	consul.add(cmd)
	tlsFiles.AddServerFlags(f, "", "the sidecar")
	_ = cmd.MarkFlagRequired("engine")
	return cmd
}
