package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/router"
)

// envoyMode is how Envoy's ext_proc filter is configured in front of the router.
var envoyMode = extproctest.Mode{RequestBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, ResponseBody: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}

// envoyCall is one request played through the router's ext_proc as Envoy plays it.
type envoyCall struct {
	c      *extproctest.Client
	prompt string
	tokens int
	// served, when set, is reported as the served endpoint whatever was used (a spoof).
	served string
	// hold: after the pick, send nothing more until ctx ends (a stream that never answers).
	hold bool
	// picked, when set, is called once the router has picked.
	picked func()
	// streaming, when set, is called with +1 once the engine's body has begun to arrive
	// and -1 when it ends, with the engine's address.
	streaming func(addr string, delta int)
}

// do runs the call: the request goes through the stream; the pick is sent to the engine,
// trying the destinations in order on a failure before the response headers (a refused
// connection or a reset), as Envoy's ORIGINAL_DST cluster with kvgate's retry policy does (reporting the one used as served); the engine's response goes back
// through ext_proc as it arrives, and an upstream failure resets the ext_proc stream, as
// Envoy does when the upstream resets. It returns what the client would see and the
// number of fallbacks tried.
func (e envoyCall) do(ctx context.Context) (seen, int) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // a stream not ended by then is reset
	s, err := e.c.Open(ctx)
	if err != nil {
		return seen{err: err}, 0
	}
	type recvd struct {
		r   *extprocv3.ProcessingResponse
		err error
	}
	in := make(chan recvd, 4096)
	go func() {
		for {
			r, err := s.Recv()
			in <- recvd{r, err}
			if err != nil {
				return
			}
		}
	}()
	next := func() (*extprocv3.ProcessingResponse, error) {
		select {
		case m := <-in:
			return m.r, m.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	body, _ := json.Marshal(map[string]any{
		"model": model, "stream": true, "max_tokens": e.tokens, "ignore_eos": true,
		"messages": []map[string]string{{"role": "user", "content": e.prompt}},
	})
	for _, m := range extproctest.RequestMessages(envoyMode, extproctest.Request{Method: "POST", Path: "/v1/chat/completions",
		Header: http.Header{"Content-Type": {"application/json"}}, Body: body}) {
		if err := s.Send(m); err != nil {
			return seen{err: err}, 0
		}
	}
	// The pick comes with the request headers answer, then the body comes back.
	var md *structpb.Struct
	var routed []byte
	for done := false; !done; {
		r, err := next()
		if err != nil {
			return seen{err: err}, 0
		}
		switch {
		case r.GetImmediateResponse() != nil:
			im := r.GetImmediateResponse()
			return seen{status: int(im.GetStatus().GetCode()), err: fmt.Errorf("immediate %d: %s", im.GetStatus().GetCode(), im.GetBody())}, 0
		case r.GetRequestHeaders() != nil:
			md = r.GetDynamicMetadata()
		default:
			sb := r.GetRequestBody().GetResponse().GetBodyMutation().GetStreamedResponse()
			routed = append(routed, sb.GetBody()...)
			done = sb.GetEndOfStream()
		}
	}
	if e.picked != nil {
		e.picked()
	}
	if e.hold {
		<-ctx.Done()
		return seen{err: ctx.Err()}, 0
	}
	dests := strings.Split((&extproctest.Result{Metadata: md}).Destination(), ",")
	var resp *http.Response
	var used string
	tried := 0
	for i, d := range dests {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+d+"/v1/chat/completions", bytes.NewReader(routed))
		req.Header.Set("Content-Type", "application/json")
		resp, err = http.DefaultClient.Do(req)
		// Envoy's route retries on connect-failure, refused-stream and reset (xds/route.go):
		// any failure before the response headers moves on to the next destination.
		if err == nil || ctx.Err() != nil || i == len(dests)-1 {
			used = d
			break
		}
		tried++
	}
	if err != nil {
		return seen{err: err}, tried // Envoy answers 503 to its client and resets the stream
	}
	defer resp.Body.Close()
	served := e.served
	if served == "" && used != dests[0] {
		served = used
	}
	hm := &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: ":status", RawValue: fmt.Appendf(nil, "%d", resp.StatusCode)},
		{Key: "content-type", RawValue: []byte(resp.Header.Get("Content-Type"))}}}
	rh := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{ResponseHeaders: &extprocv3.HttpHeaders{Headers: hm}}}
	if served != "" {
		rh.MetadataContext = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			extproctest.LBNamespace: {Fields: map[string]*structpb.Value{extproctest.ServedKey: structpb.NewStringValue(served)}},
		}}
	}
	o := seen{status: resp.StatusCode, endpoint: used}
	if err := s.Send(rh); err != nil {
		o.err = err
		return o, tried
	}
	chunk := func(b []byte, eos bool) error {
		return s.Send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
			ResponseBody: &extprocv3.HttpBody{Body: b, EndOfStream: eos}}})
	}
	buf := make([]byte, 16<<10)
	var upErr error
	for began := false; ; {
		n, err := resp.Body.Read(buf)
		if n > 0 && !began && e.streaming != nil {
			began = true
			e.streaming(used, 1)
			defer e.streaming(used, -1)
		}
		if n > 0 {
			if err := chunk(append([]byte(nil), buf[:n]...), false); err != nil {
				upErr = err
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				upErr = err
			}
			break
		}
	}
	if upErr == nil {
		if err := chunk(nil, true); err == nil {
			_ = s.CloseSend()
		}
	}
	// What the router passed back is what the client gets.
	var down []byte
	for {
		r, err := next()
		if err != nil {
			if !errors.Is(err, io.EOF) && upErr == nil {
				upErr = err
			}
			break
		}
		down = append(down, r.GetResponseBody().GetResponse().GetBodyMutation().GetStreamedResponse().GetBody()...)
		if upErr != nil && len(in) == 0 {
			break // Envoy resets the stream once the upstream has failed
		}
	}
	o.readSSE(bytes.NewReader(down))
	o.err = upErr
	return o, tried
}

