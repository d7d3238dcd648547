package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/gateway"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/router/routertest"
	"github.com/kvgate/kvgate/tlsconfig/tlsconfigtest"
	"github.com/kvgate/kvgate/tokenizer"
)

// startRouterEPP serves kvgate's router over ext_proc on loopback and returns its address.
func startRouterEPP(t *testing.T, engines ...string) (string, *router.Router, *prometheus.Registry) {
	return startRouterEPPConfig(t, extproc.Config{}, engines...)
}

func startRouterEPPConfig(t testing.TB, xc extproc.Config, engines ...string) (string, *router.Router, *prometheus.Registry) {
	return startRouterEPPPolicy(t, "round-robin", xc, engines...)
}

func startRouterEPPPolicy(t testing.TB, policy string, xc extproc.Config, engines ...string) (string, *router.Router, *prometheus.Registry) {
	t.Helper()
	return startRouterEPPWith(t, func(rc *router.Config) { rc.Policy = policy }, xc, engines...)
}

// startRouterEPPWith is startRouterEPP with the router's config changed by set.
func startRouterEPPWith(t testing.TB, set func(*router.Config), xc extproc.Config, engines ...string) (string, *router.Router, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	set(&rc)
	rc.Models = tokenizer.DefaultModelMap()
	for i, a := range engines {
		rc.Endpoints = append(rc.Endpoints, router.Endpoint{Name: fmt.Sprint("e", i), Address: a, Models: []string{model}, Role: router.RoleAggregated, BlockSize: 16})
	}
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	return serveExtProc(t, xc, rt, reg), rt, reg
}

// serveExtProc serves kvgate's ext_proc for rt on a free loopback port until t ends and
// returns its address.
func serveExtProc(t testing.TB, xc extproc.Config, rt *router.Router, reg *prometheus.Registry) string {
	t.Helper()
	xc.Addr = "127.0.0.1:0"
	srv, err := extproc.New(xc, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := srv.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	return addr.String()
}

// startEPPGateway starts kvgate's gateway driven by the EPP at epp, with pool as its pool.
func startEPPGateway(t testing.TB, ec gateway.EPPConfig, pool ...string) (string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	for _, a := range pool {
		ec.Pool = append(ec.Pool, router.Endpoint{Address: a, Models: []string{model}})
	}
	gw, err := gateway.NewEPP(gateway.Config{Addr: "127.0.0.1:0", Gatherer: reg}, ec, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; gw.Close() })
	actx, acancel := context.WithTimeout(ctx, 5*time.Second)
	defer acancel()
	addr, err := gw.Addr(actx)
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr.String(), reg
}

var eppModes = []gateway.EPPMode{gateway.EPPFullDuplex, gateway.EPPBuffered}

