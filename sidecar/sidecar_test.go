package sidecar_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/sidecar"
)

// transferParams is what a prefill engine answers with.
const transferParams = `{"do_remote_prefill":true,"do_remote_decode":false,"remote_block_ids":[1,2,3],` +
	`"remote_engine_id":"p0","remote_request_id":"r1","remote_host":"127.0.0.1","remote_port":7000,"tp_size":1}`

// seen is one request an engine received.
type seen struct {
	path   string
	body   map[string]any
	header http.Header
}

// fakeEngine records requests and answers with handle.
type fakeEngine struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []seen
}

func newFakeEngine(t *testing.T, handle func(w http.ResponseWriter, r *http.Request)) *fakeEngine {
	t.Helper()
	f := &fakeEngine{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		f.mu.Lock()
		f.reqs = append(f.reqs, seen{path: r.URL.Path, body: m, header: r.Header.Clone()})
		f.mu.Unlock()
		handle(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeEngine) addr() string { return strings.TrimPrefix(f.URL, "http://") }

func (f *fakeEngine) requests() []seen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seen(nil), f.reqs...)
}

func prefillOK(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"x","choices":[{"index":0,"text":"a"}],"kv_transfer_params":%s}`, transferParams)
}

func decodeOK(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Engine", "decode")
	fmt.Fprint(w, `{"id":"y","choices":[{"index":0,"message":{"role":"assistant","content":"hello"}}]}`)
}

// startSidecar runs a sidecar in front of engine until the test ends.
func startSidecar(t *testing.T, engine string, edit func(*sidecar.Config)) (*sidecar.Server, *prometheus.Registry) {
	t.Helper()
	cfg := sidecar.Config{Addr: "127.0.0.1:0", Engine: engine, Name: "d0", PrefillTimeout: 5 * time.Second}
	if edit != nil {
		edit(&cfg)
	}
	reg := prometheus.NewRegistry()
	s, err := sidecar.New(cfg, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("sidecar did not stop")
		}
	})
	return s, reg
}

// allow makes addrs the sidecar's known prefill engines.
func allow(addrs ...string) func(*sidecar.Config) {
	return func(c *sidecar.Config) { c.Prefill = sidecar.NewPrefillSet(addrs...) }
}

func post(t *testing.T, ctx context.Context, url, prefiller, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer k")
	if prefiller != "" {
		req.Header.Set(sidecar.HeaderPrefiller, prefiller)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

const chatReq = `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":50,` +
	`"max_completion_tokens":50,"min_tokens":5,"stream":true,"stream_options":{"include_usage":true},"temperature":0.5}`

