package workerd

import (
	"context"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fleetv1 "github.com/kvgate/kvgate/api/fleet/v1"
	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/sidecar"
)

// NodeService is the Consul service every workerd with Consul registers itself under, with
// its fleet and relay gRPC address, so that a planner finds nodes that run no engine yet.
const NodeService = "kvgate-workerd"

// Consul meta keys of a NodeService instance.
const (
	MetaNode = "node" // the node name
	MetaGPUs = "gpus" // GPUs the node may hand out, decimal
)

// liveState is what starting an engine while Run runs needs; stopping is set when Run
// begins its shutdown, after which no engine starts or drains.
type liveState struct {
	procCtx, regCtx context.Context
	procWG, regWG   *sync.WaitGroup
	stopping        bool
}

func (w *Workerd) template(name string) (Template, bool) {
	for _, t := range w.cfg.Templates {
		if t.Name == name {
			return t, true
		}
	}
	return Template{}, false
}

// usableGPUs counts the devices an engine may be given (MIG devices are not).
func (w *Workerd) usableGPUs() int {
	n := 0
	for _, d := range w.inv.Devices {
		if !d.MIG {
			n++
		}
	}
	return n
}

// usedGPUsLocked is the set of GPUs the current engines hold. procsMu is held.
func (w *Workerd) usedGPUsLocked() map[int]bool {
	used := map[int]bool{}
	for _, p := range w.procs {
		for _, g := range p.p.gpus {
			used[g] = true
		}
	}
	return used
}

// replicasLocked counts the template's engines that are not draining. procsMu is held.
func (w *Workerd) replicasLocked(template string) int {
	n := 0
	for _, p := range w.procs {
		if p.template == template && !p.isDraining() {
			n++
		}
	}
	return n
}

func (e *proc) isDraining() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.draining
}

// hasDecodeTemplate reports whether a template's engines get P/D sidecars.
func (w *Workerd) hasDecodeTemplate() bool {
	for _, t := range w.cfg.Templates {
		if t.role() == discovery.RoleDecode && !t.NoSidecar {
			return true
		}
	}
	return false
}

// followTemplatePrefillsLocked tells the sidecars about this node's template prefill
// engines when no Consul does (with Consul they are followed there once healthy). procsMu
// is held.
func (w *Workerd) followTemplatePrefillsLocked() {
	if w.consul != nil {
		return
	}
	var addrs []string
	for _, p := range w.procs {
		if p.template != "" && p.p.role == discovery.RolePrefill && !p.isDraining() {
			addrs = append(addrs, p.p.addr)
		}
	}
	w.prefills.Set(addrs)
}

// startMinReplicas starts every template's min_replicas engines when Run begins.
func (w *Workerd) startMinReplicas(ctx context.Context) {
	for _, t := range w.cfg.Templates {
		if t.MinReplicas == 0 {
			continue
		}
		if _, err := w.startTemplate(ctx, t.Name, t.MinReplicas); err != nil {
			w.log.Error("template's min_replicas not started", "template", t.Name, "err", err)
		}
	}
}

