package gateway_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	sdk "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"

	"github.com/kvgate/kvgate/engine/sim"
	"github.com/kvgate/kvgate/engine/sim/simtest"
	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
)

// apiSim starts an in-process simulated engine with the default timing.
func apiSim(t *testing.T) *sim.Server {
	t.Helper()
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0"}
	cfg.Engine.NumBlocks = 2048
	s := simtest.Start(t, cfg, nil, nil)
	return s
}

func sdkClient(f *fixture) sdk.Client {
	return sdk.NewClient(option.WithBaseURL(f.url+"/v1/"), option.WithAPIKey("test"), option.WithMaxRetries(0))
}

var longInput = strings.Repeat("The quick brown fox jumps over the lazy dog while the cat watches. ", 40)

// TestResponsesSDK sends Responses requests with the official SDK through the gateway to two
// simulated engines: answered whole and streamed, and a repeated long input goes back to the
// engine that holds its prefix, which reports it cached.
func TestResponsesSDK(t *testing.T) {
	a, b := apiSim(t), apiSim(t)
	f := startPolicy(t, router.PolicyKV, gateway.Config{}, a.Addr(), b.Addr())
	c := sdkClient(f)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	params := responses.ResponseNewParams{
		Model:           model,
		Instructions:    sdk.String("You answer briefly."),
		Input:           responses.ResponseNewParamsInputUnion{OfString: sdk.String(longInput)},
		MaxOutputTokens: sdk.Int(16),
	}
	var first, second *http.Response
	r1, err := c.Responses.New(ctx, params, option.WithResponseInto(&first))
	if err != nil {
		t.Fatal(err)
	}
	if r1.OutputText() == "" || r1.Usage.InputTokens < 300 || r1.Usage.OutputTokens < 1 {
		t.Fatalf("first response: text %q usage %+v", r1.OutputText(), r1.Usage)
	}
	r2, err := c.Responses.New(ctx, params, option.WithResponseInto(&second))
	if err != nil {
		t.Fatal(err)
	}
	ep1, ep2 := first.Header.Get(router.HeaderEndpoint), second.Header.Get(router.HeaderEndpoint)
	if ep1 == "" || ep1 != ep2 {
		t.Errorf("repeated input went to %q then %q, want the same engine", ep1, ep2)
	}
	if r2.Usage.InputTokensDetails.CachedTokens == 0 {
		t.Errorf("repeated input: cached_tokens 0 on %s (usage %+v)", ep2, r2.Usage)
	}
	if second.Header.Get(router.HeaderCachedBlocks) == "0" {
		t.Errorf("the router saw no cached blocks for the repeated input")
	}
	// The router accounted the engines' Responses usage (input_tokens) as prompt tokens.
	// (The decision ends just after the client has the body: wait for it.)
	want := float64(r1.Usage.InputTokens + r2.Usage.InputTokens)
	polltest.Until(t, 10*time.Second, "the router to account both responses' input_tokens", func() bool {
		return metricstest.Value(f.reg, router.MetricReportedPrompt) == want
	})
	if got := metricstest.Value(f.reg, router.MetricReportedCached); got != float64(r2.Usage.InputTokensDetails.CachedTokens) {
		t.Errorf("router was told of %v cached tokens, want %d", got, r2.Usage.InputTokensDetails.CachedTokens)
	}

	// Streamed: the semantic events, in sequence, ending with the usage.
	params.Input = responses.ResponseNewParamsInputUnion{OfInputItemList: responses.ResponseInputParam{
		responses.ResponseInputItemParamOfMessage("What is 2+2?", responses.EasyInputMessageRoleUser),
	}}
	st := c.Responses.NewStreaming(ctx, params)
	var text strings.Builder
	var types []string
	var completed *responses.Response
	next := int64(0)
	for st.Next() {
		ev := st.Current()
		if ev.SequenceNumber != next {
			t.Errorf("event %s: sequence_number %d, want %d", ev.Type, ev.SequenceNumber, next)
		}
		next++
		types = append(types, ev.Type)
		switch ev.Type {
		case openai.EventOutputTextDelta:
			text.WriteString(ev.Delta)
		case openai.EventResponseCompleted, openai.EventResponseIncomplete:
			r := ev.Response
			completed = &r
		}
	}
	if err := st.Err(); err != nil {
		t.Fatal(err)
	}
	if len(types) < 6 || types[0] != openai.EventResponseCreated || completed == nil {
		t.Fatalf("events %v", types)
	}
	if completed.OutputText() != text.String() || text.Len() == 0 {
		t.Errorf("deltas %q, final text %q", text.String(), completed.OutputText())
	}
	if completed.Usage.InputTokens == 0 || completed.Usage.OutputTokens == 0 {
		t.Errorf("streamed usage %+v", completed.Usage)
	}
	waitReleased(t, f)
}

