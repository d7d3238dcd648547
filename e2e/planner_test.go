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
// (two virtual GPUs each, a budget of four), Consul and `kvgate router`: a load step makes
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

	grpcAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	rt := startProc(t, kvgateBin, "router", "--consul", agent.Addr, "--grpc", grpcAddr, "--http", httpAddr, "--metrics-addr", metricsAddr)
	base := "http://" + httpAddr
	waitHTTP(t, rt, base+"/health", 30*time.Second)
	poolHealthy := func() float64 {
		return metric(t, base, router.MetricPoolHealthy, `model="`+model+`"`, `role="aggregated"`)
	}
	waitUntil(t, "the router to see the min replica", func() bool { return poolHealthy() == 1 })

	profile := filepath.Join(t.TempDir(), "profile.yaml")
	if err := os.WriteFile(profile, []byte(plannerProfile), 0o600); err != nil {
		t.Fatal(err)
	}
	plannerMetrics := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pl := startProc(t, kvgateBin, "planner", "--consul", agent.Addr, "--router", "http://"+metricsAddr,
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
	waitConsul(t, agent.Client, "the fleet back to its min replica", func(m map[string]*api.ServiceEntry) bool {
		return len(m) == 1 && m["p0-sim-0"] != nil
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
	ctx, cancel := context.WithCancel(ctx)
	l := &requestLoop{cancel: cancel}
	for w := range 1 {
		l.wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				r, err := tryChat(ctx, c, fmt.Sprintf("Trickle %d from worker %d.", i, w), 10)
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
				case <-time.After(500 * time.Millisecond):
				}
			}
		})
	}
	return l
}

func keys(m map[string]*api.ServiceEntry) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return strings.Join(out, ",")
}

