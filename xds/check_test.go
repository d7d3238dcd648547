package xds_test

import (
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extproc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kvgate/kvgate/xds"
)

func translated(t *testing.T) *xds.Resources {
	t.Helper()
	res, err := xds.Translate(xds.Model{
		Router: []string{"127.0.0.1:9002"},
		Pools:  map[string][]xds.Endpoint{"m": {{Address: "10.0.0.1:8000", Healthy: true}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestCheck: each kind of broken configuration is caught, including a problem buried in a
// typed config two Any levels down.
func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		breakIt func(*xds.Resources)
		want    string
	}{
		{"cluster without a name", func(r *xds.Resources) { r.Clusters[0].Name = "" }, "Name"},
		{"duplicate cluster", func(r *xds.Resources) { r.Clusters = append(r.Clusters, r.Clusters[0]) }, "twice"},
		{"route to a missing cluster", func(r *xds.Resources) {
			r.Routes[0].VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &route.RouteAction_Cluster{Cluster: "nope"}
		}, "does not exist"},
		{"EDS cluster without endpoints", func(r *xds.Resources) { r.Endpoints = r.Endpoints[1:] }, "no endpoints resource"},
		{"endpoints without a cluster", func(r *xds.Resources) {
			r.Endpoints = append(r.Endpoints, &endpoint.ClusterLoadAssignment{ClusterName: "ghost"})
		}, "no EDS cluster"},
		{"listener naming missing routes", func(r *xds.Resources) { r.Routes = nil }, "do not exist"},
		{"invalid ext_proc inside the HCM inside the listener", func(r *xds.Resources) {
			f := r.Listeners[0].FilterChains[0].Filters[0]
			var m hcm.HttpConnectionManager
			if err := f.GetTypedConfig().UnmarshalTo(&m); err != nil {
				t.Fatal(err)
			}
			var ep extproc.ExternalProcessor
			if err := m.HttpFilters[0].GetTypedConfig().UnmarshalTo(&ep); err != nil {
				t.Fatal(err)
			}
			ep.MessageTimeout = durationpb.New(-1) // must be > 0
			m.HttpFilters[0].ConfigType = &hcm.HttpFilter_TypedConfig{TypedConfig: pack(t, &ep)}
			f.ConfigType = &listener.Filter_TypedConfig{TypedConfig: pack(t, &m)}
		}, "MessageTimeout"},
		{"unknown typed config", func(r *xds.Resources) {
			r.Clusters[0].TypedExtensionProtocolOptions["x"] = &anypb.Any{TypeUrl: "type.googleapis.com/no.such.Type"}
		}, "no.such.Type"},
		{"passthrough prefix before the exact inference routes", func(r *xds.Resources) {
			rs := r.Routes[0].VirtualHosts[0].Routes
			for i, rt := range rs {
				if rt.GetMatch().GetPrefix() == xds.PathPassthrough {
					r.Routes[0].VirtualHosts[0].Routes = append([]*route.Route{rt}, append(rs[:i:i], rs[i+1:]...)...)
				}
			}
		}, "never reached"},
		{"bad cluster type for EDS", func(r *xds.Resources) {
			for _, c := range r.Clusters {
				if c.GetName() == xds.ModelCluster("m") {
					c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STATIC}
				}
			}
		}, "no EDS cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := xds.Check(translated(t)); err != nil {
				t.Fatalf("valid resources fail: %v", err)
			}
			r := translated(t)
			tt.breakIt(r)
			err := xds.Check(r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Check = %v, want an error mentioning %q", err, tt.want)
			}
			t.Log(err)
		})
	}
}

func pack(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
