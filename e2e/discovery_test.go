package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// TestConsulDiscovery is issue 6's proof over real processes: a real Consul agent, two
// `kvgate workerd` each running one simulated engine, and `kvgate router --consul`.
//
//  1. Both workerds register their engines; the router finds them and routes, and a repeated
//     prompt hits the cache the KV events (relayed by workerd) told it about.
//  2. An engine is killed: workerd restarts it, the router's index for it is cleared (the old
//     prompt is no longer seen cached anywhere) and refilled by the new engine's events.
//  3. The router is killed and started again: the relay's snapshot restores its index, so the
//     very first request after the restart already hits the cache (header and usage).
//  4. A workerd is stopped (SIGTERM) under a steady request loop: its engine leaves Consul,
//     the router stops sending to it, and no request fails.
func TestConsulDiscovery(t *testing.T) {
	agent := consultest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	workerds := map[string]*proc{} // engine instance name -> its workerd
	for _, node := range []string{"w0", "w1"} {
		workerds[node+"-sim"] = startWorkerd(t, agent.Addr, node)
	}
	engines := waitConsul(t, agent.Client, "both engines registered and healthy", func(m map[string]*api.ServiceEntry) bool {
		return len(m) == 2 && m["w0-sim"] != nil && m["w1-sim"] != nil &&
			m["w0-sim"].Checks.AggregatedStatus() == api.HealthPassing && m["w1-sim"].Checks.AggregatedStatus() == api.HealthPassing
	})
	addrOf := map[string]string{} // engine name -> OpenAI address
	nameOf := map[string]string{} // address -> engine name
	for name, e := range engines {
		if e.Service.Meta[discovery.MetaWorkerd] == "" {
			t.Fatalf("%s registered without its workerd's relay address: %v", name, e.Service.Meta)
		}
		a := net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port))
		addrOf[name], nameOf[a] = a, name
	}

	rt := startConsulRouter(t, agent.Addr)
	waitUntil(t, "the router to discover both engines", func() bool {
		return metric(t, rt.base, router.MetricHealthy) == 2
	})
	c := client(rt.base)

	// 1. Discovery, routing, and a cache hit learnt through the relay.
	promptA := longPrompt("discovery-a", 200)
	first := chatOnce(ctx, t, c, promptA)
	holder := nameOf[first.endpoint]
	if holder == "" {
		t.Fatalf("served by %q, not a registered engine %v", first.endpoint, addrOf)
	}
	waitUntil(t, "the relay to bring "+holder+"'s blocks to the router", func() bool {
		return cachedBlocks(t, rt.base, holder) > 0
	})
	again := chatOnce(ctx, t, c, promptA)
	if again.endpoint != first.endpoint || again.cachedBlocks == 0 || again.cachedTokens == 0 {
		t.Fatalf("repeat served by %s with %d cached blocks, %d cached tokens; want %s with a hit",
			again.endpoint, again.cachedBlocks, again.cachedTokens, first.endpoint)
	}
	t.Logf("step 1: %s holds prompt A (%d blocks)", holder, again.cachedBlocks)

	// 2. Kill the engine: workerd restarts it; the router's index for it is cleared, then
	// refilled by the new engine's events.
	victim := holder
	oldPID := enginePID(t, workerds[victim])
	if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the router to forget "+victim+"'s blocks", func() bool {
		return cachedBlocks(t, rt.base, victim) == 0
	})
	waitUntil(t, "workerd to restart "+victim, func() bool {
		pids := childPIDs(workerds[victim].cmd.Process.Pid)
		return len(pids) == 1 && pids[0] != oldPID && httpStatus(addrOf[victim]+"/health") == http.StatusOK
	})
	waitUntil(t, "the router to route to "+victim+" again", func() bool {
		return metric(t, rt.base, router.MetricHealthy, `endpoint="`+victim+`"`) == 1
	})
	// The relay resynced the router with the new engine: nothing of the old one came back.
	if n := cachedBlocks(t, rt.base, victim); n != 0 {
		t.Errorf("after the restart the router's index holds %v blocks for %s; the new engine has stored nothing", n, victim)
	}
	// Nor does the router credit the old engine with prompt A any other way.
	if r := chatOnce(ctx, t, c, promptA); r.cachedBlocks != 0 {
		t.Errorf("after the restart the router still saw prompt A cached (%d blocks on %s)", r.cachedBlocks, r.endpoint)
	}
	var promptB string
	for i := 0; promptB == ""; i++ {
		if i == 30 {
			t.Fatalf("30 fresh prompts and none went to the restarted %s", victim)
		}
		p := longPrompt(fmt.Sprint("discovery-refill-", i), 200)
		if r := chatOnce(ctx, t, c, p); r.endpoint == addrOf[victim] {
			promptB = p
		}
	}
	waitUntil(t, "the restarted "+victim+"'s blocks to refill the router's index", func() bool {
		return cachedBlocks(t, rt.base, victim) > 0
	})
	if r := chatOnce(ctx, t, c, promptB); r.endpoint != addrOf[victim] || r.cachedBlocks == 0 {
		t.Errorf("repeat after the refill: %s with %d cached blocks; want %s with a hit", r.endpoint, r.cachedBlocks, addrOf[victim])
	}
	t.Logf("step 2: %s restarted (pid %d gone), index cleared and refilled", victim, oldPID)

	// 3. Kill the router and start a new one: the relay snapshot restores its index.
	promptC := longPrompt("discovery-c", 200)
	r := chatOnce(ctx, t, c, promptC)
	holderC := nameOf[r.endpoint]
	before := r.cachedBlocks
	waitUntil(t, "prompt C's blocks to reach the router", func() bool {
		return cachedBlocks(t, rt.base, holderC) > float64(before)
	})
	want := cachedBlocks(t, rt.base, holderC)
	_ = rt.p.cmd.Process.Kill()
	<-rt.p.done
	rt = startConsulRouter(t, agent.Addr)
	waitUntil(t, "the new router to discover both engines", func() bool {
		return metric(t, rt.base, router.MetricHealthy) == 2
	})
	waitUntil(t, "the relay snapshot to restore "+holderC+"'s blocks", func() bool {
		return cachedBlocks(t, rt.base, holderC) == want
	})
	c = client(rt.base)
	r = chatOnce(ctx, t, c, promptC) // the first request the new router sees
	if r.endpoint != addrOf[holderC] || r.cachedBlocks == 0 || r.cachedTokens == 0 {
		t.Errorf("first request after the router restart: %s, %d cached blocks, %d cached tokens; want %s with a hit",
			r.endpoint, r.cachedBlocks, r.cachedTokens, addrOf[holderC])
	}
	t.Logf("step 3: new router restored %v blocks of %s from the snapshot; first request hit %d blocks", want, holderC, r.cachedBlocks)

	// 4. Stop a workerd under load: its engine leaves Consul and the router, nothing fails.
	stopped, kept := "w0-sim", "w1-sim"
	loop := startRequestLoop(ctx, c, 2)
	loop.waitServed(t, 6)
	if err := workerds[stopped].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitConsul(t, agent.Client, stopped+" to leave Consul", func(m map[string]*api.ServiceEntry) bool {
		return m[stopped] == nil && m[kept] != nil
	})
	waitUntil(t, "the router to drop "+stopped, func() bool {
		return !hasSeries(t, rt.base, router.MetricHealthy, `endpoint="`+stopped+`"`) &&
			metric(t, rt.base, router.MetricHealthy) == 1
	})
	mark, removed := loop.mark(), time.Now()
	select {
	case <-workerds[stopped].done:
	case <-time.After(60 * time.Second):
		t.Fatalf("workerd %s did not exit within 60s of SIGTERM", stopped)
	}
	loop.waitServed(t, mark.served+10)
	res := loop.stop()
	if len(res.errs) > 0 {
		t.Errorf("%d of %d requests failed while %s's workerd stopped; first: %v", len(res.errs), res.served+len(res.errs), stopped, res.errs[0])
	}
	for _, d := range res.done {
		if d.started.After(removed) && d.endpoint != addrOf[kept] {
			t.Errorf("a request started after %s left the router was served by %s", stopped, d.endpoint)
			break
		}
	}
	t.Logf("step 4: %d requests, %d failed; %d after the removal, all on %s", res.served+len(res.errs), len(res.errs),
		res.served-mark.served, kept)
}