// TestEmbeddingsSDK embeds through the gateway with the official SDK: one vector per input,
// the same vector for the same input, usage counted, never routed on cache overlap.
func TestEmbeddingsSDK(t *testing.T) {
	a, b := apiSim(t), apiSim(t)
	f := startPolicy(t, router.PolicyKV, gateway.Config{}, a.Addr(), b.Addr())
	c := sdkClient(f)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in := sdk.EmbeddingNewParams{Model: model, Input: sdk.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"hello world", longInput}}}
	seen := map[string]bool{}
	var vec []float64
	for range 6 {
		var hr *http.Response
		res, err := c.Embeddings.New(ctx, in, option.WithResponseInto(&hr))
		if err != nil {
			t.Fatal(err)
		}
		seen[hr.Header.Get(router.HeaderEndpoint)] = true
		if len(res.Data) != 2 || len(res.Data[0].Embedding) != sim.EmbeddingDim || res.Usage.PromptTokens < 300 {
			t.Fatalf("embeddings: %d vectors of %d, usage %+v", len(res.Data), len(res.Data[0].Embedding), res.Usage)
		}
		if vec != nil && res.Data[0].Embedding[0] != vec[0] {
			t.Errorf("the same input embedded differently")
		}
		vec = res.Data[0].Embedding
		if hr.Header.Get(router.HeaderCachedBlocks) != "0" {
			t.Errorf("an embedding was routed on cache overlap: %s blocks", hr.Header.Get(router.HeaderCachedBlocks))
		}
	}
	// Sequential requests leave both engines idle between them, so which one a tie goes to is
	// not the point here; least load against a busy engine is router's TestEmbeddingsLeastLoad.
	if len(seen) == 0 || seen[""] {
		t.Errorf("embeddings answered without the picked endpoint's header: %v", seen)
	}
	// Model validation as for chat.
	_, err := c.Embeddings.New(ctx, sdk.EmbeddingNewParams{Model: "nope", Input: sdk.EmbeddingNewParamsInputUnion{OfString: sdk.String("x")}})
	var apiErr *sdk.Error
	if !asAPIError(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != openai.CodeModelNotFound {
		t.Errorf("unknown model: %v", err)
	}
	waitReleased(t, f)
}

func asAPIError(err error, dst **sdk.Error) bool {
	e, ok := err.(*sdk.Error)
	if ok {
		*dst = e
	}
	return ok
}

