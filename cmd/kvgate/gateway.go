package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig"
)

func init() { register(newGatewayCmd) }

// eppFlags configure the remote-EPP data plane (kvgate gateway, kvgate up --epp).
type eppFlags struct {
	addr        string
	mode        string
	failureMode string
	timeout     time.Duration
	tls         tlsconfig.Files
}

func (e *eppFlags) add(cmd *cobra.Command, required bool) {
	f := cmd.Flags()
	what := "take picks from the Endpoint Picker (ext_proc gRPC) at this address instead of the in-process router, e.g. 127.0.0.1:9002"
	if required {
		what = "the Endpoint Picker's ext_proc gRPC address, e.g. 127.0.0.1:9002 (kvgate router, llm-d's EPP, any EPP)"
	}
	f.StringVar(&e.addr, "epp", "", what)
	f.StringVar(&e.mode, "epp-mode", string(gateway.EPPFullDuplex), "ext_proc processing mode: FULL_DUPLEX_STREAMED (bodies both ways) or BUFFERED (request body buffered, response body STREAMED)")
	f.StringVar(&e.failureMode, "failure-mode", string(gateway.FailClose), "the InferencePool's failureMode when the EPP cannot pick: FailClose (503) or FailOpen (round-robin over the pool)")
	f.DurationVar(&e.timeout, "epp-timeout", gateway.DefaultEPPTimeout, "longest wait for each EPP answer on the request path (Envoy's message_timeout)")
	e.tls.AddClientFlags(f, "epp-", "the EPP")
}

func (e *eppFlags) config(pool []router.Endpoint) (gateway.EPPConfig, error) {
	c := gateway.EPPConfig{Addr: e.addr, Timeout: e.timeout, Pool: pool}
	var err error
	if c.Mode, err = gateway.ParseEPPMode(e.mode); err != nil {
		return c, fmt.Errorf("--epp-mode: %w", err)
	}
	if c.FailureMode, err = gateway.ParseFailureMode(e.failureMode); err != nil {
		return c, fmt.Errorf("--failure-mode: %w", err)
	}
	if c.TLS, err = e.tls.Client(); err != nil {
		return c, fmt.Errorf("--epp-tls-*: %w", err)
	}
	return c, nil
}

type gatewayOptions struct {
	http, metrics string
	maxBody       int
	httpTLS       tlsconfig.Files
	file          string
	eps           endpointFlags
	epp           eppFlags
	trace         traceFlags
}

func newGatewayCmd(g *globals) *cobra.Command {
	o := &gatewayOptions{}
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Serve the OpenAI API with picks from a remote Endpoint Picker (any EPP, over ext_proc)",
		Long: `gateway is the embedded OpenAI front door driven by a remote Endpoint Picker, exactly as
Envoy's ext_proc filter drives one: request headers and body go to the EPP (with the pool as
the subset hint), its header and body mutations are applied, the request goes to the endpoint
it names (x-gateway-destination-endpoint header or envoy.lb metadata, falling back in its
order), the served endpoint is reported back, and the response headers and body stream
through the EPP to the client. Immediate responses (429, 503, ...) reach the client as sent.

The pool (the InferencePool's endpoints) is named with --endpoint or --endpoints; a pick
outside it is refused. --failure-mode is the pool's failureMode. See docs/GATEWAY.md.`,
		Example: `  kvgate gateway --epp 127.0.0.1:9002 --endpoint http://10.0.0.5:8000 --endpoint http://10.0.0.6:8000
  kvgate gateway --epp epp.internal:9002 --epp-tls-ca ca.pem --endpoints engines.yaml --failure-mode FailOpen`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runGateway(cmd.Context(), g.log, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.http, "http", "127.0.0.1:8000", "OpenAI gateway listen address")
	o.httpTLS.AddServerFlags(f, "http-", "the OpenAI gateway")
	f.IntVar(&o.maxBody, "max-body-bytes", openai.DefaultMaxBodyBytes, "largest request body accepted")
	addMetricsFlag(f, &o.metrics, "gateway")
	f.StringVar(&o.file, "endpoints", "", "endpoints file (the same YAML/JSON list 'kvgate router' reads), read at start: the pool")
	f.StringArrayVar(&o.eps.urls, "endpoint", nil, "engine of the pool, as URL or host:port (repeatable)")
	f.StringArrayVar(&o.eps.models, "served-model", nil, "model the --endpoint engines serve (repeatable; default: asked from each engine's /v1/models)")
	o.eps.addEngineTLS(f)
	o.epp.add(cmd, true)
	_ = cmd.MarkFlagRequired("epp")
	o.trace.add(f, "kvgate-gateway")
	return cmd
}

func runGateway(ctx context.Context, log *slog.Logger, o *gatewayOptions) error {
	engineTLS, err := o.eps.engineClient()
	if err != nil {
		return err
	}
	pool, err := o.eps.endpoints(ctx, log)
	if err != nil {
		return err
	}
	if o.file != "" {
		f, err := discovery.NewFile(o.file, 0, log)
		if err != nil {
			return err
		}
		pool = append(slices.Clone(pool), routerEndpoints(f.Endpoints())...)
	}
	if len(pool) == 0 {
		return errors.New("no endpoints in the pool: pass --endpoint URL or --endpoints FILE")
	}
	ec, err := o.epp.config(pool)
	if err != nil {
		return err
	}
	gwTLS, err := o.httpTLS.Server()
	if err != nil {
		return fmt.Errorf("--http-tls-*: %w", err)
	}
	tp, stopTracing, err := o.trace.start(ctx, log)
	if err != nil {
		return err
	}
	defer stopTracing()
	reg := newRegistry()
	gw, err := gateway.NewEPP(gateway.Config{Addr: o.http, MaxBodyBytes: int64(o.maxBody), TLS: gwTLS, Gatherer: reg,
		EngineTLS: engineTLS, Tracer: tp.Tracer(scopeGateway)}, ec, log, reg)
	if err != nil {
		return err
	}
	defer gw.Close()
	grp, ctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return gw.Run(ctx) })
	if o.metrics != "" {
		grp.Go(func() error { return serveMetrics(ctx, o.metrics, reg, log) })
	}
	log.Info("gateway with a remote EPP", "epp", ec.Addr, "mode", ec.Mode, "failure_mode", ec.FailureMode, "pool", len(pool))
	err = grp.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// upGateway is kvgate up's gateway: routing with rt in-process or, with --epp, asking the
// remote EPP with the engines as its pool.
func upGateway(cfg gateway.Config, rt *router.Router, eps []router.Endpoint, e *eppFlags, log *slog.Logger, reg *prometheus.Registry) (*gateway.Gateway, error) {
	if e.addr == "" {
		return gateway.New(cfg, rt, log, reg)
	}
	ec, err := e.config(eps)
	if err != nil {
		return nil, err
	}
	log.Info("gateway picks with a remote EPP", "epp", ec.Addr, "mode", ec.Mode, "failure_mode", ec.FailureMode)
	return gateway.NewEPP(cfg, ec, log, reg)
}