// TestEPPWithRouter drives kvgate's own ext_proc server through the remote-EPP data plane in
// both modes: picks are followed, the router's request body rewrite (include_usage) reaches
// the engine, its response header mutation and its cut of the forced usage chunk reach the
// client, the served report keeps load on the right engine and every stream releases it.
func TestEPPWithRouter(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	sse := func(name string) *engine {
		return newEngine(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies = append(bodies, string(b))
			mu.Unlock()
			var req struct{ Stream bool }
			_ = json.Unmarshal(b, &req)
			if !req.Stream {
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"id":"%s","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}`, name)
				return
			}
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 3 {
				fmt.Fprintf(w, "data: {\"id\":\"%s\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t%d\"}}]}\n\n", name, i)
				w.(http.Flusher).Flush()
			}
			fmt.Fprint(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":3,\"total_tokens\":8}}\n\ndata: [DONE]\n\n")
		})
	}
	a, b := sse("A"), sse("B")
	eppAddr, rt, rreg := startRouterEPP(t, a.addr(), b.addr())
	for _, mode := range eppModes {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/stream=%v", mode, stream), func(t *testing.T) {
				// A long timeout: the first pick loads the tokenizer.
				url, _ := startEPPGateway(t, gateway.EPPConfig{Addr: eppAddr, Mode: mode, Timeout: time.Minute}, a.addr(), b.addr())
				seen := map[string]bool{}
				for i := range 4 {
					resp, body := post(t, url+"/v1/chat/completions", chat(fmt.Sprint("hello ", i), stream))
					if resp.StatusCode != 200 {
						t.Fatalf("status %d: %s", resp.StatusCode, body)
					}
					ep := resp.Header.Get(router.HeaderEndpoint) // set by the router's response header mutation
					want := map[string]string{a.addr(): `"id":"A"`, b.addr(): `"id":"B"`}[ep]
					if want == "" || !strings.Contains(body, want) {
						t.Errorf("%s = %q but the body came from %s", router.HeaderEndpoint, ep, body)
					}
					seen[ep] = true
					if stream && strings.Contains(body, `"usage"`) {
						t.Errorf("the forced usage chunk reached the client: %s", body)
					}
					if stream && !strings.HasSuffix(body, "data: [DONE]\n\n") {
						t.Errorf("stream incomplete: %q", body)
					}
				}
				if len(seen) != 2 {
					t.Errorf("round-robin picks reached %d engines", len(seen))
				}
				mu.Lock()
				last := bodies[len(bodies)-1]
				mu.Unlock()
				if stream && !strings.Contains(last, `"include_usage":true`) {
					t.Errorf("the router's body mutation did not reach the engine: %s", last)
				}
				routertest.WaitReleased(t, rt, "ext_proc streams", func() float64 { return metricstest.Value(rreg, extproc.MetricStreamsActive) })
			})
		}
	}
}

// fakeEPP is a hostile or scripted EPP: handle runs each stream.
type fakeEPP struct {
	handle func(s extprocv3.ExternalProcessor_ProcessServer) error
	extprocv3.UnimplementedExternalProcessorServer
}

func (f *fakeEPP) Process(s extprocv3.ExternalProcessor_ProcessServer) error { return f.handle(s) }

func startFake(t *testing.T, handle func(s extprocv3.ExternalProcessor_ProcessServer) error) string {
	return startFakeTB(t, handle)
}

func startFakeTB(t testing.TB, handle func(s extprocv3.ExternalProcessor_ProcessServer) error) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	extprocv3.RegisterExternalProcessorServer(g, &fakeEPP{handle: handle})
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

// script is what a scripted EPP does in FULL_DUPLEX_STREAMED mode.
type script struct {
	header, meta string                       // the destination, as header and metadata ("" sends none)
	immediate    *extprocv3.ImmediateResponse // answer the request with this
	served       chan string                  // receives the served endpoint report
	subset       chan []string                // receives the subset hint
	subsetLast   chan []string                // receives the hint on the body's last message (where GIE reads it)
	respHeader   map[string]string            // set on the response
}

// subsetHint is the subset hint m carries (Envoy sends it on every message).
func subsetHint(m *extprocv3.ProcessingRequest) []string {
	var got []string
	for _, v := range m.GetMetadataContext().GetFilterMetadata()[router.SubsetNamespace].GetFields()[router.SubsetKey].GetListValue().GetValues() {
		got = append(got, v.GetStringValue())
	}
	return got
}

