package extproc_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tracing"
	"github.com/kvgate/kvgate/tracing/tracingtest"
)

const (
	clientTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	clientSpanID  = "00f067aa0ba902b7"
	clientParent  = "00-" + clientTraceID + "-" + clientSpanID + "-01"
)

// startTraced runs an ext_proc server whose router and stream spans go through p.
func startTraced(t *testing.T, p *tracing.Provider) *fixture {
	t.Helper()
	return startRouter(t, extproc.Config{Tracer: p.Tracer("github.com/kvgate/kvgate/extproc")}, func(rc *router.Config) {
		rc.Policy = router.PolicyKV
		rc.Tracer = p.Tracer("github.com/kvgate/kvgate/router")
	})
}

func newProvider(t *testing.T, col *tracingtest.Collector) *tracing.Provider {
	t.Helper()
	t.Setenv("OTEL_SDK_DISABLED", "")
	p, err := tracing.New(context.Background(), tracing.Config{Endpoint: col.Addr(), Insecure: true, SampleRatio: 1, ServiceName: "kvgate-router"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func flush(t *testing.T, p *tracing.Provider) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

func spanNamed(t *testing.T, col *tracingtest.Collector, name string) tracingtest.Span {
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

func isChild(child, parent tracingtest.Span) bool {
	return child.TraceID == parent.TraceID && child.ParentID == parent.SpanID
}

// TestTraceStream: one span per stream continues Envoy's traceparent, the router's decision
// is its child, and the request Envoy forwards carries a traceparent (a header mutation) of a
// client span for the call to the engine, which ends with the response and its usage.
func TestTraceStream(t *testing.T) {
	for _, m := range []struct {
		name string
		mode extproctest.Mode
	}{modes[1], modes[3]} { // buffered/streamed, full-duplex
		t.Run(m.name, func(t *testing.T) {
			col := tracingtest.New(t)
			p := newProvider(t, col)
			f := startTraced(t, p)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			body := chatBody(t, "secret prompt text", true)
			var forwarded string
			res, err := f.client.Do(ctx, m.mode, extproctest.Request{
				Method: "POST", Path: "/v1/chat/completions",
				Header: http.Header{"Content-Type": {"application/json"}, "Traceparent": {clientParent}},
				Body:   body,
			}, func(r *extproctest.Result) extproctest.Upstream {
				forwarded = r.Header.Get("traceparent")
				return extproctest.Upstream{Status: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: sseChunks(usageJSON)}
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.Immediate != nil {
				t.Fatalf("immediate response %v", res.Immediate.GetStatus())
			}
			waitReleased(t, f)
			flush(t, p)

			st := spanNamed(t, col, extproc.SpanStreamPrefix+"POST /v1/chat/completions")
			if st.Kind != tracepb.Span_SPAN_KIND_SERVER || st.TraceID != clientTraceID || st.ParentID != clientSpanID {
				t.Errorf("stream span kind %v trace %s parent %s: want SERVER continuing %s", st.Kind, st.TraceID, st.ParentID, clientParent)
			}
			for k, want := range map[string]any{
				"http.response.status_code": int64(200), "gen_ai.request.model": model, "gen_ai.operation.name": "chat",
				"gen_ai.usage.input_tokens": int64(12), "gen_ai.usage.output_tokens": int64(2), extproc.AttrOutcome: "completed",
				"gen_ai.usage.cache_read.input_tokens": int64(0),
			} {
				if st.Attrs[k] != want {
					t.Errorf("stream span %s = %v, want %v", k, st.Attrs[k], want)
				}
			}
			route := spanNamed(t, col, router.SpanRoute)
			if !isChild(route, st) {
				t.Error("the route span is not a child of the stream span")
			}
			if route.Attrs[router.AttrEndpoint] != strings.Split(res.Header.Get(router.HeaderDestination), ",")[0] {
				t.Errorf("route span endpoint %v, pick %s", route.Attrs[router.AttrEndpoint], res.Header.Get(router.HeaderDestination))
			}
			if !isChild(spanNamed(t, col, router.SpanTokenize), route) || !isChild(spanNamed(t, col, router.SpanPick), route) {
				t.Error("tokenize and pick spans are not children of the route span")
			}
			up := spanNamed(t, col, "chat "+model)
			if up.Kind != tracepb.Span_SPAN_KIND_CLIENT || !isChild(up, st) {
				t.Errorf("upstream span kind %v parent %s: want CLIENT under the stream span %s", up.Kind, up.ParentID, st.SpanID)
			}
			if up.Attrs["http.response.status_code"] != int64(200) || up.Attrs["gen_ai.usage.output_tokens"] != int64(2) || up.Status == tracepb.Status_STATUS_CODE_ERROR {
				t.Errorf("upstream span attrs %v status %v", up.Attrs, up.Status)
			}
			if want := "00-" + clientTraceID + "-" + up.SpanID + "-01"; forwarded != want {
				t.Errorf("Envoy forwards traceparent %q, want the upstream span's %q", forwarded, want)
			}
			for _, s := range col.Spans() {
				for k, v := range s.Attrs {
					if str, ok := v.(string); ok && strings.Contains(str, "secret prompt") {
						t.Errorf("span %s attribute %s carries the prompt text", s.Name, k)
					}
				}
			}
		})
	}
}

// TestTraceRejectAndAbort: an ImmediateResponse is recorded on the stream span (no upstream
// span), and a stream that breaks after the pick ends both spans as errors.
func TestTraceRejectAndAbort(t *testing.T) {
	col := tracingtest.New(t)
	p := newProvider(t, col)
	f := startTraced(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := f.client.Do(ctx, modes[0].mode, extproctest.Request{
		Method: "POST", Path: "/v1/chat/completions",
		Header: http.Header{"Content-Type": {"application/json"}},
		Body:   []byte(`{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}`),
	}, nil)
	if err != nil || res.Immediate == nil {
		t.Fatalf("want an immediate 404, got %v, %v", res, err)
	}

	// A stream cut after the pick: the request path in full duplex (the pick comes back
	// after the body), then the stream is cancelled before any response.
	actx, acancel := context.WithCancel(ctx)
	defer acancel()
	raw, err := f.client.Open(actx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range extproctest.RequestMessages(modes[3].mode, extproctest.Request{
		Method: "POST", Path: "/v1/chat/completions", Header: http.Header{"Content-Type": {"application/json"}},
		Body: chatBody(t, "hello", false),
	}) {
		if err := raw.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := raw.Recv(); err != nil || r.GetRequestHeaders() == nil {
		t.Fatalf("want the pick on the request headers response, got %v, %v", r, err)
	}
	acancel()
	waitReleased(t, f)
	flush(t, p)

	var rejected, aborted, upstream []tracingtest.Span
	for _, s := range col.Spans() {
		switch {
		case s.Name == extproc.SpanStreamPrefix+"POST /v1/chat/completions" && s.Attrs[extproc.AttrOutcome] == "rejected":
			rejected = append(rejected, s)
		case s.Name == extproc.SpanStreamPrefix+"POST /v1/chat/completions" && s.Attrs[extproc.AttrOutcome] == "aborted":
			aborted = append(aborted, s)
		case s.Kind == tracepb.Span_SPAN_KIND_CLIENT:
			upstream = append(upstream, s)
		}
	}
	if len(rejected) != 1 || rejected[0].Attrs["http.response.status_code"] != int64(404) || rejected[0].Attrs["error.type"] != "invalid_request_error" {
		t.Errorf("rejected stream spans %+v", rejected)
	}
	if len(aborted) != 1 || aborted[0].Status != tracepb.Status_STATUS_CODE_ERROR {
		t.Fatalf("aborted stream spans %+v", aborted)
	}
	if len(upstream) != 1 || !isChild(upstream[0], aborted[0]) || upstream[0].Status != tracepb.Status_STATUS_CODE_ERROR {
		t.Errorf("want one failed upstream span under the aborted stream, got %+v", upstream)
	}
}

// TestTraceOff: without a tracer the request's traceparent reaches the engine untouched (no
// header mutation adds or replaces one).
func TestTraceOff(t *testing.T) {
	f := start(t, extproc.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := f.client.Do(ctx, modes[0].mode, extproctest.Request{
		Method: "POST", Path: "/v1/chat/completions",
		Header: http.Header{"Content-Type": {"application/json"}, "Traceparent": {clientParent}},
		Body:   chatBody(t, "hello", false),
	}, func(*extproctest.Result) extproctest.Upstream {
		return extproctest.Upstream{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Chunks: [][]byte{[]byte(`{}`)}}
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Header.Get("traceparent"); got != clientParent {
		t.Errorf("traceparent forwarded %q, want the client's %q", got, clientParent)
	}
	waitReleased(t, f)
}
