package xds_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/discovery/consultest"
	"github.com/kvgate/kvgate/xds"
	"github.com/kvgate/kvgate/xds/xdstest"
)

// healthyEngine is an HTTP server on loopback that answers Consul's health check.
func healthyEngine(t *testing.T) string {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// TestServerConsul: with a real Consul agent as the source, an Envoy-like node sees engines
// that register appear (healthy once Consul's check passes) and engines that deregister
// disappear, each as a new version.
func TestServerConsul(t *testing.T) {
	agent := consultest.Start(t)
	const service = "kvgate-xds-test"
	cons, err := discovery.NewConsul(discovery.ConsulConfig{Address: agent.Addr, Service: service, WaitTime: 5 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, xds.Config{Source: cons})
	client := xdstest.Dial(t, dial(t, addr), "envoy-consul", "edge", false)
	client.WaitFor(10*time.Second, "initial configuration", hasAll)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	register := func(name, address string) {
		t.Helper()
		err := cons.Register(ctx, discovery.Registration{
			Endpoint:      discovery.Endpoint{Name: name, Address: address, Models: []string{"qwen"}, Role: discovery.RoleAggregated, BlockSize: 16},
			Kind:          "sim",
			CheckInterval: time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	a, b := healthyEngine(t), healthyEngine(t)
	register("engine-a", a)
	s := client.WaitFor(20*time.Second, "engine-a healthy in the qwen pool", func(s xdstest.State) bool {
		return addresses(t, s, xds.ModelCluster("qwen"))[a] == core.HealthStatus_HEALTHY
	})
	v1 := s.Versions[xdstest.EndpointType]

	register("engine-b", b)
	s = client.WaitFor(20*time.Second, "engine-b joining", func(s xdstest.State) bool {
		got := addresses(t, s, xds.ModelCluster("qwen"))
		return len(got) == 2 && got[b] == core.HealthStatus_HEALTHY
	})
	v2 := s.Versions[xdstest.EndpointType]

	if err := cons.Deregister(ctx, "engine-a"); err != nil {
		t.Fatal(err)
	}
	s = client.WaitFor(20*time.Second, "engine-a leaving", func(s xdstest.State) bool {
		got := addresses(t, s, xds.ModelCluster("qwen"))
		_, hasA := got[a]
		return len(got) == 1 && !hasA
	})
	v3 := s.Versions[xdstest.EndpointType]
	if v1 == v2 || v2 == v3 || v1 == v3 {
		t.Errorf("endpoint versions %q, %q, %q: want three different", v1, v2, v3)
	}
	// Every engine also serves /v1/models through the all-engines pool.
	if got := addresses(t, s, xds.EnginesCluster); len(got) != 1 || got[b] != core.HealthStatus_HEALTHY {
		t.Errorf("kvgate_engines = %v, want only %s", got, b)
	}
}
