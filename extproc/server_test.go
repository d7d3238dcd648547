package extproc_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

const model = tokenizer.DefaultModel

// endpoints are addresses nobody listens on: the test client plays the upstream.
var endpoints = []router.Endpoint{
	{Name: "a", Address: "127.0.0.1:1", Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16},
	{Name: "b", Address: "127.0.0.1:2", Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16},
	{Name: "c", Address: "127.0.0.1:3", Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16},
}

type fixture struct {
	client *extproctest.Client
	router *router.Router
	reg    *prometheus.Registry
	server *extproc.Server
	stop   func() // stops the server and waits for Run
}

func start(t testing.TB, cfg extproc.Config) *fixture {
	t.Helper()
	return startRouter(t, cfg, nil)
}

// startRouter is start with the router's configuration changed by edit.
func startRouter(t testing.TB, cfg extproc.Config, edit func(*router.Config)) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	rc.Policy = "round-robin"
	rc.Models = tokenizer.DefaultModelMap()
	rc.Endpoints = endpoints
	if edit != nil {
		edit(&rc)
	}
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = "127.0.0.1:0"
	srv, err := extproc.New(cfg, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := srv.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	c, err := extproctest.Dial(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(func() { c.Close(); stop() })
	return &fixture{client: c, router: rt, reg: reg, server: srv, stop: stop}
}

func chatBody(t testing.TB, content string, stream bool) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"model":    model,
		"messages": []map[string]string{{"role": "user", "content": content}},
		"stream":   stream,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sseChunks(usage string) [][]byte {
	return [][]byte{
		[]byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n"),
		[]byte("data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"}}]}\n\ndata: {\"choices\":[],"),
		[]byte("\"usage\":" + usage + "}\n\ndata: [DONE]\n\n"),
	}
}

const usageJSON = `{"prompt_tokens":12,"completion_tokens":2,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":0}}`

var modes = []struct {
	name string
	mode extproctest.Mode
}{
	{"buffered/none", extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_NONE}},
	{"buffered/streamed", extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED}},
	{"buffered/buffered+trailers", extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_BUFFERED, RequestTrailers: true, ResponseTrailers: true}},
	{"full-duplex", extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}},
	{"full-duplex/chunked", extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, RequestChunk: 7}},
	{"full-duplex/trailers", extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, RequestChunk: 50, RequestTrailers: true, ResponseTrailers: true}},
	{"full-duplex/streamed-response", extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_STREAMED}},
}

