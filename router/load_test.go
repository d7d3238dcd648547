package router_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

func TestLoadLifecycle(t *testing.T) {
	r, reg := newRouter(t, endpoints(1), nil)
	content := longText("load", 200)
	tokens := chatTokens(t, content)
	d := route(t, r, "/v1/chat/completions", chatBody(content, true))
	blocks := int64((len(tokens) + 15) / 16)
	l := loadOf(r, "e0")
	if l.PrefillTokens != int64(len(tokens)) || l.DecodeBlocks != blocks || l.Requests != 1 {
		t.Fatalf("after Route: %+v, want prefill %d decode %d requests 1", l, len(tokens), blocks)
	}
	if v := metricstest.Value(reg, router.MetricPrefillTokens, "endpoint", "e0"); v != float64(len(tokens)) {
		t.Errorf("%s = %v", router.MetricPrefillTokens, v)
	}
	d.FirstToken()
	d.FirstToken()
	if l := loadOf(r, "e0"); l.PrefillTokens != 0 || l.DecodeBlocks != blocks || l.Requests != 1 {
		t.Fatalf("after FirstToken: %+v", l)
	}
	d.Done(&openai.Usage{PromptTokens: len(tokens), PromptTokensDetails: &openai.PromptTokensDetails{CachedTokens: 32}}, nil)
	d.Done(nil, nil)
	d.FirstToken()
	if l := loadOf(r, "e0"); l.PrefillTokens != 0 || l.DecodeBlocks != 0 || l.Requests != 0 {
		t.Fatalf("after Done: %+v", l)
	}
	if v := metricstest.Value(reg, router.MetricReportedCached); v != 32 {
		t.Errorf("%s = %v, want 32", router.MetricReportedCached, v)
	}
	// Done without FirstToken releases the prefill too (the stream broke early).
	d = route(t, r, "/v1/chat/completions", chatBody(content, true))
	d.Done(nil, errors.New("client went away"))
	if l := loadOf(r, "e0"); l.PrefillTokens != 0 || l.DecodeBlocks != 0 || l.Requests != 0 {
		t.Fatalf("after Done without FirstToken: %+v", l)
	}
}

// TestLoadNoLeakConcurrent races FirstToken, Served and Done from many goroutines over many
// decisions; every counter must come back to exactly zero.
func TestLoadNoLeakConcurrent(t *testing.T) {
	eps := endpoints(3)
	r, _ := newRouter(t, eps, func(c *router.Config) {
		c.Policy = router.PolicyLeastLoad
		c.UnhealthyFor = time.Nanosecond // fallbacks would otherwise take endpoints out
	})
	bodies := [][]byte{chatBody(longText("a", 50), false), chatBody(longText("b", 120), true), chatBody("hi", false)}
	var wg sync.WaitGroup
	var refused atomic.Int32
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				d, err := r.Route(context.Background(), router.Request{Path: "/v1/chat/completions", Body: bodies[(g+i)%len(bodies)]})
				if oe, ok := errors.AsType[*openai.Error](err); ok && oe.Code == openai.CodeNoCapacity {
					// Fallback reports of other goroutines took every endpoint out for 1ns after
					// this Route read its clock (a CI run saw it once): a refusal, no load taken.
					refused.Add(1)
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				var inner sync.WaitGroup
				inner.Go(d.FirstToken)
				inner.Go(func() { d.Done(nil, nil) })
				inner.Go(func() { d.Done(nil, nil) })
				if i%3 == 0 {
					inner.Go(func() { d.Served(eps[(g+i)%3].Address) })
				}
				inner.Go(d.FirstToken)
				inner.Wait()
			}
		})
	}
	wg.Wait()
	if n := refused.Load(); n > 32 {
		t.Errorf("%d of 320 routes refused for want of a healthy endpoint, want almost none", n)
	}
	for _, l := range r.Load() {
		if l.PrefillTokens != 0 || l.DecodeBlocks != 0 || l.Requests != 0 {
			t.Errorf("leak on %s: %+v", l.Name, l)
		}
	}
}

