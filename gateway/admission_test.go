package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// startOneSlot is a gateway over one engine that the router saturates at one request.
func startOneSlot(t *testing.T, addr string) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	rc.Models = loadOnly(t)
	rc.MaxInflight = 1
	rc.QueueTTL = time.Minute
	rc.Endpoints = []router.Endpoint{{Name: "e0", Address: addr, Models: []string{model}, BlockSize: 16}}
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{Addr: "127.0.0.1:0", Gatherer: reg}, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	a, err := gw.Addr(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{url: "http://" + a.String(), reg: reg, rt: rt}
}

// gatedEngine answers each request once release is closed.
func gatedEngine(t *testing.T, release chan struct{}) *engine {
	return newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}`)
	})
}

type httpResult struct {
	status int
	header http.Header
	body   string
	err    error
}

func postAsync(ctx context.Context, url, body string, h http.Header) chan httpResult {
	ch := make(chan httpResult, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", url+"/v1/chat/completions", strings.NewReader(body))
		for k, v := range h {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- httpResult{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		ch <- httpResult{resp.StatusCode, resp.Header, string(b), err}
	}()
	return ch
}

func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, 20*time.Second, what, cond)
}

// TestAdmissionHTTP: with the engine saturated, a request waits in the queue and is served
// when room frees; a sheddable one is refused at once with 429, the reason header,
// Retry-After and an OpenAI error body.
func TestAdmissionHTTP(t *testing.T) {
	release := make(chan struct{})
	e := gatedEngine(t, release)
	f := startOneSlot(t, e.addr())
	first := postAsync(context.Background(), f.url, chat("first", false), nil)
	until(t, "the first request is at the engine", func() bool { return e.hits.Load() == 1 })
	second := postAsync(context.Background(), f.url, chat("second", false), nil)
	until(t, "the second waits", func() bool { return metricstest.Value(f.reg, router.MetricQueued) == 1 })

	shed := <-postAsync(context.Background(), f.url, chat("shed", false), http.Header{"X-Kvgate-Priority": {"-1"}})
	if shed.err != nil {
		t.Fatal(shed.err)
	}
	var eb struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	if shed.status != http.StatusTooManyRequests || shed.header.Get(router.HeaderRejectedReason) != router.RejectedSheddable ||
		shed.header.Get("Retry-After") == "" || json.Unmarshal([]byte(shed.body), &eb) != nil || eb.Error.Type != "rate_limit_error" {
		t.Fatalf("sheddable: %d %v %s", shed.status, shed.header, shed.body)
	}
	if e.hits.Load() != 1 {
		t.Fatalf("the engine saw %d requests while saturated, want 1", e.hits.Load())
	}
	close(release)
	for _, ch := range []chan httpResult{first, second} {
		if r := <-ch; r.err != nil || r.status != http.StatusOK {
			t.Fatalf("%d %v %s", r.status, r.err, r.body)
		}
	}
	waitReleased(t, f)
}

// TestAdmissionClientLeaves: a client that hangs up while queued is taken out of the queue:
// it never reaches the engine, leaves no load and no goroutine.
func TestAdmissionClientLeaves(t *testing.T) {
	release := make(chan struct{})
	e := gatedEngine(t, release)
	f := startOneSlot(t, e.addr())
	first := postAsync(context.Background(), f.url, chat("first", false), nil)
	until(t, "the first request is at the engine", func() bool { return e.hits.Load() == 1 })
	opts := goleak.IgnoreCurrent()
	ctx, cancel := context.WithCancel(context.Background())
	gone := postAsync(ctx, f.url, chat("leaves", false), nil)
	until(t, "queued", func() bool { return metricstest.Value(f.reg, router.MetricQueued) == 1 })
	cancel()
	<-gone
	until(t, "dequeued", func() bool {
		return metricstest.Value(f.reg, router.MetricQueued) == 0 &&
			metricstest.Value(f.reg, router.MetricQueueRejected, "reason", "left") == 1
	})
	close(release)
	<-first
	waitReleased(t, f)
	if e.hits.Load() != 1 {
		t.Fatalf("the engine saw %d requests, want 1", e.hits.Load())
	}
	http.DefaultClient.CloseIdleConnections()
	goleak.VerifyNone(t, opts)
}

// loadOnly is a model map whose tokenizer cannot load: requests are routed by load alone,
// which is all these tests need, without loading the real tokenizer (slow under -race).
func loadOnly(t *testing.T) *tokenizer.ModelMap {
	m, err := tokenizer.NewModelMap([]tokenizer.Model{{Name: model, Tokenizer: t.TempDir() + "/none.json", BlockSize: 16}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
