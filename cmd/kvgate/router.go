package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/fleet"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/tokenizer"
)

func init() { register(newRouterCmd) }

// endpointFlags are the flags that name engines directly: --endpoint, paired by order with
// --kv-events, plus --endpoints FILE.
type endpointFlags struct {
	file      string
	urls      []string
	kvEvents  []string
	models    []string
	blockSize int
	role      string
	engineTLS tlsconfig.Files
	tlsClient *tls.Config // engineTLS loaded, by engineClient
	tlsLoaded bool
}

// addEngineTLS registers --engine-tls-ca, --engine-tls-cert, --engine-tls-key and
// --engine-tls-server-name: the client TLS for engines whose address is an https:// URL.
func (e *endpointFlags) addEngineTLS(f *pflag.FlagSet) {
	e.engineTLS.AddClientFlags(f, "engine-", "engines whose --endpoint (or endpoints-file address, or Consul meta scheme) is https://")
}

// engineClient loads the --engine-tls-* files once: nil without any (https engines are then
// verified with the system roots, without a client certificate).
func (e *endpointFlags) engineClient() (*tls.Config, error) {
	if !e.tlsLoaded {
		tc, err := e.engineTLS.Client()
		if err != nil {
			return nil, fmt.Errorf("--engine-tls-*: %w", err)
		}
		e.tlsClient, e.tlsLoaded = tc, true
	}
	return e.tlsClient, nil
}

// engineHTTP is the client for asking engines (/v1/models) at start.
func (e *endpointFlags) engineHTTP() (*http.Client, error) {
	tc, err := e.engineClient()
	if err != nil || tc == nil {
		return http.DefaultClient, err
	}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = tc.Clone() // a Transport adds its ALPN protocols to its config: one each
	return &http.Client{Transport: t}, nil
}

func (e *endpointFlags) add(cmd *cobra.Command, withFile bool) {
	f := cmd.Flags()
	if withFile {
		f.StringVar(&e.file, "endpoints", "", "endpoints file (YAML or JSON list; keys name, address, models, role, block_size, kv_events, kv_bind, kv_replay, kv_topic, metrics_url, workerd, healthy: docs/CONFIGURATION.md), the same file 'kvgate xds' reads; edits are picked up within a second")
	}
	f.StringArrayVar(&e.urls, "endpoint", nil, "engine to route to, as URL or host:port (repeatable)")
	f.StringArrayVar(&e.kvEvents, "kv-events", nil, "ZMQ KV-event publisher of the --endpoint at the same position, e.g. tcp://10.0.0.5:5557; prefix bind: for engines that dial (bind:tcp://127.0.0.1:5557); TensorRT-LLM's trtllm-serve: its http://host:port/kv_cache_events, polled (this router must be its only reader); 'none' for an engine without events (repeatable)")
	f.StringArrayVar(&e.models, "served-model", nil, "model the --endpoint engines serve (repeatable; default: asked from each engine's /v1/models)")
	f.IntVar(&e.blockSize, "block-size", tokenizer.DefaultBlockSize, "KV block size (tokens) of the --endpoint engines")
	f.StringVar(&e.role, "role", string(router.RoleAggregated), "role of the --endpoint engines: aggregated, prefill or decode")
	e.addEngineTLS(f)
}