// dialExtProc connects to the router's ext_proc at addr for the rest of the test.
func dialExtProc(t *testing.T, addr string) *extproctest.Client {
	t.Helper()
	c, err := extproctest.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFaultEngineKillExtProc SIGKILLs an engine under streaming load through `kvgate router`
// driven over ext_proc the way Envoy drives it: the cut streams are reset (their clients see
// the reset), requests picked for the dead engine go to a fallback, and the router counts
// every cut stream as aborted and holds no load afterwards.
func TestFaultEngineKillExtProc(t *testing.T) {
	sims := startSims(t, 3)
	rt := startRouter(t, sims, nil)
	c := dialExtProc(t, rt.grpc)
	victim := sims[0]
	f := &figures{}
	var mu sync.Mutex
	retried := 0
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var onVictim atomic.Int32 // streams whose body the victim has begun to send
	streaming := func(addr string, d int) {
		if addr == victim.addr {
			onVictim.Add(int32(d))
		}
	}
	load := startStreamLoad(ctx, f, 6, 30*time.Second, func(ctx context.Context, i int) seen {
		o, n := envoyCall{c: c, prompt: faultPrompt(i), tokens: 100, streaming: streaming}.do(ctx)
		mu.Lock()
		retried += n
		mu.Unlock()
		return o
	})
	// Kill it while it is streaming to a client: a stream still waiting for its headers is
	// retried on a fallback (Envoy's reset retry), one past them can only be cut.
	waitUntil(t, "a stream receiving the victim's body", func() bool { return onVictim.Load() >= 1 })
	if err := victim.p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.p.done
	sent, _, _, _ := f.snapshot()
	load.waitSent(t, sent+24)
	load.stop()
	f.retried = float64(retried)
	f.load = waitNoLoad(t, rt.base)
	f.crashes = crashes(t, survivor{"router", rt.p, rt.base + "/health"},
		survivor{"engine 1", sims[1].p, "http://" + sims[1].addr + "/health"},
		survivor{"engine 2", sims[2].p, "http://" + sims[2].addr + "/health"})
	aborted := metric(t, rt.base, extproc.MetricStreams, `outcome="aborted"`)
	f.log(t, "engine SIGKILL, ext_proc")
	t.Logf("router: %v ext_proc streams aborted", aborted)

	if f.cut == 0 {
		t.Errorf("no stream was cut although the victim had streams in flight")
	}
	if n := f.cutHow["silent"]; n > 0 {
		t.Errorf("%d of %d cut streams ended like complete ones", n, f.cut)
	}
	if f.failed > 0 {
		t.Errorf("%d requests failed without a stream although two engines were up: %q", f.failed, f.errs)
	}
	if aborted < float64(f.cut) {
		t.Errorf("the router counts %v aborted streams for %d cut", aborted, f.cut)
	}
	if f.load != 0 {
		t.Errorf("the router counts load %v after every stream ended", f.load)
	}
}

// TestFaultExtProcHostile sends `kvgate router` the ext_proc abuse of issue 19 beside real
// traffic: streams whose response reports a spoofed served endpoint (203.0.113.1:1), and
// streams that take a pick and never answer. Real requests must all succeed, the spoofs are
// counted and ignored, the held picks stop counting as load after --response-timeout while
// their streams are still open, and nothing is left when they close.
func TestFaultExtProcHostile(t *testing.T) {
	sims := startSims(t, 2)
	rt := startRouter(t, sims, nil, "--response-timeout", "1s")
	c := dialExtProc(t, rt.grpc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Spoofed served reports, each beside a real request.
	spoofs, real := &figures{}, &figures{}
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			o, _ := envoyCall{c: c, prompt: faultPrompt(1000 + i), tokens: 8, served: "203.0.113.1:1"}.do(ctx)
			spoofs.add(o)
		})
		wg.Go(func() {
			o, _ := envoyCall{c: c, prompt: faultPrompt(2000 + i), tokens: 8}.do(ctx)
			real.add(o)
		})
	}
	wg.Wait()
	// Every spoofed report reached the router (its stream completed) and was set aside.
	unknown := metric(t, rt.base, router.MetricServedUnknown)
	real.load = waitNoLoad(t, rt.base)
	real.log(t, "spoofed served reports (real requests)")
	spoofs.log(t, "spoofed served reports (the spoofing streams)")
	if real.ok != 16 || spoofs.ok != 16 {
		t.Errorf("real requests: %d of 16 ok, spoofing streams: %d of 16 ok; first failures %q %q", real.ok, spoofs.ok, real.errs, spoofs.errs)
	}
	if unknown != 16 {
		t.Errorf("the router counted %v unknown served reports, want 16", unknown)
	}
	if h := metric(t, rt.base, router.MetricHealthy); h != 2 {
		t.Errorf("%v engines healthy after the spoofs, want 2", h)
	}

	// Streams that take a pick and never answer.
	held := &figures{}
	hctx, hcancel := context.WithCancel(ctx)
	var picks sync.WaitGroup
	const nHeld = 12
	for i := range nHeld {
		picks.Add(1)
		wg.Go(func() {
			o, _ := envoyCall{c: c, prompt: faultPrompt(3000 + i), tokens: 8, hold: true, picked: picks.Done}.do(hctx)
			held.add(o)
		})
	}
	picks.Wait()
	waitUntil(t, "the held picks to pass --response-timeout", func() bool {
		return metric(t, rt.base, extproc.MetricResponseTimeouts) >= nHeld
	})
	heldLoad := waitNoLoad(t, rt.base) // the streams are still open
	for i := range 12 {
		o, _ := envoyCall{c: c, prompt: faultPrompt(4000 + i), tokens: 8}.do(ctx)
		real.add(o)
	}
	hcancel()
	wg.Wait()
	real.load = waitNoLoad(t, rt.base)
	real.crashes = crashes(t, survivor{"router", rt.p, rt.base + "/health"},
		survivor{"engine 0", sims[0].p, "http://" + sims[0].addr + "/health"},
		survivor{"engine 1", sims[1].p, "http://" + sims[1].addr + "/health"})
	held.load = heldLoad
	held.log(t, "picks never answered (the held streams, load while open)")
	real.log(t, "spoofs and held picks (all real requests)")
	if heldLoad != 0 {
		t.Errorf("%d streams holding picks past --response-timeout still count load %v", nHeld, heldLoad)
	}
	if real.ok != real.sent {
		t.Errorf("%d of %d real requests failed beside the hostile streams: %q", real.sent-real.ok, real.sent, real.errs)
	}
	if real.load != 0 {
		t.Errorf("the router counts load %v after every stream closed", real.load)
	}
}