// TestSidecarRemotePrefill: the prefill engine gets the prompt for one unstreamed token with
// do_remote_decode; the decode engine gets the original request with the prefill's
// kv_transfer_params; both see the same request id; the client gets the decode answer.
func TestSidecarRemotePrefill(t *testing.T) {
	pre := newFakeEngine(t, prefillOK)
	dec := newFakeEngine(t, decodeOK)
	s, reg := startSidecar(t, dec.addr(), allow(pre.addr()))
	resp := post(t, context.Background(), "http://"+s.Addr()+"/v1/chat/completions", pre.addr(), chatReq)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(b), "hello") {
		t.Fatalf("answer %d %s", resp.StatusCode, b)
	}
	if got := resp.Header.Get(sidecar.HeaderPrefillEndpoint); got != pre.addr() {
		t.Errorf("%s = %q, want %s", sidecar.HeaderPrefillEndpoint, got, pre.addr())
	}
	if resp.Header.Get(sidecar.HeaderPrefillFallback) != "" || resp.Header.Get("X-Engine") != "decode" {
		t.Errorf("response headers %v", resp.Header)
	}

	pr, dr := pre.requests(), dec.requests()
	if len(pr) != 1 || len(dr) != 1 {
		t.Fatalf("%d prefill and %d decode requests, want 1 each", len(pr), len(dr))
	}
	p := pr[0]
	if p.path != "/v1/chat/completions" {
		t.Errorf("prefill path %s", p.path)
	}
	kv, _ := p.body["kv_transfer_params"].(map[string]any)
	if kv["do_remote_decode"] != true || kv["do_remote_prefill"] != false {
		t.Errorf("prefill kv_transfer_params %v", kv)
	}
	for k, want := range map[string]any{"max_tokens": 1.0, "max_completion_tokens": 1.0, "stream": false, "temperature": 0.5, "model": "m"} {
		if p.body[k] != want {
			t.Errorf("prefill %s = %v, want %v", k, p.body[k], want)
		}
	}
	for _, k := range []string{"stream_options", "min_tokens"} {
		if _, ok := p.body[k]; ok {
			t.Errorf("prefill request still has %s", k)
		}
	}
	if p.header.Get(sidecar.HeaderPrefiller) != "" || p.header.Get("Authorization") != "Bearer k" {
		t.Errorf("prefill headers %v", p.header)
	}

	d := dr[0]
	var want map[string]any
	_ = json.Unmarshal([]byte(transferParams), &want)
	if got, _ := json.Marshal(d.body["kv_transfer_params"]); !bytes.Equal(got, mustJSON(want)) {
		t.Errorf("decode kv_transfer_params %s, want the prefill's %s", got, mustJSON(want))
	}
	for k, want := range map[string]any{"max_tokens": 50.0, "min_tokens": 5.0, "stream": true} {
		if d.body[k] != want {
			t.Errorf("decode %s = %v, want the client's %v", k, d.body[k], want)
		}
	}
	if _, ok := d.body["stream_options"]; !ok {
		t.Error("decode request lost stream_options")
	}
	id := p.header.Get("X-Request-Id")
	if id == "" || d.header.Get("X-Request-Id") != id {
		t.Errorf("request ids %q (prefill) and %q (decode): want the same", id, d.header.Get("X-Request-Id"))
	}
	if got := metricstest.Value(reg, sidecar.MetricRemotePrefills); got != 1 {
		t.Errorf("%s = %v", sidecar.MetricRemotePrefills, got)
	}
	if n := uint64(metricstest.Value(reg, sidecar.MetricPrefillSeconds)); n != 1 {
		t.Errorf("%s count %d", sidecar.MetricPrefillSeconds, n)
	}
}

// TestSidecarCompletionsPrefill: /v1/completions gets max_tokens 1 without
// max_completion_tokens.
func TestSidecarCompletionsPrefill(t *testing.T) {
	pre := newFakeEngine(t, prefillOK)
	dec := newFakeEngine(t, decodeOK)
	s, _ := startSidecar(t, dec.addr(), allow(pre.addr()))
	resp := post(t, context.Background(), "http://"+s.Addr()+"/v1/completions", pre.addr(), `{"model":"m","prompt":"once","max_tokens":9}`)
	resp.Body.Close()
	pr := pre.requests()
	if len(pr) != 1 || pr[0].path != "/v1/completions" || pr[0].body["max_tokens"] != 1.0 {
		t.Fatalf("prefill requests %+v", pr)
	}
	if _, ok := pr[0].body["max_completion_tokens"]; ok {
		t.Error("completions prefill got max_completion_tokens")
	}
	if dr := dec.requests(); len(dr) != 1 || dr[0].body["max_tokens"] != 9.0 || dr[0].body["kv_transfer_params"] == nil {
		t.Errorf("decode requests %+v", dr)
	}
}

