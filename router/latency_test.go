package router_test

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// Per pool, the router measures streamed requests' TTFT (routing to the first token) and ITL
// (mean time between output tokens) and serves them as cumulative histograms in GET /v1/pools
// and as Prometheus histograms: what a planner reads for its latency correction.
// Non-streamed requests, whose first byte is the whole answer, and failed ones are not
// counted.
func TestPoolLatency(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Unix(1_000_000, 0).UnixNano())
	advance := func(d time.Duration) { clock.Add(int64(d)) }
	r, reg := newRouter(t, endpoints(2), func(c *router.Config) { c.Now = func() time.Time { return time.Unix(0, clock.Load()) } })

	// Two streamed requests: TTFT 2 s and 0.4 s, ITL 100 ms and 20 ms.
	for _, c := range []struct {
		ttft   time.Duration
		tokens int
		gen    time.Duration
	}{{2 * time.Second, 11, time.Second}, {400 * time.Millisecond, 6, 100 * time.Millisecond}} {
		d := route(t, r, "/v1/chat/completions", chatBody(longText("s"+c.ttft.String(), 50), true))
		advance(c.ttft)
		d.FirstToken()
		d.FirstToken() // idempotent
		advance(c.gen)
		d.Done(&openai.Usage{PromptTokens: d.PromptTokens, CompletionTokens: c.tokens}, nil)
	}
	// Not counted: a non-streamed request, a streamed one that failed after its first token.
	d := route(t, r, "/v1/chat/completions", chatBody(longText("whole", 50), false))
	advance(30 * time.Second)
	d.FirstToken()
	d.Done(&openai.Usage{CompletionTokens: 50}, nil)
	d = route(t, r, "/v1/chat/completions", chatBody(longText("cut", 50), true))
	advance(time.Second)
	d.FirstToken()
	advance(10 * time.Second)
	d.Done(&openai.Usage{CompletionTokens: 2}, errString("upstream reset"))

	srv := httptest.NewServer(r.PoolsHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + router.PoolsPath)
	if err != nil {
		t.Fatal(err)
	}
	var pr router.PoolsResponse
	err = json.NewDecoder(resp.Body).Decode(&pr)
	resp.Body.Close()
	if err != nil || len(pr.Pools) != 1 {
		t.Fatalf("GET pools: %v %+v", err, pr)
	}
	p := pr.Pools[0]
	if p.TTFT == nil || p.ITL == nil || p.TTFT.Count != 3 || p.ITL.Count != 2 {
		t.Fatalf("pool latency: TTFT %+v, ITL %+v; want 3 first tokens of streams and 2 ITLs of streams that ended well", p.TTFT, p.ITL)
	}
	if got := p.TTFT.Sum; math.Abs(got-3.4) > 1e-9 {
		t.Errorf("TTFT sum %v s, want 3.4", got)
	}
	if got := p.ITL.Quantile(0.9); got <= 0.075 || got > 0.1 {
		t.Errorf("ITL p90 %v s, want within the (75 ms, 100 ms] bucket", got)
	}
	if got := p.ITL.Quantile(0.4); got <= 0.015 || got > 0.02 {
		t.Errorf("ITL p40 %v s, want within the (15 ms, 20 ms] bucket", got)
	}

	h := histogram(t, reg, router.MetricPoolITL)
	if h.GetSampleCount() != 2 || math.Abs(h.GetSampleSum()-0.12) > 1e-9 {
		t.Errorf("%s: %d samples, sum %v; want 2, 0.12", router.MetricPoolITL, h.GetSampleCount(), h.GetSampleSum())
	}
	if h := histogram(t, reg, router.MetricPoolTTFT); h.GetSampleCount() != 3 {
		t.Errorf("%s: %d samples, want 3", router.MetricPoolTTFT, h.GetSampleCount())
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// An interval's distribution is the difference of two reads; reads that do not match (a
// router restart) are refused.
func TestHistogramSubAdd(t *testing.T) {
	bounds := []float64{1, 2, 4}
	a := &router.Histogram{Bounds: bounds, Counts: []uint64{1, 2, 0, 0}, Count: 3, Sum: 4}
	b := &router.Histogram{Bounds: bounds, Counts: []uint64{1, 5, 4, 1}, Count: 11, Sum: 30}
	d, ok := b.Sub(a)
	if !ok || d.Count != 8 || d.Sum != 26 || d.Counts[1] != 3 || d.Counts[2] != 4 {
		t.Fatalf("b - a = %+v, %v", d, ok)
	}
	if got := d.Quantile(0.5); got <= 2 || got > 4 {
		t.Errorf("median %v, want within (2, 4]", got)
	}
	if got := d.Quantile(1); got != 4 {
		t.Errorf("p100 %v, want the last bound for the overflow bucket", got)
	}
	if _, ok := a.Sub(b); ok {
		t.Error("a count that went down was subtracted")
	}
	if _, ok := b.Sub(&router.Histogram{Bounds: []float64{1, 3, 4}, Counts: make([]uint64, 4)}); ok {
		t.Error("histograms with other bounds were subtracted")
	}
	sum := *a
	if !sum.Add(b) || sum.Count != 14 || sum.Counts[1] != 7 || a.Counts[1] != 2 {
		t.Fatalf("a + b = %+v (a now %+v)", sum, a)
	}
	if (&router.Histogram{}).Quantile(0.9) != 0 {
		t.Error("empty histogram has a quantile")
	}
}

func histogram(t *testing.T, g prometheus.Gatherer, name string) *dto.Histogram {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			if !strings.HasPrefix(mf.GetHelp(), "Streamed") {
				t.Errorf("%s help %q", name, mf.GetHelp())
			}
			return mf.GetMetric()[0].GetHistogram()
		}
	}
	t.Fatalf("no single %s series", name)
	return nil
}
