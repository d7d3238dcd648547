package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// The fault-injection suite (issue 19): real processes on loopback, a fault injected under
// load, and for each scenario the figures docs/RELIABILITY.md reports: requests sent,
// failed, retried, streams cut (each must reach its client as a failure), load left in the
// router afterwards (must be zero) and process crashes (must be zero).
//
//	go test -race -run TestFault ./e2e

// figures is what one scenario did, as its clients and the router's /metrics saw it.
type figures struct {
	mu      sync.Mutex
	sent    int
	ok      int
	failed  int            // no response, or an error status
	cut     int            // a 200 stream that ended without completing
	cutHow  map[string]int // how each cut stream ended for its client
	retried float64        // the gateway's retries (or, through ext_proc, the proxy's fallbacks)
	load    float64        // router load left after the clients finished
	crashes int
	errs    []string    // a few failures, for the log
	status  map[int]int // failed requests by HTTP status (0: no response)
}

// add records how one request ended.
func (f *figures) add(o seen) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent++
	switch c := o.class(); c {
	case "ok":
		f.ok++
	case "failed":
		f.failed++
		if f.status == nil {
			f.status = map[int]int{}
		}
		f.status[o.status]++
	default:
		f.cut++
		if f.cutHow == nil {
			f.cutHow = map[string]int{}
		}
		f.cutHow[c]++
	}
	if o.class() != "ok" && len(f.errs) < 5 {
		f.errs = append(f.errs, o.String())
	}
}

func (f *figures) snapshot() (sent, ok, failed, cut int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sent, f.ok, f.failed, f.cut
}

// log writes the scenario's line of the RELIABILITY.md table.
func (f *figures) log(t *testing.T, scenario string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	kinds := make([]string, 0, len(f.cutHow))
	for k, n := range f.cutHow {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
	}
	sort.Strings(kinds)
	t.Logf("FAULT %s: sent=%d ok=%d failed=%d retried=%v cut=%d [%s] load_left=%v crashes=%d; first failures: %q",
		scenario, f.sent, f.ok, f.failed, f.retried, f.cut, strings.Join(kinds, " "), f.load, f.crashes, f.errs)
}

// seen is one streamed request as its client saw it.
type seen struct {
	status   int    // HTTP status; 0 when no response arrived
	endpoint string // x-kvgate-endpoint
	events   int    // data events before the end
	done     bool   // data: [DONE]
	finish   bool   // a choice carried a finish_reason
	errEvent bool   // an SSE event carrying an "error" object
	err      error  // the transport error that ended it (nil: a clean end)
}

// class is "ok" (complete: [DONE] after a finish reason, clean end), "failed" (no 200
// response) or, for a 200 stream that did not complete, how its client learnt of the cut:
// "error-event", "transport-error" or "silent" (a clean end without [DONE]: a failure that
// looks like success, which the suite forbids).
func (o seen) class() string {
	switch {
	case o.status != http.StatusOK:
		return "failed"
	case o.done && o.finish && !o.errEvent && o.err == nil:
		return "ok"
	case o.errEvent:
		return "error-event"
	case o.err != nil:
		return "transport-error"
	default:
		return "silent"
	}
}

func (o seen) String() string {
	return fmt.Sprintf("status %d from %q after %d events, done %v, finish %v, error event %v: %v",
		o.status, o.endpoint, o.events, o.done, o.finish, o.errEvent, o.err)
}

// streamChat sends one streamed chat to the gateway at base and reads it to its end.
func streamChat(ctx context.Context, base, prompt string, maxTokens int) seen {
	return streamChatWatched(ctx, base, prompt, maxTokens, nil)
}

