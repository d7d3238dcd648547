package router_test

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// oneSlot builds a router over one endpoint that is saturated at one in-flight request.
func oneSlot(t *testing.T, edit func(*router.Config)) (*router.Router, *prometheus.Registry) {
	t.Helper()
	return newRouter(t, endpoints(1), func(c *router.Config) {
		c.MaxInflight = 1
		if edit != nil {
			edit(c)
		}
	})
}

func classed(prio, fairness string) http.Header {
	h := http.Header{}
	if prio != "" {
		h.Set(router.HeaderPriority, prio)
	}
	if fairness != "" {
		h.Set(router.HeaderFairnessID, fairness)
	}
	return h
}

type result struct {
	d   *router.Decision
	err error
}

// routeAsync routes in a goroutine; the result arrives on the channel.
func routeAsync(ctx context.Context, r *router.Router, body []byte, h http.Header) chan result {
	ch := make(chan result, 1)
	go func() {
		d, err := r.Route(ctx, router.Request{Path: "/v1/chat/completions", Body: body, Headers: h})
		ch <- result{d, err}
	}()
	return ch
}

func rejectedAs(t *testing.T, err error, status int, reason string) *openai.Error {
	t.Helper()
	var e *openai.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not an *openai.Error", err)
	}
	if e.Status != status || e.Header.Get(router.HeaderRejectedReason) != reason {
		t.Fatalf("got %d %q (%s), want %d %q", e.Status, e.Header.Get(router.HeaderRejectedReason), e.Message, status, reason)
	}
	return e
}

func queued(reg *prometheus.Registry, labels ...string) float64 {
	return metricstest.Value(reg, router.MetricQueued, labels...)
}

func get(t *testing.T, ch chan result) result {
	t.Helper()
	select {
	case res := <-ch:
		return res
	case <-time.After(10 * time.Second):
		t.Fatal("no answer within 10s")
		return result{}
	}
}

// TestQueueWaitsForRoom: with the only endpoint saturated, a request waits in the queue
// (before, it went to the saturated endpoint at once) and is dispatched when the holder ends.
func TestQueueWaitsForRoom(t *testing.T) {
	r, reg := oneSlot(t, nil)
	hold := route(t, r, "/v1/chat/completions", chatBody("first", false))
	ch := routeAsync(context.Background(), r, chatBody("second", false), nil)
	eventually(t, "the second request queued", func() bool { return queued(reg) == 1 })
	select {
	case res := <-ch:
		t.Fatalf("routed while the endpoint was saturated: %+v", res)
	default:
	}
	if n := loadOf(r, "e0").Requests; n != 1 {
		t.Fatalf("in flight on e0 while queued: %d, want 1", n)
	}
	hold.Done(nil, nil)
	res := get(t, ch)
	if res.err != nil {
		t.Fatal(res.err)
	}
	defer res.d.Done(nil, nil)
	if queued(reg) != 0 || metricstest.Value(reg, router.MetricQueueDispatch) != 1 {
		t.Fatalf("queued %v dispatched %v, want 0 and 1", queued(reg), metricstest.Value(reg, router.MetricQueueDispatch))
	}
	if metricstest.Value(reg, router.MetricQueueWait) != 1 {
		t.Fatal("no wait time recorded")
	}
}

// TestQueueOffPicksSaturated: QueueSize < 0 keeps the old behaviour.
func TestQueueOffPicksSaturated(t *testing.T) {
	r, _ := oneSlot(t, func(c *router.Config) { c.QueueSize = -1 })
	a := route(t, r, "/v1/chat/completions", chatBody("first", false))
	b := route(t, r, "/v1/chat/completions", chatBody("second", false))
	a.Done(nil, nil)
	b.Done(nil, nil)
}

// TestQueuePriority: the higher band is dispatched first although it arrived last.
func TestQueuePriority(t *testing.T) {
	r, reg := oneSlot(t, nil)
	hold := route(t, r, "/v1/chat/completions", chatBody("first", false))
	low := routeAsync(context.Background(), r, chatBody("low", false), classed("0", ""))
	eventually(t, "low queued", func() bool { return queued(reg, "band", "0") == 1 })
	high := routeAsync(context.Background(), r, chatBody("high", false), classed("5", ""))
	eventually(t, "high queued", func() bool { return queued(reg, "band", "5") == 1 })
	hold.Done(nil, nil)
	h := get(t, high)
	if h.err != nil {
		t.Fatal(h.err)
	}
	if queued(reg, "band", "0") != 1 {
		t.Fatal("the low band was dispatched with or before the high one")
	}
	h.d.Done(nil, nil)
	l := get(t, low)
	if l.err != nil {
		t.Fatal(l.err)
	}
	l.d.Done(nil, nil)
}

