package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
)

// trafficSims starts n simulated engines (args added to each) and returns their addresses.
func trafficSims(t *testing.T, n int, args ...string) []string {
	t.Helper()
	var addrs []string
	for range n {
		port := porttest.Free(t)
		p := startProc(t, kvgateBin, append([]string{"sim", "--host", "127.0.0.1", "--port", fmt.Sprint(port), "--kv-events", ""}, args...)...)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		waitHTTP(t, p, "http://"+addr+"/health", 30*time.Second)
		addrs = append(addrs, addr)
	}
	return addrs
}

// trafficRouter is a running `kvgate router` with its embedded gateway.
type trafficRouter struct {
	base, metrics string
	p             *proc
}

// startTrafficRouter starts `kvgate router --http` over the engines with args, on httpAddr when
// given (a restart reuses its address).
func startTrafficRouter(t *testing.T, engines []string, httpAddr string, args ...string) *trafficRouter {
	t.Helper()
	if httpAddr == "" {
		httpAddr = fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	}
	metricsAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	a := []string{"router", "--grpc", fmt.Sprintf("127.0.0.1:%d", porttest.Free(t)), "--http", httpAddr, "--metrics-addr", metricsAddr}
	for _, e := range engines {
		a = append(a, "--endpoint", "http://"+e, "--kv-events", "none")
	}
	p := startProc(t, kvgateBin, append(a, args...)...)
	r := &trafficRouter{base: "http://" + httpAddr, metrics: "http://" + metricsAddr, p: p}
	waitHTTP(t, p, r.base+"/health", 30*time.Second)
	waitHTTP(t, p, r.metrics+"/metrics", 10*time.Second)
	return r
}

// stop interrupts the router and waits for it to exit.
func (r *trafficRouter) stop(t *testing.T) {
	t.Helper()
	_ = r.p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-r.p.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the router did not stop")
	}
}

// trafficAnswer is one chat request's outcome.
type trafficAnswer struct {
	status   int
	endpoint string // x-kvgate-endpoint
	reason   string // x-kvgate-rejected-reason
	ttft     time.Duration
	err      error
}

// trafficChat sends one streamed chat completion with headers and reads it to the end.
func trafficChat(ctx context.Context, base, content string, maxTokens int, h map[string]string) trafficAnswer {
	body, _ := json.Marshal(map[string]any{
		"model": "Qwen/Qwen3-8B", "stream": true, "max_tokens": maxTokens, "ignore_eos": true,
		"messages": []map[string]string{{"role": "user", "content": content}},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return trafficAnswer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range h {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return trafficAnswer{err: err}
	}
	defer resp.Body.Close()
	a := trafficAnswer{status: resp.StatusCode, endpoint: resp.Header.Get("x-kvgate-endpoint"), reason: resp.Header.Get("x-kvgate-rejected-reason")}
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return a
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if a.ttft == 0 && strings.Contains(sc.Text(), `"content"`) {
			a.ttft = time.Since(start)
		}
	}
	a.err = sc.Err()
	return a
}

// ttftP90 is the 90th percentile of ds.
func ttftP90(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)*9+9)/10-1]
}