func (sc script) run(s extprocv3.ExternalProcessor_ProcessServer) error {
	var body []byte
	for {
		m, err := s.Recv()
		if err != nil {
			return nil
		}
		switch {
		case m.GetRequestHeaders() != nil:
			if sc.subset != nil {
				sc.subset <- subsetHint(m)
			}
		case m.GetRequestBody() != nil:
			body = append(body, m.GetRequestBody().GetBody()...)
			if !m.GetRequestBody().GetEndOfStream() {
				continue
			}
			if sc.subsetLast != nil {
				sc.subsetLast <- subsetHint(m)
			}
			if sc.immediate != nil {
				return s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ImmediateResponse{ImmediateResponse: sc.immediate}})
			}
			cr := &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{}}
			if sc.header != "" {
				cr.HeaderMutation.SetHeaders = append(cr.HeaderMutation.SetHeaders, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: router.HeaderDestination, RawValue: []byte(sc.header)}})
			}
			resp := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{Response: cr}}}
			if sc.meta != "" {
				resp.DynamicMetadata = &structpb.Struct{Fields: map[string]*structpb.Value{router.MetadataNamespace: structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{router.HeaderDestination: structpb.NewStringValue(sc.meta)}})}}
			}
			if err := s.Send(resp); err != nil {
				return err
			}
			if err := s.Send(streamedMsg(false, body, true)); err != nil {
				return err
			}
		case m.GetResponseHeaders() != nil:
			if sc.served != nil {
				sc.served <- m.GetMetadataContext().GetFilterMetadata()[router.MetadataNamespace].GetFields()[router.HeaderDestinationServed].GetStringValue()
			}
			hm := &extprocv3.HeaderMutation{}
			for k, v := range sc.respHeader {
				hm.SetHeaders = append(hm.SetHeaders, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, RawValue: []byte(v)}})
			}
			if err := s.Send(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseHeaders{ResponseHeaders: &extprocv3.HeadersResponse{Response: &extprocv3.CommonResponse{HeaderMutation: hm}}}}); err != nil {
				return err
			}
		case m.GetResponseBody() != nil:
			if err := s.Send(streamedMsg(true, m.GetResponseBody().GetBody(), m.GetResponseBody().GetEndOfStream())); err != nil {
				return err
			}
		}
	}
}

func streamedMsg(response bool, b []byte, eos bool) *extprocv3.ProcessingResponse {
	br := &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{BodyMutation: &extprocv3.BodyMutation{
		Mutation: &extprocv3.BodyMutation_StreamedResponse{StreamedResponse: &extprocv3.StreamedBodyResponse{Body: b, EndOfStream: eos}},
	}}}
	if response {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}}
}

// checkOpenAIError asserts an OpenAI-shaped error body with status code.
func checkOpenAIError(t *testing.T, resp *http.Response, body string, code int) {
	t.Helper()
	if resp.StatusCode != code {
		t.Fatalf("status %d, want %d: %s", resp.StatusCode, code, body)
	}
	var e struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
		t.Fatalf("not an OpenAI error body: %q (%v)", body, err)
	}
	if strings.Contains(body, "127.0.0.1") {
		t.Errorf("the error names an address: %s", body)
	}
}

// TestEPPHostile runs the data plane against EPPs that misbehave: each gets a clear OpenAI
// error (or the EPP's own answer) and no engine outside the pool is ever called.
func TestEPPHostile(t *testing.T) {
	a := jsonEngine(t, "A")
	outside := jsonEngine(t, "outside")
	dead := func() string { // a port nothing listens on
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := l.Addr().String()
		l.Close()
		return addr
	}()
	cases := []struct {
		name   string
		sc     script
		status int
		openai bool   // an OpenAI error body is expected
		body   string // the body contains this
	}{
		{name: "outside the pool", sc: script{header: outside.addr(), meta: outside.addr()}, status: 503, openai: true},
		{name: "not an address", sc: script{header: "not-an-endpoint", meta: "not-an-endpoint"}, status: 503, openai: true},
		{name: "no destination", sc: script{}, status: 503, openai: true},
		{name: "outside first then pool", sc: script{meta: outside.addr() + "," + a.addr()}, status: 200, body: `"id":"A"`},
		{name: "header only", sc: script{header: a.addr()}, status: 200, body: `"id":"A"`},
		{name: "immediate 429 with body", sc: script{immediate: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: 429}, Body: []byte(`{"error":{"message":"shed","type":"rate_limit_error"}}`)}}, status: 429, body: `"shed"`},
		{name: "immediate 503 without body", sc: script{immediate: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: 503}}}, status: 503, openai: true},
		{name: "immediate bad status", sc: script{immediate: &extprocv3.ImmediateResponse{Status: &typev3.HttpStatus{Code: 42}}}, status: 502, openai: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := outside.hits.Load()
			epp := startFake(t, c.sc.run)
			url, _ := startEPPGateway(t, gateway.EPPConfig{Addr: epp}, a.addr(), dead)
			resp, body := post(t, url+"/v1/chat/completions", chat("hi", false))
			if c.openai {
				checkOpenAIError(t, resp, body, c.status)
			} else if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			if !strings.Contains(body, c.body) {
				t.Errorf("body %q lacks %q", body, c.body)
			}
			if outside.hits.Load() != before {
				t.Error("an engine outside the pool was called")
			}
		})
	}
}