// TestQueueRejections: sheddable under saturation, a full band, a TTL, no endpoints, and a
// malformed priority, each with its status and reason.
func TestQueueRejections(t *testing.T) {
	r, reg := oneSlot(t, func(c *router.Config) { c.QueueSize = 1; c.QueueTTL = 300 * time.Millisecond })
	hold := route(t, r, "/v1/chat/completions", chatBody("first", false))
	defer hold.Done(nil, nil)

	_, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody("shed", false), Headers: classed("-1", "")})
	e := rejectedAs(t, err, http.StatusTooManyRequests, router.RejectedSheddable)
	if e.Type != openai.TypeRateLimit {
		t.Fatalf("type %q", e.Type)
	}

	waiting := routeAsync(context.Background(), r, chatBody("waits", false), nil)
	eventually(t, "one queued", func() bool { return queued(reg) == 1 })
	_, err = r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody("full", false)})
	rejectedAs(t, err, http.StatusTooManyRequests, router.RejectedQueueFull)

	res := get(t, waiting)
	e = rejectedAs(t, res.err, http.StatusTooManyRequests, router.RejectedTTL)
	if e.Header.Get(router.HeaderRetryAfter) != "1" {
		t.Fatalf("Retry-After %q, want 1", e.Header.Get(router.HeaderRetryAfter))
	}
	for _, reason := range []string{router.RejectedSheddable, router.RejectedQueueFull, router.RejectedTTL} {
		if metricstest.Value(reg, router.MetricQueueRejected, "reason", reason) != 1 {
			t.Errorf("rejections %s not counted once", reason)
		}
	}

	_, err = r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody("x", false), Headers: classed("high", "")})
	if e := openai.AsError(err); e.Status != http.StatusBadRequest {
		t.Fatalf("malformed priority: %v", err)
	}

	r.SetEndpoints(nil) // the model was served recently: 503, retry
	_, err = r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: chatBody("gone", false)})
	rejectedAs(t, err, http.StatusServiceUnavailable, router.RejectedNoEndpoints)
}

// TestQueueClientLeaves: a waiting request whose context ends leaves the queue at once and
// holds no load; the room it would have taken goes to the next.
func TestQueueClientLeaves(t *testing.T) {
	r, reg := oneSlot(t, nil)
	hold := route(t, r, "/v1/chat/completions", chatBody("first", false))
	ctx, cancel := context.WithCancel(context.Background())
	gone := routeAsync(ctx, r, chatBody("leaves", false), nil)
	eventually(t, "queued", func() bool { return queued(reg) == 1 })
	cancel()
	if res := get(t, gone); !errors.Is(res.err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", res.err)
	}
	if queued(reg) != 0 || metricstest.Value(reg, router.MetricQueueRejected, "reason", "left") != 1 {
		t.Fatal("the leaving request is still counted as queued")
	}
	hold.Done(nil, nil)
	if l := loadOf(r, "e0"); l.Requests != 0 || l.DecodeBlocks != 0 {
		t.Fatalf("phantom load after the client left: %+v", l)
	}
	next := route(t, r, "/v1/chat/completions", chatBody("next", false))
	next.Done(nil, nil)
}

// TestQueueCancelRacesDispatch: a ticket cancelled after it was dispatched releases its
// decision, so a lost race leaves no load behind.
func TestQueueCancelRacesDispatch(t *testing.T) {
	r, _ := oneSlot(t, nil)
	hold, _, err := r.Submit(router.Prompt{Model: model, Tokens: make([]uint32, 64)}, router.Class{})
	if err != nil || hold == nil {
		t.Fatal(err)
	}
	_, tk, err := r.Submit(router.Prompt{Model: model, Tokens: make([]uint32, 64)}, router.Class{})
	if err != nil || tk == nil {
		t.Fatalf("not queued: %v", err)
	}
	hold.Done(nil, nil) // dispatches tk
	<-tk.Ready()
	if tk.Cancel() {
		t.Fatal("Cancel reports a dispatched ticket as waiting")
	}
	if l := loadOf(r, "e0"); l.Requests != 0 {
		t.Fatalf("load left by a cancelled dispatch: %+v", l)
	}
}

