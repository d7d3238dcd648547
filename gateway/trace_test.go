package gateway_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
	"github.com/kvgate/kvgate/tracing"
	"github.com/kvgate/kvgate/tracing/tracingtest"
)

// Client trace context of the traced requests: the gateway continues this trace.
const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID  = "00f067aa0ba902b7"
	clientParent  = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

// traceEngine is an engine that remembers the traceparent of every request it got.
type traceEngine struct {
	*engine
	mu      sync.Mutex
	parents []string
}

func newTraceEngine(t *testing.T) *traceEngine {
	te := &traceEngine{}
	te.engine = newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		te.mu.Lock()
		te.parents = append(te.parents, r.Header.Get("traceparent"))
		te.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"prompt_tokens_details":{"cached_tokens":4}}}`)
	})
	return te
}

func (te *traceEngine) traceparents() []string {
	te.mu.Lock()
	defer te.mu.Unlock()
	return append([]string(nil), te.parents...)
}

// startTraced runs a gateway whose router and gateway both trace through p (kv policy, so
// the prompt is tokenized and matched).
func startTraced(t testing.TB, p *tracing.Provider, engines ...string) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	rc.Policy = router.PolicyKV
	rc.Models = tokenizer.DefaultModelMap()
	rc.Tracer = p.Tracer("github.com/kvgate/kvgate/router")
	for i, a := range engines {
		rc.Endpoints = append(rc.Endpoints, router.Endpoint{Name: fmt.Sprint("e", i), Address: a, Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16})
	}
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	gw, err := gateway.New(gateway.Config{Addr: "127.0.0.1:0", Tracer: p.Tracer("github.com/kvgate/kvgate/gateway")}, rt, nil, reg)
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
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := gw.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{url: "http://" + addr.String(), reg: reg, rt: rt}
}

func postTraced(t *testing.T, url, body, traceparent string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func newProvider(t testing.TB, col *tracingtest.Collector) *tracing.Provider {
	t.Helper()
	t.Setenv("OTEL_SDK_DISABLED", "")
	p, err := tracing.New(context.Background(), tracing.Config{Endpoint: col.Addr(), Insecure: true, SampleRatio: 1, ServiceName: "kvgate-gateway"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// flush waits until the gateway has finished its requests (the client has its response a
// moment before the handler ends its spans) and sends every span to the collector.
func flush(t *testing.T, f *fixture, p *tracing.Provider) {
	t.Helper()
	waitReleased(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func mustFind(t *testing.T, col *tracingtest.Collector, name string) tracingtest.Span {
	t.Helper()
	s, ok := col.Find(name)
	if !ok {
		var names []string
		for _, s := range col.Spans() {
			names = append(names, s.Name)
		}
		t.Fatalf("no span %q; got %v", name, names)
	}
	return s
}

func wantAttr(t *testing.T, s tracingtest.Span, key string, want any) {
	t.Helper()
	if got := s.Attrs[key]; got != want {
		t.Errorf("span %s: %s = %v (%T), want %v (%T)", s.Name, key, got, got, want, want)
	}
}

func wantChild(t *testing.T, child, parent tracingtest.Span) {
	t.Helper()
	if child.TraceID != parent.TraceID || child.ParentID != parent.SpanID {
		t.Errorf("span %s (trace %s, parent %s) is not a child of %s (trace %s, span %s)",
			child.Name, child.TraceID, child.ParentID, parent.Name, parent.TraceID, parent.SpanID)
	}
}

// TestTraceTree follows one request through the gateway: the client's trace is continued by
// the server span, the router's decision and its tokenize and pick steps sit under it, the
// upstream call is a client span, and the engine receives that span's trace context.
func TestTraceTree(t *testing.T) {
	col := tracingtest.New(t)
	p := newProvider(t, col)
	eng := newTraceEngine(t)
	f := startTraced(t, p, eng.addr())
	url := f.url
	const secret = "the prompt must never reach a span"
	resp := postTraced(t, url+"/v1/chat/completions", chat(secret, false), clientParent)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	flush(t, f, p)

	srv := mustFind(t, col, "POST /v1/chat/completions")
	if srv.Kind != tracepb.Span_SPAN_KIND_SERVER || srv.TraceID != clientTraceID || srv.ParentID != clientSpanID {
		t.Errorf("server span kind %v trace %s parent %s: want SERVER continuing %s", srv.Kind, srv.TraceID, srv.ParentID, clientParent)
	}
	wantAttr(t, srv, "http.request.method", "POST")
	wantAttr(t, srv, "http.route", "/v1/chat/completions")
	wantAttr(t, srv, "http.response.status_code", int64(200))
	wantAttr(t, srv, "gen_ai.operation.name", "chat")
	wantAttr(t, srv, "gen_ai.request.model", model)
	wantAttr(t, srv, "gen_ai.usage.input_tokens", int64(7))
	wantAttr(t, srv, "gen_ai.usage.output_tokens", int64(3))
	wantAttr(t, srv, "gen_ai.usage.cache_read.input_tokens", int64(4))

	route := mustFind(t, col, router.SpanRoute)
	wantChild(t, route, srv)
	wantAttr(t, route, "gen_ai.request.model", model)
	wantAttr(t, route, router.AttrPolicy, router.PolicyKV)
	wantAttr(t, route, router.AttrEndpoint, eng.addr())
	wantAttr(t, route, router.AttrEndpointName, "e0")
	wantAttr(t, route, router.AttrCachedBlocks, int64(0))
	wantAttr(t, route, router.AttrCachedTierPrefix+"gpu", int64(0))
	wantAttr(t, route, router.AttrQueueWait, 0.0)
	if n, _ := route.Attrs[router.AttrPromptTokens].(int64); n <= 0 {
		t.Errorf("route span: %s = %v, want the prompt's token count", router.AttrPromptTokens, route.Attrs[router.AttrPromptTokens])
	}
	tok := mustFind(t, col, router.SpanTokenize)
	wantChild(t, tok, route)
	wantAttr(t, tok, router.AttrPromptTokens, route.Attrs[router.AttrPromptTokens])
	pick := mustFind(t, col, router.SpanPick)
	wantChild(t, pick, route)
	if strings.Join(pick.Events, ",") != router.EventMatch+","+router.EventScore {
		t.Errorf("pick span events %v, want match then score", pick.Events)
	}

	up := mustFind(t, col, "chat "+model)
	wantChild(t, up, srv)
	if up.Kind != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("upstream span kind %v, want CLIENT", up.Kind)
	}
	wantAttr(t, up, "gen_ai.provider.name", "openai")
	wantAttr(t, up, "gen_ai.request.model", model)
	wantAttr(t, up, "http.response.status_code", int64(200))
	wantAttr(t, up, gateway.AttrAttempt, int64(1))
	wantAttr(t, up, "server.address", "127.0.0.1")

	// The engine got the upstream span's context, in the client's trace.
	if got, want := eng.traceparents(), "00-"+clientTraceID+"-"+up.SpanID+"-01"; len(got) != 1 || got[0] != want {
		t.Errorf("engine got traceparent %q, want %q", got, want)
	}
	for _, s := range col.Spans() {
		if s.Service != "kvgate-gateway" {
			t.Errorf("span %s: service.name %q", s.Name, s.Service)
		}
		for k, v := range s.Attrs {
			if str, ok := v.(string); ok && strings.Contains(str, "prompt must never") {
				t.Errorf("span %s attribute %s carries the prompt text", s.Name, k)
			}
		}
	}
}

// TestTraceNewRootAndRefusal: without a traceparent the server span starts a trace, which
// the engine continues; a refused request's route span carries the error and no upstream
// span exists.
func TestTraceNewRootAndRefusal(t *testing.T) {
	col := tracingtest.New(t)
	p := newProvider(t, col)
	eng := newTraceEngine(t)
	f := startTraced(t, p, eng.addr())
	url := f.url
	postTraced(t, url+"/v1/chat/completions", chat("hello", false), "")
	bad := `{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}`
	if resp := postTraced(t, url+"/v1/chat/completions", bad, ""); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown model: status %d, want 404", resp.StatusCode)
	}
	flush(t, f, p)

	var roots []tracingtest.Span
	for _, s := range col.Spans() {
		if s.Name == "POST /v1/chat/completions" {
			roots = append(roots, s)
		}
	}
	if len(roots) != 2 || roots[0].ParentID != "" || roots[1].ParentID != "" || roots[0].TraceID == roots[1].TraceID {
		t.Fatalf("want two root server spans in two traces, got %+v", roots)
	}
	parents := eng.traceparents()
	if len(parents) != 1 || !strings.HasPrefix(parents[0], "00-"+roots[0].TraceID+"-") {
		t.Errorf("engine traceparents %q, want one in trace %s", parents, roots[0].TraceID)
	}
	var refused tracingtest.Span
	for _, s := range col.Spans() {
		if s.Name == router.SpanRoute && s.TraceID == roots[1].TraceID {
			refused = s
		}
		if s.Kind == tracepb.Span_SPAN_KIND_CLIENT && s.TraceID == roots[1].TraceID {
			t.Errorf("a refused request has an upstream span %s", s.Name)
		}
	}
	if refused.Status != tracepb.Status_STATUS_CODE_ERROR || refused.Attrs["error.type"] != "invalid_request_error" ||
		refused.Attrs["http.response.status_code"] != int64(404) {
		t.Errorf("refused route span: status %v attrs %v", refused.Status, refused.Attrs)
	}
	wantAttr(t, roots[1], "http.response.status_code", int64(404))
}

// TestTraceOff: with tracing off (OTEL_SDK_DISABLED although an endpoint is set) the
// exporter never connects, and a client's traceparent reaches the engine untouched.
func TestTraceOff(t *testing.T) {
	col := tracingtest.New(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+col.Addr())
	t.Setenv("OTEL_SDK_DISABLED", "true")
	p, err := tracing.New(context.Background(), tracing.Config{SampleRatio: 1})
	if err != nil {
		t.Fatal(err)
	}
	if p.Enabled() {
		t.Fatal("tracing on under OTEL_SDK_DISABLED=true")
	}
	eng := newTraceEngine(t)
	f := startTraced(t, p, eng.addr())
	url := f.url
	if resp := postTraced(t, url+"/v1/chat/completions", chat("hello", false), clientParent); resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	flush(t, f, p)
	if got := eng.traceparents(); len(got) != 1 || got[0] != clientParent {
		t.Errorf("engine got traceparent %q, want the client's %q passed through", got, clientParent)
	}
	if n := col.Conns(); n != 0 || len(col.Spans()) != 0 {
		t.Errorf("collector saw %d connections and %d spans with tracing off", n, len(col.Spans()))
	}
}

// TestTraceRemoteEPP: in remote-EPP mode the gateway passes its server span's context to the
// EPP, so kvgate's ext_proc server records its stream span under the gateway's, in the
// client's trace; the engine continues the gateway's upstream span.
func TestTraceRemoteEPP(t *testing.T) {
	col := tracingtest.New(t)
	p := newProvider(t, col)
	eng := newTraceEngine(t)
	eppAddr, _, eppReg := startRouterEPPPolicy(t, router.PolicyKV, extproc.Config{Tracer: p.Tracer("github.com/kvgate/kvgate/extproc")}, eng.addr())
	reg := prometheus.NewRegistry()
	// A long EPP timeout: the first kv pick loads the tokenizer, slow under -race.
	gw, err := gateway.NewEPP(gateway.Config{Addr: "127.0.0.1:0", Tracer: p.Tracer("github.com/kvgate/kvgate/gateway")},
		gateway.EPPConfig{Addr: eppAddr, Timeout: time.Minute, Pool: []router.Endpoint{{Address: eng.addr(), Models: []string{model}}}}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; gw.Close() })
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := gw.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr.String()+"/v1/chat/completions", strings.NewReader(chat("hello", false)))
	req.Header.Set("traceparent", clientParent)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	polltest.Until(t, 5*time.Second, "the gateway and the EPP to finish the request", func() bool {
		return metricstest.Value(reg, gateway.MetricInflight) == 0 && metricstest.Value(eppReg, extproc.MetricStreamsActive) == 0
	})
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	if err := p.Shutdown(ctx2); err != nil {
		t.Fatal(err)
	}

	srv := mustFind(t, col, "POST /v1/chat/completions")
	if srv.TraceID != clientTraceID || srv.ParentID != clientSpanID {
		t.Errorf("gateway span does not continue the client's trace: trace %s parent %s", srv.TraceID, srv.ParentID)
	}
	stream := mustFind(t, col, extproc.SpanStreamPrefix+"POST /v1/chat/completions")
	wantChild(t, stream, srv)
	up := mustFind(t, col, "chat")
	wantChild(t, up, srv)
	if got, want := eng.traceparents(), "00-"+clientTraceID+"-"+up.SpanID+"-01"; len(got) != 1 || got[0] != want {
		t.Errorf("engine got traceparent %q, want the gateway's upstream span %q", got, want)
	}
}
