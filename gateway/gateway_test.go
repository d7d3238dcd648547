package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

const model = tokenizer.DefaultModel

// engine is a fake OpenAI engine on loopback.
type engine struct {
	*httptest.Server
	hits atomic.Int64
}

func newEngine(t testing.TB, h http.HandlerFunc) *engine {
	t.Helper()
	e := &engine{}
	e.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		h(w, r)
	}))
	t.Cleanup(e.Close)
	return e
}

func (e *engine) addr() string { return strings.TrimPrefix(e.URL, "http://") }

// jsonEngine answers every completion with a fixed JSON body naming itself.
func jsonEngine(t *testing.T, name string) *engine {
	return newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"%s","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`, name)
	})
}

type fixture struct {
	url string
	reg *prometheus.Registry
	rt  *router.Router
}

func start(t testing.TB, cfg gateway.Config, engines ...string) *fixture {
	t.Helper()
	return startPolicy(t, "round-robin", cfg, engines...)
}

func startPolicy(t testing.TB, policy string, cfg gateway.Config, engines ...string) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	rc.Policy = policy
	rc.Models = tokenizer.DefaultModelMap()
	for i, a := range engines {
		rc.Endpoints = append(rc.Endpoints, router.Endpoint{Name: fmt.Sprint("e", i), Address: a, Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16})
	}
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Addr = "127.0.0.1:0"
	cfg.Gatherer = reg
	gw, err := gateway.New(cfg, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("gateway did not stop")
		}
	})
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := gw.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	scheme := "http://"
	if cfg.TLS != nil {
		scheme = "https://"
	}
	return &fixture{url: scheme + addr.String(), reg: reg, rt: rt}
}

func chat(content string, stream bool) string {
	b, _ := json.Marshal(map[string]any{"model": model, "stream": stream, "messages": []map[string]string{{"role": "user", "content": content}}})
	return string(b)
}

func post(t *testing.T, url, body string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestProxy(t *testing.T) {
	a, b := jsonEngine(t, "A"), jsonEngine(t, "B")
	f := start(t, gateway.Config{}, a.addr(), b.addr())
	seen := map[string]bool{}
	for i := range 6 {
		resp, body := post(t, f.url+"/v1/chat/completions", chat(fmt.Sprint("hello ", i), false))
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		ep := resp.Header.Get(router.HeaderEndpoint)
		want := map[string]string{a.addr(): `"id":"A"`, b.addr(): `"id":"B"`}[ep]
		if want == "" || !strings.Contains(body, want) {
			t.Errorf("%s names %q but the body came from %s", router.HeaderEndpoint, ep, body)
		}
		seen[ep] = true
	}
	if len(seen) != 2 {
		t.Errorf("round-robin used %d endpoints", len(seen))
	}
	waitReleased(t, f)
}

// TestStreamingUnbuffered checks each SSE event reaches the client before the engine sends
// the next one, and that the usage chunk reaches only a client that asked for it.
func TestStreamingUnbuffered(t *testing.T) {
	for _, askUsage := range []bool{false, true} {
		t.Run(fmt.Sprint("include_usage=", askUsage), func(t *testing.T) { testStreaming(t, askUsage) })
	}
}

func testStreaming(t *testing.T, askUsage bool) {
	next := make(chan struct{})
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d\"}}]}\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-time.After(5 * time.Second):
				return // the gateway buffered: the client never saw this event
			}
		}
		fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\ndata: [DONE]\n\n")
	})
	f := start(t, gateway.Config{}, e.addr())
	body := chat("stream", true)
	if askUsage {
		body = strings.Replace(body, `"stream":true`, `"stream":true,"stream_options":{"include_usage":true}`, 1)
	}
	reported := metricstest.Value(f.reg, router.MetricReportedPrompt)
	resp, err := http.Post(f.url+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("content-type %q", ct)
	}
	rd := bufio.NewReader(resp.Body)
	var events []string
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			break
		}
		if data, ok := strings.CutPrefix(strings.TrimSpace(line), "data: "); ok {
			events = append(events, data)
			if strings.Contains(data, `"content":"t`) {
				select {
				case next <- struct{}{}:
				case <-time.After(5 * time.Second):
					t.Fatal("engine stopped waiting")
				}
			}
		}
	}
	want := 4
	if askUsage {
		want = 5
	}
	if len(events) != want || events[want-1] != "[DONE]" {
		t.Errorf("events %q, want %d ending in [DONE]", events, want)
	}
	waitReleased(t, f)
	if got := metricstest.Value(f.reg, router.MetricReportedPrompt) - reported; got != 5 {
		t.Errorf("router was told of %v prompt tokens, want the engine's 5", got)
	}
}