// startTemplate starts count engines of the template and returns their names. The engines
// are registered in Consul once healthy. Errors are gRPC statuses.
func (w *Workerd) startTemplate(ctx context.Context, name string, count int) ([]string, error) {
	t, ok := w.template(name)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "no template %q on node %s", name, w.cfg.Node)
	}
	if count < 1 {
		return nil, status.Errorf(codes.InvalidArgument, "count %d: want at least 1", count)
	}
	w.procsMu.Lock()
	defer w.procsMu.Unlock()
	live := w.live
	if live == nil || live.stopping {
		return nil, status.Error(codes.Unavailable, "workerd is not running")
	}
	have := w.replicasLocked(name)
	if t.MaxReplicas > 0 && have+count > t.MaxReplicas {
		return nil, status.Errorf(codes.FailedPrecondition, "template %q: %d running + %d would pass max_replicas %d", name, have, count, t.MaxReplicas)
	}
	used := w.usedGPUsLocked()
	if need, free := count*t.gpusPerEngine(), w.usableGPUs()-len(used); need > free {
		return nil, status.Errorf(codes.ResourceExhausted, "template %q: %d engine(s) need %d GPU(s), %d free of %d on node %s",
			name, count, need, free, w.usableGPUs(), w.cfg.Node)
	}
	specs := make([]EngineSpec, count)
	for i := range specs {
		specs[i] = t.spec(w.nextID[name])
		w.nextID[name]++
	}
	plans, err := makePlans(ctx, w.cfg, specs, w.inv, used, w.simCmd)
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "template %q: %v", name, err)
	}
	names := make([]string, 0, count)
	for _, pl := range plans {
		var sc *sidecar.Server
		if pl.sidecar != "" {
			sc, err = sidecar.New(sidecar.Config{Addr: pl.sidecar, Engine: pl.addr, Name: pl.instance, Prefill: w.prefills, Decode: w.decodes, TLS: w.sidecarTLS}, w.log, w.reg)
			if err != nil {
				return names, status.Errorf(codes.Internal, "engine %s: %v", pl.instance, err)
			}
			w.sidecars[pl.instance] = sc
		}
		p := w.newProc(pl)
		p.template = name
		pctx, cancel := context.WithCancel(live.procCtx)
		p.cancel, p.done = cancel, make(chan struct{})
		w.procs = append(w.procs, p)
		live.procWG.Go(func() {
			defer close(p.done)
			var scWG sync.WaitGroup
			if sc != nil {
				scWG.Go(func() {
					if err := sc.Run(pctx); err != nil {
						w.log.Error("sidecar stopped", "engine", pl.instance, "err", err)
					}
				})
			}
			p.run(pctx)
			scWG.Wait()
		})
		p.unregister = func() {}
		if w.consul != nil {
			reg := w.registration(p)
			rctx, rcancel := context.WithCancel(live.regCtx)
			regDone := make(chan struct{})
			live.regWG.Go(func() {
				defer close(regDone)
				if !p.waitRunning(rctx, time.Duration(w.cfg.ScrapeInterval)) {
					return
				}
				if err := w.consul.Keep(rctx, reg, time.Duration(w.cfg.Consul.ReregisterInterval)); err != nil {
					w.log.Error("consul registration refused", "engine", pl.instance, "err", err)
				}
			})
			p.unregister = func() { rcancel(); <-regDone }
		}
		names = append(names, pl.instance)
		w.log.Info("engine started from template", "template", name, "engine", pl.instance, "gpus", pl.gpus)
	}
	w.followTemplatePrefillsLocked()
	return names, nil
}