// TestModes drives one streamed and one non-streamed chat through every processing mode the
// way Envoy does, and checks the pick on both channels, the body, the response passthrough,
// and that the request's load is released exactly once.
func TestModes(t *testing.T) {
	f := start(t, extproc.Config{})
	for _, m := range modes {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", m.name, stream), func(t *testing.T) {
				body := chatBody(t, "What is the capital of France? "+m.name, stream)
				var chunks [][]byte
				ct := "application/json"
				if stream {
					chunks, ct = sseChunks(usageJSON), "text/event-stream"
				} else {
					chunks = [][]byte{[]byte(`{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Paris"}}],`), []byte(`"usage":` + usageJSON + `}`)}
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				reported := metricstest.Value(f.reg, router.MetricReportedPrompt)
				res, err := f.client.Do(ctx, m.mode, extproctest.Request{
					Method: "POST", Path: "/v1/chat/completions?x=1",
					Header: http.Header{"Content-Type": {"application/json"}, "Content-Length": {fmt.Sprint(len(body))}},
					Body:   body,
				}, func(r *extproctest.Result) extproctest.Upstream {
					dest := strings.Split(r.Header.Get(router.HeaderDestination), ",")[0]
					return extproctest.Upstream{Header: http.Header{"Content-Type": {ct}}, Chunks: chunks, Served: dest}
				})
				if err != nil {
					t.Fatal(err)
				}
				if res.Immediate != nil {
					t.Fatalf("immediate response %v: %s", res.Immediate.GetStatus(), res.Immediate.GetBody())
				}
				if res.EarlyHeaders {
					t.Error("server answered before the whole body was sent")
				}
				hdr := res.Header.Get(router.HeaderDestination)
				if hdr == "" {
					t.Fatalf("no %s header; headers %v", router.HeaderDestination, res.Header)
				}
				if md := res.Destination(); md != hdr {
					t.Errorf("metadata destination %q, header %q: must be equal", md, hdr)
				}
				first := strings.Split(hdr, ",")[0]
				if !isEndpoint(first) {
					t.Errorf("destination %q is not one of the endpoints", first)
				}
				if got := res.Header.Get(router.HeaderEndpoint); got == "" {
					t.Errorf("no %s on the upstream request", router.HeaderEndpoint)
				}
				if !res.ClearRouteCache {
					t.Error("pick did not clear the route cache")
				}
				if got := res.Header.Get("content-length"); got != fmt.Sprint(len(res.Body)) {
					t.Errorf("content-length %s, body %d bytes", got, len(res.Body))
				}
				if !json.Valid(res.Body) {
					t.Errorf("upstream body is not JSON: %q", res.Body)
				}
				for _, n := range res.BodyChunks {
					if n > extproc.MaxChunk {
						t.Errorf("chunk of %d bytes > %d", n, extproc.MaxChunk)
					}
				}
				want := bytes.Join(chunks, nil)
				if stream && m.mode.ResponseBody != filterv3.ProcessingMode_NONE {
					// The client did not ask for usage; the router forced it for accounting,
					// so the usage-only chunk must not reach the client.
					want = bytes.Join([][]byte{chunks[0], chunks[1][:bytes.Index(chunks[1], []byte("data: {\"choices\":[],"))], []byte("data: [DONE]\n\n")}, nil)
				}
				if !bytes.Equal(res.ResponseBody, want) {
					t.Errorf("response body:\n got %q\nwant %q", res.ResponseBody, want)
				}
				if got := metricstest.Value(f.reg, router.MetricReportedPrompt) - reported; m.mode.ResponseBody != filterv3.ProcessingMode_NONE && got != 12 {
					t.Errorf("router was told of %v prompt tokens, want the response's 12", got)
				}
				if got := res.ResponseHeader.Get(router.HeaderEndpoint); got == "" {
					t.Errorf("response lacks %s: %v", router.HeaderEndpoint, res.ResponseHeader)
				}
				waitReleased(t, f)
			})
		}
	}
}

func isEndpoint(addr string) bool {
	for _, e := range endpoints {
		if e.Address == addr {
			return true
		}
	}
	return false
}

// TestLargeBodyChunks checks a FULL_DUPLEX_STREAMED body of several hundred kilobytes comes
// back whole in pieces of at most 62,000 bytes.
func TestLargeBodyChunks(t *testing.T) {
	f := start(t, extproc.Config{})
	body := chatBody(t, strings.Repeat("All work and no play makes Jack a dull boy. ", 6000), false)
	mode := extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, RequestChunk: 16 << 10}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := f.client.Do(ctx, mode, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: body},
		func(*extproctest.Result) extproctest.Upstream {
			return extproctest.Upstream{Chunks: [][]byte{bytes.Repeat([]byte("x"), 150000)}}
		})
	if err != nil {
		t.Fatal(err)
	}
	if res.Immediate != nil {
		t.Fatalf("immediate %s", res.Immediate.GetBody())
	}
	if !bytes.Equal(res.Body, body) {
		t.Errorf("body changed: %d bytes, want %d", len(res.Body), len(body))
	}
	if len(res.BodyChunks) < len(body)/extproc.MaxChunk {
		t.Errorf("%d chunks for %d bytes", len(res.BodyChunks), len(body))
	}
	for _, n := range res.BodyChunks {
		if n > extproc.MaxChunk {
			t.Errorf("chunk of %d bytes > %d", n, extproc.MaxChunk)
		}
	}
	if len(res.ResponseBody) != 150000 {
		t.Errorf("response body %d bytes, want 150000", len(res.ResponseBody))
	}
	waitReleased(t, f)
}

