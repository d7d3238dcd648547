package bench_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvgate/kvgate/bench"
	"github.com/kvgate/kvgate/workload"
)

// fakeEngine streams max_tokens chunks of one word each with a short gap, reports usage with
// cached_tokens = half the prompt, and fails every request whose prompt starts with token 0 mod 7.
type fakeEngine struct {
	inflight, peak atomic.Int64
	gap            time.Duration
	paths          atomic.Value
}

func (f *fakeEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.inflight.Add(1)
	defer f.inflight.Add(-1)
	for {
		p := f.peak.Load()
		if n <= p || f.peak.CompareAndSwap(p, n) {
			break
		}
	}
	f.paths.Store(r.URL.Path)
	var req struct {
		Prompt    []uint32 `json:"prompt"`
		Messages  []struct{ Content string }
		MaxTokens int `json:"max_tokens"`
		Stream    bool
		Options   struct {
			IncludeUsage bool `json:"include_usage"`
		} `json:"stream_options"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || !req.Stream || !req.Options.IncludeUsage {
		http.Error(w, `{"error":{"message":"bad"}}`, http.StatusBadRequest)
		return
	}
	prompt := len(req.Prompt)
	if len(req.Messages) > 0 {
		prompt = len(strings.Fields(req.Messages[0].Content))
	}
	if len(req.Prompt) > 0 && req.Prompt[0]%7 == 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, `{"error":{"message":"no capacity"}}`)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("x-kvgate-endpoint", fmt.Sprintf("sim-%d", prompt%2))
	fl := w.(http.Flusher)
	for i := 0; i < req.MaxTokens; i++ {
		time.Sleep(f.gap)
		finish := "null"
		if i == req.MaxTokens-1 {
			finish = `"length"`
		}
		fmt.Fprintf(w, "data: {\"choices\":[{\"index\":0,\"text\":\"w%d \",\"finish_reason\":%s}]}\n\n", i, finish)
		fl.Flush()
	}
	fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":%d}}}\n\n",
		prompt, req.MaxTokens, prompt+req.MaxTokens, prompt/2)
	io.WriteString(w, "data: [DONE]\n\n")
}

func trace(t *testing.T, n int) *workload.Trace {
	t.Helper()
	var b bytes.Buffer
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `{"timestamp": %d, "input_length": 600, "output_length": 4, "hash_ids": [%d, %d]}`+"\n", i*5, i%3, 100+i)
	}
	tr, err := workload.ReadMooncake(&b)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestRunMeasuresStreams(t *testing.T) {
	eng := &fakeEngine{gap: 2 * time.Millisecond}
	srv := httptest.NewServer(eng)
	defer srv.Close()
	tr := trace(t, 30)
	var prog bytes.Buffer
	res, err := bench.Run(context.Background(), bench.Config{URL: srv.URL, Model: "m", Trace: tr, Concurrency: 4, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	// Requests whose first token is 0 mod 7 get 503s.
	wantErr := 0
	for _, r := range tr.Requests {
		if r.Tokens()[0]%7 == 0 {
			wantErr++
		}
	}
	if res.Requests != 30 || res.Errors != wantErr || res.ErrorsByKind["http_503"] != wantErr {
		t.Fatalf("requests %d errors %d (%v), want 30 and %d", res.Requests, res.Errors, res.ErrorsByKind, wantErr)
	}
	ok := 30 - wantErr
	if res.TTFT.N != ok || res.E2E.N != ok || res.ITL.N != 3*ok {
		t.Fatalf("samples ttft %d e2e %d itl %d, want %d %d %d", res.TTFT.N, res.E2E.N, res.ITL.N, ok, ok, 3*ok)
	}
	if res.TTFT.P50 < 1 || res.E2E.P50 < res.TTFT.P50 || res.ITL.P50 < 1 {
		t.Fatalf("implausible latencies: %+v %+v %+v", res.TTFT, res.E2E, res.ITL)
	}
	if res.PromptTokens != int64(600*ok) || res.CachedTokens != int64(300*ok) || res.HitRatio != 0.5 || res.OutputTokens != int64(4*ok) {
		t.Fatalf("tokens: prompt %d cached %d out %d ratio %v", res.PromptTokens, res.CachedTokens, res.OutputTokens, res.HitRatio)
	}
	if res.ByEndpoint["sim-0"] != ok {
		t.Fatalf("by endpoint %v", res.ByEndpoint)
	}
	if p := eng.peak.Load(); p > 4 {
		t.Fatalf("peak concurrency %d exceeds 4", p)
	}
	if !strings.Contains(prog.String(), "30/30 done") {
		t.Fatalf("progress line missing: %q", prog.String())
	}
	if eng.paths.Load() != "/v1/completions" {
		t.Fatalf("path %v", eng.paths.Load())
	}
}

func TestRunOpenLoopFollowsArrivals(t *testing.T) {
	eng := &fakeEngine{}
	srv := httptest.NewServer(eng)
	defer srv.Close()
	tr := trace(t, 10) // arrivals 0..45 ms
	res, err := bench.Run(context.Background(), bench.Config{URL: srv.URL, Trace: tr, API: "chat"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 10 || res.Errors != 0 {
		t.Fatalf("requests %d errors %d %v", res.Requests, res.Errors, res.ErrorsByKind)
	}
	if res.Duration < 0.045 {
		t.Fatalf("run took %.3fs, shorter than the trace's 45 ms of arrivals", res.Duration)
	}
	if eng.paths.Load() != "/v1/chat/completions" || res.PromptTokens != 6000 {
		t.Fatalf("path %v prompt tokens %d", eng.paths.Load(), res.PromptTokens)
	}
}

func TestRunCancel(t *testing.T) {
	eng := &fakeEngine{gap: 50 * time.Millisecond}
	srv := httptest.NewServer(eng)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Millisecond)
	defer cancel()
	tr := trace(t, 20)
	for i := range tr.Requests {
		tr.Requests[i].Arrival = time.Duration(i) * 100 * time.Millisecond
	}
	res, err := bench.Run(ctx, bench.Config{URL: srv.URL, Trace: tr})
	if err == nil {
		t.Fatal("cancelled run reported no error")
	}
	if res.Requests >= 20 {
		t.Fatalf("cancelled run still sent %d requests", res.Requests)
	}
}

func TestConfigErrors(t *testing.T) {
	tr := trace(t, 1)
	for _, cfg := range []bench.Config{{URL: "http://x"}, {Trace: tr}, {URL: "http://x", Trace: tr, API: "embeddings"}} {
		if _, err := bench.Run(context.Background(), cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

func TestTextKeepsPrefixes(t *testing.T) {
	a, b := bench.Text([]uint32{1, 2, 3, 4}), bench.Text([]uint32{1, 2, 3, 9})
	if !strings.HasPrefix(b, bench.Text([]uint32{1, 2, 3})) || a == b || len(strings.Fields(a)) != 4 {
		t.Fatalf("%q %q", a, b)
	}
}

func TestSummarize(t *testing.T) {
	var xs []time.Duration
	for i := 100; i >= 1; i-- {
		xs = append(xs, time.Duration(i)*time.Millisecond)
	}
	d := bench.Summarize(xs)
	if d.N != 100 || d.P50 != 50 || d.P90 != 90 || d.P99 != 99 || d.Max != 100 || d.Mean != 50.5 {
		t.Fatalf("%+v", d)
	}
	if bench.Summarize(nil).N != 0 {
		t.Fatal("empty")
	}
}

// TestRunCountsCutStreams checks that streams that end without their proper end are errors
// by kind, however cleanly their connection closed: no [DONE], no finish reason, an error
// event, a connection dropped mid-body.
func TestRunCountsCutStreams(t *testing.T) {
	const token = "data: {\"choices\":[{\"index\":0,\"text\":\"w \",\"finish_reason\":null}]}\n\n"
	const last = "data: {\"choices\":[{\"index\":0,\"text\":\"w \",\"finish_reason\":\"length\"}]}\n\n"
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		switch n.Add(1) % 4 {
		case 0: // no [DONE]: the body ends normally after two tokens
			io.WriteString(w, token+last)
		case 1: // [DONE] but no finish reason
			io.WriteString(w, token+token+"data: [DONE]\n\n")
		case 2: // an error event
			io.WriteString(w, token+`data: {"error":{"message":"engine died","type":"service_unavailable_error"}}`+"\n\n")
		case 3: // the connection drops mid-body
			io.WriteString(w, token)
			w.(http.Flusher).Flush()
			panic(http.ErrAbortHandler)
		}
	}))
	defer srv.Close()
	res, err := bench.Run(context.Background(), bench.Config{URL: srv.URL, Model: "m", Trace: trace(t, 8), Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"no_done": 2, "no_finish_reason": 2, "stream_error": 2, "transport": 2}
	if res.Requests != 8 || res.Errors != 8 || !maps.Equal(res.ErrorsByKind, want) {
		t.Fatalf("requests %d errors %d %v, want 8 errors %v", res.Requests, res.Errors, res.ErrorsByKind, want)
	}
}