// TestSidecarFallback: whatever goes wrong with the remote prefill, the local engine gets the
// client's request unchanged and the client a normal answer, marked with the reason.
func TestSidecarFallback(t *testing.T) {
	closed := func() string { // an address nobody listens on
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := l.Addr().String()
		l.Close()
		return a
	}
	tests := []struct {
		name      string
		prefill   func(w http.ResponseWriter, r *http.Request) // nil: prefiller is given below
		prefiller string
		body      string
		want      string
	}{
		{name: "connection refused", prefiller: closed(), want: sidecar.FallbackConnect},
		{name: "not host:port", prefiller: "no-port", want: sidecar.FallbackBadAddress},
		{name: "path smuggled in", prefiller: "127.0.0.1:1/admin?", want: sidecar.FallbackBadAddress},
		{name: "server error", want: sidecar.FallbackStatus, prefill: func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, `{"error":{"message":"boom"}}`, http.StatusInternalServerError)
		}},
		{name: "overloaded", want: sidecar.FallbackStatus, prefill: func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
		}},
		{name: "timeout", want: sidecar.FallbackTimeout, prefill: func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}},
		{name: "no kv_transfer_params", want: sidecar.FallbackNoParams, prefill: func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, `{"id":"x","choices":[]}`)
		}},
		{name: "null kv_transfer_params", want: sidecar.FallbackNoParams, prefill: func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, `{"kv_transfer_params":null}`)
		}},
		{name: "not JSON", want: sidecar.FallbackBadResponse, prefill: func(w http.ResponseWriter, _ *http.Request) {
			fmt.Fprint(w, `<html>proxy error</html>`)
		}},
		{name: "connection dropped mid-answer", want: sidecar.FallbackBadResponse, prefill: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "500")
			fmt.Fprint(w, `{"kv_transfer_params":{"do_remote`)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}},
		{name: "body not an object", body: `[1,2]`, prefill: prefillOK, want: sidecar.FallbackBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			prefiller := tc.prefiller
			var pre *fakeEngine
			if tc.prefill != nil {
				pre = newFakeEngine(t, tc.prefill)
				prefiller = pre.addr()
			}
			dec := newFakeEngine(t, decodeOK)
			s, reg := startSidecar(t, dec.addr(), func(c *sidecar.Config) {
				c.PrefillTimeout = 300 * time.Millisecond
				c.Prefill = sidecar.NewPrefillSet(prefiller)
			})
			body := tc.body
			if body == "" {
				body = chatReq
			}
			resp := post(t, context.Background(), "http://"+s.Addr()+"/v1/chat/completions", prefiller, body)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(b), "hello") {
				t.Fatalf("client got %d %s", resp.StatusCode, b)
			}
			if got := resp.Header.Get(sidecar.HeaderPrefillFallback); got != tc.want {
				t.Errorf("%s = %q, want %q", sidecar.HeaderPrefillFallback, got, tc.want)
			}
			if resp.Header.Get(sidecar.HeaderPrefillEndpoint) != "" {
				t.Error("a fallback answer names a prefill endpoint")
			}
			dr := dec.requests()
			if len(dr) != 1 {
				t.Fatalf("%d decode requests", len(dr))
			}
			if _, ok := dr[0].body["kv_transfer_params"]; ok {
				t.Errorf("decode got kv_transfer_params after a failed prefill: %v", dr[0].body["kv_transfer_params"])
			}
			if body == chatReq && (dr[0].body["max_tokens"] != 50.0 || dr[0].body["stream"] != true) {
				t.Errorf("decode body changed: %v", dr[0].body)
			}
			if got := metricstest.Value(reg, sidecar.MetricFallbacks); got != 1 {
				t.Errorf("%s = %v", sidecar.MetricFallbacks, got)
			}
			if got := metricstest.Value(reg, sidecar.MetricRemotePrefills); got != 0 {
				t.Errorf("%s = %v", sidecar.MetricRemotePrefills, got)
			}
		})
	}
}

// TestSidecarStreamsUnbuffered: each SSE chunk the decode engine flushes reaches the client
// before the engine writes the next one.
func TestSidecarStreamsUnbuffered(t *testing.T) {
	pre := newFakeEngine(t, prefillOK)
	next := make(chan struct{})
	dec := newFakeEngine(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: {\"chunk\":%d}\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Second):
				return
			}
		}
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	s, _ := startSidecar(t, dec.addr(), allow(pre.addr()))
	for _, prefiller := range []string{pre.addr(), ""} {
		resp := post(t, context.Background(), "http://"+s.Addr()+"/v1/chat/completions", prefiller, chatReq)
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Errorf("content type %q", ct)
		}
		br := bufio.NewReader(resp.Body)
		for i := range 3 {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("chunk %d: %v", i, err)
			}
			if want := fmt.Sprintf("data: {\"chunk\":%d}\n", i); line != want {
				t.Fatalf("chunk %d: %q, want %q", i, line, want)
			}
			_, _ = br.ReadString('\n')
			next <- struct{}{} // the engine writes the next chunk only now
		}
		rest, _ := io.ReadAll(br)
		resp.Body.Close()
		if string(rest) != "data: [DONE]\n\n" {
			t.Errorf("tail %q", rest)
		}
	}
	if n := len(pre.requests()); n != 1 {
		t.Errorf("%d prefill requests, want 1 (the second request named no prefiller)", n)
	}
}