// TestImmediateResponses checks that refused requests end as ImmediateResponse with the
// OpenAI error body and status, in both request modes.
func TestImmediateResponses(t *testing.T) {
	f := start(t, extproc.Config{MaxBodyBytes: 4096})
	cases := []struct {
		name   string
		body   []byte
		subset []string
		status int
		typ    string
	}{
		{"bad json", []byte(`{"model":`), nil, 400, "invalid_request_error"},
		{"no messages", []byte(`{"model":"` + model + `"}`), nil, 400, "invalid_request_error"},
		{"unknown model", []byte(`{"model":"nope","messages":[{"role":"user","content":"hi"}]}`), nil, 404, ""},
		{"too large", chatBody(t, strings.Repeat("a", 5000), false), nil, 413, "invalid_request_error"},
		{"empty subset", chatBody(t, "hi", false), []string{}, 503, ""},
		{"subset of strangers", chatBody(t, "hi", false), []string{"10.9.9.9:80"}, 503, ""},
	}
	for _, m := range []extproctest.Mode{
		{RequestBody: filterv3.ProcessingMode_BUFFERED},
		{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, RequestChunk: 1000},
	} {
		for _, c := range cases {
			t.Run(m.RequestBody.String()+"/"+c.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				res, err := f.client.Do(ctx, m, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: c.body, Subset: c.subset}, nil)
				if err != nil {
					t.Fatal(err)
				}
				im := res.Immediate
				if im == nil {
					t.Fatalf("no immediate response; header %v", res.Header)
				}
				if got := int(im.GetStatus().GetCode()); got != c.status {
					t.Errorf("status %d, want %d (%s)", got, c.status, im.GetBody())
				}
				var eb struct {
					Error struct {
						Message string `json:"message"`
						Type    string `json:"type"`
					} `json:"error"`
				}
				if err := json.Unmarshal(im.GetBody(), &eb); err != nil || eb.Error.Message == "" {
					t.Errorf("body is not an OpenAI error: %s (%v)", im.GetBody(), err)
				}
				if c.typ != "" && eb.Error.Type != c.typ {
					t.Errorf("error type %q, want %q", eb.Error.Type, c.typ)
				}
			})
		}
	}
	waitReleased(t, f)
}

// TestSubsetHint checks the pick honours the proxy's subset.
func TestSubsetHint(t *testing.T) {
	f := start(t, extproc.Config{})
	for _, ep := range endpoints {
		for i := range 3 {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			res, err := f.client.Do(ctx, extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED},
				extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, fmt.Sprint("hello ", i), false), Subset: []string{ep.Address}},
				func(*extproctest.Result) extproctest.Upstream {
					return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}, Served: ep.Address}
				})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if res.Immediate != nil {
				t.Fatalf("immediate %s", res.Immediate.GetBody())
			}
			if got := strings.Split(res.Destination(), ",")[0]; got != ep.Address {
				t.Errorf("subset [%s]: picked %s", ep.Address, got)
			}
		}
	}
	waitReleased(t, f)
}

// TestPassthrough checks a request without a body goes on unpicked and unharmed.
func TestPassthrough(t *testing.T) {
	f := start(t, extproc.Config{})
	for _, m := range []struct {
		name string
		mode extproctest.Mode
	}{modes[0], modes[1], modes[3], modes[6]} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := f.client.Do(ctx, m.mode, extproctest.Request{Method: "GET", Path: "/v1/models"},
			func(*extproctest.Result) extproctest.Upstream {
				return extproctest.Upstream{Chunks: [][]byte{[]byte(`{"data":[]}`)}}
			})
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if res.Immediate != nil || res.Header.Get(router.HeaderDestination) != "" {
			t.Errorf("%s: a bodiless request was picked or refused: %v", m.name, res.Header)
		}
		if string(res.ResponseBody) != `{"data":[]}` {
			t.Errorf("%s: response body %q", m.name, res.ResponseBody)
		}
	}
}

