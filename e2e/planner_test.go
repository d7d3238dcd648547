package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/openai/openai-go/v3"

	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/fleet"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// plannerProfile is a deliberately small engine: about 3 requests/s of the test's chats
// (some 30 prompt tokens each) fill one, so the load step needs the whole GPU budget and the
// trickle after it (under 2 requests/s of 10 output tokens) one engine.
const plannerProfile = `name: tiny-sim
prefill:
  - prompt_tokens: 32
    points: [{ttft_ms: 500, tokens_per_s: 100}]
decode:
  - context_tokens: 32
    points: [{itl_ms: 50, tokens_per_s: 100}]
`

// TestPlannerScalesTheFleet runs `kvgate planner` against two workerds with sim templates
// (two virtual GPUs each, a budget of four), Consul and `kvgate router`, all found in Consul: a load step makes
// the planner start engines on both nodes, which then serve requests; when the load drops to
// a trickle it drains and stops them down to the template minimum, and no request fails.
func TestPlannerScalesTheFleet(t *testing.T) {
	agent := consultest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	startTemplateWorkerd(t, agent.Addr, "p0", 1)
	startTemplateWorkerd(t, agent.Addr, "p1", 0)
	waitConsul(t, agent.Client, "the min replica healthy", func(m map[string]*api.ServiceEntry) bool {
		return len(m) == 1 && m["p0-sim-0"] != nil && m["p0-sim-0"].Checks.AggregatedStatus() == api.HealthPassing
	})

	grpcAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	rt := startProc(t, kvgateBin, "router", "--consul", agent.Addr, "--grpc", grpcAddr, "--http", httpAddr, "--metrics-addr", metricsAddr)
	base := "http://" + httpAddr
	waitHTTP(t, rt, base+"/health", 30*time.Second)
	poolHealthy := func() float64 {
		return metric(t, base, router.MetricPoolHealthy, `model="`+model+`"`, `role="aggregated"`)
	}
	waitUntil(t, "the router to see the min replica", func() bool { return poolHealthy() == 1 })
	waitUntil(t, "the router registered in consul for planners", func() bool {
		svcs, _, err := agent.Client.Catalog().Service(fleet.RouterService, "", nil)
		return err == nil && len(svcs) == 1 && fmt.Sprintf("%s:%d", svcs[0].ServiceAddress, svcs[0].ServicePort) == metricsAddr
	})

	profile := filepath.Join(t.TempDir(), "profile.yaml")
	if err := os.WriteFile(profile, []byte(plannerProfile), 0o600); err != nil {
		t.Fatal(err)
	}
	plannerMetrics := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	// Both the workerds and the router are found in Consul.
	pl := startProc(t, kvgateBin, "planner", "--consul", agent.Addr,
		"--mode", "sla", "--profile", profile, "--ttft", "500ms", "--itl", "50ms", "--gpu-budget", "4",
		"--interval", "1s", "--startup", "2s", "--drain-timeout", "20s", "--metrics-addr", plannerMetrics)
	waitHTTP(t, pl, "http://"+plannerMetrics+"/metrics", 30*time.Second)

	// The load step: every engine the budget allows starts, on both nodes, and serves.
	c := client(base)
	load := startRequestLoop(ctx, c, 6)
	engines := waitConsul(t, agent.Client, "four engines healthy in consul", func(m map[string]*api.ServiceEntry) bool {
		healthy := 0
		for _, e := range m {
			if e.Checks.AggregatedStatus() == api.HealthPassing {
				healthy++
			}
		}
		return healthy == 4
	})
	if engines["p1-sim-0"] == nil || engines["p1-sim-1"] == nil || engines["p0-sim-1"] == nil {
		t.Fatalf("engines after the load step: %v", keys(engines))
	}
	if v := metric(t, "http://"+plannerMetrics, fleet.MetricActions, `action="start"`, `outcome="ok"`); v < 3 {
		t.Fatalf("planner started %v engines", v)
	}
	waitUntil(t, "the router to see all four", func() bool { return poolHealthy() == 4 })
	started := map[string]bool{}
	for name, e := range engines {
		if name != "p0-sim-0" {
			started[net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port))] = true
		}
	}
	before := len(load.mark().done)
	waitUntil(t, "requests served by the started engines", func() bool {
		n := 0
		for _, r := range load.mark().done[before:] {
			if started[r.endpoint] {
				n++
			}
		}
		return n >= 20
	})
	peak := load.stop()

	// The drop: a trickle of longer requests keeps engines busy while the planner drains them.
	trickle := startTrickle(ctx, c)
	// p0's template keeps one engine (min_replicas 1), p1's none; which of p0's two survives
	// is the planner's choice (it drains the least busy), so either may.
	waitConsul(t, agent.Client, "the fleet back to its min replica", func(m map[string]*api.ServiceEntry) bool {
		return len(m) == 1 && (m["p0-sim-0"] != nil || m["p0-sim-1"] != nil)
	})
	waitUntil(t, "the drained engines' processes to stop", func() bool {
		return metric(t, "http://"+plannerMetrics, fleet.MetricReplicas, `state="ready"`) == 1 &&
			metric(t, "http://"+plannerMetrics, fleet.MetricReplicas, `state="pending"`) == 0
	})
	calm := trickle.stop()
	if v := metric(t, "http://"+plannerMetrics, fleet.MetricActions, `action="drain"`, `outcome="ok"`); v < 3 {
		t.Fatalf("planner drained %v engines", v)
	}
	if len(peak.errs)+len(calm.errs) > 0 {
		t.Fatalf("failed requests: %d during the load step, %d during the drop: %v %v", len(peak.errs), len(calm.errs), peak.errs, calm.errs)
	}
	if calm.served == 0 {
		t.Fatal("the trickle served nothing")
	}
	t.Logf("load step: %d requests; drop: %d requests, none failed", peak.served, calm.served)
}

