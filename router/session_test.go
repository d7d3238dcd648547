package router_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
)

func sessionReq(id, content string) router.Request {
	return router.Request{Path: "/v1/chat/completions", Body: chatBody(content, false),
		Headers: http.Header{"X-Kvgate-Session-Id": {id}}}
}

// turn routes one turn of session id and returns the endpoint's name.
func turn(t *testing.T, r *router.Router, id, content string) string {
	t.Helper()
	d, err := r.Route(context.Background(), sessionReq(id, content))
	if err != nil {
		t.Fatal(err)
	}
	d.Done(nil, nil)
	return d.Endpoint.Name
}

// TestSessionReplicasAgree: two routers that never talk, and a third started later (a
// restart), put every session on the same endpoint, although their loads differ; without the
// header the sessions spread by load.
func TestSessionReplicasAgree(t *testing.T) {
	eps := endpoints(8)
	a, _ := newRouter(t, eps, nil)
	b, _ := newRouter(t, eps, func(c *router.Config) { c.Seed = 7 })
	// b carries load a does not see: least-load alone would pick elsewhere.
	var held []*router.Decision
	for i := range 6 {
		held = append(held, route(t, b, "/v1/chat/completions", chatBody(fmt.Sprint("busy ", i), false)))
	}
	defer func() {
		for _, d := range held {
			d.Done(nil, nil)
		}
	}()
	used := map[string]bool{}
	for i := range 40 {
		id := fmt.Sprint("session-", i)
		ea := turn(t, a, id, "turn one of "+id)
		eb := turn(t, b, id, "turn two of "+id)
		restarted, _ := newRouter(t, eps, func(c *router.Config) { c.Seed = uint64(100 + i) })
		er := turn(t, restarted, id, "turn three of "+id)
		if ea != eb || ea != er {
			t.Fatalf("%s: replica a %s, replica b %s, restarted %s", id, ea, eb, er)
		}
		if again := turn(t, a, id, "turn four of "+id); again != ea {
			t.Fatalf("%s moved from %s to %s on the same router", id, ea, again)
		}
		used[ea] = true
	}
	if len(used) < 5 {
		t.Fatalf("40 sessions used only %d of 8 endpoints: %v", len(used), used)
	}
}

// sessionHome finds the endpoint a session lives on (by asking a throwaway router).
func sessionHome(t *testing.T, eps []router.Endpoint, id string) string {
	t.Helper()
	r, _ := newRouter(t, eps, nil)
	return turn(t, r, id, "probe")
}

// TestSessionSoftSpills: under soft affinity a session whose endpoint is saturated goes
// elsewhere (counted as a spill) and comes back when it has room.
func TestSessionSoftSpills(t *testing.T) {
	eps := endpoints(3)
	home := sessionHome(t, eps, "s1")
	r, reg := newRouter(t, eps, func(c *router.Config) { c.MaxInflight = 1 })
	var hold *router.Decision
	for i := 0; hold == nil; i++ { // occupy the session's endpoint with another request
		d := route(t, r, "/v1/chat/completions", chatBody(fmt.Sprint("filler ", i), false))
		if d.Endpoint.Name == home {
			hold = d
		} else {
			defer d.Done(nil, nil)
		}
	}
	d, err := r.Route(context.Background(), sessionReq("s1", "turn"))
	if err != nil {
		t.Fatal(err)
	}
	if d.Endpoint.Name == home {
		t.Fatalf("picked the saturated %s", home)
	}
	d.Done(nil, nil)
	hold.Done(nil, nil)
	if got := turn(t, r, "s1", "next turn"); got != home {
		t.Fatalf("back on %s, want %s", got, home)
	}
	if v := metricstest.Value(reg, router.MetricSessionPicks, "outcome", router.SessionSpill); v != 1 {
		t.Fatalf("spills %v, want 1", v)
	}
}

// TestSessionHardWaits: under hard affinity a session whose endpoint is saturated waits for
// it in the queue although other endpoints have room.
func TestSessionHardWaits(t *testing.T) {
	eps := endpoints(3)
	home := sessionHome(t, eps, "s2")
	r, reg := newRouter(t, eps, func(c *router.Config) { c.MaxInflight = 1; c.SessionAffinity = router.SessionHard })
	hold, err := r.Pick(router.Prompt{Model: model, Tokens: make([]uint32, 32), Subset: []string{addressOf(eps, home)}})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *router.Decision, 1)
	go func() {
		d, err := r.Route(context.Background(), sessionReq("s2", "turn"))
		if err != nil {
			t.Error(err)
		}
		ch <- d
	}()
	eventually(t, "the session waits", func() bool { return metricstest.Value(reg, router.MetricQueued) == 1 })
	hold.Done(nil, nil)
	d := <-ch
	if d == nil {
		return
	}
	defer d.Done(nil, nil)
	if d.Endpoint.Name != home {
		t.Fatalf("hard session went to %s, want %s", d.Endpoint.Name, home)
	}
}

func addressOf(eps []router.Endpoint, name string) string {
	for _, e := range eps {
		if e.Name == name {
			return e.Address
		}
	}
	return ""
}