// streamChatWatched is streamChat that calls streaming(endpoint, +1) once a 200 answer's
// headers arrive (the gateway sends them with the engine's first body bytes) and
// streaming(endpoint, -1) when the stream ends.
func streamChatWatched(ctx context.Context, base, prompt string, maxTokens int, streaming func(endpoint string, delta int)) seen {
	body, _ := json.Marshal(map[string]any{
		"model": model, "stream": true, "max_tokens": maxTokens, "ignore_eos": true,
		"messages": []map[string]string{{"role": "user", "content": prompt}},
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return seen{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return seen{err: err}
	}
	defer resp.Body.Close()
	o := seen{status: resp.StatusCode, endpoint: resp.Header.Get(router.HeaderEndpoint)}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		o.err = fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
		return o
	}
	if streaming != nil {
		streaming(o.endpoint, 1)
		defer streaming(o.endpoint, -1)
	}
	o.readSSE(resp.Body)
	return o
}

// readSSE reads an OpenAI event stream to its end, noting [DONE], finish reasons, error
// events and the error that ended it.
func (o *seen) readSSE(r io.Reader) {
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if data, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "data:"); ok {
			data = strings.TrimSpace(data)
			if data == "[DONE]" {
				o.done = true
			} else {
				o.events++
				var ev struct {
					Error   json.RawMessage `json:"error"`
					Choices []struct {
						FinishReason *string `json:"finish_reason"`
					} `json:"choices"`
				}
				if json.Unmarshal([]byte(data), &ev) != nil || len(ev.Error) > 0 && string(ev.Error) != "null" {
					o.errEvent = true
				}
				for _, c := range ev.Choices {
					if c.FinishReason != nil && *c.FinishReason != "" {
						o.finish = true
					}
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				o.err = err
			}
			return
		}
	}
}

// streamLoad sends streamed chats from workers, each with its own prompt, until stop is
// called, recording how each ended in f.
type streamLoad struct {
	f      *figures
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startStreamLoad runs workers sending send(ctx, i) back to back; timeout bounds each
// request.
func startStreamLoad(ctx context.Context, f *figures, workers int, timeout time.Duration, send func(ctx context.Context, i int) seen) *streamLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &streamLoad{f: f, cancel: cancel}
	var n sync.Mutex
	next := 0
	for range workers {
		l.wg.Go(func() {
			for ctx.Err() == nil {
				n.Lock()
				i := next
				next++
				n.Unlock()
				rctx, rcancel := context.WithTimeout(ctx, timeout)
				o := send(rctx, i)
				rcancel()
				if ctx.Err() != nil {
					return // stopped by the test, not failed by the system
				}
				f.add(o)
			}
		})
	}
	return l
}

// waitSent waits until n requests have ended (in any way).
func (l *streamLoad) waitSent(t *testing.T, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d requests to end", n), func() bool {
		sent, _, _, _ := l.f.snapshot()
		return sent >= n
	})
}

func (l *streamLoad) stop() {
	l.cancel()
	l.wg.Wait()
}

// routerLoad is the load the router's /metrics at url counts on all endpoints: requests in
// flight, prefill tokens and decode blocks.
func routerLoad(t *testing.T, url string) float64 {
	t.Helper()
	return metric(t, url, router.MetricInflight) + metric(t, url, router.MetricPrefillTokens) + metric(t, url, router.MetricDecodeBlocks)
}

// waitNoLoad waits up to 10s for the router at url to count no load, and returns what it
// counts then. The clients have all returned: a handler may still be finishing its last
// write, so the wait is for the observable condition, bounded.
func waitNoLoad(t *testing.T, url string) float64 {
	t.Helper()
	var l float64
	polltest.Wait(10*time.Second, func() bool { l = routerLoad(t, url); return l == 0 })
	return l
}

// survivor is a process that must still be running and healthy at the end of a scenario.
type survivor struct {
	name   string
	p      *proc
	health string // a URL answering 200 while it is healthy ("" : alive is enough)
}