// TestCancelMidStream cancels streams at every point of the exchange and checks no
// goroutine is left behind and the load is released.
func TestCancelMidStream(t *testing.T) {
	f := start(t, extproc.Config{})
	hc := healthpb.NewHealthClient(f.client.Conn())
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: extproc.HealthLiveness}); err != nil {
		t.Fatal(err)
	}
	opts := []goleak.Option{goleak.IgnoreCurrent()}
	for _, stage := range []string{"after-headers", "mid-body", "after-pick", "mid-response"} {
		t.Run(stage, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			full := extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, RequestChunk: 10}
			st, err := f.client.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			body := chatBody(t, "cancel me "+stage, true)
			msgs := extproctest.RequestMessages(full, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: body})
			n := map[string]int{"after-headers": 1, "mid-body": 2}[stage]
			if n == 0 {
				n = len(msgs)
			}
			for _, m := range msgs[:n] {
				if err := st.Send(m); err != nil {
					t.Fatal(err)
				}
			}
			if n == len(msgs) {
				if _, err := st.Recv(); err != nil { // the pick
					t.Fatal(err)
				}
				if stage == "mid-response" {
					for _, m := range extproctest.ResponseMessages(full, extproctest.Upstream{Chunks: sseChunks(usageJSON)[:1]}, false) {
						if err := st.Send(m); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			cancel()
			waitReleased(t, f)
		})
	}
	goleak.VerifyNone(t, opts...)
}

// TestHealthAndDrain checks the health services, and that shutdown lets an open stream
// finish before Run returns.
func TestHealthAndDrain(t *testing.T) {
	f := start(t, extproc.Config{DrainTimeout: 10 * time.Second})
	hc := healthpb.NewHealthClient(f.client.Conn())
	for _, svc := range []string{extproc.HealthLiveness, extproc.HealthReadiness, extproc.HealthExtProc, ""} {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, r.GetStatus(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}
	stopped := make(chan struct{})
	res, err := f.client.Do(ctx, full, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, "drain", true)},
		func(*extproctest.Result) extproctest.Upstream {
			// Shut the server down while this stream is open: it must still complete.
			go func() { f.stop(); close(stopped) }()
			time.Sleep(100 * time.Millisecond)
			return extproctest.Upstream{Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: sseChunks(usageJSON)}
		})
	if err != nil {
		t.Fatalf("stream open during shutdown failed: %v", err)
	}
	if res.Immediate != nil {
		t.Fatalf("immediate %s", res.Immediate.GetBody())
	}
	select {
	case <-stopped:
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not return after the drained stream ended")
	}
	if got := metricstest.Value(f.reg, extproc.MetricStreams, "outcome", "completed"); got < 1 {
		t.Errorf("completed streams %v", got)
	}
}

// TestServedEndpoint checks the endpoint the proxy reports having used reaches the router:
// a fallback served means the target failed, and the router takes it out of rotation.
func TestServedEndpoint(t *testing.T) {
	f := start(t, extproc.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var target string
	res, err := f.client.Do(ctx, extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED},
		extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, "fall back", false)},
		func(r *extproctest.Result) extproctest.Upstream {
			dests := strings.Split(r.Destination(), ",")
			if len(dests) < 2 {
				t.Fatalf("no fallbacks in %q", r.Destination())
			}
			target = dests[0]
			return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}, Served: dests[1]}
		})
	if err != nil || res.Immediate != nil {
		t.Fatal(err, res)
	}
	for _, l := range f.router.Load() {
		addr := ""
		for _, e := range endpoints {
			if e.Name == l.Name {
				addr = e.Address
			}
		}
		if addr == target && l.Healthy {
			t.Errorf("target %s still healthy after the proxy fell back", target)
		}
		if addr != target && !l.Healthy {
			t.Errorf("%s marked down", addr)
		}
	}
	waitReleased(t, f)
}

