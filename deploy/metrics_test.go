package deploy_test

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/fleet"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/planner"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/sidecar"
	"github.com/kvgate/kvgate/tokenizer"
	"github.com/kvgate/kvgate/workerd"
	"github.com/kvgate/kvgate/xds"
)

// recorder is a Registerer that keeps every collector registered through it, so that the
// names of metric vectors with no series yet are known too (a Gather leaves them out).
type recorder struct {
	reg *prometheus.Registry
	cs  []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.cs = append(r.cs, c)
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// kind is a metric's type as far as the check needs it: which series names it exports.
type kind int

const (
	untyped kind = iota // only the name itself is accepted
	counter
	gauge
	histogram
	summary
)

// series returns the names a metric of this kind exports in the text format Prometheus scrapes.
func (k kind) series(name string) []string {
	switch k {
	case histogram:
		return []string{name + "_bucket", name + "_sum", name + "_count"}
	case summary:
		return []string{name, name + "_sum", name + "_count"}
	}
	return []string{name}
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// names returns every metric the recorded collectors describe, typed where the collector
// says (a vector's Go type, or a metric it collects).
func (r *recorder) names(t *testing.T) map[string]kind {
	out := map[string]kind{}
	for _, c := range r.cs {
		k := untyped
		switch c.(type) {
		case *prometheus.CounterVec:
			k = counter
		case *prometheus.GaugeVec:
			k = gauge
		case *prometheus.HistogramVec:
			k = histogram
		case *prometheus.SummaryVec:
			k = summary
		}
		descs := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(descs); close(descs) }()
		for d := range descs {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot read the name of %s", d)
			}
			if out[m[1]] == untyped {
				out[m[1]] = k
			}
		}
		ms := make(chan prometheus.Metric, 64)
		go func() { c.Collect(ms); close(ms) }()
		for m := range ms {
			var pb dto.Metric
			if err := m.Write(&pb); err != nil {
				t.Fatal(err)
			}
			name := fqName.FindStringSubmatch(m.Desc().String())[1]
			switch {
			case pb.Histogram != nil:
				out[name] = histogram
			case pb.Summary != nil:
				out[name] = summary
			case pb.Counter != nil:
				out[name] = counter
			case pb.Gauge != nil:
				out[name] = gauge
			}
		}
	}
	return out
}

// gathered adds what a registry exposes now, typed by its metric families.
func gathered(t *testing.T, g prometheus.Gatherer, into map[string]kind) {
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		k := untyped
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			k = counter
		case dto.MetricType_GAUGE:
			k = gauge
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			k = histogram
		case dto.MetricType_SUMMARY:
			k = summary
		}
		into[mf.GetName()] = k
	}
}

// exportedSeries builds every kvgate component that exports metrics, in process, with the
// registry each is given in cmd/kvgate, and returns the series names they export: the
// router (with its KV index, pools and admission queue), ext_proc, the gateway and its
// remote-EPP client, the xds server, workerd with its GPU monitor, ZMQ guard and sidecar,
// the planner loop, the simulated engine (whose vllm:* metrics mirror vLLM's), and the Go
// and process collectors every command registers.
func exportedSeries(t *testing.T) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.DiscardHandler)
	rec := &recorder{reg: prometheus.NewRegistry()}
	var runs []func(context.Context) error

	rec.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	cfg := router.DefaultConfig()
	cfg.Models = tokenizer.DefaultModelMap()
	cfg.Endpoints = []router.Endpoint{
		{Name: "agg", Address: "127.0.0.1:1", Models: []string{"Qwen/Qwen3-0.6B"}},
		{Name: "decode", Address: "127.0.0.1:2", Models: []string{"Qwen/Qwen3-0.6B"}, Role: router.RoleDecode},
	}
	rt, err := router.New(cfg, log, rec)
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, rt.Run)
	ep, err := extproc.New(extproc.Config{Addr: "127.0.0.1:0"}, rt, log, rec)
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, ep.Run)
	gw, err := gateway.New(gateway.Config{Addr: "127.0.0.1:0", Gatherer: rec.reg}, rt, log, rec)
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, gw.Run)
	eppRec := &recorder{reg: prometheus.NewRegistry()} // `kvgate gateway --epp` is a process of its own
	epp, err := gateway.NewEPP(gateway.Config{Addr: "127.0.0.1:0"}, gateway.EPPConfig{Addr: "127.0.0.1:1",
		Pool: []router.Endpoint{{Address: "127.0.0.1:1", Models: []string{"m"}}}}, log, eppRec)
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, epp.Run)

	xs, err := xds.New(xds.Config{Listen: "127.0.0.1:0", Model: xds.Model{Router: []string{"127.0.0.1:9002"}},
		Source: discovery.NewStatic(nil), Log: log, Registerer: rec})
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, xs.Run)

	wd, err := workerd.New(ctx, workerd.Config{Listen: "127.0.0.1:0"}, workerd.Options{Log: log, Registerer: rec,
		GPUs: gpu.NewFake(gpu.FakeInventory(1, "fake", 80<<30)), SimCommand: []string{"false"}})
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, wd.Run)
	mon, err := gpu.NewMonitor(ctx, gpu.NewFake(gpu.FakeInventory(1, "fake", 80<<30)), time.Hour, rec, log)
	if err != nil {
		t.Fatal(err)
	}
	_ = mon
	engine.NewZMQMetrics(rec)
	sc, err := sidecar.New(sidecar.Config{Addr: "127.0.0.1:0", Engine: "127.0.0.1:1"}, log, rec)
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, sc.Run)

	nodes := func(context.Context) ([]fleet.Node, error) { return nil, nil }
	demand := func(context.Context) ([]router.PoolStats, error) { return nil, nil }
	if _, err := fleet.New(fleet.Config{Planner: planner.Config{Mode: planner.ModeStatic}, Nodes: nodes, Demand: demand}, log, rec); err != nil {
		t.Fatal(err)
	}

	simReg := prometheus.NewRegistry()
	ss, err := sim.NewServer(sim.ServerConfig{Engine: sim.Config{NumBlocks: 64}, BlockBytes: 64,
		KVEvents: "tcp://127.0.0.1:0", KVEventsReplay: "tcp://127.0.0.1:0"}, log, simReg)
	if err != nil {
		t.Fatal(err)
	}
	runs = append(runs, ss.Run)

	done := make(chan error, len(runs))
	for _, run := range runs {
		go func() { done <- run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range runs {
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("stopping: %v", err)
			}
		}
	})

	kinds := rec.names(t)
	for name, k := range eppRec.names(t) {
		kinds[name] = k
	}
	gathered(t, rec.reg, kinds)
	gathered(t, eppRec.reg, kinds)
	gathered(t, simReg, kinds)
	out := map[string]bool{}
	for name, k := range kinds {
		for _, s := range k.series(name) {
			out[s] = true
		}
	}
	return out
}

func sortedNames(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
