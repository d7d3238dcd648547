package extproc_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/router/routertest"
)

// startSkipping is a server with SkipResponseBody whose router does not force usage on
// streams; with exact, every endpoint's cache is known from KV events (an empty batch each),
// so no decision needs its usage to correct approximate mode.
func startSkipping(t *testing.T, skip, exact, forceUsage bool) *fixture {
	t.Helper()
	f := startRouter(t, extproc.Config{SkipResponseBody: skip}, func(c *router.Config) {
		c.Policy = router.PolicyKV
		c.ForceStreamUsage = forceUsage
	})
	if exact {
		for _, ep := range endpoints {
			f.router.ApplyEvents(ep.Name, engine.EventBatch{})
		}
	}
	return f
}

var (
	bufferedStreamed = extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED}
	bufferedTrailers = extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_BUFFERED, ResponseTrailers: true}
)

// TestSkipResponseBody drives whole requests as Envoy does and checks when the server asks,
// with a mode_override on the response headers answer, for no response body: only with
// SkipResponseBody, a proxy that allows overrides and honours them (neither body mode
// FULL_DUPLEX_STREAMED), nothing to cut from the response (no forced usage) and no usage the
// router needs (exact mode). Where it does, the request takes half the messages, the stream
// stays open after the response headers (Envoy 1.37+ would close one with nothing left to
// send), the response passes through untouched, and the load is released when the proxy
// ends the stream; the usage is not read (the signal the trade-off gives up).
func TestSkipResponseBody(t *testing.T) {
	type fixtureKind struct{ skip, exact, forceUsage bool }
	fixtures := map[fixtureKind]*fixture{}
	parent := t
	for _, tt := range []struct {
		name       string
		fx         fixtureKind
		allow      bool
		mode       extproctest.Mode
		stream     bool
		wantSkip   bool
		wantSent   int // messages the proxy sends
		wantUsage  bool
		wantClosed bool // closed right after the response headers answer (Envoy 1.37+)
	}{
		{"skipped/stream", fixtureKind{true, true, false}, true, bufferedStreamed, true, true, 3, false, false},
		{"skipped/json", fixtureKind{true, true, false}, true, bufferedStreamed, false, true, 3, false, false},
		{"skipped/trailers", fixtureKind{true, true, false}, true, bufferedTrailers, false, true, 4, false, false},
		{"proxy disallows overrides", fixtureKind{true, true, false}, false, bufferedStreamed, true, false, 6, true, false},
		{"full duplex ignores overrides", fixtureKind{true, true, false}, true, fullDuplex, true, false, 6, true, false},
		{"forced usage is cut", fixtureKind{true, true, true}, true, bufferedStreamed, true, false, 6, true, false},
		{"approximate mode needs usage", fixtureKind{true, false, false}, true, bufferedStreamed, true, false, 6, true, false},
		{"off", fixtureKind{false, true, false}, true, bufferedStreamed, true, false, 6, true, false},
		// Body mode NONE: no body to skip, but the same override keeps the stream open.
		{"body mode none", fixtureKind{false, true, false}, true, extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_NONE}, true, true, 3, false, false},
		{"body mode none, overrides disallowed", fixtureKind{false, true, false}, false, extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_NONE}, true, false, 3, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := fixtures[tt.fx]
			if f == nil {
				f = startSkipping(parent, tt.fx.skip, tt.fx.exact, tt.fx.forceUsage)
				fixtures[tt.fx] = f
			}
			c, err := extproctest.Dial(f.client.Conn().Target())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.AllowModeOverride = tt.allow
			chunks, ct := sseChunks(usageJSON), "text/event-stream"
			if !tt.stream {
				chunks = [][]byte{[]byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"}}],`), []byte(`"usage":` + usageJSON + `}`)}
				ct = "application/json"
			}
			reported := metricstest.Value(f.reg, router.MetricReportedPrompt)
			completed := metricstest.Value(f.reg, extproc.MetricStreams, "outcome", "completed")
			skipped := metricstest.Value(f.reg, extproc.MetricBodiesSkipped)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			res, err := c.Do(ctx, tt.mode, extproctest.Request{Method: "POST", Path: "/v1/chat/completions",
				Header: http.Header{"Content-Type": {"application/json"}}, Body: chatBody(t, "skip the body? "+tt.name, tt.stream)},
				func(r *extproctest.Result) extproctest.Upstream {
					return extproctest.Upstream{Header: http.Header{"Content-Type": {ct}}, Chunks: chunks,
						Served: strings.Split(r.Header.Get(router.HeaderDestination), ",")[0]}
				})
			if err != nil {
				t.Fatal(err)
			}
			if res.Immediate != nil {
				t.Fatalf("immediate response: %v", res.Immediate)
			}
			o := res.ModeOverride
			if got := o != nil; got != tt.wantSkip {
				t.Fatalf("mode_override applied = %v (%v), want %v", got, o, tt.wantSkip)
			}
			if o != nil && (o.GetResponseBodyMode() != filterv3.ProcessingMode_NONE || o.GetResponseTrailerMode() != filterv3.ProcessingMode_SEND) {
				t.Errorf("mode_override %v: want response body NONE and trailers SEND", o)
			}
			if res.ClosedAtHeaders != tt.wantClosed {
				t.Errorf("stream closed right after the response headers = %v, want %v", res.ClosedAtHeaders, tt.wantClosed)
			}
			if res.Sent != tt.wantSent || res.Messages != tt.wantSent {
				t.Errorf("messages: %d sent, %d answered; want %d each", res.Sent, res.Messages, tt.wantSent)
			}
			if want := bytes.Join(chunks, nil); tt.wantUsage && !tt.fx.forceUsage && !bytes.Equal(res.ResponseBody, want) || tt.wantSkip && !bytes.Equal(res.ResponseBody, want) {
				t.Errorf("response body %q, want %q", res.ResponseBody, want)
			}
			waitReleased(t, f)
			if got := metricstest.Value(f.reg, extproc.MetricStreams, "outcome", "completed") - completed; got != 1 {
				t.Errorf("completed streams +%v, want +1", got)
			}
			// The server asks whether or not the proxy honours it.
			wantSkipped := 0.0
			if tt.fx.skip && tt.fx.exact && !tt.fx.forceUsage && tt.mode.ResponseBody != filterv3.ProcessingMode_NONE &&
				tt.mode.RequestBody != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
				wantSkipped = 1
			}
			if got := metricstest.Value(f.reg, extproc.MetricBodiesSkipped) - skipped; got != wantSkipped {
				t.Errorf("%s +%v, want +%v", extproc.MetricBodiesSkipped, got, wantSkipped)
			}
			if got := metricstest.Value(f.reg, router.MetricReportedPrompt) - reported; (got > 0) != tt.wantUsage {
				t.Errorf("engine-reported prompt tokens +%v: usage read = %v, want %v", got, got > 0, tt.wantUsage)
			}
		})
	}
}

