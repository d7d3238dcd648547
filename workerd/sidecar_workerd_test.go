package workerd

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/engine/vllm"
	"github.com/kvgate/kvgate/gpu"
	"github.com/kvgate/kvgate/sidecar"
)

// TestPlansPD: a decode engine gets a sidecar (its own port, or any), a vLLM P/D engine its
// NIXL side channel (the spec's env wins), an aggregated one neither.
func TestPlansPD(t *testing.T) {
	vllmBin := fakeBinary(t, "vllm")
	cfg := Config{Node: "n", Engines: []EngineSpec{
		{Name: "p", Kind: KindVLLM, Model: "m", Role: "prefill", NixlPort: 5600, Binary: vllmBin},
		{Name: "d", Kind: KindVLLM, Model: "m", Role: "decode", Binary: vllmBin, Env: map[string]string{vllm.EnvNixlSideChannelHost: "10.1.2.3"}},
		{Name: "a", Kind: KindVLLM, Model: "m", Binary: vllmBin},
		{Name: "s", Kind: KindSim, Role: "decode", NoSidecar: true},
	}}
	w, err := New(context.Background(), cfg, Options{GPUs: gpu.NewFake(gpu.FakeInventory(3, "H100", 80<<30)), SimCommand: []string{vllmBin, "sim"}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.lis.Close()
	defer func() {
		for _, s := range w.sidecars {
			s.Close()
		}
	}()
	env := func(i int, key string) string {
		v := ""
		for _, kv := range w.plans[i].env { // the last one wins, as in exec
			if k, val, _ := strings.Cut(kv, "="); k == key {
				v = val
			}
		}
		return v
	}
	if env(0, vllm.EnvNixlSideChannelPort) != "5600" || env(0, vllm.EnvNixlSideChannelHost) != "127.0.0.1" {
		t.Errorf("prefill env %v", w.plans[0].env)
	}
	if env(1, vllm.EnvNixlSideChannelPort) == "" || env(1, vllm.EnvNixlSideChannelHost) != "10.1.2.3" {
		t.Errorf("decode env %v", w.plans[1].env)
	}
	if env(2, vllm.EnvNixlSideChannelPort) != "" || slices.Contains(w.plans[2].argv, "--kv-transfer-config") {
		t.Errorf("aggregated engine has P/D settings: %v %v", w.plans[2].env, w.plans[2].argv)
	}
	if len(w.sidecars) != 1 || w.sidecars["n-d"] == nil {
		t.Fatalf("sidecars %v, want one for n-d", w.sidecars)
	}
	if got := w.engineAddress(w.plans[1]); got != w.sidecars["n-d"].Addr() || got == w.plans[1].addr {
		t.Errorf("decode engine registered at %s; sidecar %s, engine %s", got, w.sidecars["n-d"].Addr(), w.plans[1].addr)
	}
	if got := w.engineAddress(w.plans[3]); got != w.plans[3].addr {
		t.Errorf("no_sidecar engine registered at %s, want its own %s", got, w.plans[3].addr)
	}
	bad := Config{Engines: []EngineSpec{{Name: "x", Kind: KindSim, Port: 9000, SidecarPort: 9000}}}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Errorf("port clash between engine and sidecar: %v", err)
	}
}

// TestWorkerdDisaggregated: workerd runs a prefill and a decode sim; Consul lists the decode
// engine at its sidecar, and a request sent there naming the prefill engine is prefilled
// remotely, its KV blocks pulled by the decode engine.
func TestWorkerdDisaggregated(t *testing.T) {
	agent := consultest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	pre, dec := simSpec("p"), simSpec("d")
	pre.Role, dec.Role = discovery.RolePrefill, discovery.RoleDecode
	cfg := Config{
		Node:           "n1",
		Consul:         &ConsulConfig{Address: agent.Addr, CheckInterval: Duration(time.Second), ReregisterInterval: Duration(500 * time.Millisecond)},
		ScrapeInterval: Duration(200 * time.Millisecond),
		DrainTimeout:   Duration(2 * time.Second),
		StopTimeout:    Duration(5 * time.Second),
		Engines:        []EngineSpec{pre, dec},
	}
	w, err := New(ctx, cfg, Options{Log: testLog(t), GPUs: gpu.NewFake(gpu.FakeInventory(0, "", 0)), SimCommand: selfCommand(t), EngineOutput: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	go func() { runDone <- w.Run(runCtx) }()
	defer func() { stopRun(); <-runDone }()

	dc, err := discovery.NewConsul(discovery.ConsulConfig{Address: agent.Addr, WaitTime: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]discovery.Endpoint{}
	waitSet(t, dc.Watch(ctx), 60*time.Second, "both engines healthy in consul", func(eps []discovery.Endpoint) bool {
		healthy := 0
		for _, e := range eps {
			byName[e.Name] = e
			if e.Healthy {
				healthy++
			}
		}
		return healthy == 2
	})
	st := w.Engines()
	p, d := byName["n1-p"], byName["n1-d"]
	if p.Address != st[0].Address || p.Role != discovery.RolePrefill {
		t.Errorf("prefill endpoint %+v, engine at %s", p, st[0].Address)
	}
	if d.Address == st[1].Address || d.Address != w.sidecars["n1-d"].Addr() || d.Role != discovery.RoleDecode || d.KVEvents != st[1].KVEvents {
		t.Errorf("decode endpoint %+v: want the sidecar %s in front of %s, with the engine's KV events", d, w.sidecars["n1-d"].Addr(), st[1].Address)
	}

	body, _ := json.Marshal(map[string]any{"model": "sim-model", "max_tokens": 4,
		"prompt": strings.Repeat("Sidecars move blocks between engines. ", 120)})
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+d.Address+"/v1/completions", strings.NewReader(string(body)))
	req.Header.Set(sidecar.HeaderPrefiller, p.Address)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ans struct {
		Usage struct {
			Prompt  int `json:"prompt_tokens"`
			Details struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil || resp.StatusCode != 200 {
		t.Fatalf("%d %v", resp.StatusCode, err)
	}
	if resp.Header.Get(sidecar.HeaderPrefillEndpoint) != p.Address || ans.Usage.Prompt < 500 || ans.Usage.Details.Cached < ans.Usage.Prompt-16 {
		t.Errorf("remote prefill: header %q, usage %+v", resp.Header.Get(sidecar.HeaderPrefillEndpoint), ans.Usage)
	}
}

func TestParseEngineFlagPD(t *testing.T) {
	e, err := ParseEngineFlag("kind=vllm,model=m,role=decode,sidecar_port=8200,nixl_port=5601,no_sidecar=false")
	if err != nil {
		t.Fatal(err)
	}
	if e.Role != "decode" || e.SidecarPort != 8200 || e.NixlPort != 5601 || e.NoSidecar {
		t.Errorf("%+v", e)
	}
	if e, err := ParseEngineFlag("kind=sim,role=decode,no_sidecar=true"); err != nil || !e.NoSidecar {
		t.Errorf("no_sidecar=true: %+v, %v", e, err)
	}
	for _, bad := range []string{"kind=sim,no_sidecar=maybe", "kind=sim,sidecar_port=-1", "kind=sim,nixl_port=x"} {
		if _, err := ParseEngineFlag(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