// crashes counts the survivors that exited or do not answer their health check.
func crashes(t *testing.T, ps ...survivor) int {
	t.Helper()
	n := 0
	for _, s := range ps {
		select {
		case <-s.p.done:
			t.Errorf("%s exited: %v\n%s", s.name, s.p.cmd.ProcessState, tail(s.p.output(), 3000))
			n++
			continue
		default:
		}
		if s.health != "" && httpStatus(strings.TrimPrefix(s.health, "http://")) != http.StatusOK {
			t.Errorf("%s does not answer %s", s.name, s.health)
			n++
		}
	}
	return n
}

// simProc is a `kvgate sim` process.
type simProc struct {
	p    *proc
	addr string // host:port of its OpenAI API
	kv   string // its KV-event publisher, tcp://host:port
}

// startSims starts n `kvgate sim` processes at modelled H100 speed (a 100-token answer
// streams for about a second) and waits for all of them.
func startSims(t *testing.T, n int, extra ...string) []simProc {
	t.Helper()
	sims := make([]simProc, n)
	for i := range sims {
		port, kv := porttest.Free(t), porttest.Free(t)
		sims[i] = simProc{addr: fmt.Sprintf("127.0.0.1:%d", port), kv: fmt.Sprintf("tcp://127.0.0.1:%d", kv)}
		args := append([]string{"sim", "--host", "127.0.0.1", "--port", fmt.Sprint(port),
			"--kv-events", sims[i].kv, "--kv-events-replay", "", "--speed", "1"}, extra...)
		sims[i].p = startProc(t, kvgateBin, args...)
	}
	for _, s := range sims {
		waitHTTP(t, s.p, "http://"+s.addr+"/health", 60*time.Second)
	}
	return sims
}

// faultRouter is a `kvgate router` process serving ext_proc and the gateway (with /metrics).
type faultRouter struct {
	p          *proc
	base, grpc string
}

// startRouter starts `kvgate router` in front of sims; the routes' KV events are the sims'
// unless kvEvents names others (by position).
func startRouter(t *testing.T, sims []simProc, kvEvents []string, extra ...string) faultRouter {
	t.Helper()
	r := faultRouter{grpc: fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))}
	httpAddr := fmt.Sprintf("127.0.0.1:%d", porttest.Free(t))
	args := []string{"router", "--grpc", r.grpc, "--http", httpAddr}
	for i, s := range sims {
		kv := s.kv
		if i < len(kvEvents) {
			kv = kvEvents[i]
		}
		args = append(args, "--endpoint", "http://"+s.addr)
		if kv != "" {
			args = append(args, "--kv-events", kv)
		}
	}
	r.p = startProc(t, kvgateBin, append(args, extra...)...)
	r.base = "http://" + httpAddr
	waitHTTP(t, r.p, r.base+"/health", 30*time.Second)
	waitUntil(t, "the router to count every engine healthy", func() bool {
		return metric(t, r.base, router.MetricHealthy) == float64(len(sims))
	})
	return r
}

// faultPrompt is a short prompt distinct per request.
func faultPrompt(i int) string {
	return fmt.Sprintf("Request %d of the fault suite: tell a long story about the number %d.", i, i)
}