// waitRunning waits until the engine passes its health check (true) or ctx ends (false).
func (e *proc) waitRunning(ctx context.Context, every time.Duration) bool {
	t := time.NewTicker(every / 4)
	defer t.Stop()
	for {
		if e.status().State == StateRunning {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// drainEngines marks engines draining and drains and stops each in the background: the
// named ones, or count of the template's (not yet running first, then the least busy, then
// the newest). Errors are gRPC statuses.
func (w *Workerd) drainEngines(template string, count int, names []string, timeout time.Duration) ([]string, error) {
	if timeout <= 0 {
		timeout = time.Duration(w.cfg.DrainTimeout)
	}
	w.procsMu.Lock()
	defer w.procsMu.Unlock()
	live := w.live
	if live == nil || live.stopping {
		return nil, status.Error(codes.Unavailable, "workerd is not running")
	}
	var victims []*proc
	switch {
	case len(names) > 0:
		leaving := map[string]int{}
		for _, n := range names {
			i := slices.IndexFunc(w.procs, func(p *proc) bool { return p.p.instance == n })
			if i < 0 {
				return nil, status.Errorf(codes.NotFound, "no engine %q on node %s", n, w.cfg.Node)
			}
			p := w.procs[i]
			if p.template == "" {
				return nil, status.Errorf(codes.FailedPrecondition, "engine %q is from the engines list, not a template", n)
			}
			if p.isDraining() || slices.Contains(victims, p) {
				continue
			}
			leaving[p.template]++
			victims = append(victims, p)
		}
		for tn, k := range leaving {
			t, _ := w.template(tn)
			if have := w.replicasLocked(tn); have-k < t.MinReplicas {
				return nil, status.Errorf(codes.FailedPrecondition, "template %q: draining %d of %d would pass min_replicas %d", tn, k, have, t.MinReplicas)
			}
		}
	default:
		t, ok := w.template(template)
		if !ok {
			return nil, status.Errorf(codes.NotFound, "no template %q on node %s", template, w.cfg.Node)
		}
		if count < 1 {
			return nil, status.Errorf(codes.InvalidArgument, "count %d: want at least 1 (or name engines)", count)
		}
		var cands []*proc
		for _, p := range w.procs {
			if p.template == template && !p.isDraining() {
				cands = append(cands, p)
			}
		}
		if len(cands)-count < t.MinReplicas {
			return nil, status.Errorf(codes.FailedPrecondition, "template %q: draining %d of %d would pass min_replicas %d", template, count, len(cands), t.MinReplicas)
		}
		victims = pickVictims(cands, count)
	}
	out := make([]string, 0, len(victims))
	for _, p := range victims {
		p.set(func() { p.draining = true })
		out = append(out, p.p.instance)
		live.procWG.Go(func() { w.drainOne(live.procCtx, p, timeout) })
	}
	w.followTemplatePrefillsLocked()
	return out, nil
}

// pickVictims orders engines by how cheap they are to stop: not serving yet, then the
// fewest requests, then the newest (the highest number); it returns the first n.
func pickVictims(cands []*proc, n int) []*proc {
	type c struct {
		p       *proc
		running bool
		load    float64
		num     int
	}
	cs := make([]c, len(cands))
	for i, p := range cands {
		st := p.status()
		num, _ := strconv.Atoi(st.Name[len(st.Name)-len(trailingDigits(st.Name)):])
		cs[i] = c{p, st.State == StateRunning, st.Load.Running + st.Load.Waiting, num}
	}
	slices.SortStableFunc(cs, func(a, b c) int {
		switch {
		case a.running != b.running:
			if !a.running {
				return -1
			}
			return 1
		case a.load != b.load:
			if a.load < b.load {
				return -1
			}
			return 1
		}
		return b.num - a.num
	})
	out := make([]*proc, 0, n)
	for _, x := range cs[:min(n, len(cs))] {
		out = append(out, x.p)
	}
	return out
}

func trailingDigits(s string) string {
	i := len(s)
	for i > 0 && s[i-1] >= '0' && s[i-1] <= '9' {
		i--
	}
	return s[i:]
}

// drainOne takes the engine out of Consul, waits DeregisterGrace for routers to notice,
// waits for its requests to finish (at most timeout), stops it and forgets it. ctx ending
// (workerd shutting down) cuts the waits short; the shutdown drains what is left.
func (w *Workerd) drainOne(ctx context.Context, p *proc, timeout time.Duration) {
	log := w.log.With("engine", p.p.instance)
	log.Info("draining engine", "timeout", timeout)
	p.unregister()
	sleep := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	if w.consul == nil || sleep(time.Duration(w.cfg.Consul.DeregisterGrace)) {
		deadline := time.Now().Add(timeout)
		for {
			st := p.status()
			if !st.Healthy { // not serving: starting, or exited and waiting to restart
				break
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			l, err := scrape(sctx, w.http, "http://"+st.Address+"/metrics")
			cancel()
			if err == nil && l.Running+l.Waiting == 0 {
				break
			}
			if time.Now().After(deadline) {
				log.Warn("drain timeout; stopping the engine with requests in flight", "requests", l.Running+l.Waiting)
				break
			}
			if !sleep(100 * time.Millisecond) {
				break
			}
		}
	}
	p.cancel()
	<-p.done
	w.procsMu.Lock()
	w.procs = slices.DeleteFunc(w.procs, func(q *proc) bool { return q == p })
	delete(w.sidecars, p.p.instance)
	w.procsMu.Unlock()
	w.relay.RemoveEngine(p.p.instance)
	log.Info("engine drained and stopped")
}

// keepNodeRegistration registers this workerd as a NodeService instance until ctx ends,
// registering it again when the agent forgot it, then deregisters it.
func (w *Workerd) keepNodeRegistration(ctx context.Context) {
	host, portStr, err := net.SplitHostPort(w.Advertise())
	port, perr := strconv.Atoi(portStr)
	if err != nil || perr != nil {
		w.log.Error("node not registered in consul: bad advertise address", "addr", w.Advertise())
		return
	}
	agent := w.consul.Client().Agent()
	id := NodeService + "-" + w.cfg.Node
	reg := &api.AgentServiceRegistration{
		ID: id, Name: NodeService, Address: host, Port: port,
		Meta: map[string]string{MetaNode: w.cfg.Node, MetaGPUs: strconv.Itoa(w.usableGPUs())},
	}
	if w.cfg.Consul.Tag != "" {
		reg.Tags = []string{w.cfg.Consul.Tag}
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = agent.ServiceDeregisterOpts(id, (&api.QueryOptions{}).WithContext(dctx))
	}()
	t := time.NewTicker(time.Duration(w.cfg.Consul.ReregisterInterval))
	defer t.Stop()
	for {
		if _, _, err := agent.Service(id, (&api.QueryOptions{}).WithContext(ctx)); err != nil && ctx.Err() == nil {
			if err := agent.ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
				w.log.Warn("node registration in consul failed; retrying", "err", err)
			} else {
				w.log.Info("node registered in consul", "service", NodeService, "id", id)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// fleetServer serves api/fleet/v1 for the workerd.
type fleetServer struct {
	fleetv1.UnimplementedFleetServer
	w *Workerd
}

var _ fleetv1.FleetServer = (*fleetServer)(nil)

func (s *fleetServer) Node(context.Context, *fleetv1.NodeRequest) (*fleetv1.NodeResponse, error) {
	w := s.w
	w.procsMu.Lock()
	free := w.usableGPUs() - len(w.usedGPUsLocked())
	reps := map[string]int{}
	for _, t := range w.cfg.Templates {
		reps[t.Name] = w.replicasLocked(t.Name)
	}
	w.procsMu.Unlock()
	resp := &fleetv1.NodeResponse{Node: w.cfg.Node, GpusTotal: int32(w.usableGPUs()), GpusFree: int32(free)}
	for _, t := range w.cfg.Templates {
		resp.Templates = append(resp.Templates, &fleetv1.Template{
			Name: t.Name, Kind: t.Kind, Model: t.servedModel(), Role: t.role(), GpusPerEngine: int32(t.gpusPerEngine()),
			MinReplicas: int32(t.MinReplicas), MaxReplicas: int32(t.MaxReplicas), Replicas: int32(reps[t.Name]),
		})
	}
	for _, p := range w.procList() {
		st := p.status()
		e := &fleetv1.Engine{
			Name: st.Name, Template: st.Template, Kind: st.Kind, Models: st.Models, Role: st.Role,
			Address: w.engineAddressLocked(p), State: st.State, Restarts: uint32(st.Restarts),
			Running: uint32(st.Load.Running), Waiting: uint32(st.Load.Waiting), KvUsage: st.Load.KVUsage,
		}
		for _, g := range st.GPUs {
			e.Gpus = append(e.Gpus, int32(g))
		}
		resp.Engines = append(resp.Engines, e)
	}
	return resp, nil
}

// engineAddressLocked is engineAddress with the sidecar map read under procsMu.
func (w *Workerd) engineAddressLocked(p *proc) string {
	w.procsMu.Lock()
	defer w.procsMu.Unlock()
	return w.engineAddress(p.p)
}

func (s *fleetServer) Start(ctx context.Context, req *fleetv1.StartRequest) (*fleetv1.StartResponse, error) {
	names, err := s.w.startTemplate(ctx, req.GetTemplate(), int(req.GetCount()))
	if err != nil {
		return nil, err
	}
	return &fleetv1.StartResponse{Engines: names}, nil
}

func (s *fleetServer) Drain(_ context.Context, req *fleetv1.DrainRequest) (*fleetv1.DrainResponse, error) {
	if req.GetTimeoutMs() < 0 {
		return nil, status.Errorf(codes.InvalidArgument, "timeout_ms %d is negative", req.GetTimeoutMs())
	}
	names, err := s.w.drainEngines(req.GetTemplate(), int(req.GetCount()), req.GetEngines(), time.Duration(req.GetTimeoutMs())*time.Millisecond)
	if err != nil {
		return nil, err
	}
	return &fleetv1.DrainResponse{Engines: names}, nil
}

// FleetAddress says where the fleet API is served: the relay's gRPC listener.
func (w *Workerd) FleetAddress() string { return w.Advertise() }
