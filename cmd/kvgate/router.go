package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"sigs.k8s.io/yaml"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
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
}

func (e *endpointFlags) add(cmd *cobra.Command, withFile bool) {
	f := cmd.Flags()
	if withFile {
		f.StringVar(&e.file, "endpoints", "", "YAML or JSON file listing endpoints (fields: name, address, models, role, block_size, kv_events, kv_bind, kv_replay, kv_topic, metrics_url, workerd)")
	}
	f.StringArrayVar(&e.urls, "endpoint", nil, "engine to route to, as URL or host:port (repeatable)")
	f.StringArrayVar(&e.kvEvents, "kv-events", nil, "ZMQ KV-event publisher of the --endpoint at the same position, e.g. tcp://10.0.0.5:5557; prefix bind: for engines that dial (bind:tcp://127.0.0.1:5557); 'none' for an engine without events (repeatable)")
	f.StringArrayVar(&e.models, "served-model", nil, "model the --endpoint engines serve (repeatable; default: asked from each engine's /v1/models)")
	f.IntVar(&e.blockSize, "block-size", 16, "KV block size (tokens) of the --endpoint engines")
	f.StringVar(&e.role, "role", string(router.RoleAggregated), "role of the --endpoint engines: aggregated, prefill or decode")
}

// endpointFile is the on-disk form of one router.Endpoint.
type endpointFile struct {
	Name       string   `json:"name"`
	Address    string   `json:"address"`
	Models     []string `json:"models"`
	Role       string   `json:"role"`
	BlockSize  int      `json:"block_size"`
	KVEvents   string   `json:"kv_events"`
	KVBind     bool     `json:"kv_bind"`
	KVReplay   string   `json:"kv_replay"`
	KVTopic    string   `json:"kv_topic"`
	MetricsURL string   `json:"metrics_url"`
	Workerd    string   `json:"workerd"`
}

// loadEndpointsFile reads a YAML or JSON list of endpoints (or {endpoints: [...]}).
func loadEndpointsFile(path string) ([]router.Endpoint, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var list []endpointFile
	if err := json.Unmarshal(j, &list); err != nil {
		var wrapped struct {
			Endpoints []endpointFile `json:"endpoints"`
		}
		if err2 := json.Unmarshal(j, &wrapped); err2 != nil {
			return nil, fmt.Errorf("%s: want a list of endpoints: %w", path, err)
		}
		list = wrapped.Endpoints
	}
	out := make([]router.Endpoint, 0, len(list))
	for i, e := range list {
		if e.Address = hostPort(e.Address); e.Address == "" {
			return nil, fmt.Errorf("%s: endpoint %d has no address", path, i)
		}
		if e.Name == "" {
			e.Name = e.Address
		}
		if e.Role == "" {
			e.Role = string(router.RoleAggregated)
		}
		if e.BlockSize == 0 {
			e.BlockSize = tokenizer.DefaultBlockSize
		}
		if e.BlockSize < 0 {
			return nil, fmt.Errorf("%s: endpoint %s: negative block_size", path, e.Address)
		}
		out = append(out, router.Endpoint{
			Name: e.Name, Address: e.Address, Models: e.Models, Role: router.Role(e.Role),
			BlockSize: e.BlockSize, KVEvents: e.KVEvents, KVBind: e.KVBind, KVReplay: e.KVReplay,
			KVTopic: e.KVTopic, MetricsURL: e.MetricsURL, Workerd: e.Workerd,
		})
	}
	return out, nil
}

// endpoints builds the endpoint list from the flags.
func (e *endpointFlags) endpoints(ctx context.Context, log *slog.Logger) ([]router.Endpoint, error) {
	var out []router.Endpoint
	if e.file != "" {
		eps, err := loadEndpointsFile(e.file)
		if err != nil {
			return nil, err
		}
		out = append(out, eps...)
	}
	if len(e.kvEvents) > len(e.urls) {
		return nil, fmt.Errorf("%d --kv-events for %d --endpoint: they pair by order", len(e.kvEvents), len(e.urls))
	}
	for i, u := range e.urls {
		addr := hostPort(u)
		if addr == "" {
			return nil, fmt.Errorf("--endpoint %q: want a URL or host:port", u)
		}
		ep := router.Endpoint{
			Name: addr, Address: addr, Role: router.Role(e.role), BlockSize: e.blockSize,
			MetricsURL: "http://" + addr + "/metrics", Models: e.models,
		}
		if i < len(e.kvEvents) && e.kvEvents[i] != "none" {
			ep.KVEvents = e.kvEvents[i]
			if rest, ok := strings.CutPrefix(ep.KVEvents, "bind:"); ok {
				ep.KVEvents, ep.KVBind = rest, true
			}
		}
		if len(ep.Models) == 0 {
			m, err := engineModels(ctx, addr)
			if err != nil {
				return nil, fmt.Errorf("--endpoint %s: %w (or pass --served-model)", u, err)
			}
			ep.Models = m
		}
		log.Info("endpoint", "address", ep.Address, "models", ep.Models, "kv_events", ep.KVEvents)
		out = append(out, ep)
	}
	return out, nil
}

// hostPort turns "http://h:p/..." or "h:p" into "h:p".
func hostPort(s string) string {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return ""
		}
		return u.Host
	}
	return strings.TrimRight(s, "/")
}