// submitFlows queues n requests of tokens prompt tokens for each fairness ID.
func submitFlows(t *testing.T, r *router.Router, flows map[string][2]int) map[*router.Ticket]string {
	t.Helper()
	out := map[*router.Ticket]string{}
	for id, f := range flows {
		for range f[0] {
			// Distinct tokens: nothing is cached, every prompt token is charged.
			toks := make([]uint32, f[1])
			for i := range toks {
				toks[i] = uint32(len(out)*100003 + i)
			}
			_, tk, err := r.Submit(router.Prompt{Model: model, Tokens: toks}, router.Class{FairnessID: id})
			if err != nil || tk == nil {
				t.Fatalf("not queued: %v", err)
			}
			out[tk] = id
		}
	}
	return out
}

// drain dispatches one queued request at a time (one slot), n times, and counts per flow
// the requests and prompt tokens served.
func drain(t *testing.T, r *router.Router, first *router.Decision, tickets map[*router.Ticket]string, n int) (reqs, toks map[string]int) {
	t.Helper()
	reqs, toks = map[string]int{}, map[string]int{}
	cur := first
	for range n {
		cur.Done(nil, nil)
		cur = nil
		for tk, id := range tickets {
			select {
			case <-tk.Ready():
				d, err := tk.Result()
				if err != nil {
					t.Fatal(err)
				}
				reqs[id]++
				toks[id] += d.PromptTokens
				cur = d
				delete(tickets, tk)
			default:
			}
		}
		if cur == nil {
			t.Fatal("nothing was dispatched")
		}
	}
	cur.Done(nil, nil)
	for tk := range tickets {
		tk.Cancel()
	}
	return reqs, toks
}

// TestQueueFairness: a tenant offering ten times the load of another gets half the service
// while both are backlogged (deficit round robin), not ten elevenths (first come, first served).
func TestQueueFairness(t *testing.T) {
	r, _ := oneSlot(t, nil)
	hold, _, _ := r.Submit(router.Prompt{Model: model, Tokens: make([]uint32, 64)}, router.Class{})
	tickets := submitFlows(t, r, map[string][2]int{"big": {100, 512}, "small": {10, 512}})
	reqs, _ := drain(t, r, hold, tickets, 20)
	if reqs["small"] < 8 || reqs["big"] < 8 {
		t.Fatalf("served %v of 20; want each tenant about half", reqs)
	}
}

// TestQueueFairnessChargesTokens: a tenant with prompts eight times longer gets about the
// same prompt tokens, so about an eighth of the requests: DRR charges uncached tokens.
func TestQueueFairnessChargesTokens(t *testing.T) {
	r, _ := oneSlot(t, nil)
	hold, _, _ := r.Submit(router.Prompt{Model: model, Tokens: make([]uint32, 64)}, router.Class{})
	tickets := submitFlows(t, r, map[string][2]int{"long": {40, 4096}, "short": {200, 512}})
	reqs, toks := drain(t, r, hold, tickets, 90)
	ratio := float64(toks["long"]) / float64(toks["short"])
	if ratio < 0.6 || ratio > 1.6 || reqs["short"] < 5*reqs["long"] {
		t.Fatalf("requests %v tokens %v: want equal tokens, not equal requests", reqs, toks)
	}
}

// TestQueueFullDropsLongestFlow: a full band makes room for a newcomer of a short flow by
// refusing the newest request of the longest flow (longest-queue drop); a newcomer of the
// longest flow itself is refused.
func TestQueueFullDropsLongestFlow(t *testing.T) {
	r, _ := oneSlot(t, func(c *router.Config) { c.QueueSize = 2 })
	hold, _, _ := r.Submit(router.Prompt{Model: model, Tokens: make([]uint32, 64)}, router.Class{})
	defer hold.Done(nil, nil)
	tickets := submitFlows(t, r, map[string][2]int{"big": {2, 64}})
	_, _, err := r.Submit(router.Prompt{Model: model, Tokens: make([]uint32, 64)}, router.Class{FairnessID: "big"})
	rejectedAs(t, err, http.StatusTooManyRequests, router.RejectedQueueFull)
	_, small, err := r.Submit(router.Prompt{Model: model, Tokens: make([]uint32, 64)}, router.Class{FairnessID: "small"})
	if err != nil || small == nil {
		t.Fatalf("the small tenant was refused: %v", err)
	}
	refused := 0
	for tk := range tickets {
		select {
		case <-tk.Ready():
			_, err := tk.Result()
			rejectedAs(t, err, http.StatusTooManyRequests, router.RejectedQueueFull)
			refused++
		default:
			tk.Cancel()
		}
	}
	small.Cancel()
	if refused != 1 {
		t.Fatalf("%d of the big tenant's queued requests refused, want 1", refused)
	}
}
