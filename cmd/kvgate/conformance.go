package main

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvgate/kvgate/conformance"
	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tlsconfig"
)

func init() { register(newConformanceCmd) }

type conformanceOptions struct {
	cfg       conformance.Config
	endpoints []string
	tls       tlsconfig.Files
	json      bool
}

func newConformanceCmd(g *globals) *cobra.Command {
	o := &conformanceOptions{}
	cmd := &cobra.Command{
		Use:   "conformance",
		Short: "Check an Endpoint Picker (any EPP) against the Endpoint Picker Protocol, as a black box",
		Long: `conformance drives the EPP at --epp over ext_proc as Envoy does and checks it against the
Gateway API Inference Extension's Endpoint Picker Protocol: FULL_DUPLEX_STREAMED mode, gRPC
health (liveness, readiness, the ext_proc service), the destination header and envoy.lb
metadata agreeing, ordered fallbacks within the pool, the subset hint as a list or a string
(empty or unsatisfiable: 503), 503 with no ready endpoint, 429 to shed, the served-endpoint
report, body pieces within limits, streams abandoned at every point; then behaviour through
kvgate's remote-EPP gateway against the real engines: a repeated long prompt returns to the
same engine, load spreads when prefixes differ.

The pool's engines are named with --endpoint, as for 'kvgate router'. It prints a table (or
--json: {"checks":[{"name","pass","detail"}]}) and exits 1 when a check that ran failed.
See docs/CONFORMANCE.md.`,
		Example: `  kvgate conformance --epp 127.0.0.1:9002 --endpoint http://127.0.0.1:8100 --endpoint http://127.0.0.1:8101
  kvgate conformance --epp 127.0.0.1:9002 --health 127.0.0.1:9003 --endpoint ... --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			c := o.cfg
			var err error
			if c.TLS, err = o.tls.Client(); err != nil {
				return fmt.Errorf("--epp-tls-*: %w", err)
			}
			for _, e := range o.endpoints {
				hp, err := discovery.HostPort(e)
				if err != nil {
					return fmt.Errorf("--endpoint: %w", err)
				}
				c.Endpoints = append(c.Endpoints, hp)
			}
			if c.Model == "" && len(c.Endpoints) > 0 {
				if c.Model, err = firstModel(ctx, c.Endpoints[0]); err != nil {
					return fmt.Errorf("--endpoint %s: %w (or pass --model)", c.Endpoints[0], err)
				}
			}
			rep, err := conformance.Run(ctx, c, g.log)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if o.json {
				err = rep.WriteJSON(out)
			} else {
				err = rep.WriteTable(out)
			}
			if err != nil {
				return err
			}
			if n := rep.Failed(); n > 0 {
				return fmt.Errorf("%d check(s) failed", n)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.EPP, "epp", "", "the EPP's ext_proc gRPC address, e.g. 127.0.0.1:9002")
	f.StringVar(&o.cfg.Health, "health", "", "the EPP's gRPC health address (default: --epp; llm-d's EPP serves it on :9003)")
	f.StringArrayVar(&o.endpoints, "endpoint", nil, "ready engine of the EPP's pool, as URL or host:port (repeatable)")
	f.StringVar(&o.cfg.Unready, "unready-endpoint", "", "an endpoint of the EPP's pool that is down, for the 503 check (skipped without)")
	f.StringVar(&o.cfg.ShedHeader, "shed-header", "", "'name: value' header that makes a request sheddable, for the 429 check (skipped without)")
	f.StringVar(&o.cfg.Model, "model", "", "model the requests name (default: the first endpoint's first model)")
	f.DurationVar(&o.cfg.Timeout, "timeout", 30*time.Second, "longest wait for each answer")
	f.BoolVar(&o.json, "json", false, `print {"checks":[{"name":...,"pass":true|false,"detail":...}]}`)
	o.tls.AddClientFlags(f, "epp-", "the EPP")
	_ = cmd.MarkFlagRequired("epp")
	return cmd
}

// firstModel asks an engine for the models it serves and returns the first.
func firstModel(ctx context.Context, addr string) (string, error) {
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := openai.WaitModels(wait, http.DefaultClient, "http://"+addr, "", 250*time.Millisecond)
	if err != nil {
		return "", err
	}
	if len(m) == 0 {
		return "", fmt.Errorf("no model served")
	}
	return m[0], nil
}
