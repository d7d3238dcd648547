package extproc_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router/routertest"
)

var fullDuplex = extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}

// openPicked opens a raw stream, sends a whole request and reads the pick.
func openPicked(t *testing.T, ctx context.Context, f *fixture, content string) extprocv3.ExternalProcessor_ProcessClient {
	t.Helper()
	st, err := f.client.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range extproctest.RequestMessages(fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: chatBody(t, content, false)}) {
		if err := st.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetRequestHeaders() == nil {
		t.Fatalf("want the pick, got %v", r)
	}
	return st
}

// TestPhantomLoadReleased checks a pick whose response never starts stops counting as load
// after ResponseTimeout, while its stream is still open: before, held streams kept their
// endpoints' load until they closed and steered real traffic away.
func TestPhantomLoadReleased(t *testing.T) {
	f := start(t, extproc.Config{ResponseTimeout: 300 * time.Millisecond, IdleTimeout: -1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range 3 {
		openPicked(t, ctx, f, "phantom "+string(rune('a'+i)))
	}
	if routertest.Load(f.router) == 0 {
		t.Fatal("no load after three picks")
	}
	if !polltest.Wait(10*time.Second, func() bool { return routertest.Load(f.router) == 0 }) {
		t.Fatalf("load %v still held by picks without a response", routertest.Load(f.router))
	}
	if got := metricstest.Value(f.reg, extproc.MetricStreamsActive); got != 3 {
		t.Errorf("%v streams open, want the 3 held ones", got)
	}
	if got := metricstest.Value(f.reg, extproc.MetricResponseTimeouts); got != 3 {
		t.Errorf("%s = %v, want 3", extproc.MetricResponseTimeouts, got)
	}
	cancel()
	waitReleased(t, f)
}

// TestResponseInTimeKeepsLoad checks a response that starts within ResponseTimeout keeps
// its load until it ends (the bound does not cut live requests' accounting).
func TestResponseInTimeKeepsLoad(t *testing.T) {
	f := start(t, extproc.Config{ResponseTimeout: 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := openPicked(t, ctx, f, "live")
	for _, m := range extproctest.ResponseMessages(fullDuplex, extproctest.Upstream{Chunks: sseChunks(usageJSON)[:1]}, false) {
		if err := st.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // headers and the body chunk answered: both were handled
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	// Wait past the bound on the server's own clock: a second stream's pick times out.
	openPicked(t, ctx, f, "probe")
	if !polltest.Wait(10*time.Second, func() bool { return metricstest.Value(f.reg, extproc.MetricResponseTimeouts) >= 1 }) {
		t.Fatal("the probe's pick never timed out")
	}
	if got := metricstest.Value(f.reg, extproc.MetricResponseTimeouts); got != 1 {
		t.Errorf("%s = %v, want 1 (the probe only)", extproc.MetricResponseTimeouts, got)
	}
	if routertest.Load(f.router) == 0 {
		t.Error("the live response's load was released before it ended")
	}
	cancel()
	waitReleased(t, f)
}

// TestIdleStreamClosed checks a stream on which the proxy sends nothing is closed with
// DEADLINE_EXCEEDED after IdleTimeout and releases its pick: before, it stayed open forever.
func TestIdleStreamClosed(t *testing.T) {
	f := start(t, extproc.Config{IdleTimeout: 300 * time.Millisecond, ResponseTimeout: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	idleStreamClosed(t, ctx, f)
}

// idleStreamClosed opens a picked stream, sends nothing more on it, and requires the server
// to end it with DEADLINE_EXCEEDED before ctx does, release its pick and count it idle.
func idleStreamClosed(t *testing.T, ctx context.Context, f *fixture) {
	t.Helper()
	st := openPicked(t, ctx, f, "idle")
	for {
		_, err := st.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.DeadlineExceeded || ctx.Err() != nil {
			t.Fatalf("stream ended with %v, want DEADLINE_EXCEEDED from the server", err)
		}
		break
	}
	waitReleased(t, f)
	if got := metricstest.Value(f.reg, extproc.MetricIdleStreams); got != 1 {
		t.Errorf("%s = %v, want 1", extproc.MetricIdleStreams, got)
	}
}

// TestBufferedTotalBounded checks the request bytes buffered across streams are bounded:
// past MaxBufferedBytes a body gets a 503 ImmediateResponse, and closed streams give their
// bytes back. Before, each stream could hold up to MaxBodyBytes without end.
func TestBufferedTotalBounded(t *testing.T) {
	const piece = 400 << 10
	f := start(t, extproc.Config{MaxBufferedBytes: 1 << 20, IdleTimeout: -1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hdr := extproctest.RequestMessages(fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions", Body: []byte("x")})[0]
	body := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
		RequestBody: &extprocv3.HttpBody{Body: bytes.Repeat([]byte("a"), piece)}}}
	var open []context.CancelFunc
	for i := range 2 {
		sctx, scancel := context.WithCancel(ctx)
		open = append(open, scancel)
		st, err := f.client.Open(sctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(hdr); err != nil {
			t.Fatal(err)
		}
		if err := st.Send(body); err != nil {
			t.Fatal(err)
		}
		want := float64((i + 1) * piece)
		if !polltest.Wait(10*time.Second, func() bool { return metricstest.Value(f.reg, extproc.MetricBufferedBytes) == want }) {
			t.Fatalf("buffered %v, want %v", metricstest.Value(f.reg, extproc.MetricBufferedBytes), want)
		}
	}
	// A third would pass the 1 MiB total: 503, OpenAI-shaped.
	st, err := f.client.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(hdr); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(body); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	im := r.GetImmediateResponse()
	if im == nil || im.GetStatus().GetCode() != 503 || !bytes.Contains(im.GetBody(), []byte(`"type":"service_unavailable_error"`)) {
		t.Fatalf("third stream: want a 503 immediate response, got %v", r)
	}
	if got := metricstest.Value(f.reg, extproc.MetricBufferFull); got != 1 {
		t.Errorf("%s = %v, want 1", extproc.MetricBufferFull, got)
	}
	for _, c := range open {
		c()
	}
	if !polltest.Wait(10*time.Second, func() bool { return metricstest.Value(f.reg, extproc.MetricBufferedBytes) == 0 }) {
		t.Fatalf("buffered %v after every stream closed", metricstest.Value(f.reg, extproc.MetricBufferedBytes))
	}
	waitReleased(t, f)
}