// TestEPPFallbackServed checks the ordered fallback list: a dead first candidate is skipped,
// the second serves, and the EPP hears which one served; the subset hint is the pool.
func TestEPPFallbackServed(t *testing.T) {
	a := jsonEngine(t, "A")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := l.Addr().String()
	l.Close()
	sc := script{header: dead + "," + a.addr(), meta: dead + "," + a.addr(), served: make(chan string, 1), subset: make(chan []string, 1),
		subsetLast: make(chan []string, 1), respHeader: map[string]string{"x-epp-saw": "yes"}}
	epp := startFake(t, sc.run)
	url, _ := startEPPGateway(t, gateway.EPPConfig{Addr: epp}, dead, a.addr())
	resp, body := post(t, url+"/v1/chat/completions", chat("hi", false))
	if resp.StatusCode != 200 || !strings.Contains(body, `"id":"A"`) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if got := resp.Header.Get("x-epp-saw"); got != "yes" {
		t.Errorf("the EPP's response header mutation was not applied: %q", got)
	}
	if got := <-sc.subset; strings.Join(got, ",") != dead+","+a.addr() {
		t.Errorf("subset hint %v, want the pool", got)
	}
	// As Envoy does, the body's messages carry the hint too: an EPP that takes each
	// message's metadata in place of the last (GIE v1.4.0, llm-d) reads it there.
	if got := <-sc.subsetLast; strings.Join(got, ",") != dead+","+a.addr() {
		t.Errorf("subset hint on the body's last message %v, want the pool", got)
	}
	if got := <-sc.served; got != a.addr() {
		t.Errorf("served report %q, want %q", got, a.addr())
	}
}

// TestEPPFailureMode checks the pool's failureMode when the EPP is unreachable, resets the
// stream, or is too slow: FailClose answers 503, FailOpen serves from the pool.
func TestEPPFailureMode(t *testing.T) {
	a := jsonEngine(t, "A")
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	unreachable := l.Addr().String()
	l.Close()
	reset := startFake(t, func(s extprocv3.ExternalProcessor_ProcessServer) error {
		_, _ = s.Recv()
		return errors.New("boom")
	})
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	slow := startFake(t, func(s extprocv3.ExternalProcessor_ProcessServer) error {
		select {
		case <-release:
		case <-s.Context().Done():
		}
		return nil
	})
	for _, target := range []struct{ name, addr string }{{"unreachable", unreachable}, {"reset", reset}, {"slow", slow}} {
		for _, fm := range []gateway.FailureMode{gateway.FailClose, gateway.FailOpen} {
			t.Run(target.name+"/"+string(fm), func(t *testing.T) {
				url, reg := startEPPGateway(t, gateway.EPPConfig{Addr: target.addr, FailureMode: fm, Timeout: 300 * time.Millisecond}, a.addr())
				began := time.Now()
				resp, body := post(t, url+"/v1/chat/completions", chat("hi", false))
				if fm == gateway.FailClose {
					checkOpenAIError(t, resp, body, 503)
				} else if resp.StatusCode != 200 || !strings.Contains(body, `"id":"A"`) {
					t.Fatalf("FailOpen: status %d: %s", resp.StatusCode, body)
				}
				if d := time.Since(began); d > 5*time.Second {
					t.Errorf("took %s", d)
				}
				outcome := map[gateway.FailureMode]string{gateway.FailClose: "failed_close", gateway.FailOpen: "failed_open"}[fm]
				if n := metricstest.Value(reg, gateway.MetricEPPRequests, "outcome", outcome); n != 1 {
					t.Errorf("%s{outcome=%s} = %v", gateway.MetricEPPRequests, outcome, n)
				}
			})
		}
	}
}