// TestTrafficFairness: one engine that the router saturates at two requests, and two
// tenants offering 10:1 load (30 against 3 concurrent clients, requests of one size). Fair
// queueing gives each about half the service; first come, first served would give the small
// tenant about a tenth.
func TestTrafficFairness(t *testing.T) {
	engines := trafficSims(t, 1)
	rt := startTrafficRouter(t, engines, "", "--max-inflight", "2", "--queue-ttl", "5m")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const total = 60
	var served atomic.Int64
	counts := map[string]*atomic.Int64{"big": {}, "small": {}}
	var wg sync.WaitGroup
	var failed atomic.Value
	worker := func(tenant string, w int) {
		defer wg.Done()
		for i := 0; served.Load() < total; i++ {
			a := trafficChat(ctx, rt.base, longPrompt(fmt.Sprintf("%s-%d-%d", tenant, w, i), 30), 32,
				map[string]string{"x-kvgate-fairness-id": tenant})
			if a.err != nil || a.status != http.StatusOK {
				if ctx.Err() == nil {
					failed.Store(fmt.Sprintf("%s: %d %v", tenant, a.status, a.err))
				}
				return
			}
			if served.Add(1) <= total {
				counts[tenant].Add(1)
			}
		}
	}
	for w := range 30 {
		wg.Add(1)
		go worker("big", w)
	}
	for w := range 3 {
		wg.Add(1)
		go worker("small", w)
	}
	wg.Wait()
	if f := failed.Load(); f != nil {
		t.Fatal(f)
	}
	big, small := counts["big"].Load(), counts["small"].Load()
	t.Logf("service of the first %d requests: big tenant %d, small tenant %d", total, big, small)
	if float64(small) < 0.4*total || float64(big) < 0.4*total {
		t.Fatalf("big %d, small %d of %d: want each at least 40%%", big, small, total)
	}
	if metric(t, rt.metrics, "kvgate_router_queue_dispatched_total", `fairness_id="small"`) == 0 {
		t.Fatal("the small tenant never waited: the fleet was not saturated")
	}
}

// TestTrafficPriority: one engine running at most 32 requests (its real batch limit, and the
// router's --max-inflight), offered twice that by a low band of long-decoding requests plus a
// sheddable band. The high band's prompts are prefill-heavy; it passes the queued low band (its
// mean queue wait is under a tenth of the low band's) so its TTFT p90 stays near its value on
// the idle engine, measured in the same run; the low band waits (it is never refused) and only
// sheddable requests are refused.
func TestTrafficPriority(t *testing.T) {
	engines := trafficSims(t, 1, "--max-num-seqs", "32")
	rt := startTrafficRouter(t, engines, "", "--max-inflight", "32", "--queue-ttl", "5m")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	high := func(tag string) []time.Duration {
		var ttfts []time.Duration
		for i := range 10 {
			a := trafficChat(ctx, rt.base, longPrompt(fmt.Sprintf("high-%s-%d", tag, i), 2500), 2, map[string]string{"x-kvgate-priority": "10"})
			if a.err != nil || a.status != http.StatusOK {
				t.Fatalf("high band: %d %s %v", a.status, a.reason, a.err)
			}
			ttfts = append(ttfts, a.ttft)
		}
		return ttfts
	}
	idle := ttftP90(high("idle"))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var lowOK, lowRefused, shedOK, shedRefused atomic.Int64
	var otherErr atomic.Value
	for w := range 80 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prio, ok, refused := "0", &lowOK, &lowRefused
			if w >= 64 {
				prio, ok, refused = "-1", &shedOK, &shedRefused
			}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Lengths spread so that the batch does not finish in lockstep: slots free steadily.
				a := trafficChat(ctx, rt.base, fmt.Sprintf("background %d-%d", w, i), 8+(w*7+i*13)%33, map[string]string{"x-kvgate-priority": prio})
				switch {
				case a.err != nil && ctx.Err() != nil:
					return
				case a.err == nil && a.status == http.StatusOK:
					ok.Add(1)
				case a.status == http.StatusTooManyRequests:
					refused.Add(1)
					if a.reason != "rejected-sheddable" {
						otherErr.Store("refused as " + a.reason)
					}
					select { // a refused client backs off as Retry-After asks
					case <-stop:
						return
					case <-time.After(time.Second):
					}
				default:
					otherErr.Store(fmt.Sprintf("%d %v", a.status, a.err))
				}
			}
		}()
	}
	if !polltest.Wait(60*time.Second, func() bool {
		return metric(t, rt.metrics, "kvgate_router_queue_requests", `band="0"`) >= 16
	}) {
		t.Fatal("the low band never queued: no overload")
	}
	loaded := ttftP90(high("loaded"))
	t.Logf("high band queue wait: %.3fs over %v requests", metric(t, rt.metrics, "kvgate_router_queue_wait_seconds_sum", `band="10"`),
		metric(t, rt.metrics, "kvgate_router_queue_wait_seconds_count", `band="10"`))
	close(stop)
	wg.Wait()
	if e := otherErr.Load(); e != nil {
		t.Fatal(e)
	}
	t.Logf("high band TTFT ttftP90: idle %v, under overload %v (x%.2f); low band served %d refused %d; sheddable served %d refused %d",
		idle, loaded, float64(loaded)/float64(idle), lowOK.Load(), lowRefused.Load(), shedOK.Load(), shedRefused.Load())
	if lowRefused.Load() != 0 || shedRefused.Load() == 0 || lowOK.Load() == 0 {
		t.Fatalf("low refused %d (want 0), sheddable refused %d (want > 0), low served %d", lowRefused.Load(), shedRefused.Load(), lowOK.Load())
	}
	// What lets the high band keep its latency is that it passes the queued low band: its
	// mean wait in the queue must be a small fraction of the low band's. (The 1.5x
	// TTFT claim is shown in virtual time by kvgate replay, docs/BENCHMARKS.md "Admission and
	// fairness"; wall-clock TTFT on a shared 2-core box under the race detector, with 80 client
	// goroutines and other packages' tests running beside it, went from 1.3x to 3.5x between
	// runs, so it is logged above, not asserted: speed is measured in benchmarks and replay.)
	highWait := metric(t, rt.metrics, "kvgate_router_queue_wait_seconds_sum", `band="10"`) /
		max(1, metric(t, rt.metrics, "kvgate_router_queue_wait_seconds_count", `band="10"`))
	lowWait := metric(t, rt.metrics, "kvgate_router_queue_wait_seconds_sum", `band="0"`) /
		max(1, metric(t, rt.metrics, "kvgate_router_queue_wait_seconds_count", `band="0"`))
	t.Logf("mean queue wait: high band %.3fs, low band %.3fs", highWait, lowWait)
	if lowWait <= 0 || highWait > 0.1*lowWait {
		t.Fatalf("high band waited %.3fs on average, low band %.3fs: the high band did not pass the queued low band", highWait, lowWait)
	}
}