// startTemplateWorkerd runs a workerd with two virtual GPUs and a sim template of one GPU
// per engine, at most two, min of them started with it.
func startTemplateWorkerd(t *testing.T, consul, node string, min int) *proc {
	t.Helper()
	cfg := fmt.Sprintf(`node: %s
listen: 127.0.0.1:0
gpus: 2
consul:
  address: %s
  check_interval: 1s
  reregister_interval: 1s
  deregister_grace: 2s
scrape_interval: 200ms
drain_timeout: 20s
stop_timeout: 5s
min_backoff: 300ms
max_backoff: 2s
templates:
  - name: sim
    kind: sim
    model: %s
    gpus: 1
    min_replicas: %d
    max_replicas: 2
    args: ["--speed", "2"]
`, node, consul, model, min)
	path := filepath.Join(t.TempDir(), node+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return startProc(t, kvgateBin, "workerd", "--config", path)
}

// startTrickle sends a chat of 10 output tokens, then pauses 500ms, and again.
func startTrickle(ctx context.Context, c openai.Client) *requestLoop {
	return startChatLoop(ctx, c, 1, func(w, i int) string { return fmt.Sprintf("Trickle %d from worker %d.", i, w) }, 10, 500*time.Millisecond)
}

// startChatLoop runs workers that each send prompt(worker, i) for maxTokens, then pause, and
// again, recording every outcome.
func startChatLoop(ctx context.Context, c openai.Client, workers int, prompt func(w, i int) string, maxTokens int64, pause time.Duration) *requestLoop {
	ctx, cancel := context.WithCancel(ctx)
	l := &requestLoop{cancel: cancel}
	for w := range workers {
		l.wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				r, err := tryChat(ctx, c, prompt(w, i), maxTokens)
				if ctx.Err() != nil {
					return
				}
				l.mu.Lock()
				if err != nil {
					l.res.errs = append(l.res.errs, err)
				} else {
					l.res.served++
					l.res.done = append(l.res.done, loopReq{time.Now(), r.endpoint})
				}
				l.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		})
	}
	return l
}

// kvgate up --planner: simulated engines start in-process when load rises, within the
// virtual GPU budget, serve, and stop when it falls, with the planner in the banner and its
// metrics on /metrics, and no failed request.
func TestUpPlanner(t *testing.T) {
	base, p := up(t, "--planner", "sla", "--sim-speed", "0.05", "--gpu-budget", "3", "--planner-interval", "500ms")
	if out := p.output(); !strings.Contains(out, "planner     sla, virtual GPU budget 3") {
		t.Fatalf("banner without the planner:\n%s", out)
	}
	if v := metric(t, base, fleet.MetricGPUBudget); v != 3 {
		t.Fatalf("%s = %v", fleet.MetricGPUBudget, v)
	}
	ready := func() float64 { return metric(t, base, fleet.MetricReplicas, `state="ready"`) }
	waitUntil(t, "the planner's first interval", func() bool { return ready() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := client(base)
	load := startChatLoop(ctx, c, 8, func(w, i int) string { return longPrompt(fmt.Sprintf("up-planner-%d-%d", w, i), 60) }, 8, 0)
	waitUntil(t, "engines started for the load", func() bool {
		return ready() >= 2 && metric(t, base, router.MetricPoolHealthy) >= 2
	})
	first := load.mark().done
	seen := map[string]bool{}
	for _, r := range first {
		seen[r.endpoint] = true
	}
	waitUntil(t, "requests on a started engine", func() bool {
		for _, r := range load.mark().done[len(first):] {
			if !seen[r.endpoint] {
				return true
			}
		}
		return false
	})
	if v := metric(t, base, fleet.MetricGPUsUsed); v > 3 {
		t.Fatalf("%v GPUs used over the budget of 3", v)
	}
	peak := load.stop()
	waitUntil(t, "the engines stopped after the load", func() bool {
		return ready() == 1 && metric(t, base, router.MetricPoolEndpoints) == 1
	})
	if v := metric(t, base, fleet.MetricActions, `action="drain"`, `outcome="ok"`); v < 1 {
		t.Fatalf("drains %v", v)
	}
	if len(peak.errs) > 0 {
		t.Fatalf("%d of %d requests failed: %v", len(peak.errs), peak.served+len(peak.errs), peak.errs)
	}
}

func keys(m map[string]*api.ServiceEntry) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return strings.Join(out, ",")
}
