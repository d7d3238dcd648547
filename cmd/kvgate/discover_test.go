package main

import (
	"context"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/relay"
	"github.com/kvgate/kvgate/router"
)

func TestRouterEndpoints(t *testing.T) {
	cases := []struct {
		name string
		in   []discovery.Endpoint
		want []router.Endpoint
	}{
		{"every field", []discovery.Endpoint{{
			Name: "n1-sim-0", Address: "10.0.0.5:8000", Models: []string{"a", "b"}, Role: discovery.RolePrefill,
			BlockSize: 32, KVEvents: "tcp://10.0.0.5:5557", KVReplay: "tcp://10.0.0.5:5558", Workerd: "10.0.0.5:7070",
			Healthy: true, Meta: map[string]string{"engine": "sim"},
		}}, []router.Endpoint{{
			Name: "n1-sim-0", Address: "10.0.0.5:8000", Models: []string{"a", "b"}, Role: router.RolePrefill,
			BlockSize: 32, KVEvents: "tcp://10.0.0.5:5557", KVReplay: "tcp://10.0.0.5:5558", Workerd: "10.0.0.5:7070",
		}}},
		{"unhealthy dropped, empty role aggregated", []discovery.Endpoint{
			{Name: "down", Address: "10.0.0.5:8000", Healthy: false},
			{Name: "up", Address: "10.0.0.6:8000", Healthy: true},
		}, []router.Endpoint{{Name: "up", Address: "10.0.0.6:8000", Role: router.RoleAggregated}}},
		{"none", nil, []router.Endpoint{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := routerEndpoints(c.in); !reflect.DeepEqual(got, c.want) {
				t.Errorf("got %+v\nwant %+v", got, c.want)
			}
		})
	}
}

// TestFollowDiscovery checks every set a source sends reaches the router, after the static
// endpoints, and that endpoints leave the router when they leave the source.
func TestFollowDiscovery(t *testing.T) {
	rt, err := router.New(router.Config{ScrapeInterval: -1}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	static := []router.Endpoint{{Name: "static", Address: "127.0.0.1:1", Models: []string{"m"}}}
	src := discovery.NewStatic([]discovery.Endpoint{{Name: "d1", Address: "127.0.0.1:2", Models: []string{"m"}, Healthy: true}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- followDiscovery(ctx, src, static, rt, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	waitNames := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var got []string
			for _, e := range rt.Endpoints() {
				got = append(got, e.Name)
			}
			if reflect.DeepEqual(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("router endpoints %v, want %v", got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitNames("d1", "static")
	src.Set([]discovery.Endpoint{
		{Name: "d1", Address: "127.0.0.1:2", Models: []string{"m"}, Healthy: false},
		{Name: "d2", Address: "127.0.0.1:3", Models: []string{"m"}, Healthy: true},
	})
	waitNames("d2", "static")
	src.Set(nil)
	waitNames("static")
}

// TestRelaySource checks only endpoints that name a workerd get the relay client.
func TestRelaySource(t *testing.T) {
	hook := relaySource(slog.New(slog.DiscardHandler), nil)
	if s := hook(router.Endpoint{Name: "e", Address: "127.0.0.1:1", KVEvents: "tcp://127.0.0.1:2"}); s != nil {
		t.Errorf("endpoint without a workerd got %T", s)
	}
	if s, ok := hook(router.Endpoint{Name: "e", Address: "127.0.0.1:1", Workerd: "127.0.0.1:7070"}).(*relay.Client); !ok || s == nil {
		t.Error("endpoint with a workerd did not get a relay client")
	}
}

// TestRolesAgree holds the router's typed roles equal to discovery's (the router cannot
// import discovery), so an endpoint's role survives routerEndpoints unchanged.
func TestRolesAgree(t *testing.T) {
	pairs := []struct {
		r router.Role
		d string
	}{
		{router.RoleAggregated, discovery.RoleAggregated},
		{router.RolePrefill, discovery.RolePrefill},
		{router.RoleDecode, discovery.RoleDecode},
	}
	for _, p := range pairs {
		if string(p.r) != p.d {
			t.Errorf("router role %q, discovery role %q", p.r, p.d)
		}
	}
}
