package extproc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
)

// responsesSSE is a Responses stream as an engine sends it, cut mid-event.
var responsesSSE = [][]byte{
	[]byte("event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"r\",\"usage\":null}}\n\n"),
	[]byte("event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.com"),
	[]byte("pleted\",\"sequence_number\":2,\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":21,\"input_tokens_details\":{\"cached_tokens\":16},\"output_tokens\":1,\"total_tokens\":22}}}\n\n"),
}

// TestAPIsThroughExtProc drives Responses (streamed and whole), embeddings and a bodiless
// passthrough request through every processing mode: each is picked, its body and the
// response pass unchanged, the Responses usage is accounted, and the load is released once.
func TestAPIsThroughExtProc(t *testing.T) {
	f := start(t, extproc.Config{})
	type api struct {
		name, method, path string
		body               []byte
		ct                 string
		chunks             [][]byte
		prompt             float64 // prompt tokens the router is told of
	}
	resp, _ := json.Marshal(map[string]any{"model": model, "instructions": "Be brief.", "input": "Hello there", "stream": true})
	whole, _ := json.Marshal(map[string]any{"model": model, "input": []map[string]any{{"role": "user", "content": []map[string]string{{"type": "input_text", "text": "Hi"}}}}})
	embed, _ := json.Marshal(map[string]any{"model": model, "input": []string{"a", "b"}})
	apis := []api{
		{"responses/stream", "POST", "/v1/responses", resp, "text/event-stream", responsesSSE, 21},
		{"responses/whole", "POST", "/v1/responses", whole, "application/json", [][]byte{[]byte(`{"id":"r","object":"response","output":[],"usage":{"input_tokens":9,"output_tokens":3,"total_tokens":12}}`)}, 9},
		{"embeddings", "POST", "/v1/embeddings", embed, "application/json", [][]byte{[]byte(`{"object":"list","data":[],"usage":{"prompt_tokens":2,"total_tokens":2}}`)}, 2},
		{"passthrough/get", "GET", "/v1/files/file-1", nil, "application/json", [][]byte{[]byte(`{"id":"file-1"}`)}, 0},
	}
	for _, m := range modes {
		for _, a := range apis {
			t.Run(m.name+"/"+a.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				reported := metricstest.Value(f.reg, router.MetricReportedPrompt)
				hdr := http.Header{"Content-Type": {"application/json"}}
				if a.body != nil {
					hdr.Set("Content-Length", fmt.Sprint(len(a.body)))
				}
				res, err := f.client.Do(ctx, m.mode, extproctest.Request{Method: a.method, Path: a.path, Header: hdr, Body: a.body},
					func(r *extproctest.Result) extproctest.Upstream {
						dest := strings.Split(r.Header.Get(router.HeaderDestination), ",")[0]
						return extproctest.Upstream{Header: http.Header{"Content-Type": {a.ct}}, Chunks: a.chunks, Served: dest}
					})
				if err != nil {
					t.Fatal(err)
				}
				if res.Immediate != nil {
					t.Fatalf("immediate response %v: %s", res.Immediate.GetStatus(), res.Immediate.GetBody())
				}
				dest := res.Header.Get(router.HeaderDestination)
				if dest == "" || res.Destination() != dest || !isEndpoint(strings.Split(dest, ",")[0]) {
					t.Fatalf("pick: header %q metadata %q", dest, res.Destination())
				}
				if !bytes.Equal(res.Body, a.body) {
					t.Errorf("upstream body %q, want the client's %q", res.Body, a.body)
				}
				if want := bytes.Join(a.chunks, nil); !bytes.Equal(res.ResponseBody, want) {
					t.Errorf("response body\n got %q\nwant %q", res.ResponseBody, want)
				}
				if m.mode.ResponseBody != filterv3.ProcessingMode_NONE {
					if got := metricstest.Value(f.reg, router.MetricReportedPrompt) - reported; got != a.prompt {
						t.Errorf("router was told of %v prompt tokens, want %v", got, a.prompt)
					}
				}
				waitReleased(t, f)
			})
		}
	}
}

// TestAPIsRefusedThroughExtProc: bad Responses and embeddings bodies end with an immediate
// OpenAI error naming the field; nothing is picked.
func TestAPIsRefusedThroughExtProc(t *testing.T) {
	f := start(t, extproc.Config{})
	for _, c := range []struct{ path, body, param string }{
		{"/v1/responses", `{"model":"` + model + `","input":"x","previous_response_id":"resp_1"}`, "previous_response_id"},
		{"/v1/embeddings", `{"model":"` + model + `","input":[]}`, "input"},
		{"/v1/files", `{"model":"nope"}`, "model"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := f.client.Do(ctx, modes[0].mode, extproctest.Request{Method: "POST", Path: c.path, Body: []byte(c.body)},
			func(*extproctest.Result) extproctest.Upstream {
				t.Error("refused request reached upstream")
				return extproctest.Upstream{}
			})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if res.Immediate == nil {
			t.Fatalf("%s: not refused", c.path)
		}
		var eb struct {
			Error struct{ Type, Param string }
		}
		if json.Unmarshal(res.Immediate.GetBody(), &eb) != nil || eb.Error.Param != c.param || eb.Error.Type == "" {
			t.Errorf("%s: body %s, want an OpenAI error naming %s", c.path, res.Immediate.GetBody(), c.param)
		}
	}
	waitReleased(t, f)
}