// startWorkerd runs `kvgate workerd` with one simulated engine registered in Consul as
// <node>-sim, with quick health checks and restarts.
func startWorkerd(t *testing.T, consul, node string) *proc {
	t.Helper()
	cfg := fmt.Sprintf(`listen: 127.0.0.1:0
node: %s
consul:
  address: %s
  check_interval: 1s
  reregister_interval: 1s
scrape_interval: 200ms
drain_timeout: 20s
stop_timeout: 5s
min_backoff: 300ms
max_backoff: 2s
engines:
  - name: sim
    kind: sim
    model: %s
    args: ["--speed", "20"]
`, node, consul, model)
	path := filepath.Join(t.TempDir(), node+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return startProc(t, kvgateBin, "workerd", "--config", path)
}

type routerProc struct {
	p    *proc
	base string // gateway URL, also serving /metrics
}

// startConsulRouter runs `kvgate router --consul` with the gateway on a free port.
func startConsulRouter(t *testing.T, consul string) routerProc {
	t.Helper()
	grpcAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	p := startProc(t, kvgateBin, "router", "--consul", consul, "--grpc", grpcAddr, "--http", httpAddr)
	base := "http://" + httpAddr
	waitHTTP(t, p, base+"/health", 30*time.Second)
	return routerProc{p: p, base: base}
}

// waitUntil waits up to 60s for cond.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, 60*time.Second, what, cond)
}