// TestFaultEngineKill SIGKILLs an engine that is streaming answers through the gateway of
// `kvgate router`: every stream it was serving must end as a failure its client sees, the
// requests routed to it afterwards go to a fallback, and the router is left with no load.
func TestFaultEngineKill(t *testing.T) {
	sims := startSims(t, 3)
	rt := startRouter(t, sims, nil, "--migration-limit", "0") // the cut streams; migration_test.go migrates them
	victim := sims[0]
	f := &figures{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var onVictim atomic.Int32 // streams whose body the victim has begun to send
	streaming := func(endpoint string, d int) {
		if endpoint == victim.addr {
			onVictim.Add(int32(d))
		}
	}
	load := startStreamLoad(ctx, f, 6, 30*time.Second, func(ctx context.Context, i int) seen {
		return streamChatWatched(ctx, rt.base, faultPrompt(i), 100, streaming)
	})
	// Kill it while it is streaming to a client: a request still waiting for its first byte
	// is retried on a fallback by the gateway, one past it can only be cut.
	waitUntil(t, "a stream receiving the victim's body", func() bool { return onVictim.Load() >= 1 })
	if err := victim.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.p.done
	sent, _, _, _ := f.snapshot()
	load.waitSent(t, sent+24)
	load.stop()
	f.retried = metric(t, rt.base, gateway.MetricRetries)
	f.load = waitNoLoad(t, rt.base)
	f.crashes = crashes(t, survivor{"router", rt.p, rt.base + "/health"},
		survivor{"engine 1", sims[1].p, "http://" + sims[1].addr + "/health"},
		survivor{"engine 2", sims[2].p, "http://" + sims[2].addr + "/health"})
	f.log(t, "engine SIGKILL, gateway")

	if f.cut == 0 {
		t.Errorf("no stream was cut although the victim had streams in flight")
	}
	if n := f.cutHow["silent"]; n > 0 {
		t.Errorf("%d of %d cut streams ended like complete ones (no error, no [DONE]): a failure that looks like success", n, f.cut)
	}
	if f.failed > 0 {
		t.Errorf("%d requests failed without a stream although two engines were up: %q", f.failed, f.errs)
	}
	if f.load != 0 {
		t.Errorf("the router counts load %v after every client returned", f.load)
	}
}

// TestFaultEngineStop SIGSTOPs an engine streaming through the gateway: its streams stall
// until their clients give up after 6s (a transport error, never a normal end), and once they have,
// the router holds no load for them although the engine is still frozen. The engine is
// then continued and serves again.
func TestFaultEngineStop(t *testing.T) {
	sims := startSims(t, 3)
	rt := startRouter(t, sims, nil)
	victim := sims[0]
	f := &figures{}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const clientTimeout = 6 * time.Second
	load := startStreamLoad(ctx, f, 4, clientTimeout, func(ctx context.Context, i int) seen {
		return streamChat(ctx, rt.base, faultPrompt(i), 300)
	})
	waitUntil(t, "two streams in flight on the victim", func() bool {
		return metric(t, rt.base, router.MetricInflight, `address="`+victim.addr+`"`) >= 2
	})
	if err := victim.p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = victim.p.cmd.Process.Signal(syscall.SIGCONT)
		}
	}()
	// A stream whose last bytes were already in the socket buffers may still complete.
	waitUntil(t, "a stalled stream's client to give up", func() bool {
		_, _, failed, cut := f.snapshot()
		return cut+failed >= 1
	})
	load.stop()
	// The victim is still frozen: nothing its clients left may still count.
	f.load = waitNoLoad(t, rt.base)
	f.retried = metric(t, rt.base, gateway.MetricRetries)
	if err := victim.p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	stopped = false
	waitHTTP(t, victim.p, "http://"+victim.addr+"/health", 30*time.Second)
	if o := streamChat(ctx, "http://"+victim.addr, "After the stop.", 4); o.class() != "ok" {
		t.Errorf("the continued engine: %v", o)
	}
	f.crashes = crashes(t, survivor{"router", rt.p, rt.base + "/health"},
		survivor{"engine 0 (stopped, continued)", victim.p, "http://" + victim.addr + "/health"},
		survivor{"engine 1", sims[1].p, "http://" + sims[1].addr + "/health"},
		survivor{"engine 2", sims[2].p, "http://" + sims[2].addr + "/health"})
	f.log(t, "engine SIGSTOP, gateway")

	if n := f.cutHow["silent"]; n > 0 {
		t.Errorf("%d of %d cut streams ended like complete ones: a failure that looks like success", n, f.cut)
	}
	if f.load != 0 {
		t.Errorf("the router counts load %v after every client of the frozen engine gave up", f.load)
	}
}