// TestEPPClientGone checks that a client going away mid-stream cancels the engine's request
// and ends the EPP's stream (the router releases the load), in both modes, and leaves no
// goroutine behind.
func TestEPPClientGone(t *testing.T) {
	cancelled := make(chan struct{}, 4)
	e := newEngine(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"t\"}}]}\n\n")
		w.(http.Flusher).Flush()
		if strings.Contains(string(b), "warm up") {
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		<-r.Context().Done() // streams until the client goes
		cancelled <- struct{}{}
	})
	eppAddr, rt, rreg := startRouterEPP(t, e.addr())
	for _, mode := range eppModes {
		t.Run(string(mode), func(t *testing.T) {
			url, reg := startEPPGateway(t, gateway.EPPConfig{Addr: eppAddr, Mode: mode, Timeout: time.Minute}, e.addr())
			// A whole request first: the gateway's connections to the EPP and the engine exist.
			if resp, body := post(t, url+"/v1/chat/completions", chat("warm up", true)); resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			routertest.WaitReleased(t, rt, "the warm-up", func() float64 { return metricstest.Value(rreg, extproc.MetricStreamsActive) })
			http.DefaultClient.CloseIdleConnections()
			defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", strings.NewReader(chat("go away", true)))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 16)
			if _, err := io.ReadFull(resp.Body, buf); err != nil { // the first event arrived
				t.Fatal(err)
			}
			cancel()
			resp.Body.Close()
			select {
			case <-cancelled:
			case <-time.After(10 * time.Second):
				t.Fatal("the engine's request was not cancelled")
			}
			routertest.WaitReleased(t, rt, "ext_proc streams and gateway requests", func() float64 {
				return metricstest.Value(rreg, extproc.MetricStreamsActive) + metricstest.Value(reg, gateway.MetricInflight)
			})
			http.DefaultClient.CloseIdleConnections()
		})
	}
}

// TestEPPTLS picks over mutual TLS: a gateway with a client certificate of the EPP's CA is
// served; one that speaks plaintext gets FailClose's 503.
func TestEPPTLS(t *testing.T) {
	p := tlsconfigtest.New(t)
	stc, err := p.Server.Server()
	if err != nil {
		t.Fatal(err)
	}
	ctc, err := p.Client.Client()
	if err != nil {
		t.Fatal(err)
	}
	a := jsonEngine(t, "A")
	eppAddr, _, _ := startRouterEPPConfig(t, extproc.Config{TLS: stc}, a.addr())
	url, _ := startEPPGateway(t, gateway.EPPConfig{Addr: eppAddr, TLS: ctc, Timeout: time.Minute}, a.addr())
	if resp, body := post(t, url+"/v1/chat/completions", chat("over tls", false)); resp.StatusCode != 200 || !strings.Contains(body, `"id":"A"`) {
		t.Fatalf("mTLS: status %d: %s", resp.StatusCode, body)
	}
	plain, _ := startEPPGateway(t, gateway.EPPConfig{Addr: eppAddr, Timeout: 5 * time.Second}, a.addr())
	resp, body := post(t, plain+"/v1/chat/completions", chat("plaintext", false))
	checkOpenAIError(t, resp, body, 503)
}

// TestEPPStalledBody checks an EPP that stops reading cannot hold a large streamed body
// past the timeout: the send is abandoned and FailClose answers 503.
func TestEPPStalledBody(t *testing.T) {
	a := jsonEngine(t, "A")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	stalled := startFake(t, func(s extprocv3.ExternalProcessor_ProcessServer) error {
		select { // never reads: flow control stops the sender
		case <-release:
		case <-s.Context().Done():
		}
		return nil
	})
	url, _ := startEPPGateway(t, gateway.EPPConfig{Addr: stalled, Timeout: 300 * time.Millisecond}, a.addr())
	began := time.Now()
	resp, body := post(t, url+"/v1/chat/completions", chat(strings.Repeat("stall ", 1<<20), false))
	checkOpenAIError(t, resp, body, 503)
	if d := time.Since(began); d > 30*time.Second { // without the bound it never ends
		t.Errorf("took %s", d)
	}
}