// endpoints builds the endpoint list from the flags.
func (e *endpointFlags) endpoints(ctx context.Context, log *slog.Logger) ([]router.Endpoint, error) {
	var out []router.Endpoint
	if len(e.kvEvents) > len(e.urls) {
		return nil, fmt.Errorf("%d --kv-events for %d --endpoint: they pair by order", len(e.kvEvents), len(e.urls))
	}
	client, err := e.engineHTTP()
	if err != nil {
		return nil, err
	}
	for i, u := range e.urls {
		addr, err := discovery.HostPort(u)
		if err != nil {
			return nil, fmt.Errorf("--endpoint: %w", err)
		}
		ep := router.Endpoint{
			Name: addr, Address: addr, Role: router.Role(e.role), BlockSize: e.blockSize,
			Models: e.models, TLS: discovery.HTTPS(u),
		}
		ep.MetricsURL = ep.URL() + "/metrics"
		if i < len(e.kvEvents) && e.kvEvents[i] != "none" {
			ep.KVEvents = e.kvEvents[i]
			if rest, ok := strings.CutPrefix(ep.KVEvents, "bind:"); ok {
				ep.KVEvents, ep.KVBind = rest, true
			}
		}
		if len(ep.Models) == 0 {
			wait, cancel := context.WithTimeout(ctx, 30*time.Second)
			m, err := openai.WaitModels(wait, client, ep.URL(), "", 250*time.Millisecond)
			cancel()
			if err != nil {
				return nil, fmt.Errorf("--endpoint %s: %w (or pass --served-model)", u, err)
			}
			ep.Models = m
		}
		log.Info("endpoint", "address", ep.Address, "tls", ep.TLS, "models", ep.Models, "kv_events", ep.KVEvents)
		out = append(out, ep)
	}
	return out, nil
}

// routerFlags configure the router itself.
type routerFlags struct {
	policy       string
	modelsFile   string
	pendingTTL   time.Duration
	maxLens      map[string]int
	kvMaxMessage int64
	disagg       disaggFlags
	tiers        tierFlags
	lora         loraFlags
	traffic      trafficFlags
}

func (r *routerFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&r.policy, "policy", "kv", "routing policy: kv, round-robin, random, least-load, approx-prefix")
	f.StringVar(&r.modelsFile, "models", "", "YAML/JSON model map (model name -> tokenizer and chat template); default: the embedded Qwen3 map")
	f.StringToIntVar(&r.maxLens, "max-model-len", nil, "context length (prompt plus output tokens) per model, e.g. Qwen/Qwen3-8B=40960; default: the engines' /v1/models max_model_len")
	f.DurationVar(&r.pendingTTL, "pending-ttl", 0, "kv policy: how long a prefix just routed counts as cached before its KV events arrive (0 = 30s, negative = off)")
	f.Int64Var(&r.kvMaxMessage, "kv-events-max-message", engine.DefaultMaxZMQMessage, "largest ZMQ message (and frame) an engine's KV-event socket may send, in bytes; a peer sending more is disconnected and counted")
	r.disagg.add(cmd)
	r.tiers.add(cmd)
	r.lora.add(cmd)
	r.traffic.add(cmd)
}

func (r *routerFlags) config(eps []router.Endpoint, log *slog.Logger) (router.Config, error) {
	cfg := router.DefaultConfig()
	cfg.Policy = r.policy
	cfg.Endpoints = eps
	cfg.PendingTTL = r.pendingTTL
	cfg.MaxModelLen = r.maxLens
	cfg.KVEventLimits.MaxMessage = r.kvMaxMessage
	r.disagg.apply(&cfg)
	r.tiers.apply(&cfg)
	r.traffic.apply(&cfg)
	if r.modelsFile != "" {
		m, warnings, err := tokenizer.LoadModelMap(r.modelsFile)
		if err != nil {
			return cfg, err
		}
		for _, w := range warnings {
			log.Warn("model map uses a deprecated key", "path", r.modelsFile, "warning", w)
		}
		cfg.Models = m
	} else {
		cfg.Models = tokenizer.DefaultModelMap()
	}
	return cfg, r.lora.apply(&cfg)
}

type routerOptions struct {
	grpc, http, metrics string
	pprof               string
	maxBody             int
	extproc             extproc.Config
	tls                 tlsconfig.Files
	httpTLS             tlsconfig.Files
	eps                 endpointFlags
	rt                  routerFlags
	consul              consulFlags
	kube                kubeFlags
	ready               <-chan struct{} // closed when discovery has synced; nil = ready at once
	mig                 migrationFlags
	trace               traceFlags
}

