package router_test

import (
	"testing"

	"github.com/kvgate/kvgate/router"
)

// TestPendingPrefixCredit: two requests sharing a prompt arrive before the first one's
// BlockStored events: the second follows the first (the prefix is being prefilled there),
// and without the in-flight credit it goes to the idle endpoint instead.
func TestPendingPrefixCredit(t *testing.T) {
	for _, tc := range []struct {
		name       string
		ttl        int // 0 default, -1 off
		wantSame   bool
		wantCached bool
	}{
		{"default credits the prefix just sent", 0, true, true},
		{"off: load decides", -1, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := newRouter(t, withEvents(endpoints(2)), func(c *router.Config) {
				if tc.ttl < 0 {
					c.PendingTTL = -1
				}
			})
			content := longText("pending", 200)
			first := route(t, r, "/v1/chat/completions", chatBody(content, false))
			defer first.Done(nil, nil)
			second := route(t, r, "/v1/chat/completions", chatBody(content, false))
			defer second.Done(nil, nil)
			if same := second.Endpoint.Name == first.Endpoint.Name; same != tc.wantSame {
				t.Fatalf("second on %s, first on %s; want same=%v", second.Endpoint.Name, first.Endpoint.Name, tc.wantSame)
			}
			if got := second.CachedBlocks > 0; got != tc.wantCached {
				t.Fatalf("second sees %d cached blocks; want cached=%v", second.CachedBlocks, tc.wantCached)
			}
			if first.CachedBlocks != 0 {
				t.Fatalf("first request credited %d blocks on an empty cluster", first.CachedBlocks)
			}
		})
	}
}

// TestPendingClearedWithEndpoint: a restart (AllBlocksCleared) drops the in-flight credit.
func TestPendingClearedWithEndpoint(t *testing.T) {
	r, _ := newRouter(t, withEvents(endpoints(2)), nil)
	content := longText("restart", 200)
	first := route(t, r, "/v1/chat/completions", chatBody(content, false))
	first.Done(nil, nil)
	r.ClearEndpoint(first.Endpoint.Name)
	second := route(t, r, "/v1/chat/completions", chatBody(content, false))
	defer second.Done(nil, nil)
	if second.CachedBlocks != 0 {
		t.Fatalf("after a clear the router still credits %d blocks", second.CachedBlocks)
	}
}

// withEvents names a KV-event source on every endpoint (the router is not Run, so nothing
// subscribes): the endpoints are in event mode, not approximate mode.
func withEvents(eps []router.Endpoint) []router.Endpoint {
	for i := range eps {
		eps[i].KVEvents = "tcp://127.0.0.1:1"
	}
	return eps
}
