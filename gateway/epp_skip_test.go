package gateway_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/router/routertest"
)

// TestEPPBufferedModeOverride drives `kvgate router --skip-response-body` through the
// gateway in BUFFERED mode: the router answers the response headers with a mode_override
// (response body NONE), which the gateway honours as Envoy with allow_mode_override does.
// The engine holds its answer after the first piece: the client already has that piece
// while the router still holds the load (the stream stays open), and once the engine ends,
// the client has the whole body, the router received no response body message, and the
// load is released at the stream's end. The router without the flag is the control: it
// receives the body, so the message count can tell the two apart.
func TestEPPBufferedModeOverride(t *testing.T) {
	sseHead := "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t0\"}}]}\n\n"
	sseTail := "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t1\"}}]}\n\ndata: [DONE]\n\n"
	jsonHead := `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"}}],`
	jsonTail := `"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`
	gate := make(chan struct{}, 1) // one token lets the engine's held answer end
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		head, tail, ct := jsonHead, jsonTail, "application/json"
		if strings.Contains(string(b), `"stream":true`) {
			head, tail, ct = sseHead, sseTail, "text/event-stream"
		}
		w.Header().Set("Content-Type", ct)
		fmt.Fprint(w, head)
		w.(http.Flusher).Flush()
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, tail)
	})
	for _, skip := range []bool{true, false} {
		// Round-robin (no approximate mode) and no forced usage: the router needs nothing
		// from the response body, so with the flag it asks for none.
		eppAddr, rt, rreg := startRouterEPPWith(t, func(rc *router.Config) {
			rc.Policy = "round-robin"
			rc.ForceStreamUsage = false
		}, extproc.Config{SkipResponseBody: skip}, e.addr())
		url, reg := startEPPGateway(t, gateway.EPPConfig{Addr: eppAddr, Mode: gateway.EPPBuffered, Timeout: time.Minute}, e.addr())
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("skip=%v/stream=%v", skip, stream), func(t *testing.T) {
				head, want := jsonHead, jsonHead+jsonTail
				if stream {
					head, want = sseHead, sseHead+sseTail
				}
				bodyMsgs := metricstest.Value(rreg, extproc.MetricMessages, "kind", "response_body")
				skipped := metricstest.Value(rreg, extproc.MetricBodiesSkipped)
				completed := metricstest.Value(rreg, extproc.MetricStreams, "outcome", "completed")

				resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(chat("skip the body? "+t.Name(), stream)))
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if resp.StatusCode != 200 {
					b, _ := io.ReadAll(resp.Body)
					t.Fatalf("status %d: %s", resp.StatusCode, b)
				}
				got := make([]byte, len(head))
				if _, err := io.ReadFull(resp.Body, got); err != nil {
					t.Fatal(err)
				}
				if string(got) != head {
					t.Fatalf("first piece %q, want %q", got, head)
				}
				// The engine holds the rest: the request is not over, so the router holds
				// its load and the stream is open.
				if n := metricstest.Value(rreg, router.MetricInflight); n != 1 {
					t.Errorf("%s = %v mid-response, want 1: the load was released before the response ended", router.MetricInflight, n)
				}
				if n := metricstest.Value(rreg, extproc.MetricStreamsActive); n != 1 {
					t.Errorf("%s = %v mid-response, want 1", extproc.MetricStreamsActive, n)
				}
				gate <- struct{}{}
				rest, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				if body := string(got) + string(rest); body != want {
					t.Errorf("body %q, want %q", body, want)
				}
				routertest.WaitReleased(t, rt, "ext_proc streams and gateway requests", func() float64 {
					return metricstest.Value(rreg, extproc.MetricStreamsActive) + metricstest.Value(reg, gateway.MetricInflight)
				})
				if n := metricstest.Value(rreg, router.MetricInflight); n != 0 {
					t.Errorf("%s = %v after the response, want 0", router.MetricInflight, n)
				}
				if d := metricstest.Value(rreg, extproc.MetricStreams, "outcome", "completed") - completed; d != 1 {
					t.Errorf("completed streams +%v, want +1 (the gateway half-closes a complete response)", d)
				}
				wantSkipped := 0.0
				if skip {
					wantSkipped = 1
				}
				if d := metricstest.Value(rreg, extproc.MetricBodiesSkipped) - skipped; d != wantSkipped {
					t.Errorf("%s +%v, want +%v", extproc.MetricBodiesSkipped, d, wantSkipped)
				}
				d := metricstest.Value(rreg, extproc.MetricMessages, "kind", "response_body") - bodyMsgs
				if skip && d != 0 {
					t.Errorf("the router received %v response body messages after asking for none (mode_override)", d)
				}
				if !skip && d == 0 {
					t.Error("the router without --skip-response-body received no response body message")
				}
			})
		}
	}
}