func newRouterCmd(g *globals) *cobra.Command {
	o := &routerOptions{}
	cmd := &cobra.Command{
		Use:   "router",
		Short: "Serve the KV-aware router to Envoy over ext_proc (and optionally as an HTTP gateway)",
		Long: `router is the production endpoint picker: an Envoy ext_proc gRPC service speaking the
Gateway API Inference Extension's Endpoint Picker Protocol (header and envoy.lb metadata
x-gateway-destination-endpoint), with gRPC health (liveness, readiness) and reflection.
It subscribes to every endpoint's KV events and scrapes its metrics. With --http it also
serves the embedded OpenAI gateway, routing with the same state.

With --consul it routes to the healthy engines registered in Consul (by kvgate workerd),
following them as they come and go; an engine that names its workerd sends its KV events
(with a snapshot on every connect) and its load through that workerd's relay. See
docs/DISCOVERY.md.

With --kubernetes it is a drop-in Endpoint Picker for an InferencePool (--pool-name): it
routes to the ready Pods the pool selects, one endpoint per target port, and is ready once
its informers have synced. See docs/KUBERNETES.md.`,
		Example: `  kvgate router --endpoint http://10.0.0.5:8000 --kv-events tcp://10.0.0.5:5557 --http :8000
  kvgate router --endpoints engines.yaml --http 127.0.0.1:8000
  kvgate router --consul 127.0.0.1:8500 --http :8000 --metrics-addr :9090
  kvgate router --kubernetes --pool-name qwen --kv-events-port 5557 --grpc :9002 --tls-cert ... --tls-key ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRouter(cmd.Context(), g.log, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.grpc, "grpc", "127.0.0.1:9002", "ext_proc gRPC listen address (loopback; e.g. :9002 to serve other hosts, with --tls-*)")
	o.tls.AddServerFlags(f, "", "ext_proc")
	f.DurationVar(&o.extproc.ResponseTimeout, "response-timeout", extproc.DefaultResponseTimeout, "a pick whose response has not started after this long stops counting as load (negative: never)")
	f.DurationVar(&o.extproc.IdleTimeout, "stream-idle-timeout", extproc.DefaultIdleTimeout, "close ext_proc streams silent for this long (negative: never)")
	f.Int64Var(&o.extproc.MaxBufferedBytes, "max-buffered-bytes", extproc.DefaultMaxBufferedBytes, "request body bytes buffered across all ext_proc streams; past it, 503")
	f.BoolVar(&o.extproc.SkipResponseBody, "skip-response-body", false, "ask Envoy (allow_mode_override) not to send response bodies the router needs nothing from, and stop forcing stream usage: fewer ext_proc messages, no usage/TTFT/ITL from those requests (docs/EXTPROC.md)")
	f.StringVar(&o.http, "http", "", "also serve the OpenAI gateway on this address (e.g. 127.0.0.1:8000)")
	o.httpTLS.AddServerFlags(f, "http-", "the OpenAI gateway")
	o.mig.add(f)
	addMetricsFlag(f, &o.metrics, "router, ext_proc and gateway")
	addPprofFlag(f, &o.pprof)
	f.IntVar(&o.maxBody, "max-body-bytes", openai.DefaultMaxBodyBytes, "largest request body accepted")
	addP2PPortFlag(f, &o.extproc.P2PTransferPort)
	o.eps.add(cmd, true)
	o.rt.add(cmd)
	o.consul.add(cmd)
	o.consul.addRelayTLS(cmd)
	o.kube.add(cmd)
	o.trace.add(f, "kvgate-router")
	return cmd
}

func runRouter(ctx context.Context, log *slog.Logger, o *routerOptions) error {
	eps, err := o.eps.endpoints(ctx, log)
	if err != nil {
		return err
	}
	disc, fileEps, err := o.discovery(log)
	if err != nil {
		return err
	}
	if len(eps) == 0 && disc == nil {
		return errors.New("no endpoints: pass --endpoints FILE, --endpoint URL, --consul ADDR or --kubernetes --pool-name NAME")
	}
	cfg, err := o.rt.config(append(slices.Clone(eps), fileEps...), log)
	if err != nil {
		return err
	}
	relayTLS, err := o.consul.relayTLS.Client()
	if err != nil {
		return fmt.Errorf("--relay-tls-*: %w", err)
	}
	cfg.EventSource = relaySource(log, relayTLS)
	if cfg.EngineTLS, err = o.eps.engineClient(); err != nil {
		return err
	}
	if o.extproc.SkipResponseBody { // the usage of skipped responses is not read
		cfg.ForceStreamUsage = false
	}
	tp, stopTracing, err := o.trace.start(ctx, log)
	if err != nil {
		return err
	}
	defer stopTracing()
	cfg.Tracer = tp.Tracer(scopeRouter)
	reg := newRegistry()
	rt, err := router.New(cfg, log, reg)
	if err != nil {
		return err
	}
	xc := o.extproc
	xc.Addr, xc.MaxBodyBytes = o.grpc, o.maxBody
	xc.Tracer = tp.Tracer(scopeExtproc)
	if xc.TLS, err = o.tls.Server(); err != nil {
		return err
	}
	xc.Ready = o.ready // readiness follows the Kubernetes informers' sync
	ep, err := extproc.New(xc, rt, log, reg)
	if err != nil {
		return err
	}
	grp, ctx := errgroup.WithContext(ctx)
	servePprofs, err := servePprof(ctx, o.pprof, log)
	if err != nil {
		return err
	}
	grp.Go(servePprofs)
	grp.Go(func() error { return rt.Run(ctx) })
	grp.Go(func() error { return ep.Run(ctx) })
	if disc != nil {
		grp.Go(func() error { return followDiscovery(ctx, disc, eps, rt, log) })
	}
	if o.http != "" {
		gwTLS, err := o.httpTLS.Server()
		if err != nil {
			return fmt.Errorf("--http-tls-*: %w", err)
		}
		gw, err := gateway.New(o.mig.apply(gateway.Config{Addr: o.http, MaxBodyBytes: int64(o.maxBody), TLS: gwTLS, Gatherer: reg, EngineTLS: cfg.EngineTLS,
			P2PTransferPort: o.extproc.P2PTransferPort, Tracer: tp.Tracer(scopeGateway)}), rt, log, reg)
		if err != nil {
			return err
		}
		grp.Go(func() error { return gw.Run(ctx) })
	}
	if o.metrics != "" {
		ms, err := listenMetrics(o.metrics, reg, log)
		if err != nil {
			return err
		}
		ms.Handle(router.PoolsPath, rt.PoolsHandler()) // what `kvgate planner` reads
		grp.Go(func() error { return ms.Serve(ctx) })
		if o.consul.addr != "" { // planners find the router's pools there
			c, err := consulAPI(o.consul.addr)
			if err != nil {
				return err
			}
			grp.Go(func() error {
				return fleet.KeepRouterRegistration(ctx, c, o.consul.tag, ms.lis.Addr().String(), 0, log)
			})
		}
	}
	err = grp.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// discovery returns the source the router follows (the endpoints file, Consul, or both) and
// the file's engines as loaded now, so that the router starts with them; nil when neither
// flag is given.
func (o *routerOptions) discovery(log *slog.Logger) (discovery.Source, []router.Endpoint, error) {
	var (
		srcs    discovery.Join
		initial []router.Endpoint
	)
	if o.eps.file != "" {
		f, err := discovery.NewFile(o.eps.file, 0, log)
		if err != nil {
			return nil, nil, err
		}
		srcs = append(srcs, f)
		initial = routerEndpoints(f.Endpoints())
	}
	c, err := o.consul.source(log)
	if err != nil {
		return nil, nil, err
	}
	if c != nil {
		srcs = append(srcs, c)
	}
	k, err := o.kube.source(o.eps.blockSize, log)
	if err != nil {
		return nil, nil, err
	}
	if k != nil {
		srcs = append(srcs, k)
		o.ready = k.Synced()
	}
	switch len(srcs) {
	case 0:
		return nil, nil, nil
	case 1:
		return srcs[0], initial, nil
	}
	return srcs, initial, nil
}
