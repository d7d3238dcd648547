package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tokenizer"
)

func init() { register(newUpCmd) }

type upOptions struct {
	http      string
	extProc   string
	engines   int
	simModel  string
	simSpeed  float64
	simBlocks int
	kvHost    string
	maxBody   int
	httpTLS   tlsconfig.Files
	extTLS    tlsconfig.Files
	eps       endpointFlags
	rt        routerFlags
	pd        pdUpFlags
	simTiers  tierUpFlags
	p2pPort   int
	mig       migrationFlags
	epp       eppFlags
	plan      upPlannerFlags
	trace     traceFlags
}

func newUpCmd(g *globals) *cobra.Command {
	o := &upOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the whole system on this machine (router, gateway, simulated engines)",
		Long: `up starts, in one process, the KV-aware router, the OpenAI gateway on --http and --engines
simulated vLLM engines (Qwen3 tokenizer, KV events each on their own loopback port), and
prints how to call it. With --endpoint it fronts existing vLLM/SGLang servers instead of
simulated ones: pair each with its KV-event publisher by order with --kv-events.`,
		Example: `  kvgate up
  kvgate up --engines 8 --policy round-robin
  kvgate up --prefill-engines 1 --decode-engines 2
  kvgate up --cpu-cache-gib 64 --disk-cache-gib 512
  kvgate up --endpoint http://10.0.0.5:8000 --kv-events tcp://10.0.0.5:5557 \
            --endpoint http://10.0.0.6:8000 --kv-events tcp://10.0.0.6:5557`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUp(cmd.Context(), g.log, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.http, "http", "127.0.0.1:8000", "OpenAI gateway listen address")
	f.StringVar(&o.extProc, "ext-proc", "", "also serve Envoy ext_proc (gRPC) on this address, e.g. 127.0.0.1:9002")
	f.IntVar(&o.engines, "engines", 4, "simulated engines to start (ignored with --endpoint)")
	f.StringVar(&o.simModel, "model", tokenizer.DefaultModel, "model name the simulated engines serve (embedded Qwen3 tokenizer)")
	f.Float64Var(&o.simSpeed, "sim-speed", 1, "simulated engines run this many times faster than the modelled H100")
	f.IntVar(&o.simBlocks, "sim-kv-blocks", 0, "KV cache capacity of each simulated engine in blocks (0: derived from 80 GiB)")
	f.StringVar(&o.kvHost, "kv-host", "127.0.0.1", "host the simulated engines bind their KV-event publishers on (each on a free port)")
	f.IntVar(&o.maxBody, "max-body-bytes", openai.DefaultMaxBodyBytes, "largest request body accepted")
	o.httpTLS.AddServerFlags(f, "http-", "the OpenAI gateway")
	o.mig.add(f)
	o.extTLS.AddServerFlags(f, "ext-proc-", "ext_proc")
	o.eps.add(cmd, false)
	o.rt.add(cmd)
	o.pd.add(cmd)
	o.simTiers.add(cmd)
	addP2PPortFlag(f, &o.p2pPort)
	o.epp.add(cmd, false)
	o.plan.add(cmd)
	o.trace.add(f, "kvgate")
	return cmd
}

