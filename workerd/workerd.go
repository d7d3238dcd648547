// Package workerd is the node daemon: it starts and supervises the node's engines on their
// GPUs, runs the relay that carries their KV events and load to routers (package relay) and
// the decode engines' P/D sidecars (package sidecar), and registers them in Consul.
// In a KV event's path it owns E2 on the node (subscribing to each engine) and hosts E3 (the
// relay package's server); in a request's path it hosts the sidecars of R7 (package sidecar).
package workerd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	fleetv1 "github.com/kvgate/kvgate/api/fleet/v1"
	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/relay"
	"github.com/kvgate/kvgate/sidecar"
)

// Options are workerd's dependencies. Zero fields take the defaults noted.
type Options struct {
	Log        *slog.Logger          // discards when nil
	Registerer prometheus.Registerer // nil: no metrics
	GPUs       gpu.Source            // gpu.NewNVML()
	// EngineOutput receives every engine's stdout and stderr, one line at a time, each
	// prefixed "<instance> | ". nil = os.Stderr.
	EngineOutput io.Writer
	// SimCommand is the argv prefix that runs the built-in simulator; SimArgs are appended.
	// nil = [this executable, "sim"].
	SimCommand []string
}

// Workerd is the node daemon. New validates and plans; Run does the work.
type Workerd struct {
	cfg    Config
	log    *slog.Logger
	plans  []plan
	procs  []*proc
	relay  *relay.Server
	lis    net.Listener
	srv    *grpc.Server
	consul *discovery.Consul
	inv    gpu.Inventory
	http   *http.Client
	// sidecars are the decode engines' P/D sidecars, by instance; prefills is the set of
	// prefill engines they may send prompts to.
	sidecars map[string]*sidecar.Server
	prefills *sidecar.PrefillSet
	// decodes is the decode endpoints (as routers name them) the sidecars may migrate a
	// failed decode stream to: with Consul, the healthy ones registered there.
	decodes *sidecar.PrefillSet

	// What starting a template's engine at run time needs.
	simCmd     []string
	sidecarTLS *tls.Config
	reg        prometheus.Registerer
	zmq        *engine.ZMQMetrics
	out        io.Writer
	outMu      sync.Mutex

	runMu   sync.Mutex
	running bool

	// procsMu guards procs (engines come and go with the fleet API), live and nextID.
	procsMu sync.Mutex
	live    *liveState
	nextID  map[string]int // next engine number per template
}

func (c *Config) defaults() {
	def := func(d *Duration, v time.Duration) {
		if *d <= 0 {
			*d = Duration(v)
		}
	}
	def(&c.ScrapeInterval, time.Second)
	def(&c.StartTimeout, 10*time.Minute)
	def(&c.DrainTimeout, 30*time.Second)
	def(&c.StopTimeout, 20*time.Second)
	def(&c.MinBackoff, time.Second)
	def(&c.MaxBackoff, 30*time.Second)
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:0"
	}
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.Consul != nil {
		def(&c.Consul.CheckInterval, 2*time.Second)
		def(&c.Consul.ReregisterInterval, 5*time.Second)
		def(&c.Consul.DeregisterGrace, 2*time.Second)
	}
}

