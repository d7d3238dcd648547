package workerd

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	fleetv1 "github.com/kvgate/kvgate/api/fleet/v1"
	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/polltest"
)

// The fleet API through gRPC against a running workerd with sim templates and a real Consul:
// min_replicas started with workerd, the GPU budget and max_replicas enforced, a new engine
// announced in Consul only once healthy (a broken one never), a drain that lets a streaming
// request finish before the engine stops, and min_replicas kept.
func TestFleetAPI(t *testing.T) {
	agent := consultest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	slow := map[string]string{simChildEnv: "1", simSpeedEnv: "1"}
	cfg := Config{
		Node:           "n1",
		GPUs:           3, // declared: the fake inventory has none
		Consul:         &ConsulConfig{Address: agent.Addr, CheckInterval: Duration(time.Second), ReregisterInterval: Duration(500 * time.Millisecond), DeregisterGrace: Duration(300 * time.Millisecond)},
		ScrapeInterval: Duration(200 * time.Millisecond),
		MinBackoff:     Duration(200 * time.Millisecond),
		MaxBackoff:     Duration(time.Second),
		DrainTimeout:   Duration(2 * time.Second),
		StopTimeout:    Duration(5 * time.Second),
		Templates: []Template{
			{Name: "agg", Kind: KindSim, Model: "sim-model", GPUs: 1, MinReplicas: 1, MaxReplicas: 2, Env: slow},
			{Name: "broken", Kind: KindSim, GPUs: 1, Binary: "false"},
		},
	}
	w, err := New(ctx, cfg, Options{
		Log: testLog(t), GPUs: gpu.NewFake(gpu.FakeInventory(0, "", 0)), SimCommand: selfCommand(t), EngineOutput: &syncBuffer{},
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()

	conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fc := fleetv1.NewFleetClient(conn)
	node := func() *fleetv1.NodeResponse {
		t.Helper()
		n, err := fc.Node(ctx, &fleetv1.NodeRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	engineState := func(name string) string {
		for _, e := range node().GetEngines() {
			if e.GetName() == name {
				return e.GetState()
			}
		}
		return ""
	}
	inConsul := func(id string) (bool, bool) {
		entries, _, err := agent.Client.Health().Service("kvgate-engine", "", false, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Service.ID == id {
				return true, e.Checks.AggregatedStatus() == api.HealthPassing
			}
		}
		return false, false
	}

	// min_replicas: agg-0 starts with workerd; the node itself is in Consul for planners.
	polltest.Until(t, 2*time.Minute, "agg-0 running", func() bool { return engineState("n1-agg-0") == StateRunning })
	n := node()
	if n.GetNode() != "n1" || n.GetGpusTotal() != 3 || n.GetGpusFree() != 2 || len(n.GetTemplates()) != 2 {
		t.Fatalf("Node = %v", n)
	}
	if tp := n.GetTemplates()[0]; tp.GetName() != "agg" || tp.GetReplicas() != 1 || tp.GetGpusPerEngine() != 1 || tp.GetMaxReplicas() != 2 || tp.GetRole() != "aggregated" {
		t.Fatalf("template = %v", tp)
	}
	polltest.Until(t, 10*time.Second, "the node in consul", func() bool {
		svcs, _, err := agent.Client.Catalog().Service(NodeService, "", nil)
		return err == nil && len(svcs) == 1 && svcs[0].ServiceMeta[MetaNode] == "n1" && svcs[0].ServiceMeta[MetaGPUs] == "3"
	})

	// Refusals, each with its code.
	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"unknown template", func() error { _, err := fc.Start(ctx, &fleetv1.StartRequest{Template: "nope", Count: 1}); return err }, codes.NotFound},
		{"zero count", func() error { _, err := fc.Start(ctx, &fleetv1.StartRequest{Template: "agg"}); return err }, codes.InvalidArgument},
		{"past max_replicas", func() error { _, err := fc.Start(ctx, &fleetv1.StartRequest{Template: "agg", Count: 2}); return err }, codes.FailedPrecondition},
		{"past min_replicas", func() error { _, err := fc.Drain(ctx, &fleetv1.DrainRequest{Template: "agg", Count: 1}); return err }, codes.FailedPrecondition},
		{"unknown engine", func() error { _, err := fc.Drain(ctx, &fleetv1.DrainRequest{Engines: []string{"n1-x-1"}}); return err }, codes.NotFound},
		{"negative timeout", func() error {
			_, err := fc.Drain(ctx, &fleetv1.DrainRequest{Template: "agg", Count: 1, TimeoutMs: -1})
			return err
		}, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := status.Code(tc.call()); got != tc.code {
				t.Fatalf("code %v, want %v", got, tc.code)
			}
		})
	}

	// A broken engine keeps failing its start and is never announced.
	if _, err := fc.Start(ctx, &fleetv1.StartRequest{Template: "broken", Count: 1}); err != nil {
		t.Fatal(err)
	}
	polltest.Until(t, 20*time.Second, "broken-0 restarted", func() bool {
		for _, st := range w.Engines() {
			if st.Name == "n1-broken-0" {
				return st.Restarts >= 2
			}
		}
		return false
	})
	if in, _ := inConsul("n1-broken-0"); in {
		t.Fatal("an engine that never became healthy is in consul")
	}
	// One GPU is left: two more engines cannot start.
	if _, err := fc.Start(ctx, &fleetv1.StartRequest{Template: "broken", Count: 2}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("Start past the GPUs: %v", err)
	}
	if _, err := fc.Drain(ctx, &fleetv1.DrainRequest{Engines: []string{"n1-broken-0"}}); err != nil {
		t.Fatal(err)
	}
	polltest.Until(t, 20*time.Second, "broken-0 gone", func() bool { return engineState("n1-broken-0") == "" })

	// Start one more agg: it is announced once healthy, then serves.
	st, err := fc.Start(ctx, &fleetv1.StartRequest{Template: "agg", Count: 1})
	if err != nil || !slices.Equal(st.GetEngines(), []string{"n1-agg-1"}) {
		t.Fatalf("Start = %v, %v", st, err)
	}
	polltest.Until(t, 2*time.Minute, "agg-1 healthy in consul", func() bool { _, ok := inConsul("n1-agg-1"); return ok })
	var addr string
	for _, e := range node().GetEngines() {
		if e.GetName() == "n1-agg-1" {
			addr = e.GetAddress()
			if e.GetState() != StateRunning {
				t.Fatalf("agg-1 in consul while %s", e.GetState())
			}
		}
	}

	// A streaming request in flight on agg-1, then drain agg-1: it leaves Consul, the request
	// finishes whole, then the engine stops and its GPU is free again.
	body, _ := json.Marshal(map[string]any{"model": "sim-model", "prompt": "hello there", "max_tokens": 400, "stream": true, "ignore_eos": true})
	resp, err := http.Post("http://"+addr+"/v1/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	if !sc.Scan() {
		t.Fatalf("no first chunk: %v", sc.Err())
	}
	dr, err := fc.Drain(ctx, &fleetv1.DrainRequest{Engines: []string{"n1-agg-1"}, TimeoutMs: 30000})
	if err != nil || !slices.Equal(dr.GetEngines(), []string{"n1-agg-1"}) {
		t.Fatalf("Drain = %v, %v", dr, err)
	}
	if s := engineState("n1-agg-1"); s != StateDraining {
		t.Fatalf("agg-1 state %q after Drain", s)
	}
	polltest.Until(t, 10*time.Second, "agg-1 out of consul", func() bool { in, _ := inConsul("n1-agg-1"); return !in })
	chunks, done := 1, false
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "data: [DONE]" {
			done = true
		}
		if strings.HasPrefix(sc.Text(), "data: ") {
			chunks++
		}
	}
	if !done || sc.Err() != nil {
		t.Fatalf("stream cut by the drain after %d chunks: %v", chunks, sc.Err())
	}
	polltest.Until(t, 20*time.Second, "agg-1 stopped and forgotten", func() bool { return engineState("n1-agg-1") == "" })
	if n := node(); n.GetGpusFree() != 2 || n.GetTemplates()[0].GetReplicas() != 1 {
		t.Fatalf("after the drain: %v", n)
	}
}