func runUp(ctx context.Context, log *slog.Logger, o *upOptions, out io.Writer) error {
	tp, stopTracing, err := o.trace.start(ctx, log) // first: a bad flag fails before engines start
	if err != nil {
		return err
	}
	defer stopTracing()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	grp, ctx := errgroup.WithContext(ctx)
	reg := newRegistry()

	var eps []router.Endpoint
	if len(o.eps.urls) > 0 {
		var err error
		if eps, err = o.eps.endpoints(ctx, log); err != nil {
			return err
		}
	} else if o.plan.on() {
		var err error
		if eps, err = o.plan.startNode(ctx, log, o); err != nil {
			return err
		}
	} else if o.pd.on() {
		var err error
		if eps, err = o.pd.start(ctx, grp, log, reg, o); err != nil {
			return err
		}
	} else {
		if o.engines < 1 {
			return errors.New("--engines must be at least 1")
		}
		for i := range o.engines {
			_, ep, err := startSim(ctx, grp, log, o, fmt.Sprintf("sim-%d", i))
			if err != nil {
				return err
			}
			ep.Role = router.RoleAggregated
			eps = append(eps, ep)
		}
	}

	cfg, err := o.rt.config(eps, log)
	if err != nil {
		return err
	}
	if cfg.EngineTLS, err = o.eps.engineClient(); err != nil {
		return err
	}
	if len(o.eps.urls) == 0 && o.rt.modelsFile == "" && o.simModel != tokenizer.DefaultModel {
		// The simulated engines tokenize with the embedded Qwen3 tokenizer whatever their
		// model is called: the router must too.
		if cfg.Models, err = tokenizer.NewModelMap([]tokenizer.Model{{Name: o.simModel}}); err != nil {
			return err
		}
	}
	cfg.Tracer = tp.Tracer(scopeRouter)
	rt, err := router.New(cfg, log, reg)
	if err != nil {
		return err
	}
	grp.Go(func() error { return rt.Run(ctx) })
	if o.plan.on() {
		if err := o.plan.run(ctx, grp, log, reg, rt, o); err != nil {
			return err
		}
	}

	gwTLS, err := o.httpTLS.Server()
	if err != nil {
		return fmt.Errorf("--http-tls-*: %w", err)
	}
	gw, err := upGateway(o.mig.apply(gateway.Config{Addr: o.http, MaxBodyBytes: int64(o.maxBody), TLS: gwTLS, Gatherer: reg, EngineTLS: cfg.EngineTLS,
		P2PTransferPort: o.p2pPort, Tracer: tp.Tracer(scopeGateway)}), rt, eps, &o.epp, log, reg)
	if err != nil {
		return err
	}
	defer gw.Close()
	grp.Go(func() error { return gw.Run(ctx) })
	var xp *extproc.Server
	if o.extProc != "" {
		xc := extproc.Config{Addr: o.extProc, MaxBodyBytes: o.maxBody, P2PTransferPort: o.p2pPort, Tracer: tp.Tracer(scopeExtproc)}
		if xc.TLS, err = o.extTLS.Server(); err != nil {
			return fmt.Errorf("--ext-proc-tls-*: %w", err)
		}
		if xp, err = extproc.New(xc, rt, log, reg); err != nil {
			return err
		}
		grp.Go(func() error { return xp.Run(ctx) })
	}

	grp.Go(func() error {
		addr, err := gw.Addr(ctx)
		if err != nil {
			return nil
		}
		model := o.simModel
		if len(eps) > 0 && len(eps[0].Models) > 0 {
			model = eps[0].Models[0]
		}
		var b strings.Builder
		fmt.Fprintf(&b, "kvgate is up: %d engine(s), policy %s\n", len(eps), o.rt.policy)
		if o.epp.addr != "" {
			fmt.Fprintf(&b, "  picks from the EPP at %s (%s, %s)\n", o.epp.addr, o.epp.mode, o.epp.failureMode)
		}
		for _, e := range eps {
			fmt.Fprintf(&b, "  engine %-8s http://%s  kv-events %s\n", e.Name, e.Address, orDash(e.KVEvents))
		}
		if o.plan.on() {
			o.plan.banner(&b)
		}
		scheme := "http"
		if gwTLS != nil {
			scheme = "https"
		}
		fmt.Fprintf(&b, "  OpenAI API  %s://%s/v1   (metrics: %[1]s://%[3]s/metrics)\n", scheme, addr, addr)
		if xp != nil {
			if xa, err := xp.Addr(ctx); err == nil {
				fmt.Fprintf(&b, "  ext_proc    %s (gRPC)\n", xa)
			}
		}
		fmt.Fprintf(&b, "\ntry:\n  curl -s http://%s/v1/chat/completions -H 'Content-Type: application/json' \\\n"+
			"    -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'\n"+
			"  kvgate chat --url http://%s\n", addr, model, addr)
		fmt.Fprint(out, b.String())
		return nil
	})
	err = grp.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// startSim starts one simulated engine of kvgate up in grp (KV events on a free port of
// --kv-host) and returns it with its router endpoint (role left to the caller).
func startSim(ctx context.Context, grp *errgroup.Group, log *slog.Logger, o *upOptions, name string) (*sim.Server, router.Endpoint, error) {
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0", Model: o.simModel, KVEvents: "tcp://" + net.JoinHostPort(o.kvHost, "0")}
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Speed = o.simSpeed
	cfg.Engine.NumBlocks = o.simBlocks
	o.simTiers.apply(&cfg.Engine)
	cfg.RuntimeLoRA = len(o.rt.lora.adapters) > 0 // the router loads --lora-adapter adapters onto them
	s, err := sim.NewServer(cfg, log.With("engine", name), nil)
	if err != nil {
		return nil, router.Endpoint{}, fmt.Errorf("engine %s: %w", name, err)
	}
	grp.Go(func() error { return s.Run(ctx) })
	block := cfg.Engine.BlockSize
	if block == 0 {
		block = tokenizer.DefaultBlockSize
	}
	return s, router.Endpoint{
		Name: name, Address: s.Addr(), Models: []string{o.simModel}, BlockSize: block,
		KVEvents: s.KVEventsAddr(), MetricsURL: "http://" + s.Addr() + "/metrics",
	}, nil
}