// TestSkippedBodyReleasedAtStreamEnd plays Envoy message by message: after the response
// headers answer with its mode_override the request still holds its load (a streamed one
// its prefill load too: the first token is not seen), until the proxy ends the stream at the
// end of the request (Envoy's filter closes it when the HTTP stream is done); then the load
// is released and the stream counted as completed. A non-streamed response's headers come
// with its answer, so its prefill load ends there.
func TestSkippedBodyReleasedAtStreamEnd(t *testing.T) {
	f := startSkipping(t, true, true, false)
	for _, stream := range []bool{true, false} {
		name := map[bool]string{true: "stream", false: "json"}[stream]
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			completed := metricstest.Value(f.reg, extproc.MetricStreams, "outcome", "completed")
			st, err := f.client.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, "held until the end "+name, stream)}
			for _, m := range extproctest.RequestMessages(bufferedStreamed, req) {
				if err := st.Send(m); err != nil {
					t.Fatal(err)
				}
				if _, err := st.Recv(); err != nil { // BUFFERED: one answer each, the pick last
					t.Fatal(err)
				}
			}
			ct := map[bool]string{true: "text/event-stream", false: "application/json"}[stream]
			up := extproctest.Upstream{Header: http.Header{"Content-Type": {ct}}, Chunks: sseChunks(usageJSON)}
			if err := st.Send(extproctest.ResponseMessages(bufferedStreamed, up, true)[0]); err != nil {
				t.Fatal(err)
			}
			r, err := st.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if r.GetResponseHeaders() == nil || r.GetModeOverride().GetResponseBodyMode() != filterv3.ProcessingMode_NONE {
				t.Fatalf("want a response headers answer skipping the body, got %v", r)
			}
			var requests, prefill int64
			for _, l := range f.router.Load() {
				requests += l.Requests
				prefill += l.PrefillTokens
			}
			if requests != 1 {
				t.Errorf("%d requests in flight after the response headers, want 1 until the stream ends", requests)
			}
			if (prefill > 0) != stream {
				t.Errorf("prefill load %d after the response headers: want it held only for a streamed response", prefill)
			}
			// The response body goes downstream without the server; then Envoy ends the
			// stream (a half-close, then a reset).
			if err := st.CloseSend(); err != nil {
				t.Fatal(err)
			}
			if !polltest.Wait(10*time.Second, func() bool { return routertest.Load(f.router) == 0 }) {
				t.Fatalf("load %v still held after the stream ended", routertest.Load(f.router))
			}
			if _, err := st.Recv(); err == nil {
				t.Error("a message after the stream ended")
			}
			waitReleased(t, f)
			if got := metricstest.Value(f.reg, extproc.MetricStreams, "outcome", "completed") - completed; got != 1 {
				t.Errorf("completed streams +%v, want +1", got)
			}
		})
	}
}