// TestPassthrough sends paths the gateway does not know to an engine as they came: method,
// path, query and body untouched, the answer streamed back; without an endpoint for the
// body's model the client gets an OpenAI error.
func TestPassthrough(t *testing.T) {
	type seen struct{ method, uri, body string }
	got := make(chan seen, 4)
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Method, r.URL.RequestURI(), string(b)}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	f := start(t, gateway.Config{}, e.addr())
	cases := []struct{ method, path, body string }{
		{"GET", "/v1/files/file-1?limit=2", ""},
		{"DELETE", "/v1/files/file-1", ""},
		{"POST", "/v1/score", `{"model":"` + model + `","text_1":"a","text_2":"b"}`},
		{"POST", "/v1/audio/transcriptions", "not json at all"},
	}
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, f.url+c.path, strings.NewReader(c.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted || string(b) != `{"ok":true}` || resp.Header.Get(router.HeaderEndpoint) != e.addr() {
			t.Errorf("%s %s: %d %s %v", c.method, c.path, resp.StatusCode, b, resp.Header)
		}
		s := <-got
		if s.method != c.method || s.uri != c.path || s.body != c.body {
			t.Errorf("engine got %+v, want %+v", s, c)
		}
	}
	// The body's model is validated; the engine is not asked.
	resp, body := post(t, f.url+"/v1/score", `{"model":"nope"}`)
	checkErrorBody(t, []byte(body), openai.TypeInvalidRequest)
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, openai.CodeModelNotFound) {
		t.Errorf("unknown model: %d %s", resp.StatusCode, body)
	}
	// A path the gateway serves itself keeps its 405 for other methods.
	resp, body = get(t, f.url+"/v1/responses")
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /v1/responses: %d %s", resp.StatusCode, body)
	}
	// Passed-through paths share one metric label: clients choose them.
	if n := metricstest.Value(f.reg, gateway.MetricRequests, "path", "/v1/*"); n != float64(len(cases)+1) {
		t.Errorf("%s{path=\"/v1/*\"} = %v, want %d", gateway.MetricRequests, n, len(cases)+1)
	}
	if n := e.hits.Load(); n != int64(len(cases)) {
		t.Errorf("engine hit %d times, want %d", n, len(cases))
	}
	waitReleased(t, f)
}

// TestResponsesErrors checks refusals come back in the OpenAI error shape, naming the field,
// without reaching an engine.
func TestResponsesErrors(t *testing.T) {
	e := jsonEngine(t, "A")
	f := start(t, gateway.Config{}, e.addr())
	cases := []struct {
		name, path, body, param string
	}{
		{"previous_response_id", "/v1/responses", `{"model":"` + model + `","input":"x","previous_response_id":"resp_1"}`, "previous_response_id"},
		{"no input", "/v1/responses", `{"model":"` + model + `"}`, "input"},
		{"bad item", "/v1/responses", `{"model":"` + model + `","input":[{"role":"wizard","content":"x"}]}`, "input[0].role"},
		{"bad max_output_tokens", "/v1/responses", `{"model":"` + model + `","input":"x","max_output_tokens":0}`, "max_output_tokens"},
		{"embeddings no input", "/v1/embeddings", `{"model":"` + model + `"}`, "input"},
		{"embeddings bad input", "/v1/embeddings", `{"model":"` + model + `","input":[1,"a"]}`, "input"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, body := post(t, f.url+c.path, c.body)
			checkErrorBody(t, []byte(body), openai.TypeInvalidRequest)
			var eb struct {
				Error struct {
					Param string `json:"param"`
				} `json:"error"`
			}
			_ = json.Unmarshal([]byte(body), &eb)
			if resp.StatusCode != http.StatusBadRequest || !strings.HasPrefix(eb.Error.Param, c.param) {
				t.Errorf("%d %s, want 400 naming %s", resp.StatusCode, body, c.param)
			}
		})
	}
	if e.hits.Load() != 0 {
		t.Errorf("refused requests reached the engine %d times", e.hits.Load())
	}
}