func TestServedMovesLoad(t *testing.T) {
	eps := endpoints(3)
	r, _ := newRouter(t, eps, func(c *router.Config) { c.Policy = router.PolicyRoundRobin })
	d := route(t, r, "/v1/chat/completions", chatBody(longText("s", 60), false))
	if len(d.Fallbacks) != 2 {
		t.Fatalf("fallbacks %v", d.Fallbacks)
	}
	target, fb := d.Endpoint, d.Fallbacks[1]
	before := loadOf(r, target.Name)
	d.Served(fb.Address) // Envoy tried the target and the first fallback, then this one
	if l := loadOf(r, target.Name); l.Requests != 0 || l.DecodeBlocks != 0 {
		t.Errorf("load left on the target: %+v", l)
	}
	if l := loadOf(r, fb.Name); l.Requests != 1 || l.DecodeBlocks != before.DecodeBlocks || l.PrefillTokens != before.PrefillTokens {
		t.Errorf("load not moved to the served endpoint: %+v, was %+v", l, before)
	}
	// The endpoints tried before the one that served are out of rotation.
	if loadOf(r, target.Name).Healthy || loadOf(r, d.Fallbacks[0].Name).Healthy || !loadOf(r, fb.Name).Healthy {
		t.Errorf("health after fallback: %+v", r.Load())
	}
	d.Done(nil, nil)
	if l := loadOf(r, fb.Name); l.Requests != 0 || l.DecodeBlocks != 0 || l.PrefillTokens != 0 {
		t.Errorf("after Done: %+v", l)
	}
	// With two endpoints out, every pick goes to the third.
	for range 3 {
		d := route(t, r, "/v1/chat/completions", chatBody("x", false))
		if d.Endpoint.Name != fb.Name {
			t.Errorf("picked unhealthy %s", d.Endpoint.Name)
		}
		d.Done(nil, nil)
	}
}

// TestServedSpoofCountedAfterDone: a served report naming no candidate is counted whether it
// arrives before or after the load was released (a response slower than --response-timeout),
// and a late report naming a real fallback changes nothing.
func TestServedSpoofCountedAfterDone(t *testing.T) {
	eps := endpoints(3)
	r, reg := newRouter(t, eps, func(c *router.Config) { c.Policy = router.PolicyRoundRobin })
	for i, release := range []bool{false, true} {
		d := route(t, r, "/v1/chat/completions", chatBody(longText("spoof", 60), false))
		if release {
			d.Done(nil, nil)
		}
		d.Served("203.0.113.1:1")
		d.Served("203.0.113.1:1") // only a decision's first report counts
		d.Done(nil, nil)
		if got := metricstest.Value(reg, router.MetricServedUnknown); got != float64(i+1) {
			t.Fatalf("released before the report %v: %s = %v, want %d", release, router.MetricServedUnknown, got, i+1)
		}
	}
	d := route(t, r, "/v1/chat/completions", chatBody(longText("late", 60), false))
	d.Done(nil, nil)
	d.Served(d.Fallbacks[1].Address)
	for _, ep := range eps {
		if l := loadOf(r, ep.Name); !l.Healthy || l.Requests != 0 {
			t.Errorf("a late report moved load or took an endpoint out: %+v", l)
		}
	}
	if got := metricstest.Value(reg, router.MetricServedUnknown); got != 2 {
		t.Errorf("a late report of a real fallback counted as unknown: %v", got)
	}
}

func TestDoneConnectionErrorMarksDown(t *testing.T) {
	r, _ := newRouter(t, endpoints(2), nil)
	d := route(t, r, "/v1/chat/completions", chatBody("x", false))
	d.Done(nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")})
	if loadOf(r, d.Endpoint.Name).Healthy {
		t.Error("endpoint still healthy after a dial failure")
	}
	d2 := route(t, r, "/v1/chat/completions", chatBody("x", false))
	defer d2.Done(nil, nil)
	if d2.Endpoint.Name == d.Endpoint.Name {
		t.Error("picked the endpoint that just failed")
	}
}
