package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/xds"
)

func init() { register(newXDSCmd) }

// newXDSCmd runs the xDS control plane that configures Envoy from discovery.
func newXDSCmd(g *globals) *cobra.Command {
	var (
		listen, config, consul, service, endpoints string
		metricsAddr                                string
		model                                      xds.Model
		routerTLS                                  xds.TLSFiles
		tlsFiles                                   xds.TLSFiles
		failOpen, dryRun                           bool
		messageTimeout, idleTimeout, debounce      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "xds",
		Short: "Serve Envoy its configuration (LDS/RDS/CDS/EDS over ADS) from discovered engines",
		Long: `kvgate xds is the control plane of an Envoy data plane: Envoy connects to it over ADS
(state of the world or delta; print its bootstrap with 'kvgate bootstrap') and gets a listener
with the ext_proc filter that asks 'kvgate router' for an endpoint, the ORIGINAL_DST cluster
that honours the pick, and an EDS pool per model, updated as engines come and go in Consul
(--consul) or in a static file (--endpoints).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config != "" {
				data, err := os.ReadFile(config)
				if err != nil {
					return err
				}
				base, err := xds.ParseModel(data)
				if err != nil {
					return err
				}
				if len(base.Pools) > 0 {
					return errors.New("--config: pools come from discovery; list engines with --endpoints instead")
				}
				// Flags given on the command line win over the file.
				f := cmd.Flags()
				if !f.Changed("router") && len(base.Router) > 0 {
					model.Router = base.Router
				}
				if !f.Changed("envoy-listen") && base.Listener != "" {
					model.Listener = base.Listener
				}
				if model.RouterTLS == nil {
					model.RouterTLS = base.RouterTLS
				}
				opts := base.Options
				if f.Changed("request-body") {
					opts.RequestBody = model.Options.RequestBody
				}
				if f.Changed("response-body") {
					opts.ResponseBody = model.Options.ResponseBody
				}
				model.Options = opts
			}
			if cmd.Flags().Changed("failure-mode-allow") {
				model.Options.FailureModeAllow = failOpen
			}
			if cmd.Flags().Changed("message-timeout") {
				model.Options.MessageTimeout = xds.Duration(messageTimeout)
			}
			if cmd.Flags().Changed("stream-idle-timeout") {
				model.Options.StreamIdleTimeout = xds.Duration(idleTimeout)
			}
			if routerTLS != (xds.TLSFiles{}) {
				model.RouterTLS = &routerTLS
			}

			var src discovery.Source
			switch {
			case consul != "" && endpoints != "":
				return errors.New("--consul and --endpoints are exclusive")
			case consul != "":
				c, err := discovery.NewConsul(discovery.ConsulConfig{Address: consul, Service: service}, g.log)
				if err != nil {
					return err
				}
				src = c
			case endpoints != "":
				data, err := os.ReadFile(endpoints)
				if err != nil {
					return err
				}
				if _, err := xds.ParseEndpoints(data); err != nil {
					return err
				}
				src = &xds.FileSource{Path: endpoints, Log: g.log}
			default:
				return errors.New("say where engines are: --consul ADDR or --endpoints FILE")
			}
			if dryRun {
				return printOnce(cmd, src, model)
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			srv, err := xds.New(xds.Config{
				Listen: listen, TLS: tlsFiles, Model: model, Source: src, Debounce: debounce, Log: g.log, Registerer: reg,
			})
			if err != nil {
				return err
			}
			if metricsAddr != "" {
				stop, err := serveMetrics(metricsAddr, reg)
				if err != nil {
					return err
				}
				defer stop()
				g.log.Info("xds metrics", "addr", metricsAddr)
			}
			return srv.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", ":18000", "xDS gRPC address Envoy connects to")
	f.StringSliceVar(&model.Router, "router", nil, "ext_proc address of a kvgate router, host:port (repeatable)")
	f.StringVar(&model.Listener, "envoy-listen", "0.0.0.0:8080", "address Envoy serves the OpenAI API on")
	f.StringVar(&consul, "consul", "", "Consul agent HTTP address to discover engines from")
	f.StringVar(&service, "consul-service", discovery.DefaultService, "Consul service name of the engines")
	f.StringVar(&endpoints, "endpoints", "", "YAML file listing engines (name, address, models, role, healthy) instead of Consul; edits are picked up within a second")
	f.StringVar(&config, "config", "", "YAML file with the listener, router, routerTLS and options (see docs/XDS.md)")
	f.StringVar(&model.Options.RequestBody, "request-body", "", "request body mode towards the router: buffered (default) or full-duplex")
	f.StringVar(&model.Options.ResponseBody, "response-body", "", "response body mode towards the router: streamed (default) or full-duplex")
	f.BoolVar(&failOpen, "failure-mode-allow", false, "let requests through when the router is unreachable")
	f.DurationVar(&messageTimeout, "message-timeout", 5*time.Second, "how long Envoy waits for each router reply")
	f.DurationVar(&idleTimeout, "stream-idle-timeout", 5*time.Minute, "close client streams silent this long")
	f.StringVar(&metricsAddr, "metrics", "", "serve Prometheus /metrics on this address (e.g. :9091)")
	f.BoolVar(&dryRun, "dry-run", false, "print the resources Envoy would get from the first discovery report, then exit")
	f.DurationVar(&debounce, "debounce", 100*time.Millisecond, "coalesce discovery changes arriving within this window")
	f.StringVar(&tlsFiles.Cert, "tls-cert", "", "serve xDS over TLS with this certificate (PEM)")
	f.StringVar(&tlsFiles.Key, "tls-key", "", "private key of --tls-cert (PEM)")
	f.StringVar(&tlsFiles.CA, "tls-ca", "", "require Envoy client certificates signed by this CA (mTLS)")
	f.StringVar(&routerTLS.Cert, "router-tls-cert", "", "Envoy's client certificate towards the router (path on Envoy's host)")
	f.StringVar(&routerTLS.Key, "router-tls-key", "", "key of --router-tls-cert (path on Envoy's host)")
	f.StringVar(&routerTLS.CA, "router-tls-ca", "", "CA Envoy verifies the router with; enables TLS to the router (path on Envoy's host)")
	f.StringVar(&routerTLS.SNI, "router-tls-sni", "", "server name Envoy sends to the router")
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if len(model.Router) == 0 && config == "" {
			return fmt.Errorf("--router is required (the ext_proc address of 'kvgate router', e.g. 10.0.0.5:9002)")
		}
		return nil
	}
	return cmd
}

// printOnce translates the first discovery report and prints the resources as YAML.
func printOnce(cmd *cobra.Command, src discovery.Source, model xds.Model) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Second)
	defer cancel()
	var eps []discovery.Endpoint
	select {
	case eps = <-src.Watch(ctx):
	case <-ctx.Done():
		return fmt.Errorf("no discovery report within 30s: %w", ctx.Err())
	}
	model.Pools = xds.Pools(eps)
	res, err := xds.Translate(model)
	if res == nil {
		return err
	}
	if err != nil {
		fmt.Fprintln(cmd.ErrOrStderr(), "problems:", err)
	}
	out, err := res.YAML()
	if err != nil {
		return err
	}
	_, err = cmd.OutOrStdout().Write(out)
	return err
}

// serveMetrics serves reg on addr/metrics until stop is called.
func serveMetrics(addr string, reg *prometheus.Registry) (stop func(), err error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(lis) }()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(ctx)
	}, nil
}