// TestSidecarPassThrough: without the header, requests reach the engine untouched (any path,
// any method) and no prefill happens.
func TestSidecarPassThrough(t *testing.T) {
	dec := newFakeEngine(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/metrics":
			fmt.Fprint(w, "vllm:num_requests_running 0\n")
		case "/v1/models":
			fmt.Fprint(w, `{"data":[{"id":"m"}]}`)
		default:
			w.WriteHeader(http.StatusTeapot)
			fmt.Fprintf(w, "%s %s?%s", r.Method, r.URL.Path, r.URL.RawQuery)
		}
	})
	s, reg := startSidecar(t, dec.addr(), nil)
	base := "http://" + s.Addr()
	for path, want := range map[string]string{"/metrics": "vllm:num_requests_running 0\n", "/v1/models": `{"data":[{"id":"m"}]}`} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != want {
			t.Errorf("GET %s: %d %q", path, resp.StatusCode, b)
		}
	}
	resp := post(t, context.Background(), base+"/v1/chat/completions?x=1", "", chatReq)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot || string(b) != "POST /v1/chat/completions?x=1" {
		t.Errorf("POST: %d %q", resp.StatusCode, b)
	}
	dr := dec.requests()
	if last := dr[len(dr)-1]; last.body["max_tokens"] != 50.0 || last.body["kv_transfer_params"] != nil {
		t.Errorf("pass-through body changed: %v", last.body)
	}
	// A prefiller named on another path is ignored.
	resp = post(t, context.Background(), base+"/tokenize", "127.0.0.1:1", `{"prompt":"x"}`)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTeapot {
		t.Errorf("POST /tokenize: %d", resp.StatusCode)
	}
	if got := metricstest.Series(reg, sidecar.MetricFallbacks); got != 0 {
		t.Errorf("%d fallback series after pass-through requests", got)
	}
}

// TestSidecarDecodeEngineDown: with the local engine gone the client gets an OpenAI-shaped
// 502.
func TestSidecarDecodeEngineDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	s, _ := startSidecar(t, addr, nil)
	resp := post(t, context.Background(), "http://"+s.Addr()+"/v1/chat/completions", "", chatReq)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e struct {
		Error struct{ Message string } `json:"error"`
	}
	if resp.StatusCode != http.StatusBadGateway || json.Unmarshal(b, &e) != nil || e.Error.Message == "" {
		t.Errorf("%d %s", resp.StatusCode, b)
	}
}

// TestSidecarClientDisconnect: a client that goes away cancels the engine's request, during
// the decode stream and during the remote prefill (the decode engine is then never asked).
func TestSidecarClientDisconnect(t *testing.T) {
	t.Run("during decode", func(t *testing.T) {
		canceled := make(chan struct{})
		dec := newFakeEngine(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "data: {}\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				close(canceled)
			case <-time.After(10 * time.Second):
			}
		})
		pre := newFakeEngine(t, prefillOK)
		s, _ := startSidecar(t, dec.addr(), allow(pre.addr()))
		ctx, cancel := context.WithCancel(context.Background())
		resp := post(t, ctx, "http://"+s.Addr()+"/v1/chat/completions", pre.addr(), chatReq)
		if _, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		cancel()
		resp.Body.Close()
		select {
		case <-canceled:
		case <-time.After(5 * time.Second):
			t.Fatal("the decode engine's request was not canceled")
		}
	})
	t.Run("during prefill", func(t *testing.T) {
		canceled := make(chan struct{})
		pre := newFakeEngine(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
				close(canceled)
			case <-time.After(10 * time.Second):
			}
		})
		dec := newFakeEngine(t, decodeOK)
		s, reg := startSidecar(t, dec.addr(), allow(pre.addr()))
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+s.Addr()+"/v1/chat/completions", strings.NewReader(chatReq))
			req.Header.Set(sidecar.HeaderPrefiller, pre.addr())
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			errc <- err
		}()
		polltest.Until(t, 10*time.Second, "the prefill engine to get the request", func() bool { return len(pre.requests()) > 0 })
		cancel()
		select {
		case <-canceled:
		case <-time.After(5 * time.Second):
			t.Fatal("the prefill engine's request was not canceled")
		}
		<-errc
		time.Sleep(100 * time.Millisecond) // the handler would forward now if it were going to
		if n := len(dec.requests()); n != 0 {
			t.Errorf("decode engine asked %d times for a client that left", n)
		}
		if got := metricstest.Series(reg, sidecar.MetricFallbacks); got != 0 {
			t.Errorf("a client leaving counted as a fallback")
		}
	})
}