// Disaggregated templates without Consul: a decode engine started from a template is reached
// through its own P/D sidecar, and the node's template prefill engines are the ones its
// sidecar may send prompts to, until they are drained.
func TestFleetDisaggTemplates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	env := map[string]string{simChildEnv: "1"}
	cfg := Config{
		Node: "n", GPUs: 2, ScrapeInterval: Duration(200 * time.Millisecond), StopTimeout: Duration(5 * time.Second),
		Templates: []Template{
			{Name: "p", Kind: KindSim, Model: "sim-model", Role: "prefill", GPUs: 1, Env: env},
			{Name: "d", Kind: KindSim, Model: "sim-model", Role: "decode", GPUs: 1, MinReplicas: 1, Env: env},
		},
	}
	w, err := New(ctx, cfg, Options{Log: testLog(t), GPUs: gpu.NewFake(gpu.Inventory{}), SimCommand: selfCommand(t), EngineOutput: &syncBuffer{}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()
	conn, err := grpc.NewClient(w.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fc := fleetv1.NewFleetClient(conn)
	// Run starts the template minimum once it is live; before that the fleet API answers
	// Unavailable (a CI run got there first).
	polltest.Until(t, 30*time.Second, "the decode template's min replica started", func() bool {
		for _, st := range w.Engines() {
			if st.Name == "n-d-0" {
				return true
			}
		}
		return false
	})
	if _, err := fc.Start(ctx, &fleetv1.StartRequest{Template: "p", Count: 1}); err != nil {
		t.Fatal(err)
	}
	var pre, dec EngineStatus
	polltest.Until(t, 60*time.Second, "both engines running", func() bool {
		for _, st := range w.Engines() {
			switch st.Name {
			case "n-p-0":
				pre = st
			case "n-d-0":
				dec = st
			}
		}
		return pre.State == StateRunning && dec.State == StateRunning
	})
	n, err := fc.Node(ctx, &fleetv1.NodeRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range n.GetEngines() {
		if e.GetName() == "n-d-0" && (e.GetAddress() == dec.Address || e.GetAddress() == "") {
			t.Fatalf("decode engine announced at %q, its engine at %s: want its sidecar", e.GetAddress(), dec.Address)
		}
		if e.GetName() == "n-p-0" && e.GetAddress() != pre.Address {
			t.Fatalf("prefill engine announced at %q, want %s", e.GetAddress(), pre.Address)
		}
	}
	if !w.prefills.Has(pre.Address) {
		t.Fatalf("the sidecars do not know the template prefill engine %s", pre.Address)
	}
	if _, err := fc.Drain(ctx, &fleetv1.DrainRequest{Template: "p", Count: 1}); err != nil {
		t.Fatal(err)
	}
	if w.prefills.Has(pre.Address) {
		t.Fatal("a draining prefill engine is still offered to the sidecars")
	}
}
