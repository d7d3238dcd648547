package xds_test

import (
	"net/http"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/kvgate/kvgate/envoy"
	"github.com/kvgate/kvgate/xds"
)

// TestRoutesByPath runs Envoy's first-match route selection over the translated route table
// for each path a client may send: the inference paths match their exact routes (before the
// /v1/ prefix), other /v1/ paths reach the picked endpoint through the prefix, /v1/models
// skips the router, and everything else is the 404. Each request is matched twice, as Envoy
// does: on the client's headers (which decides whether ext_proc runs) and again after the
// router's clear_route_cache, with the pick's headers.
func TestRoutesByPath(t *testing.T) {
	res, err := xds.Translate(xds.Model{
		Router: []string{"127.0.0.1:9002"},
		Pools: map[string][]xds.Endpoint{
			"a": {{Address: "10.0.0.1:8000", Healthy: true}},
			"b": {{Address: "10.0.0.2:8000", Healthy: true}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	vh := res.Routes[0].GetVirtualHosts()[0]
	const prefixRoute = xds.PickedCluster + xds.PathPassthrough
	tests := []struct {
		path      string
		model     string // x-kvgate-model set by the router instead of a pick
		wantRoute string // route name; "" for the 404
		wantPool  string // cluster when the router names a model instead of picking
	}{
		{path: xds.PathChatCompletions, wantRoute: xds.PickedCluster + xds.PathChatCompletions},
		{path: xds.PathCompletions, wantRoute: xds.PickedCluster + xds.PathCompletions},
		{path: xds.PathResponses, wantRoute: xds.PickedCluster + xds.PathResponses},
		{path: xds.PathEmbeddings, wantRoute: xds.PickedCluster + xds.PathEmbeddings},
		{path: xds.PathMessages, wantRoute: xds.PickedCluster + xds.PathMessages},
		{path: xds.PathMessages + "?beta=true", wantRoute: xds.PickedCluster + xds.PathMessages},
		{path: xds.PathMessages, model: "b", wantRoute: xds.PickedCluster + xds.PathMessages, wantPool: xds.ModelCluster("b")},
		{path: xds.PathResponses, model: "a", wantRoute: xds.PickedCluster + xds.PathResponses, wantPool: xds.ModelCluster("a")},
		{path: xds.PathModels, wantRoute: xds.EnginesCluster + xds.PathModels},
		{path: "/v1/models/a", wantRoute: prefixRoute},
		{path: "/v1/messages/count_tokens", wantRoute: prefixRoute},
		{path: "/v1/responses/resp_1/cancel", wantRoute: prefixRoute},
		{path: "/v1/files/file-1/content", wantRoute: prefixRoute},
		{path: "/v1/audio/transcriptions", wantRoute: prefixRoute},
		{path: "/v1/files", model: "a", wantRoute: prefixRoute},
		{path: "/v1/", wantRoute: "not_found/v1/"},
		{path: "/v1", wantRoute: "not_found"},
		{path: "/", wantRoute: "not_found"},
		{path: "/health", wantRoute: "not_found"},
		{path: "/v2/chat/completions", wantRoute: "not_found"},
		{path: "/V1/chat/completions", wantRoute: "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.path+" "+tt.model, func(t *testing.T) {
			// As the client sent it: the early header mutation has stripped the picker's headers.
			r := mustMatch(t, vh, tt.path, http.Header{})
			if r.GetName() != tt.wantRoute {
				t.Fatalf("route %q, want %q", r.GetName(), tt.wantRoute)
			}
			proc := extProcEnabled(r)
			switch a := r.GetAction().(type) {
			case *route.Route_DirectResponse:
				if a.DirectResponse.GetStatus() != http.StatusNotFound || proc {
					t.Errorf("direct response %d, ext_proc %v; want a 404 without the router", a.DirectResponse.GetStatus(), proc)
				}
				return
			case *route.Route_Route:
				if tt.path == xds.PathModels {
					if proc || a.Route.GetCluster() != xds.EnginesCluster {
						t.Errorf("/v1/models: cluster %s, ext_proc %v; want %s without the router", a.Route.GetCluster(), proc, xds.EnginesCluster)
					}
					return
				}
				if !proc {
					t.Errorf("ext_proc is disabled on %q: the router never picks", r.GetName())
				}
			}
			// After the router answered, Envoy matches again on the mutated headers.
			picked := http.Header{}
			picked.Set(xds.DestinationHeader, "10.0.0.1:8000")
			if tt.model != "" {
				picked.Set(xds.ModelHeader, tt.model)
			}
			if c := mustMatch(t, vh, tt.path, picked).GetRoute().GetCluster(); c != xds.PickedCluster {
				t.Errorf("with a pick: cluster %q, want %q", c, xds.PickedCluster)
			}
			if tt.model == "" {
				return
			}
			pool := http.Header{}
			pool.Set(xds.ModelHeader, tt.model)
			want := tt.wantPool
			if want == "" {
				want = xds.PickedCluster // passthrough paths have no per-model route
			}
			if c := mustMatch(t, vh, tt.path, pool).GetRoute().GetCluster(); c != want {
				t.Errorf("with %s: %s: cluster %q, want %q", xds.ModelHeader, tt.model, c, want)
			}
		})
	}
}

func mustMatch(t *testing.T, vh *route.VirtualHost, path string, h http.Header) *route.Route {
	t.Helper()
	r, err := envoy.MatchRoute(vh, path, h)
	if err != nil {
		t.Fatal(err)
	}
	if r == nil {
		t.Fatalf("%s: no route matches (the catch-all 404 is missing)", path)
	}
	return r
}

// extProcEnabled reports whether the ext_proc filter runs on r (no per-route disable).
func extProcEnabled(r *route.Route) bool {
	for name := range r.GetTypedPerFilterConfig() {
		if name == "envoy.filters.http.ext_proc" {
			return false
		}
	}
	return true
}
