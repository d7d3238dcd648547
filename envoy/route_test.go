package envoy_test

import (
	"net/http"
	"testing"

	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kvgate/kvgate/envoy"
)

// TestStaticRoutes: in static.yaml every inference path matches its exact route with ext_proc
// on, other /v1/ paths the passthrough prefix that comes after them, /v1/models the engines
// without the router, and anything else the 404.
func TestStaticRoutes(t *testing.T) {
	b := load(t, "static.yaml")
	var mgr hcm.HttpConnectionManager
	if err := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&mgr); err != nil {
		t.Fatal(err)
	}
	vh := mgr.GetRouteConfig().GetVirtualHosts()[0]
	tests := []struct{ path, route, cluster string }{
		{"/v1/chat/completions", "chat", "kvgate_picked"},
		{"/v1/completions", "completions", "kvgate_picked"},
		{"/v1/responses", "responses", "kvgate_picked"},
		{"/v1/embeddings", "embeddings", "kvgate_picked"},
		{"/v1/messages", "messages", "kvgate_picked"},
		{"/v1/messages?beta=true", "messages", "kvgate_picked"},
		{"/v1/models", "models", "kvgate_engines"},
		{"/v1/models/qwen", "passthrough", "kvgate_picked"},
		{"/v1/messages/count_tokens", "passthrough", "kvgate_picked"},
		{"/v1/files/file-1", "passthrough", "kvgate_picked"},
		{"/v1/", "not_found_v1", ""},
		{"/v1", "not_found", ""},
		{"/health", "not_found", ""},
		{"/", "not_found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			r, err := envoy.MatchRoute(vh, tt.path, http.Header{})
			if err != nil || r == nil {
				t.Fatalf("no route: %v", err)
			}
			if r.GetName() != tt.route || r.GetRoute().GetCluster() != tt.cluster {
				t.Fatalf("route %q to %q, want %q to %q", r.GetName(), r.GetRoute().GetCluster(), tt.route, tt.cluster)
			}
			_, off := r.GetTypedPerFilterConfig()["envoy.filters.http.ext_proc"]
			if wantOn := tt.cluster == "kvgate_picked"; off == wantOn {
				t.Errorf("ext_proc disabled = %v on route %q", off, r.GetName())
			}
			if tt.cluster == "" && r.GetDirectResponse().GetStatus() != http.StatusNotFound {
				t.Errorf("direct response %v, want 404", r.GetDirectResponse())
			}
		})
	}
}

// TestMatchRoute: first match wins; exact, prefix and path-separated prefix paths, case
// folding, header string/present matchers with inversion, and an error on what it does not know.
func TestMatchRoute(t *testing.T) {
	exact := func(v string) *route.HeaderMatcher_StringMatch {
		return &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: v}}}
	}
	vh := &route.VirtualHost{Routes: []*route.Route{
		{Name: "model", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/a"}, Headers: []*route.HeaderMatcher{
			{Name: "x-model", HeaderMatchSpecifier: exact("m")},
			{Name: "x-dest", HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true},
		}}},
		{Name: "a", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: "/a"}}},
		{Name: "fold", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/Up/"}, CaseSensitive: wrapperspb.Bool(false)}},
		{Name: "sep", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/s"}}},
		{Name: "pre", Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/a"}}},
	}}
	tests := []struct {
		path string
		h    http.Header
		want string
	}{
		{"/a", http.Header{"X-Model": {"m"}}, "model"},
		{"/a?q=1", http.Header{"X-Model": {"m"}}, "model"},
		{"/a", http.Header{"X-Model": {"m"}, "X-Dest": {"1.2.3.4:5"}}, "a"},
		{"/a", http.Header{"X-Model": {"n"}}, "a"},
		{"/a", nil, "a"},
		{"/ab", nil, "pre"},
		{"/up/x", nil, "fold"},
		{"/s", nil, "sep"},
		{"/s/x", nil, "sep"},
		{"/sx", nil, ""},
		{"/b", nil, ""},
	}
	for _, tt := range tests {
		r, err := envoy.MatchRoute(vh, tt.path, tt.h)
		if err != nil {
			t.Fatal(err)
		}
		if r.GetName() != tt.want {
			t.Errorf("%s %v: route %q, want %q", tt.path, tt.h, r.GetName(), tt.want)
		}
	}
	regex := &route.VirtualHost{Routes: []*route.Route{{Name: "re", Match: &route.RouteMatch{
		PathSpecifier: &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: "/.*"}}}}}}
	if _, err := envoy.MatchRoute(regex, "/x", nil); err == nil {
		t.Error("a regex route matched without an error: the matcher does not know regexes")
	}
}