// TestSpoofedServedIgnored checks a served report naming an endpoint that was never a
// candidate takes nothing out of rotation: before, each such stream marked the target and
// every fallback down, and a trickle of them emptied the fleet.
func TestSpoofedServedIgnored(t *testing.T) {
	f := start(t, extproc.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mode := extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_NONE}
	const spoofed = 5
	for i := range spoofed {
		res, err := f.client.Do(ctx, mode,
			extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, fmt.Sprint("spoof ", i), false)},
			func(*extproctest.Result) extproctest.Upstream {
				return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}, Served: "203.0.113.1:1"}
			})
		if err != nil || res.Immediate != nil {
			t.Fatal(err, res)
		}
	}
	for _, l := range f.router.Load() {
		if !l.Healthy {
			t.Errorf("%s out of rotation after spoofed served reports", l.Name)
		}
	}
	if got := metricstest.Value(f.reg, router.MetricServedUnknown); got != spoofed {
		t.Errorf("%s = %v, want %d", router.MetricServedUnknown, got, spoofed)
	}
	// Real requests still find every endpoint.
	seen := map[string]bool{}
	for i := range 6 {
		res, err := f.client.Do(ctx, mode,
			extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, fmt.Sprint("real ", i), false)},
			func(*extproctest.Result) extproctest.Upstream {
				return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}}
			})
		if err != nil {
			t.Fatal(err)
		}
		if res.Immediate != nil {
			t.Fatalf("request %d refused: %s", i, res.Immediate.GetBody())
		}
		seen[strings.Split(res.Destination(), ",")[0]] = true
	}
	if len(seen) != len(endpoints) {
		t.Errorf("real requests reached %v, want all %d endpoints", seen, len(endpoints))
	}
	waitReleased(t, f)
}

// TestServedOnlySkippedSuspected checks a fallback report takes out only the candidates the
// proxy tried before the one that served, never the others.
func TestServedOnlySkippedSuspected(t *testing.T) {
	f := start(t, extproc.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var dests []string
	res, err := f.client.Do(ctx, extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_NONE},
		extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, "first fallback", false)},
		func(r *extproctest.Result) extproctest.Upstream {
			dests = strings.Split(r.Destination(), ",")
			return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}, Served: dests[1]}
		})
	if err != nil || res.Immediate != nil {
		t.Fatal(err, res)
	}
	down := 0
	for _, l := range f.router.Load() {
		if !l.Healthy {
			down++
		}
	}
	if down != 1 {
		t.Errorf("%d endpoints out of rotation after a fallback to the first alternative, want 1 (the target)", down)
	}
	waitReleased(t, f)
}

// TestReadyGate: with Config.Ready, readiness (and the ext_proc service) waits for it to
// close while liveness answers SERVING from the start (Kubernetes discovery not yet synced).
func TestReadyGate(t *testing.T) {
	ready := make(chan struct{})
	f := start(t, extproc.Config{Ready: ready})
	hc := healthpb.NewHealthClient(f.client.Conn())
	status := func(svc string) healthpb.HealthCheckResponse_ServingStatus {
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatalf("health %q: %v", svc, err)
		}
		return r.GetStatus()
	}
	if got := status(extproc.HealthLiveness); got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("liveness before ready: %v", got)
	}
	for _, svc := range []string{extproc.HealthReadiness, extproc.HealthExtProc, ""} {
		if got := status(svc); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("health %q before ready: %v, want NOT_SERVING", svc, got)
		}
	}
	close(ready)
	for _, svc := range []string{extproc.HealthReadiness, extproc.HealthExtProc, ""} {
		polltest.Until(t, 10*time.Second, "health "+svc+" SERVING", func() bool {
			return status(svc) == healthpb.HealthCheckResponse_SERVING
		})
	}
}