// waitConsul polls the engines registered in Consul (by instance name) until ok accepts them.
func waitConsul(t *testing.T, c *api.Client, what string, ok func(map[string]*api.ServiceEntry) bool) map[string]*api.ServiceEntry {
	t.Helper()
	var m map[string]*api.ServiceEntry
	waitUntil(t, what, func() bool {
		entries, _, err := c.Health().Service(discovery.DefaultService, "", false, nil)
		if err != nil {
			return false
		}
		m = map[string]*api.ServiceEntry{}
		for _, e := range entries {
			m[e.Service.ID] = e
		}
		return ok(m)
	})
	return m
}

// cachedBlocks is the router's count of index blocks for the endpoint called name (0 when
// the router does not list it).
func cachedBlocks(t *testing.T, base, name string) float64 {
	return metric(t, base, router.MetricEndpointBlocks, `endpoint="`+name+`"`)
}

// hasSeries reports whether url's /metrics has a series of name with all the label fragments.
func hasSeries(t *testing.T, url, name string, labels ...string) bool {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.WriteString(string(buf[:n]))
		if err != nil {
			break
		}
	}
	for line := range strings.SplitSeq(b.String(), "\n") {
		if !strings.HasPrefix(line, name+"{") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if ok {
			return true
		}
	}
	return false
}

// httpStatus returns the status of GET http://addr (0 when it cannot connect).
func httpStatus(addr string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// childPIDs returns the pids whose parent is pid (Linux /proc).
func childPIDs(pid int) []int {
	dirs, _ := os.ReadDir("/proc")
	var out []int
	for _, d := range dirs {
		n, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", d.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// enginePID is the pid of the one engine a workerd runs: its only child process.
func enginePID(t *testing.T, w *proc) int {
	t.Helper()
	var pid int
	waitUntil(t, "the workerd's engine process", func() bool {
		c := childPIDs(w.cmd.Process.Pid)
		if len(c) == 1 {
			pid = c[0]
		}
		return len(c) == 1
	})
	return pid
}

type chatResult struct {
	endpoint     string // x-kvgate-endpoint
	cachedBlocks int    // x-kvgate-cached-blocks
	cachedTokens int64  // usage.prompt_tokens_details.cached_tokens
}

// chatOnce sends one chat and fails the test if it does not succeed.
func chatOnce(ctx context.Context, t *testing.T, c openai.Client, prompt string) chatResult {
	t.Helper()
	r, err := tryChat(ctx, c, prompt, 4)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func tryChat(ctx context.Context, c openai.Client, prompt string, maxTokens int64) (chatResult, error) {
	var resp *http.Response
	cc, err := c.Chat.Completions.New(ctx, userChat(prompt, maxTokens), option.WithResponseInto(&resp))
	if err != nil {
		return chatResult{}, err
	}
	if len(cc.Choices) == 0 {
		return chatResult{}, fmt.Errorf("no choices in %s", cc.RawJSON())
	}
	n, _ := strconv.Atoi(resp.Header.Get(router.HeaderCachedBlocks))
	return chatResult{endpoint: resp.Header.Get(router.HeaderEndpoint), cachedBlocks: n,
		cachedTokens: cc.Usage.PromptTokensDetails.CachedTokens}, nil
}

// requestLoop sends short chats back to back from a few workers and records every outcome.
type requestLoop struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	res    loopResult
}

type loopResult struct {
	served int
	done   []loopReq // successful requests, in completion order
	errs   []error
}

type loopReq struct {
	started  time.Time
	endpoint string
}

func startRequestLoop(ctx context.Context, c openai.Client, workers int) *requestLoop {
	ctx, cancel := context.WithCancel(ctx)
	l := &requestLoop{cancel: cancel}
	for w := range workers {
		l.wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				start := time.Now()
				r, err := tryChat(ctx, c, fmt.Sprintf("Steady request %d from worker %d: say something short.", i, w), 2)
				if ctx.Err() != nil {
					return // stopped mid-request: not the system's failure
				}
				l.mu.Lock()
				if err != nil {
					l.res.errs = append(l.res.errs, err)
				} else {
					l.res.served++
					l.res.done = append(l.res.done, loopReq{start, r.endpoint})
				}
				l.mu.Unlock()
			}
		})
	}
	return l
}

// mark returns a copy of the results so far.
func (l *requestLoop) mark() loopResult {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := l.res
	r.done = append([]loopReq(nil), l.res.done...)
	return r
}

// waitServed waits until n requests have succeeded.
func (l *requestLoop) waitServed(t *testing.T, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d served requests", n), func() bool { return l.mark().served >= n })
}

func (l *requestLoop) stop() loopResult {
	l.cancel()
	l.wg.Wait()
	return l.mark()
}