// TestSkippedBodyOutlivesIdleTimeout checks a stream whose response body was skipped is not
// closed by IdleTimeout: it is silent by design until the request ends, and closing it would
// make Envoy fail a response that is still streaming. A probe stream, silent after its pick,
// which comes later, is closed by the bound meanwhile (the bound still works).
func TestSkippedBodyOutlivesIdleTimeout(t *testing.T) {
	f := startRouter(t, extproc.Config{SkipResponseBody: true, IdleTimeout: time.Second, ResponseTimeout: -1}, func(c *router.Config) {
		c.Policy = router.PolicyKV
		c.ForceStreamUsage = false
	})
	for _, ep := range endpoints {
		f.router.ApplyEvents(ep.Name, engine.EventBatch{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The first pick loads the tokenizer, which can take longer than the idle bound.
	d, err := f.router.Route(ctx, router.Request{Path: "/v1/chat/completions", Body: chatBody(t, "warm up", true)})
	if err != nil {
		t.Fatal(err)
	}
	d.Done(nil, nil)
	st, err := f.client.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, "a long answer", true)}
	for _, m := range extproctest.RequestMessages(bufferedStreamed, req) {
		if err := st.Send(m); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	up := extproctest.Upstream{Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: sseChunks(usageJSON)}
	if err := st.Send(extproctest.ResponseMessages(bufferedStreamed, up, true)[0]); err != nil {
		t.Fatal(err)
	}
	if r, err := st.Recv(); err != nil || r.GetModeOverride() == nil {
		t.Fatalf("want the response headers answer skipping the body, got %v, %v", r, err)
	}
	// The probe's pick comes after the skipped stream's last message, so its idle bound ends
	// later: once the probe is closed, the skipped stream would have been too.
	probe := openPicked(t, ctx, f, "probe") // silent from here on
	err = nil
	for err == nil { // the pick's body chunks, then the end
		_, err = probe.Recv()
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("the probe ended with %v, want DEADLINE_EXCEEDED from the idle timeout", err)
	}
	if got := metricstest.Value(f.reg, extproc.MetricIdleStreams); got != 1 {
		t.Errorf("%s = %v, want 1 (the probe only)", extproc.MetricIdleStreams, got)
	}
	if got := metricstest.Value(f.reg, extproc.MetricStreamsActive); got != 1 {
		t.Errorf("%v streams open, want the skipped one", got)
	}
	if routertest.Load(f.router) == 0 {
		t.Error("the skipped request's load was released while its stream was open")
	}
	if err := st.CloseSend(); err != nil { // the request ends
		t.Fatal(err)
	}
	waitReleased(t, f)
}