// New checks the config against this machine (engine binaries present, GPUs available),
// builds every engine's command line, assigns GPUs and binds the relay listener. What
// cannot work is refused here, with every reason joined in the error.
func New(ctx context.Context, cfg Config, opt Options) (*Workerd, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	log := opt.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	src := opt.GPUs
	if src == nil {
		src = gpu.NewNVML()
	}
	inv := src.Inventory(ctx)
	if len(inv.Devices) == 0 && cfg.GPUs > 0 {
		reason := inv.Reason
		inv = gpu.FakeInventory(cfg.GPUs, "declared", 0)
		inv.Driver, inv.CUDA, inv.Reason = "declared", "", "declared by the config's gpus (NVML: "+reason+")"
	}
	simCmd := opt.SimCommand
	if simCmd == nil {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("workerd: locate own executable for sim engines: %w", err)
		}
		simCmd = []string{exe, "sim"}
	}
	plans, err := makePlans(ctx, cfg, cfg.Engines, inv, map[int]bool{}, simCmd)
	if err != nil {
		return nil, fmt.Errorf("workerd: refusing to start:\n%w", err)
	}
	relayTLS, err := cfg.TLS.Server()
	if err != nil {
		return nil, fmt.Errorf("workerd: relay tls: %w", err)
	}
	sidecarTLS, err := cfg.SidecarTLS.Server()
	if err != nil {
		return nil, fmt.Errorf("workerd: sidecar_tls: %w", err)
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("workerd: relay listener: %w", err)
	}
	w := &Workerd{
		cfg: cfg, log: log.With("component", "workerd"), plans: plans, lis: lis, inv: inv,
		http:   &http.Client{Timeout: 5 * time.Second},
		simCmd: simCmd, sidecarTLS: sidecarTLS, reg: opt.Registerer, nextID: map[string]int{},
	}
	if cfg.Consul != nil {
		w.consul, err = discovery.NewConsul(discovery.ConsulConfig{
			Address: cfg.Consul.Address, Service: cfg.Consul.Service, Tag: cfg.Consul.Tag,
			Datacenter: cfg.Consul.Datacenter, Token: cfg.Consul.Token,
		}, log)
		if err != nil {
			lis.Close()
			return nil, err
		}
	}
	out := opt.EngineOutput
	if out == nil {
		out = os.Stderr
	}
	w.out = out
	w.relay = relay.NewServer(w.engineInfos)
	w.zmq = engine.NewZMQMetrics(opt.Registerer) // nil registerer: counted, not exported
	for _, p := range plans {
		w.procs = append(w.procs, w.newProc(p))
	}
	if opt.Registerer != nil {
		if err := w.registerMetrics(opt.Registerer); err != nil {
			lis.Close()
			return nil, err
		}
	}
	if err := w.newSidecars(log, opt.Registerer, sidecarTLS); err != nil {
		lis.Close()
		return nil, err
	}
	var sopts []grpc.ServerOption
	if relayTLS != nil {
		sopts = append(sopts, grpc.Creds(credentials.NewTLS(relayTLS)))
	}
	w.srv = grpc.NewServer(sopts...)
	relayv1.RegisterRelayServer(w.srv, w.relay)
	fleetv1.RegisterFleetServer(w.srv, &fleetServer{w: w})
	return w, nil
}

// newProc is the supervisor of one planned engine, with its relay hub.
func (w *Workerd) newProc(p plan) *proc {
	h := w.relay.AddEngine(p.instance, relay.HubOptions{Ring: w.cfg.RingSize})
	return &proc{
		p: p, hub: h, cfg: &w.cfg, http: w.http, load: w.relay, state: StateStopped, zmq: w.zmq,
		log: w.log.With("engine", p.instance),
		out: &lineWriter{prefix: p.instance + " | ", w: w.out, mu: &w.outMu},
	}
}

// procList is a copy of the current engines' supervisors.
func (w *Workerd) procList() []*proc {
	w.procsMu.Lock()
	defer w.procsMu.Unlock()
	return slices.Clone(w.procs)
}

// Addr is the relay's bound gRPC address.
func (w *Workerd) Addr() string { return w.lis.Addr().String() }

// Advertise is the relay address written to Consul: Config.Advertise, else the bound
// address, with an unspecified host (0.0.0.0, ::) replaced by Config.Host or 127.0.0.1.
func (w *Workerd) Advertise() string {
	if w.cfg.Advertise != "" {
		return w.cfg.Advertise
	}
	host, port, err := net.SplitHostPort(w.Addr())
	if err != nil {
		return w.Addr()
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if w.cfg.Host != "" {
			host = w.cfg.Host
		}
	}
	return net.JoinHostPort(host, port)
}

// Inventory is the GPU inventory read by New.
func (w *Workerd) Inventory() gpu.Inventory { return w.inv }

// Engines returns the status of every engine, in config order.
func (w *Workerd) Engines() []EngineStatus {
	procs := w.procList()
	out := make([]EngineStatus, len(procs))
	for i, p := range procs {
		out[i] = p.status()
	}
	return out
}

// engineInfos is the relay's answer to Engines.
func (w *Workerd) engineInfos() []*relayv1.EngineInfo {
	var out []*relayv1.EngineInfo
	for _, st := range w.Engines() {
		info := &relayv1.EngineInfo{
			Name: st.Name, Kind: st.Kind, Models: st.Models, Role: st.Role, Address: st.Address,
			BlockSize: int32(st.BlockSize), State: st.State, Restarts: uint32(st.Restarts),
		}
		for _, g := range st.GPUs {
			info.Gpus = append(info.Gpus, int32(g))
		}
		out = append(out, info)
	}
	return out
}