// TestSidecarWithSims: two simulated engines and the sidecar move a long prompt's KV blocks
// over TCP: the decode engine reports them cached and counts the bytes it pulled.
func TestSidecarWithSims(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	start := func() (*sim.Server, *prometheus.Registry) {
		reg := prometheus.NewRegistry()
		cfg := sim.ServerConfig{Addr: "127.0.0.1:0", KVEvents: "", KVEventsReplay: ""}
		cfg.Engine.Timing = sim.DefaultTiming()
		cfg.Engine.Timing.Speed = 50
		cfg.Engine.NumBlocks = 2000
		s, err := sim.NewServer(cfg, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { _ = s.Run(ctx) })
		return s, reg
	}
	pre, preReg := start()
	dec, decReg := start()
	sc, _ := startSidecar(t, dec.Addr(), allow(pre.Addr()))
	prompt := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 200)
	body, _ := json.Marshal(map[string]any{"model": "Qwen/Qwen3-8B", "max_tokens": 4,
		"messages": []map[string]string{{"role": "user", "content": prompt}}})
	resp := post(t, ctx, "http://"+sc.Addr()+"/v1/chat/completions", pre.Addr(), string(body))
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ans struct {
		Usage struct {
			PromptTokens int `json:"prompt_tokens"`
			Details      struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &ans) != nil {
		t.Fatalf("%d %s", resp.StatusCode, b)
	}
	if resp.Header.Get(sidecar.HeaderPrefillEndpoint) != pre.Addr() {
		t.Errorf("headers %v", resp.Header)
	}
	if ans.Usage.PromptTokens < 1000 || ans.Usage.Details.Cached < ans.Usage.PromptTokens-16 {
		t.Errorf("decode engine computed %d of %d prompt tokens itself: the blocks should have come from the prefill engine",
			ans.Usage.PromptTokens-ans.Usage.Details.Cached, ans.Usage.PromptTokens)
	}
	pulled := metricstest.Value(decReg, "kvgate_sim_kv_transfer_bytes_total")
	served := metricstest.Value(preReg, "kvgate_sim_kv_transfer_served_bytes_total")
	if pulled == 0 || pulled != served {
		t.Errorf("transfer bytes: decode pulled %v, prefill served %v", pulled, served)
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// BenchmarkSidecar times one non-streamed chat request against instant fake engines: to the
// decode engine directly (the baseline), through the sidecar without a prefiller (pass-through)
// and with one (remote prefill round trip, body rewrite, then decode). The difference to the
// baseline is what the sidecar adds.
func BenchmarkSidecar(b *testing.B) {
	prompt := strings.Repeat("lorem ipsum dolor sit amet ", 1500) // ~40 KB, a ~10k-token prompt
	body, _ := json.Marshal(map[string]any{"model": "m", "max_tokens": 64,
		"messages": []map[string]string{{"role": "user", "content": prompt}}})
	engine := func(answer string) *httptest.Server {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, answer)
		}))
		b.Cleanup(s.Close)
		return s
	}
	pre := engine(`{"choices":[{"index":0,"text":"a"}],"kv_transfer_params":` + transferParams + `}`)
	dec := engine(`{"choices":[{"index":0,"message":{"role":"assistant","content":"hello"}}]}`)
	decAddr := strings.TrimPrefix(dec.URL, "http://")
	s, err := sidecar.New(sidecar.Config{Engine: decAddr, Prefill: sidecar.NewPrefillSet(strings.TrimPrefix(pre.URL, "http://"))}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	b.Cleanup(func() { cancel(); <-done })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	for _, bc := range []struct{ name, url, prefiller string }{
		{"direct", dec.URL, ""},
		{"passthrough", "http://" + s.Addr(), ""},
		{"remote-prefill", "http://" + s.Addr(), strings.TrimPrefix(pre.URL, "http://")},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, bc.url+"/v1/chat/completions", bytes.NewReader(body))
				if bc.prefiller != "" {
					req.Header.Set(sidecar.HeaderPrefiller, bc.prefiller)
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || (bc.prefiller != "" && resp.Header.Get(sidecar.HeaderPrefillEndpoint) == "") {
					b.Fatalf("status %d, headers %v", resp.StatusCode, resp.Header)
				}
			}
		})
	}
}