// engineModels asks an engine which models it serves, retrying for a while as engines start.
func engineModels(ctx context.Context, addr string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var last error
	for {
		m, err := fetchModels(ctx, addr)
		if err == nil {
			return m, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("asking /v1/models: %w", last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func fetchModels(ctx context.Context, addr string) ([]string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v1/models", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	var out []string
	for _, d := range list.Data {
		out = append(out, d.ID)
	}
	if len(out) == 0 {
		return nil, errors.New("no models listed")
	}
	return out, nil
}

// routerFlags configure the router itself.
type routerFlags struct {
	policy     string
	modelsFile string
	pendingTTL time.Duration
	maxLens    map[string]int
	disagg     disaggFlags
}

func (r *routerFlags) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&r.policy, "policy", "kv", "routing policy: kv, round-robin, random, least-load, approx-prefix")
	f.StringVar(&r.modelsFile, "models", "", "YAML/JSON model map (model name -> tokenizer and chat template); default: the embedded Qwen3 map")
	f.StringToIntVar(&r.maxLens, "max-model-len", nil, "context length (prompt plus output tokens) per model, e.g. Qwen/Qwen3-8B=40960; default: the engines' /v1/models max_model_len")
	f.DurationVar(&r.pendingTTL, "pending-ttl", 0, "kv policy: how long a prefix just routed counts as cached before its KV events arrive (0 = 30s, negative = off)")
	r.disagg.add(cmd)
}

func (r *routerFlags) config(eps []router.Endpoint) (router.Config, error) {
	cfg := router.DefaultConfig()
	cfg.Policy = r.policy
	cfg.Endpoints = eps
	cfg.PendingTTL = r.pendingTTL
	cfg.MaxModelLen = r.maxLens
	r.disagg.apply(&cfg)
	if r.modelsFile != "" {
		m, err := tokenizer.LoadModelMap(r.modelsFile)
		if err != nil {
			return cfg, err
		}
		cfg.Models = m
	} else {
		cfg.Models = tokenizer.DefaultModelMap()
	}
	return cfg, nil
}

// newRegistry is a Prometheus registry with the Go and process collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// serveRouterMetrics serves reg on addr until ctx ends.
func serveRouterMetrics(ctx context.Context, addr string, reg *prometheus.Registry, log *slog.Logger) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Info("metrics listening", "addr", lis.Addr().String())
	go func() { <-ctx.Done(); _ = srv.Close() }()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type routerOptions struct {
	grpc, http, metrics string
	maxBody             int
	extproc             extproc.Config
	tls                 tlsconfig.Files
	eps                 endpointFlags
	rt                  routerFlags
	consul              consulFlags
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
docs/DISCOVERY.md.`,
		Example: `  kvgate router --endpoint http://10.0.0.5:8000 --kv-events tcp://10.0.0.5:5557 --http :8000
  kvgate router --consul 127.0.0.1:8500 --http :8000 --metrics :9090`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runRouter(cmd.Context(), g.log, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.grpc, "grpc", "127.0.0.1:9002", "ext_proc gRPC listen address (loopback; e.g. :9002 to serve other hosts, with --tls-*)")
	o.tls.AddServerFlags(f, "", "ext_proc")
	f.DurationVar(&o.extproc.ResponseTimeout, "response-timeout", extproc.DefaultResponseTimeout, "a pick whose response has not started after this long stops counting as load (negative: never)")
	f.DurationVar(&o.extproc.IdleTimeout, "stream-idle-timeout", extproc.DefaultIdleTimeout, "close ext_proc streams silent for this long (negative: never)")
	f.Int64Var(&o.extproc.MaxBufferedBytes, "max-buffered-bytes", extproc.DefaultMaxBufferedBytes, "request body bytes buffered across all ext_proc streams; past it, 503")
	f.StringVar(&o.http, "http", "", "also serve the OpenAI gateway on this address (e.g. 127.0.0.1:8000)")
	f.StringVar(&o.metrics, "metrics", "", "serve Prometheus /metrics on this address (e.g. :9090)")
	f.IntVar(&o.maxBody, "max-body-bytes", extproc.DefaultMaxBodyBytes, "largest request body accepted")
	o.eps.add(cmd, true)
	o.rt.add(cmd)
	o.consul.add(cmd)
	o.consul.addRelayTLS(cmd)
	return cmd
}

func runRouter(ctx context.Context, log *slog.Logger, o *routerOptions) error {
	eps, err := o.eps.endpoints(ctx, log)
	if err != nil {
		return err
	}
	disc, err := o.consul.source(log)
	if err != nil {
		return err
	}
	if len(eps) == 0 && disc == nil {
		return errors.New("no endpoints: pass --endpoints FILE, --endpoint URL or --consul ADDR")
	}
	cfg, err := o.rt.config(eps)
	if err != nil {
		return err
	}
	relayTLS, err := o.consul.relayTLS.Client()
	if err != nil {
		return fmt.Errorf("--relay-tls-*: %w", err)
	}
	cfg.EventSource = relaySource(log, relayTLS)
	reg := newRegistry()
	rt, err := router.New(cfg, log, reg)
	if err != nil {
		return err
	}
	xc := o.extproc
	xc.Addr, xc.MaxBodyBytes = o.grpc, o.maxBody
	if xc.TLS, err = o.tls.Server(); err != nil {
		return err
	}
	ep, err := extproc.New(xc, rt, log, reg)
	if err != nil {
		return err
	}
	grp, ctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return rt.Run(ctx) })
	grp.Go(func() error { return ep.Run(ctx) })
	if disc != nil {
		grp.Go(func() error { return followDiscovery(ctx, disc, eps, rt, log) })
	}
	if o.http != "" {
		gw, err := gateway.New(gateway.Config{Addr: o.http, MaxBodyBytes: int64(o.maxBody), Gatherer: reg}, rt, log, reg)
		if err != nil {
			return err
		}
		grp.Go(func() error { return gw.Run(ctx) })
	}
	if o.metrics != "" {
		grp.Go(func() error { return serveRouterMetrics(ctx, o.metrics, reg, log) })
	}
	err = grp.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