func TestErrors(t *testing.T) {
	e := jsonEngine(t, "A")
	f := start(t, gateway.Config{MaxBodyBytes: 2048}, e.addr())
	cases := []struct {
		name, method, path, body string
		header                   http.Header
		status                   int
		typ                      string
	}{
		{"bad json", "POST", "/v1/chat/completions", `{"model":`, nil, 400, openai.TypeInvalidRequest},
		{"unknown role", "POST", "/v1/chat/completions", `{"model":"` + model + `","messages":[{"role":"wizard","content":"x"}]}`, nil, 400, openai.TypeInvalidRequest},
		{"invalid utf-8", "POST", "/v1/chat/completions", "{\"model\":\"" + model + "\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", nil, 400, openai.TypeInvalidRequest},
		{"unknown model", "POST", "/v1/chat/completions", `{"model":"nope","messages":[{"role":"user","content":"x"}]}`, nil, 404, openai.TypeInvalidRequest},
		{"too large", "POST", "/v1/chat/completions", chat(strings.Repeat("a", 4000), false), nil, 413, openai.TypeInvalidRequest},
		{"headers too large", "POST", "/v1/chat/completions", chat("x", false), http.Header{"X-Big": {strings.Repeat("b", 100<<10)}}, 431, openai.TypeInvalidRequest},
		{"unknown path", "POST", "/v2/embeddings", `{}`, nil, 404, openai.TypeNotFound},
		{"wrong method", "GET", "/v1/chat/completions", ``, nil, 405, openai.TypeInvalidRequest},
		{"wrong method on models", "POST", "/v1/models", ``, nil, 405, openai.TypeInvalidRequest},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest(c.method, f.url+c.path, strings.NewReader(c.body))
			for k, v := range c.header {
				req.Header[k] = v
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			checkErrorBody(t, body, c.typ)
			if resp.StatusCode != c.status {
				t.Errorf("status %d, want %d (%s)", resp.StatusCode, c.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("content-type %q", ct)
			}
		})
	}
	if e.hits.Load() != 0 {
		t.Errorf("refused requests reached the engine %d times", e.hits.Load())
	}
	waitReleased(t, f)
}

func TestModelsHealthMetrics(t *testing.T) {
	e := jsonEngine(t, "A")
	f := start(t, gateway.Config{}, e.addr())
	post(t, f.url+"/v1/chat/completions", chat("count me", false))
	resp, body := get(t, f.url+"/v1/models")
	var list struct {
		Object string
		Data   []struct{ ID, Object string }
	}
	if err := json.Unmarshal([]byte(body), &list); err != nil || resp.StatusCode != 200 {
		t.Fatalf("models: %d %s", resp.StatusCode, body)
	}
	if list.Object != "list" || len(list.Data) != 1 || list.Data[0].ID != model || list.Data[0].Object != "model" {
		t.Errorf("models %+v", list)
	}
	if resp, body := get(t, f.url+"/health"); resp.StatusCode != 200 {
		t.Errorf("health %d %s", resp.StatusCode, body)
	}
	_, body = get(t, f.url+"/metrics")
	if !strings.Contains(body, gateway.MetricRequests+`{code="200",path="/v1/chat/completions"} 1`) {
		t.Errorf("metrics lack the request:\n%s", body)
	}
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestRetryDeadEndpoint checks a request picked for an endpoint that refuses connections
// goes to the next one.
func TestRetryDeadEndpoint(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	live := jsonEngine(t, "A")
	f := start(t, gateway.Config{}, dead, live.addr())
	for i := range 4 {
		resp, body := post(t, f.url+"/v1/chat/completions", chat(fmt.Sprint("retry ", i), false))
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, body)
		}
		if got := resp.Header.Get(router.HeaderEndpoint); got != live.addr() {
			t.Errorf("served by %q, want %q", got, live.addr())
		}
	}
	if got := metricstest.Value(f.reg, gateway.MetricRetries); got < 1 {
		t.Errorf("retries %v, want >= 1", got)
	}
	waitReleased(t, f)
}

// TestClientDisconnect checks a client that goes away cancels the engine's request and
// releases the load.
func TestClientDisconnect(t *testing.T) {
	gone := make(chan struct{})
	started := make(chan struct{}, 1)
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
		w.(http.Flusher).Flush()
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			close(gone)
		case <-time.After(10 * time.Second):
		}
	})
	f := start(t, gateway.Config{}, e.addr())
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", f.url+"/v1/chat/completions", strings.NewReader(chat("leave", true)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	resp.Body.Close()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("the engine's request was not cancelled")
	}
	waitReleased(t, f)
}

// TestHopByHopHeaders checks that connection-level headers, and those a Connection header
// names, cross the gateway in neither direction, and that X-Forwarded-For gains the client.
func TestHopByHopHeaders(t *testing.T) {
	var got http.Header
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		got = r.Header.Clone()
		w.Header().Set("Connection", "X-Engine-Hop")
		w.Header().Set("X-Engine-Hop", "1")
		w.Header().Set("X-Engine-Kept", "1")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"choices":[]}`)
	})
	f := start(t, gateway.Config{}, e.addr())
	req, _ := http.NewRequest("POST", f.url+"/v1/chat/completions", strings.NewReader(chat("hops", false)))
	req.Header.Set("Connection", "X-Client-Hop, Keep-Alive")
	req.Header.Set("X-Client-Hop", "secret")
	req.Header.Set("Keep-Alive", "timeout=5")
	req.Header.Set("Proxy-Authorization", "Basic eA==")
	req.Header.Set("X-Client-Kept", "1")
	req.Header.Set("X-Forwarded-For", "203.0.113.7")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, k := range []string{"X-Client-Hop", "Keep-Alive", "Proxy-Authorization"} {
		if v := got.Get(k); v != "" {
			t.Errorf("the engine got hop-by-hop %s: %q", k, v)
		}
	}
	if got.Get("X-Client-Kept") != "1" {
		t.Error("an end-to-end request header was dropped")
	}
	if xff := got.Get(gateway.HeaderForwardedFor); xff != "203.0.113.7, 127.0.0.1" {
		t.Errorf("X-Forwarded-For %q, want the prior hop then the client", xff)
	}
	if v := resp.Header.Get("X-Engine-Hop"); v != "" {
		t.Errorf("the client got hop-by-hop X-Engine-Hop: %q", v)
	}
	if resp.Header.Get("X-Engine-Kept") != "1" {
		t.Error("an end-to-end response header was dropped")
	}
	waitReleased(t, f)
}