// Run serves the relay, starts every engine, keeps them alive and registered until ctx ends,
// then shuts down gracefully: engines leave Consul first (routers stop sending), running
// requests get DrainTimeout to finish, then each engine gets SIGTERM and, after StopTimeout,
// SIGKILL. With Consul, DeregisterGrace separates leaving Consul from draining. Run can be
// called once.
func (w *Workerd) Run(ctx context.Context) error {
	w.runMu.Lock()
	if w.running {
		w.runMu.Unlock()
		return errors.New("workerd: Run called twice")
	}
	w.running = true
	w.runMu.Unlock()

	var wg sync.WaitGroup
	serveErr := make(chan error, 1)
	wg.Go(func() { serveErr <- w.srv.Serve(w.lis) })
	w.log.Info("relay listening", "addr", w.Addr(), "engines", len(w.procs), "gpus", len(w.inv.Devices), "gpu_reason", w.inv.Reason)

	stopSidecars := w.runSidecars(context.WithoutCancel(ctx))
	if w.consul != nil && (len(w.sidecars) > 0 || w.hasDecodeTemplate()) {
		// The sidecars may prefill on any healthy prefill engine registered in Consul: the
		// ones a router watching the same catalog can name.
		wg.Go(func() {
			// ... and migrate a failed decode stream to any healthy decode endpoint there.
			for eps := range w.consul.Watch(ctx) {
				w.prefills.Set(discovery.Addresses(eps, discovery.RolePrefill))
				w.decodes.Set(discovery.Addresses(eps, discovery.RoleDecode))
			}
		})
	}
	procCtx, stopProcs := context.WithCancel(context.WithoutCancel(ctx))
	regCtx, stopReg := context.WithCancel(context.WithoutCancel(ctx))
	var procWG, regWG sync.WaitGroup
	for _, p := range w.procList() {
		procWG.Go(func() { p.run(procCtx) })
		if w.consul != nil {
			reg := w.registration(p)
			regWG.Go(func() {
				if err := w.consul.Keep(regCtx, reg, time.Duration(w.cfg.Consul.ReregisterInterval)); err != nil {
					w.log.Error("consul registration refused", "engine", p.p.instance, "err", err)
				}
			})
		}
	}
	w.procsMu.Lock()
	w.live = &liveState{procCtx: procCtx, regCtx: regCtx, procWG: &procWG, regWG: &regWG}
	w.procsMu.Unlock()
	if w.consul != nil {
		regWG.Go(func() { w.keepNodeRegistration(regCtx) })
	}
	w.startMinReplicas(ctx)

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("workerd: relay server: %w", err)
	}
	w.log.Info("shutting down: deregistering engines")
	w.procsMu.Lock()
	w.live.stopping = true // no engine starts from here on
	w.procsMu.Unlock()
	stopReg()
	regWG.Wait()
	if w.consul != nil {
		// Routers learn of the deregistration from their Consul watches; a request they
		// route before that must still find the engine up, so wait before draining.
		grace := time.Duration(w.cfg.Consul.DeregisterGrace)
		w.log.Info("deregistered; waiting for routers to stop sending", "grace", grace)
		time.Sleep(grace)
	}
	w.drain()
	stopProcs()
	procWG.Wait()
	stopSidecars()
	w.srv.Stop()
	wg.Wait()
	w.log.Info("workerd stopped")
	return err
}

// drain waits until no engine reports running or waiting requests, or DrainTimeout.
func (w *Workerd) drain() {
	deadline := time.Now().Add(time.Duration(w.cfg.DrainTimeout))
	for {
		busy := 0
		for _, p := range w.procList() {
			st := p.status()
			if st.State != StateRunning {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			l, err := scrape(ctx, w.http, "http://"+st.Address+"/metrics")
			cancel()
			if err == nil {
				busy += int(l.Running + l.Waiting)
			}
		}
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			w.log.Warn("drain timeout; stopping engines with requests in flight", "requests", busy)
			return
		}
		w.log.Info("draining", "requests", busy)
		time.Sleep(200 * time.Millisecond)
	}
}

func (w *Workerd) registration(p *proc) discovery.Registration {
	return discovery.Registration{
		Endpoint: discovery.Endpoint{
			Name: p.p.instance, Address: w.engineAddress(p.p), Models: p.p.models, Role: p.p.role,
			BlockSize: p.p.blockSize, KVEvents: p.p.kvEvents, KVReplay: p.p.kvReplay, Workerd: w.Advertise(),
		},
		Kind:            p.p.spec.Kind,
		HealthURL:       "http://" + w.engineAddress(p.p) + p.p.health,
		CheckInterval:   time.Duration(w.cfg.Consul.CheckInterval),
		DeregisterAfter: time.Duration(w.cfg.Consul.DeregisterAfter),
	}
}
