package extproc_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
)

// TestMessagesImmediateResponses: the router's refusals of /v1/messages come back as
// ImmediateResponses with Anthropic's error body and type for their status.
func TestMessagesImmediateResponses(t *testing.T) {
	f := start(t, extproc.Config{MaxBodyBytes: 4096})
	ok := `{"model":"` + model + `","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`
	for _, c := range []struct {
		name   string
		body   string
		subset []string
		status int
		typ    string
	}{
		{"bad json", `{"model":`, nil, 400, anthropic.TypeInvalidRequest},
		{"no max_tokens", `{"model":"` + model + `","messages":[{"role":"user","content":"hi"}]}`, nil, 400, anthropic.TypeInvalidRequest},
		{"unknown model", `{"model":"nope","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}`, nil, 404, anthropic.TypeNotFound},
		{"too large", `{"model":"` + model + `","max_tokens":5,"messages":[{"role":"user","content":"` + strings.Repeat("a", 5000) + `"}]}`, nil, 413, anthropic.TypeRequestTooLarge},
		{"no endpoint in subset", ok, []string{"10.9.9.9:80"}, 503, anthropic.TypeOverloaded},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := f.client.Do(ctx, extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED},
				extproctest.Request{Method: "POST", Path: anthropic.Path, Body: []byte(c.body), Subset: c.subset}, nil)
			if err != nil {
				t.Fatal(err)
			}
			im := res.Immediate
			if im == nil {
				t.Fatalf("no immediate response; header %v", res.Header)
			}
			var eb struct {
				Type  string `json:"type"`
				Error struct {
					Type    string `json:"type"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if got := int(im.GetStatus().GetCode()); got != c.status {
				t.Errorf("status %d, want %d (%s)", got, c.status, im.GetBody())
			}
			if json.Unmarshal(im.GetBody(), &eb) != nil || eb.Type != "error" || eb.Error.Type != c.typ || eb.Error.Message == "" {
				t.Errorf("body %s, want an Anthropic %s", im.GetBody(), c.typ)
			}
		})
	}
	waitReleased(t, f)
}

// TestMessagesPickedAndAccounted: a Messages request is picked, and the usage of its
// Anthropic event stream (prompt in message_start, output in message_delta) is what the
// request's accounting ends with, in every processing mode.
func TestMessagesPickedAndAccounted(t *testing.T) {
	f := start(t, extproc.Config{})
	body := []byte(`{"model":"` + model + `","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	events := [][]byte{
		[]byte("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"usage\":{\"input_tokens\":4,\"output_tokens\":0,\"cache_read_input_tokens\":5}}}\n\n"),
		[]byte("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n"),
		[]byte("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			out, prompt, cached := metricstest.Value(f.reg, router.MetricPoolOutputTokens), metricstest.Value(f.reg, router.MetricReportedPrompt), metricstest.Value(f.reg, router.MetricReportedCached)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			res, err := f.client.Do(ctx, m.mode, extproctest.Request{Method: "POST", Path: anthropic.Path, Body: body},
				func(*extproctest.Result) extproctest.Upstream {
					return extproctest.Upstream{Status: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: events}
				})
			if err != nil {
				t.Fatal(err)
			}
			if res.Immediate != nil || !isEndpoint(strings.Split(res.Destination(), ",")[0]) {
				t.Fatalf("not picked: immediate %v, destination %q", res.Immediate, res.Destination())
			}
			if string(res.Body) != string(body) {
				t.Errorf("body changed: %s", res.Body)
			}
			waitReleased(t, f)
			if m.mode.ResponseBody != filterv3.ProcessingMode_NONE {
				o := metricstest.Value(f.reg, router.MetricPoolOutputTokens) - out
				p := metricstest.Value(f.reg, router.MetricReportedPrompt) - prompt
				c := metricstest.Value(f.reg, router.MetricReportedCached) - cached
				if o != 2 || p != 9 || c != 5 {
					t.Errorf("usage accounted: output %v prompt %v cached %v, want 2 9 5", o, p, c)
				}
			}
		})
	}
}
