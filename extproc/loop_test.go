package extproc_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// startUntapped serves a Server's ext_proc service on a gRPC server built without
// Server.Serve (Register on a plain grpc.Server): its streams have no context the server can
// expire, so Process receives on a goroutine of its own.
func startUntapped(t *testing.T, cfg extproc.Config) *fixture {
	t.Helper()
	reg := prometheus.NewRegistry()
	rc := router.DefaultConfig()
	rc.Policy = "round-robin"
	rc.Models = tokenizer.DefaultModelMap()
	rc.Endpoints = endpoints
	rt, err := router.New(rc, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := extproc.New(cfg, rt, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	c, err := extproctest.Dial(lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); g.Stop() })
	return &fixture{client: c, router: rt, reg: reg, server: srv, stop: g.Stop}
}

// processGoroutines counts the goroutines of this process running extproc's Process (the
// handler's, and a reader's if it has one).
func processGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("kvgate/extproc.(*Server).Process")) {
			count++
		}
	}
	return count
}

// TestStreamGoroutines checks an open stream holds no goroutine of the server's own: its
// messages are received and answered on gRPC's stream goroutine (before, each stream had a
// reader goroutine beside it, which grew a fresh stack for every request). A server
// registered on a gRPC server that Serve did not build still needs that reader, to end a
// stream blocked in Recv at the idle timeout: there each stream holds two.
func TestStreamGoroutines(t *testing.T) {
	const streams = 6
	for _, tt := range []struct {
		name  string
		start func(*testing.T, extproc.Config) *fixture
		per   int // goroutines per open stream
	}{
		{"serve", func(t *testing.T, c extproc.Config) *fixture { return start(t, c) }, 1},
		{"untapped", startUntapped, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.start(t, extproc.Config{})
			before := processGoroutines()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			for i := range streams {
				openPicked(t, ctx, f, "goroutines "+string(rune('a'+i)))
			}
			if got := processGoroutines() - before; got != tt.per*streams {
				t.Errorf("%d streams open: %d goroutines in Process, want %d", streams, got, tt.per*streams)
			}
			cancel() // the proxy resets every stream
			polltest.Until(t, 10*time.Second, "Process goroutines to end", func() bool { return processGoroutines() == before })
			waitReleased(t, f)
		})
	}
}

// TestIdleStreamClosedUntapped is TestIdleStreamClosed on a server registered on a plain
// gRPC server, where Process cannot expire the stream's context: the handler returns
// DEADLINE_EXCEEDED itself and the pick is released. A whole request still goes through.
func TestIdleStreamClosedUntapped(t *testing.T) {
	f := startUntapped(t, extproc.Config{IdleTimeout: 300 * time.Millisecond, ResponseTimeout: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := f.client.Do(ctx, fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, "untapped", true)},
		func(*extproctest.Result) extproctest.Upstream {
			return extproctest.Upstream{Header: http.Header{"Content-Type": {"text/event-stream"}}, Chunks: sseChunks(usageJSON)}
		})
	if err != nil || res.Immediate != nil || res.Destination() == "" {
		t.Fatalf("request through the untapped server: %v %+v", err, res)
	}
	idleStreamClosed(t, ctx, f)
}

// TestBufferedBodyMutationOnlyWhenRewritten checks a BUFFERED pick sends the body back only
// when the router rewrote it (a stream whose usage it forces), and leaves the client's body
// alone otherwise: before, every pick echoed the whole body as a mutation.
func TestBufferedBodyMutationOnlyWhenRewritten(t *testing.T) {
	f := start(t, extproc.Config{})
	mode := extproctest.Mode{RequestBody: filterv3.ProcessingMode_BUFFERED, ResponseBody: filterv3.ProcessingMode_STREAMED}
	for _, tt := range []struct {
		name    string
		stream  bool
		rewrite bool
	}{
		{"not streamed", false, false},
		{"streamed, usage forced", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st, err := f.client.Open(ctx)
			if err != nil {
				t.Fatal(err)
			}
			body := chatBody(t, "mutation "+tt.name, tt.stream)
			msgs := extproctest.RequestMessages(mode, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: body})
			if err := st.Send(msgs[0]); err != nil {
				t.Fatal(err)
			}
			if r, err := st.Recv(); err != nil || r.GetRequestHeaders() == nil {
				t.Fatalf("want the request headers answer, got %v %v", r, err)
			}
			if err := st.Send(msgs[1]); err != nil {
				t.Fatal(err)
			}
			r, err := st.Recv()
			if err != nil || r.GetRequestBody() == nil {
				t.Fatalf("want the pick on the body answer, got %v %v", r, err)
			}
			cr := r.GetRequestBody().GetResponse()
			if cr.GetHeaderMutation() == nil || !cr.GetClearRouteCache() {
				t.Fatalf("the body answer carries no pick: %v", cr)
			}
			got, rewritten := cr.GetBodyMutation().GetMutation().(*extprocv3.BodyMutation_Body)
			if rewritten != tt.rewrite {
				t.Fatalf("body mutation sent: %v, want %v (%v)", rewritten, tt.rewrite, cr.GetBodyMutation())
			}
			if rewritten && !bytes.Contains(got.Body, []byte(`"include_usage":true`)) {
				t.Errorf("rewritten body %s does not force the usage", got.Body)
			}
			var length string
			for _, h := range cr.GetHeaderMutation().GetSetHeaders() {
				if h.GetHeader().GetKey() == "content-length" {
					length = string(h.GetHeader().GetRawValue())
				}
			}
			want := len(body)
			if rewritten {
				want = len(got.Body)
			}
			if length != strconv.Itoa(want) {
				t.Errorf("content-length %q, want %d", length, want)
			}
			cancel()
			waitReleased(t, f)
		})
	}
}