// TestTrafficSessionAffinity: each session's turns land on one engine whichever of two
// router replicas (that never talk) serves them, and after both are restarted.
func TestTrafficSessionAffinity(t *testing.T) {
	engines := trafficSims(t, 4, "--speed", "20")
	a := startTrafficRouter(t, engines, "")
	b := startTrafficRouter(t, engines, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	home := map[string]string{}
	turn := func(r *trafficRouter, id string, n int) {
		t.Helper()
		ans := trafficChat(ctx, r.base, fmt.Sprintf("session %s turn %d: %s", id, n, longPrompt(id+fmt.Sprint(n), 20)), 4,
			map[string]string{"x-kvgate-session-id": id})
		if ans.err != nil || ans.status != http.StatusOK {
			t.Fatalf("%s turn %d: %d %v", id, n, ans.status, ans.err)
		}
		if h, ok := home[id]; !ok {
			home[id] = ans.endpoint
		} else if h != ans.endpoint {
			t.Fatalf("%s turn %d went to %s, earlier turns to %s", id, n, ans.endpoint, h)
		}
	}
	var ids []string
	for i := range 12 {
		ids = append(ids, fmt.Sprint("conversation-", i))
	}
	for _, id := range ids {
		turn(a, id, 1)
		turn(b, id, 2)
		turn(a, id, 3)
	}
	used := map[string]bool{}
	for _, e := range home {
		used[e] = true
	}
	if len(used) < 2 {
		t.Fatalf("12 sessions all on %v: affinity by hashing should spread them", used)
	}
	addrA := strings.TrimPrefix(a.base, "http://")
	a.stop(t)
	b.stop(t)
	a2 := startTrafficRouter(t, engines, addrA)
	for _, id := range ids {
		turn(a2, id, 4)
	}
}
