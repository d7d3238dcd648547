package xds_test

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/status"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/polltest"
	"github.com/kvgate/kvgate/xds"
	"github.com/kvgate/kvgate/xds/xdstest"
)

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, 5*time.Second, what, cond)
}

// TestServerMetrics: snapshots, open streams, the last report's engines and problems, and
// a NACK from Envoy are all counted.
func TestServerMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	src := &pushSource{ch: make(chan []discovery.Endpoint)}
	srv, addr := startServer(t, xds.Config{Source: src, Registerer: reg})
	conn := dial(t, addr)
	xdstest.Dial(t, conn, "envoy-m", "edge", true).WaitFor(5*time.Second, "configuration", hasAll)

	get := func(name string) float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == name {
				var sum float64
				for _, m := range mf.GetMetric() {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
				return sum
			}
		}
		return 0
	}
	eventually(t, "one delta stream open", func() bool { return get("kvgate_xds_streams_active") == 1 })

	src.ch <- []discovery.Endpoint{
		engine("a", "127.0.0.21:8000", true, "m"),
		engine("b", "not-an-ip:8000", true, "m"),
	}
	eventually(t, "second snapshot", func() bool { return srv.Pushes() == 2 })
	if got := get("kvgate_xds_snapshots_total"); got != 2 {
		t.Errorf("snapshots = %v, want 2", got)
	}
	if got := get("kvgate_xds_endpoints"); got != 2 {
		t.Errorf("endpoints = %v, want 2", got)
	}
	if got := get("kvgate_xds_translation_problems"); got != 1 {
		t.Errorf("problems = %v, want 1 (the hostname)", got)
	}

	// An Envoy that rejects the clusters it got.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := discoverygrpc.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "envoy-nack"}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{Node: node, TypeUrl: xdstest.ClusterType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoverygrpc.DiscoveryRequest{
		Node: node, TypeUrl: xdstest.ClusterType, ResponseNonce: resp.GetNonce(),
		ErrorDetail: &status.Status{Code: 3, Message: "test rejects it"},
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the NACK counted", func() bool { return get("kvgate_xds_nacks_total") == 1 })
}
