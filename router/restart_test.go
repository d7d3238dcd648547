package router_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// simChildEnv makes the test binary run as a simulated engine listening on the address the
// variable holds: the tests below kill it and start it again on the same port, as an engine
// restarts.
const simChildEnv = "KVGATE_ROUTER_TEST_SIM_CHILD"

// noMetricsEnv makes the child answer /metrics with 404, as an engine without Prometheus
// metrics (Ollama, llama.cpp's server without --metrics) does.
const noMetricsEnv = "KVGATE_ROUTER_TEST_SIM_NO_METRICS"

func simChild(addr string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	timing := sim.DefaultTiming()
	timing.Speed = 50
	listen := addr
	if os.Getenv(noMetricsEnv) != "" {
		listen = "127.0.0.1:0" // behind a front on addr that has no /metrics
	}
	s, err := sim.NewServer(sim.ServerConfig{Addr: listen, Model: model,
		Engine: sim.Config{BlockSize: 16, NumBlocks: 4096, Timing: timing}}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sim child:", err)
		return 1
	}
	if listen != addr {
		mux := http.NewServeMux()
		mux.Handle("/metrics", http.NotFoundHandler())
		mux.Handle("/", httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: s.Addr()}))
		srv := &http.Server{Addr: addr, Handler: mux}
		go func() { <-ctx.Done(); _ = srv.Close() }()
		go func() {
			if err := srv.ListenAndServe(); err != nil && ctx.Err() == nil {
				fmt.Fprintln(os.Stderr, "sim child:", err)
				os.Exit(1)
			}
		}()
	}
	if err := s.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "sim child:", err)
		return 1
	}
	return 0
}

// simProc is a simulated engine in a child process.
type simProc struct {
	addr      string
	noMetrics bool
	cmd       *exec.Cmd
	out       *bytes.Buffer
}