// TestAPIsThroughRemoteEPP: with the gateway asking kvgate's ext_proc server for picks (both
// modes), Responses and embeddings reach the simulated engines and a bodiless passthrough
// GET is picked on its headers.
func TestAPIsThroughRemoteEPP(t *testing.T) {
	a := apiSim(t)
	files := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"file-1","method":"`+r.Method+`"}`)
	})
	eppAddr, rt, _ := startRouterEPPPolicy(t, router.PolicyKV, extproc.Config{}, a.Addr())
	for _, mode := range eppModes {
		t.Run(string(mode), func(t *testing.T) {
			url, _ := startEPPGateway(t, gateway.EPPConfig{Addr: eppAddr, Mode: mode, Timeout: time.Minute}, a.Addr(), files.addr())
			c := sdk.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey("test"), option.WithMaxRetries(0))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			r, err := c.Responses.New(ctx, responses.ResponseNewParams{Model: model, MaxOutputTokens: sdk.Int(8),
				Input: responses.ResponseNewParamsInputUnion{OfString: sdk.String("Hello through Envoy's path")}})
			if err != nil {
				t.Fatal(err)
			}
			if r.OutputText() == "" || r.Usage.InputTokens == 0 {
				t.Errorf("response %+v", r)
			}
			e, err := c.Embeddings.New(ctx, sdk.EmbeddingNewParams{Model: model, Input: sdk.EmbeddingNewParamsInputUnion{OfString: sdk.String("x")}})
			if err != nil || len(e.Data) != 1 {
				t.Fatalf("embeddings %v %+v", err, e)
			}
		})
	}
	waitRouterReleased(t, rt)
	// A bodiless request to a path no API owns: picked on its headers alone.
	filesEPP, frt, _ := startRouterEPPPolicy(t, router.PolicyKV, extproc.Config{}, files.addr())
	for _, mode := range eppModes {
		url, _ := startEPPGateway(t, gateway.EPPConfig{Addr: filesEPP, Mode: mode, Timeout: time.Minute}, files.addr())
		for _, method := range []string{"GET", "DELETE"} {
			req, _ := http.NewRequest(method, url+"/v1/files/file-1", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(b) != `{"id":"file-1","method":"`+method+`"}` || resp.Header.Get(router.HeaderEndpoint) != files.addr() {
				t.Errorf("%s %s: %d %s %v", mode, method, resp.StatusCode, b, resp.Header)
			}
		}
	}
	waitRouterReleased(t, frt)
}

// waitRouterReleased waits until rt holds no load for any request.
func waitRouterReleased(t *testing.T, rt *router.Router) {
	t.Helper()
	polltest.Until(t, 10*time.Second, "the router to release every request", func() bool {
		for _, l := range rt.Load() {
			if l.Requests != 0 || l.PrefillTokens != 0 || l.DecodeBlocks != 0 {
				return false
			}
		}
		return true
	})
}

// TestResponsesClientLeaves: a client that drops a Responses stream after its first delta
// frees the engine (the request is aborted there) and the router's load.
func TestResponsesClientLeaves(t *testing.T) {
	cfg := sim.ServerConfig{Addr: "127.0.0.1:0"}
	cfg.Engine.NumBlocks = 1024
	cfg.Engine.Timing = sim.DefaultTiming()
	cfg.Engine.Timing.Base = 10 * time.Millisecond
	s, err := sim.NewServer(cfg, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(sctx) }()
	t.Cleanup(func() { scancel(); <-done })
	f := startPolicy(t, router.PolicyKV, gateway.Config{}, s.Addr())
	c := sdkClient(f)
	params := responses.ResponseNewParams{Model: model, Input: responses.ResponseNewParamsInputUnion{OfString: sdk.String("Tell me a long story.")}}
	// The whole answer first: the output is deterministic, so this says how long it is.
	whole, err := c.Responses.New(context.Background(), params)
	if err != nil {
		t.Fatal(err)
	}
	base := s.Stats().GenerationTokens
	ctx, cancel := context.WithCancel(context.Background())
	st := c.Responses.NewStreaming(ctx, params)
	for st.Next() {
		if st.Current().Type == openai.EventOutputTextDelta {
			break
		}
	}
	cancel()
	st.Close()
	polltest.Until(t, 10*time.Second, "the engine to drop the request", func() bool {
		st := s.Stats()
		return st.Running == 0 && st.Waiting == 0
	})
	if g := s.Stats().GenerationTokens - base; g >= uint64(whole.Usage.OutputTokens) {
		t.Errorf("the engine generated %d tokens of %d: the request was not aborted", g, whole.Usage.OutputTokens)
	}
	t.Logf("aborted after %d of %d tokens", s.Stats().GenerationTokens-base, whole.Usage.OutputTokens)
	waitReleased(t, f)
}
