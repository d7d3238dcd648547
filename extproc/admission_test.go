package extproc_test

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/extproc"
	"github.com/kvgate/kvgate/extproc/extproctest"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// oneSlot is an ext_proc server over one endpoint that is saturated at one request.
func oneSlot(t *testing.T, edit func(*router.Config)) *fixture {
	return startRouter(t, extproc.Config{}, func(c *router.Config) {
		c.Endpoints = endpoints[:1]
		c.Models = loadOnly(t)
		c.MaxInflight = 1
		if edit != nil {
			edit(c)
		}
	})
}

type doResult struct {
	res *extproctest.Result
	err error
}

// holdStream runs one request whose upstream answers only when release is closed (at once
// when release is nil).
func holdStream(t *testing.T, f *fixture, ctx context.Context, h http.Header, release chan struct{}) chan doResult {
	ch := make(chan doResult, 1)
	go func() {
		res, err := f.client.Do(ctx, fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions",
			Body: chatBody(t, "hold", false), Header: h}, func(*extproctest.Result) extproctest.Upstream {
			if release != nil {
				select {
				case <-release:
				case <-ctx.Done():
				}
			}
			return extproctest.Upstream{Chunks: [][]byte{[]byte(`{}`)}}
		})
		ch <- doResult{res, err}
	}()
	return ch
}

func immediateHeader(im *extprocv3.ImmediateResponse, key string) string {
	for _, o := range im.GetHeaders().GetSetHeaders() {
		if o.GetHeader().GetKey() == key {
			return string(o.GetHeader().GetRawValue())
		}
	}
	return ""
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, 20*time.Second, what, cond)
}

// TestAdmissionStreamWaits: with the endpoint saturated an ext_proc stream waits for the
// pick (it is not answered, nor sent to the saturated engine) and gets it when room frees.
func TestAdmissionStreamWaits(t *testing.T) {
	f := oneSlot(t, nil)
	release := make(chan struct{})
	first := holdStream(t, f, context.Background(), nil, release)
	waitFor(t, "the first request holds the endpoint", func() bool { return metricstest.Value(f.reg, router.MetricInflight) == 1 })
	second := holdStream(t, f, context.Background(), nil, nil)
	waitFor(t, "the second waits in the queue", func() bool { return metricstest.Value(f.reg, router.MetricQueued) == 1 })
	close(release)
	for _, ch := range []chan doResult{first, second} {
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.res.Immediate != nil || r.res.Destination() == "" {
			t.Fatalf("not picked: %+v", r.res)
		}
	}
	waitReleased(t, f)
}

// TestAdmissionRejections: the queue's refusals reach Envoy as ImmediateResponses with the
// status, the reason header, Retry-After and an OpenAI error body.
func TestAdmissionRejections(t *testing.T) {
	f := oneSlot(t, func(c *router.Config) { c.QueueTTL = 200 * time.Millisecond })
	release := make(chan struct{})
	first := holdStream(t, f, context.Background(), nil, release)
	waitFor(t, "the endpoint is held", func() bool { return metricstest.Value(f.reg, router.MetricInflight) == 1 })
	for _, c := range []struct {
		prio   string
		status int
		reason string
		retry  string
	}{
		{"-1", http.StatusTooManyRequests, router.RejectedSheddable, "1"},
		{"3", http.StatusTooManyRequests, router.RejectedTTL, "1"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		res, err := f.client.Do(ctx, fullDuplex, extproctest.Request{Method: "POST", Path: "/v1/chat/completions",
			Body: chatBody(t, "refused", false), Header: http.Header{router.HeaderPriority: {c.prio}}}, nil)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		im := res.Immediate
		if im == nil {
			t.Fatalf("priority %s: not refused", c.prio)
		}
		if int(im.GetStatus().GetCode()) != c.status || immediateHeader(im, "x-kvgate-rejected-reason") != c.reason ||
			immediateHeader(im, "retry-after") != c.retry {
			t.Fatalf("priority %s: %d reason %q retry-after %q", c.prio, im.GetStatus().GetCode(),
				immediateHeader(im, "x-kvgate-rejected-reason"), immediateHeader(im, "retry-after"))
		}
		var eb struct {
			Error struct{ Message, Type string } `json:"error"`
		}
		if json.Unmarshal(im.GetBody(), &eb) != nil || eb.Error.Type != "rate_limit_error" || eb.Error.Message == "" {
			t.Fatalf("body %s", im.GetBody())
		}
	}
	close(release)
	<-first
	waitReleased(t, f)
}

// TestAdmissionStreamLeaves: an ext_proc stream reset while queued (the client went away)
// leaves the queue at once: no goroutine stays behind and it never holds load.
func TestAdmissionStreamLeaves(t *testing.T) {
	f := oneSlot(t, nil)
	release := make(chan struct{})
	first := holdStream(t, f, context.Background(), nil, release)
	waitFor(t, "the endpoint is held", func() bool { return metricstest.Value(f.reg, router.MetricInflight) == 1 })
	opts := goleak.IgnoreCurrent() // after the connection is up: gRPC dials lazily
	ctx, cancel := context.WithCancel(context.Background())
	gone := holdStream(t, f, ctx, nil, nil)
	waitFor(t, "queued", func() bool { return metricstest.Value(f.reg, router.MetricQueued) == 1 })
	cancel()
	<-gone
	waitFor(t, "the queue is empty", func() bool { return metricstest.Value(f.reg, router.MetricQueued) == 0 })
	if v := metricstest.Value(f.reg, router.MetricQueueRejected, "reason", "left"); v != 1 {
		t.Fatalf("left %v, want 1", v)
	}
	close(release)
	<-first
	waitReleased(t, f)
	if v := metricstest.Value(f.reg, router.MetricQueueDispatch); v != 0 {
		t.Fatalf("the departed request was dispatched (%v)", v)
	}
	goleak.VerifyNone(t, opts)
}

// loadOnly is a model map whose tokenizer cannot load: requests are routed by load alone,
// which is all these tests need, without loading the real tokenizer (slow under -race).
func loadOnly(t *testing.T) *tokenizer.ModelMap {
	m, err := tokenizer.NewModelMap([]tokenizer.Model{{Name: model, Tokenizer: t.TempDir() + "/none.json", BlockSize: 16}})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