// startSimProc starts a sim child on addr and waits until it answers /health.
func startSimProc(t *testing.T, addr string, noMetrics bool) *simProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := &simProc{addr: addr, noMetrics: noMetrics, out: &bytes.Buffer{}}
	p.cmd = exec.Command(exe, "-test.run=^$")
	p.cmd.Env = append(os.Environ(), simChildEnv+"="+addr)
	if noMetrics {
		p.cmd.Env = append(p.cmd.Env, noMetricsEnv+"=1")
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.kill() })
	polltest.Until(t, 60*time.Second, "the sim process answers on "+addr, func() bool {
		resp, err := http.Get("http://" + addr + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return p
}

// kill kills the process (SIGKILL: no goodbye) and waits for it. Idempotent.
func (p *simProc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

// restart kills the engine and starts a fresh one (empty cache) on the same port.
func (p *simProc) restart(t *testing.T) *simProc {
	t.Helper()
	p.kill()
	return startSimProc(t, p.addr, p.noMetrics)
}

// chat sends one non-streamed chat completion to addr as the gateway forwards it and
// returns the engine's usage.
func chat(addr string, body []byte) (*openai.Usage, error) {
	resp, err := http.Post("http://"+addr+"/v1/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	var out struct {
		Usage *openai.Usage `json:"usage"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Usage == nil {
		return nil, fmt.Errorf("no usage in %s (%v)", b, err)
	}
	return out.Usage, nil
}

// serve routes body, sends it to the picked engine and reports the outcome to the router, as
// a front door does. It returns the decision and the engine's usage.
func serve(t *testing.T, r *router.Router, body []byte) (*router.Decision, *openai.Usage) {
	t.Helper()
	d := route(t, r, "/v1/chat/completions", body)
	u, err := chat(d.Endpoint.Address, body)
	d.Done(u, err)
	if err != nil {
		t.Fatalf("engine %s: %v", d.Endpoint.Address, err)
	}
	return d, u
}

// sharedPrompts are two prompts of many blocks that share their first part.
func sharedPrompts() (a, b []byte) {
	common := longText("shared", 300)
	return chatBody(common+longText("alpha", 200), false), chatBody(common+longText("beta", 200), false)
}

// TestApproxCorrectedFromCachedTokens: an engine without KV events that restarted unseen
// (no health check ran) reports fewer cached tokens than approximate mode predicted; the
// router drops what it remembered for that engine past them, so the next prompt's
// x-kvgate-cached-blocks is what the engine really has. Before, the stale prefixes stayed
// and the router announced the whole second prompt cached while the engine recomputed it.
func TestApproxCorrectedFromCachedTokens(t *testing.T) {
	eng := startSimProc(t, porttest.Addr(t), false)
	eps := endpoints(1)
	eps[0].Address = eng.addr
	// No scraping: no health check may notice the restart; only usage can tell.
	r, reg := newRouter(t, eps, nil)
	run(t, r)
	a, b := sharedPrompts()
	serve(t, r, a)
	serve(t, r, b)
	if d, u := serve(t, r, b); d.CachedBlocks == 0 || u.CachedTokens()/16 != d.CachedBlocks {
		t.Fatalf("warm engine: predicted %d blocks, engine cached %d tokens", d.CachedBlocks, u.CachedTokens())
	}

	eng = eng.restart(t)
	d, u := serve(t, r, a) // predicted all of a; the engine has nothing
	if d.CachedBlocks == 0 || u.CachedTokens() != 0 {
		t.Fatalf("after the restart: predicted %d blocks (want the stale full prompt), engine cached %d tokens (want 0)", d.CachedBlocks, u.CachedTokens())
	}
	// b shares its first part with a, which the engine has just computed; the rest of b is
	// gone with the restart.
	d, u = serve(t, r, b)
	if got, want := d.CachedBlocks, u.CachedTokens()/16; got != want {
		t.Fatalf("second prompt after the restart: x-kvgate-cached-blocks %d, engine had %d blocks", got, want)
	}
	if d.CachedBlocks == 0 || d.CachedBlocks >= d.RequestBlocks {
		t.Fatalf("second prompt: %d of %d blocks cached, want the shared part only", d.CachedBlocks, d.RequestBlocks)
	}
	if v := metricstest.Value(reg, router.MetricApproxCorrections, "reason", router.CorrectionCachedTokens); v != 1 {
		t.Fatalf("%s{reason=%s} = %v, want 1", router.MetricApproxCorrections, router.CorrectionCachedTokens, v)
	}
}

// TestApproxClearedWhenEngineComesBack: a health check that finds an engine without KV
// events unreachable and then answering again makes the router forget what it sent there
// (it restarted with an empty cache).
func TestApproxClearedWhenEngineComesBack(t *testing.T) {
	eng := startSimProc(t, porttest.Addr(t), false)
	eps := endpoints(1)
	eps[0].Address = eng.addr
	r, reg := newRouter(t, eps, func(c *router.Config) {
		c.ScrapeInterval = 20 * time.Millisecond
		c.UnhealthyFor = time.Minute // only an answer brings it back
	})
	run(t, r)
	a, _ := sharedPrompts()
	serve(t, r, a)
	if d, _ := serve(t, r, a); d.CachedBlocks == 0 {
		t.Fatal("warm engine: nothing predicted cached")
	}
	eng.kill()
	eventually(t, "the engine seen down", func() bool { return !loadOf(r, "e0").Healthy })
	eng = startSimProc(t, eng.addr, false)
	eventually(t, "the engine seen back", func() bool { return loadOf(r, "e0").Healthy })
	d, u := serve(t, r, a)
	if d.CachedBlocks != 0 || u.CachedTokens() != 0 {
		t.Fatalf("after the restart: predicted %d blocks, engine cached %d tokens; want 0 and 0", d.CachedBlocks, u.CachedTokens())
	}
	if v := metricstest.Value(reg, router.MetricApproxCorrections, "reason", router.CorrectionRestart); v != 1 {
		t.Fatalf("%s{reason=%s} = %v, want 1", router.MetricApproxCorrections, router.CorrectionRestart, v)
	}
}

// TestEngineWithoutMetrics: an engine whose /metrics is missing has its load from the
// router's own accounting, says so once at info, and shows it in Load, the load-source
// metric and /v1/pools.
func TestEngineWithoutMetrics(t *testing.T) {
	eng := startSimProc(t, porttest.Addr(t), true)
	eps := endpoints(1)
	eps[0].Address = eng.addr
	logs := &lineCounter{msg: "engine serves no vLLM or SGLang /metrics; its load is the router's own in-flight accounting"}
	cfg := router.DefaultConfig()
	cfg.Endpoints, cfg.ScrapeInterval = eps, 10*time.Millisecond
	reg := prometheus.NewRegistry()
	r, err := router.New(cfg, slog.New(logs), reg)
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	eventually(t, "several scrapes", func() bool { return metricstest.Value(reg, router.MetricScrapeErrors) >= 5 })
	if got := loadOf(r, "e0").LoadSource; got != router.LoadSourceRouter {
		t.Fatalf("load source %q, want %q", got, router.LoadSourceRouter)
	}
	if v := metricstest.Value(reg, router.MetricLoadSource, "endpoint", "e0", "source", router.LoadSourceRouter); v != 1 {
		t.Fatalf("%s{source=router} = %v", router.MetricLoadSource, v)
	}
	if n := logs.n.Load(); n != 1 {
		t.Fatalf("said %d times, want once", n)
	}
	pools := r.Pools()
	if len(pools) != 1 || pools[0].RouterAccounted != 1 || pools[0].KVReporting != 0 {
		t.Fatalf("pools %+v, want one router-accounted endpoint", pools)
	}
	// The router's accounting is the load: a request in flight counts.
	d := route(t, r, "/v1/chat/completions", chatBody("hello", false))
	if l := loadOf(r, "e0"); l.Requests != 1 || !l.Healthy {
		t.Fatalf("load with a request in flight: %+v", l)
	}
	d.Done(nil, nil)
}

// TestRefusedConnectionDuringRestart: a request that finds an engine restarting (connection
// refused) takes it out, but the router probes it at once and again shortly after, and puts
// it back as soon as it answers, long before UnhealthyFor; meanwhile, with every endpoint
// out, it tries the one down longest instead of answering 503. The engine has no /metrics
// (as Ollama): an answer of any kind means it is up.
func TestRefusedConnectionDuringRestart(t *testing.T) {
	eng := startSimProc(t, porttest.Addr(t), true)
	eps := endpoints(1)
	eps[0].Address = eng.addr
	r, reg := newRouter(t, eps, func(c *router.Config) {
		c.ScrapeInterval = time.Minute // no periodic health check to bring it back
		c.UnhealthyFor = time.Minute   // nor the end of the penalty
	})
	run(t, r)
	body := chatBody("hello there", false)
	serve(t, r, body)

	eng.kill()
	d := route(t, r, "/v1/chat/completions", body)
	_, err := chat(d.Endpoint.Address, body)
	var op *net.OpError
	if !errors.As(err, &op) {
		t.Fatalf("engine killed, yet: %v", err)
	}
	d.Done(nil, err)
	if loadOf(r, "e0").Healthy {
		t.Fatal("a refused connection did not take the endpoint out")
	}
	// Every endpoint is out: the one down longest is tried rather than a 503.
	d2, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: body})
	if err != nil {
		t.Fatalf("every endpoint down: %v, want the one down longest tried", err)
	}
	d2.Done(nil, nil)
	if v := metricstest.Value(reg, router.MetricDownRetries); v != 1 {
		t.Fatalf("%s = %v, want 1", router.MetricDownRetries, v)
	}

	eng = startSimProc(t, eng.addr, true)
	start := time.Now() // the engine answers from here on
	polltest.Until(t, 10*time.Second, "the endpoint back in rotation", func() bool { return loadOf(r, "e0").Healthy })
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("back %v after the engine answered, want well under UnhealthyFor's default 5s", took)
	}
	if _, u := serve(t, r, body); u == nil {
		t.Fatal("no answer after the restart")
	}
}

// TestApproxClearedWhenStartTimeChanges: an engine whose process start time changed between
// two scrapes (a restart quicker than a scrape interval: no failed probe) is forgotten by
// approximate mode.
func TestApproxClearedWhenStartTimeChanges(t *testing.T) {
	startAt := func(ts int) string {
		return vllmMetrics(0, 0, 0) + fmt.Sprintf("# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds %d\n", ts)
	}
	eng := newMetricsEngine(t, startAt(1000))
	eps := endpoints(1)
	eps[0].Address = eng.addr()
	r, reg := newRouter(t, eps, func(c *router.Config) { c.ScrapeInterval = 10 * time.Millisecond })
	run(t, r)
	eventually(t, "a scrape", func() bool { return loadOf(r, "e0").EngineFresh })
	a, _ := sharedPrompts()
	route(t, r, "/v1/chat/completions", a).Done(nil, nil)
	if d := route(t, r, "/v1/chat/completions", a); d.CachedBlocks == 0 {
		t.Fatal("nothing remembered for the prompt just sent")
	} else {
		d.Done(nil, nil)
	}
	eng.set(startAt(2000))
	eventually(t, "the restart noticed", func() bool {
		return metricstest.Value(reg, router.MetricApproxCorrections, "reason", router.CorrectionRestart) == 1
	})
	d := route(t, r, "/v1/chat/completions", a)
	defer d.Done(nil, nil)
	if d.CachedBlocks != 0 {
		t.Fatalf("after the restart: %d blocks predicted cached, want 0", d.CachedBlocks)
	}
}
