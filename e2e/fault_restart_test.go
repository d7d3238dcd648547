package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// TestFaultRestarts restarts each moving part of a Consul deployment under streaming load:
// a real Consul agent, two `kvgate workerd` (one simulated engine each) and
// `kvgate router --consul` with its gateway.
//
//  1. A workerd is SIGKILLed (its engine dies with it) and started again: its streams are
//     cut visibly, requests picked for the dead engine go to the other, the new engine
//     joins the router.
//  2. The router is SIGKILLed with streams in flight and started again on the same ports:
//     those streams end in a transport error, the new router serves every request.
//  3. Consul is restarted (a dev agent forgets every registration): every request fails
//     visibly while no engine is registered, and none once the workerds registered again.
func TestFaultRestarts(t *testing.T) {
	agent := consultest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	w0, w1 := startWorkerd(t, agent.Addr, "w0"), startWorkerd(t, agent.Addr, "w1")
	engines := waitConsul(t, agent.Client, "both engines registered and healthy", bothPassing)
	oldW0 := serviceAddr(engines["w0-sim"])

	grpcAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	base := "http://" + httpAddr
	startRouter := func() *proc {
		p := startProc(t, kvgateBin, "router", "--consul", agent.Addr, "--grpc", grpcAddr, "--http", httpAddr, "--migration-limit", "0") // cuts, not migrations
		waitHTTP(t, p, base+"/health", 30*time.Second)
		waitUntil(t, "the router to count both engines healthy", func() bool {
			return metric(t, base, router.MetricHealthy) == 2
		})
		return p
	}
	rt := startRouter()
	// streams counts, by engine, the streams whose body has begun to arrive: a kill is only
	// sure to cut a stream past its first byte (before it, the gateway retries elsewhere).
	var streamsMu sync.Mutex
	streams := map[string]int{}
	streaming := func(endpoint string, d int) {
		streamsMu.Lock()
		streams[endpoint] += d
		streamsMu.Unlock()
	}
	streamingOn := func(endpoint string) int {
		streamsMu.Lock()
		defer streamsMu.Unlock()
		if endpoint == "" {
			n := 0
			for _, v := range streams {
				n += v
			}
			return n
		}
		return streams[endpoint]
	}
	send := func(ctx context.Context, i int) seen {
		return streamChatWatched(ctx, base, faultPrompt(i), 200, streaming)
	}

	// 1. A workerd crashes and is started again.
	f1 := &figures{}
	load := startStreamLoad(ctx, f1, 4, 30*time.Second, send)
	load.waitSent(t, 8)
	waitUntil(t, "a stream receiving w0's engine's body", func() bool { return streamingOn(oldW0) >= 1 })
	if err := w0.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-w0.done
	w0 = startWorkerd(t, agent.Addr, "w0")
	engines = waitConsul(t, agent.Client, "w0's new engine registered and healthy", func(m map[string]*api.ServiceEntry) bool {
		return bothPassing(m) && serviceAddr(m["w0-sim"]) != oldW0
	})
	newW0 := serviceAddr(engines["w0-sim"])
	waitUntil(t, "the router to route to w0's new engine", func() bool {
		return metric(t, base, router.MetricHealthy, `address="`+newW0+`"`) == 1 &&
			!hasSeries(t, base, router.MetricHealthy, `address="`+oldW0+`"`)
	})
	sent, _, _, _ := f1.snapshot()
	load.waitSent(t, sent+8)
	load.stop()
	f1.retried = metric(t, base, gateway.MetricRetries)
	f1.load = waitNoLoad(t, base)
	f1.log(t, "workerd SIGKILL and restart")
	if f1.cut == 0 {
		t.Errorf("no stream was cut although w0's engine had one in flight")
	}
	if n := f1.cutHow["silent"]; n > 0 {
		t.Errorf("%d of %d cut streams ended like complete ones", n, f1.cut)
	}
	if f1.failed > 0 {
		t.Errorf("%d requests failed without a stream while w1 was up: %q", f1.failed, f1.errs)
	}
	if f1.load != 0 {
		t.Errorf("the router counts load %v after the workerd restart", f1.load)
	}

	// 2. The router crashes with streams in flight and is started again on its ports.
	f2 := &figures{}
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() { f2.add(streamChatWatched(ctx, base, faultPrompt(5000+i), 20000, streaming)) })
	}
	waitUntil(t, "three streams receiving bodies through the router", func() bool { return streamingOn("") >= 3 })
	f2.retried = metric(t, base, gateway.MetricRetries)
	if err := rt.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-rt.done
	wg.Wait()
	rt = startRouter()
	load = startStreamLoad(ctx, f2, 4, 30*time.Second, send)
	load.waitSent(t, 3+12)
	load.stop()
	f2.retried += metric(t, base, gateway.MetricRetries)
	f2.load = waitNoLoad(t, base)
	f2.log(t, "router SIGKILL and restart")
	if f2.cut != 3 || f2.cutHow["transport-error"] != 3 {
		t.Errorf("the 3 streams through the killed router: %d cut (%v), want 3 transport errors", f2.cut, f2.cutHow)
	}
	if f2.failed > 0 {
		t.Errorf("%d requests to the new router failed: %q", f2.failed, f2.errs)
	}

	// 3. Consul restarts and forgets every registration.
	f3 := &figures{}
	retriedBefore := metric(t, base, gateway.MetricRetries)
	load = startStreamLoad(ctx, f3, 4, 30*time.Second, send)
	load.waitSent(t, 4)
	restart := time.Now()
	agent.Restart()
	waitConsul(t, agent.Client, "both engines registered again", bothPassing)
	waitUntil(t, "the router to count both engines healthy again", func() bool {
		return metric(t, base, router.MetricHealthy) == 2
	})
	_, _, failedBack, _ := f3.snapshot()
	t.Logf("Consul restart: %d requests failed in the %v from the restart until the router had both engines again",
		failedBack, time.Since(restart).Round(time.Millisecond))
	sent, _, _, _ = f3.snapshot()
	load.waitSent(t, sent+8)
	load.stop()
	f3.retried = metric(t, base, gateway.MetricRetries) - retriedBefore
	f3.load = waitNoLoad(t, base)
	f3.crashes = crashes(t, survivor{"router", rt, base + "/health"},
		survivor{"workerd w0 (restarted)", w0, ""}, survivor{"workerd w1", w1, ""},
		survivor{"w0's engine", w0, "http://" + newW0 + "/health"},
		survivor{"w1's engine", w1, "http://" + serviceAddr(engines["w1-sim"]) + "/health"})
	if leader, err := agent.Client.Status().Leader(); err != nil || leader == "" {
		t.Errorf("Consul after its restart: leader %q, %v", leader, err)
		f3.crashes++
	}
	f3.log(t, "Consul restart")
	// While the fresh agent holds no registrations the router has no engine; it still knows
	// the model (Config.ModelGrace) and answers 503, which clients retry, never 404 (no such
	// model). Once the workerds registered again nothing may fail.
	for st, n := range f3.status {
		if st != http.StatusServiceUnavailable {
			t.Errorf("%d requests failed with status %d during the Consul restart, want only 503s: %q", n, st, f3.errs)
		}
	}
	if f3.cut > 0 {
		t.Errorf("%d streams were cut by a Consul restart (no engine stopped): %v", f3.cut, f3.cutHow)
	}
	if f3.failed > failedBack {
		t.Errorf("%d requests failed after the engines were back in the router: %q", f3.failed-failedBack, f3.errs)
	}
	if n := f3.cutHow["silent"]; n > 0 {
		t.Errorf("%d cut streams ended like complete ones", n)
	}
	if f3.load != 0 {
		t.Errorf("the router counts load %v after the Consul restart", f3.load)
	}
	if h := metric(t, base, router.MetricHealthy); h != 2 {
		t.Errorf("%v engines healthy after the Consul restart, want 2", h)
	}
}

func bothPassing(m map[string]*api.ServiceEntry) bool {
	return len(m) == 2 && m["w0-sim"] != nil && m["w1-sim"] != nil &&
		m["w0-sim"].Checks.AggregatedStatus() == api.HealthPassing && m["w1-sim"].Checks.AggregatedStatus() == api.HealthPassing
}

func serviceAddr(e *api.ServiceEntry) string {
	return net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port))
}
