package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/kvgate/kvgate/replay"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/sidecar"
)

// disaggFlags are the router's conditional-disaggregation thresholds (kvgate router, up).
type disaggFlags struct {
	minUncached   int
	minRatio      float64
	maxPrefillTok int64
	maxPrefillQ   float64
}

func (d *disaggFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&d.minUncached, "disagg-min-uncached-tokens", router.DefaultDisaggMinUncachedTokens,
		"prefill remotely only when the prompt has at least this many tokens not cached on the decode target")
	f.Float64Var(&d.minRatio, "disagg-min-uncached-ratio", router.DefaultDisaggMinUncachedRatio,
		"prefill remotely only when at least this share (0..1) of the prompt is not cached on the decode target")
	f.Int64Var(&d.maxPrefillTok, "disagg-max-prefill-tokens", router.DefaultDisaggMaxPrefillTokens,
		"a prefill endpoint holding more in-flight prefill tokens is saturated (0: no limit)")
	f.Float64Var(&d.maxPrefillQ, "disagg-max-prefill-queue", router.DefaultDisaggMaxPrefillQueue,
		"a prefill endpoint whose engine reports more waiting requests is saturated (0: no limit)")
}

func (d *disaggFlags) apply(cfg *router.Config) {
	cfg.DisaggMinUncachedTokens = d.minUncached
	cfg.DisaggMinUncachedRatio = d.minRatio
	cfg.DisaggMaxPrefillTokens = d.maxPrefillTok
	cfg.DisaggMaxPrefillQueue = d.maxPrefillQ
}

// replayThresholds returns the thresholds for kvgate replay.
func (d *disaggFlags) replayThresholds() *replay.DisaggThresholds {
	return &replay.DisaggThresholds{MinUncachedTokens: d.minUncached, MinUncachedRatio: d.minRatio,
		MaxPrefillTokens: d.maxPrefillTok, MaxPrefillQueue: d.maxPrefillQ}
}

// pdUpFlags are kvgate up's disaggregated-cluster flags.
type pdUpFlags struct {
	prefill, decode int
}

func (p *pdUpFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&p.prefill, "prefill-engines", 0, "disaggregated: simulated prefill engines (with --decode-engines; replaces --engines)")
	f.IntVar(&p.decode, "decode-engines", 0, "disaggregated: simulated decode engines, each behind a P/D sidecar (with --prefill-engines)")
}

func (p *pdUpFlags) on() bool { return p.prefill != 0 || p.decode != 0 }

// start runs the disaggregated cluster of kvgate up: prefill sims, and decode sims each
// behind a workerd sidecar whose address is the decode endpoint's (the router's decode
// traffic goes through it; its KV events and metrics are read from the sim directly).
func (p *pdUpFlags) start(ctx context.Context, grp *errgroup.Group, log *slog.Logger, reg prometheus.Registerer, o *upOptions) ([]router.Endpoint, error) {
	if p.prefill < 1 || p.decode < 1 {
		return nil, errors.New("--prefill-engines and --decode-engines go together, each at least 1")
	}
	var eps []router.Endpoint
	for i := range p.prefill {
		_, ep, err := startSim(ctx, grp, log, o, fmt.Sprintf("prefill-%d", i))
		if err != nil {
			return nil, err
		}
		ep.Role = router.RolePrefill
		eps = append(eps, ep)
	}
	// The sidecars send prompts only to the prefill engines the router can name.
	var prefills []string
	for _, ep := range eps {
		prefills = append(prefills, ep.Address)
	}
	known := sidecar.NewPrefillSet(prefills...)
	for i := range p.decode {
		name := fmt.Sprintf("decode-%d", i)
		s, ep, err := startSim(ctx, grp, log, o, name)
		if err != nil {
			return nil, err
		}
		sc, err := sidecar.New(sidecar.Config{Addr: "127.0.0.1:0", Engine: s.Addr(), Name: name, Prefill: known}, log, reg)
		if err != nil {
			return nil, err
		}
		grp.Go(func() error { return sc.Run(ctx) })
		ep.Role, ep.Address = router.RoleDecode, sc.Addr()
		eps = append(eps, ep)
	}
	return eps, nil
}
