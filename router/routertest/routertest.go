// Package routertest holds test helpers for the router's front doors (gateway, extproc): the
// load a Router holds, and a wait until a front door has released every request.
package routertest

import (
	"testing"
	"time"

	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/router"
)

// Load sums the in-flight requests, prefill tokens and decode blocks r holds over all
// endpoints: 0 once every Decision has been released.
func Load(r *router.Router) float64 {
	var sum int64
	for _, l := range r.Load() {
		sum += l.Requests + l.PrefillTokens + l.DecodeBlocks
	}
	return float64(sum)
}

// WaitReleased waits up to 5s until open() (the front door's own count of open requests or
// streams, named what in failures) is 0 and r holds no load, and fails t otherwise. A negative
// load fails at once: a decision was released twice.
func WaitReleased(t testing.TB, r *router.Router, what string, open func() float64) {
	t.Helper()
	var n, load float64
	if !polltest.Wait(5*time.Second, func() bool {
		n, load = open(), Load(r)
		if load < 0 {
			t.Fatalf("router load went negative (%v): a decision was released twice", load)
		}
		return n == 0 && load == 0
	}) {
		t.Fatalf("not released: %v %s, router load %v", n, what, load)
	}
}
