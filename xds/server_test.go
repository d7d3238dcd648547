package xds_test

import (
	"context"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/tlsconfig"
	"github.com/kvgate/kvgate/xds"
	"github.com/kvgate/kvgate/xds/xdstest"
)

// pushSource is a discovery.Source that reports whatever the test sends, duplicates
// included (discovery.Static drops those itself, which would hide the server's own
// de-duplication).
type pushSource struct {
	ch chan []discovery.Endpoint
}

func (p *pushSource) Watch(ctx context.Context) <-chan []discovery.Endpoint { return p.ch }

// startServer serves xDS on a loopback port and returns its address; it stops with the test.
func startServer(t *testing.T, cfg xds.Config) (*xds.Server, string) {
	t.Helper()
	if cfg.Model.Router == nil {
		cfg.Model.Router = []string{"127.0.0.1:9002"}
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 20 * time.Millisecond
	}
	if testing.Verbose() {
		cfg.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := xds.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := s.Serve(ctx, lis); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return s, lis.Addr().String()
}

func dial(t *testing.T, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	if len(opts) == 0 {
		opts = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func engine(name, addr string, healthy bool, models ...string) discovery.Endpoint {
	return discovery.Endpoint{Name: name, Address: addr, Models: models, Role: discovery.RoleAggregated, Healthy: healthy, BlockSize: 16}
}

// addresses lists the endpoint addresses of one EDS assignment, with their health.
func addresses(t *testing.T, s xdstest.State, clusterName string) map[string]core.HealthStatus {
	t.Helper()
	a := s.Resources[xdstest.EndpointType][clusterName]
	if a == nil {
		return nil
	}
	var cla endpoint.ClusterLoadAssignment
	if err := a.UnmarshalTo(&cla); err != nil {
		t.Fatal(err)
	}
	out := map[string]core.HealthStatus{}
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out[net.JoinHostPort(sa.GetAddress(), itoa(sa.GetPortValue()))] = e.GetHealthStatus()
		}
	}
	return out
}

func itoa(p uint32) string { return (&net.TCPAddr{Port: int(p)}).String()[1:] }

func hasAll(s xdstest.State) bool {
	return s.Resources[xdstest.ListenerType][xds.ListenerName] != nil &&
		s.Resources[xdstest.RouteType][xds.RouteConfigName] != nil &&
		s.Resources[xdstest.ClusterType][xds.RouterCluster] != nil &&
		s.Resources[xdstest.ClusterType][xds.PickedCluster] != nil &&
		s.Resources[xdstest.EndpointType][xds.EnginesCluster] != nil
}

// TestServerADS: Envoy-like nodes, over state-of-the-world and delta ADS, with different
// node ids, get the listener, routes, clusters and endpoints; an engine joining, a model
// appearing and an engine leaving each reach them as a new version; a report that changes
// nothing pushes nothing.
func TestServerADS(t *testing.T) {
	for _, mode := range []struct {
		name  string
		delta bool
	}{{"sotw", false}, {"delta", true}} {
		t.Run(mode.name, func(t *testing.T) {
			src := &pushSource{ch: make(chan []discovery.Endpoint)}
			srv, addr := startServer(t, xds.Config{Source: src})
			conn := dial(t, addr)
			nodes := []*xdstest.Client{
				xdstest.Dial(t, conn, "envoy-a", "edge", mode.delta),
				xdstest.Dial(t, conn, "envoy-b", "other", mode.delta),
			}
			for _, c := range nodes {
				c.WaitFor(5*time.Second, "initial configuration", hasAll)
			}

			send := func(eps ...discovery.Endpoint) {
				select {
				case src.ch <- eps:
				case <-time.After(5 * time.Second):
					t.Fatal("server does not read its source")
				}
			}
			a := engine("a", "127.0.0.11:8000", true, "m1")
			b := engine("b", "127.0.0.12:8000", true, "m1")
			c := engine("c", "127.0.0.13:8000", true, "m1", "m2")

			send(a, b)
			for _, n := range nodes {
				n.WaitFor(time.Second, "m1 with a and b", func(s xdstest.State) bool {
					got := addresses(t, s, xds.ModelCluster("m1"))
					return len(got) == 2 && got["127.0.0.11:8000"] == core.HealthStatus_HEALTHY
				})
			}

			// A second model appears: a new cluster and its endpoints.
			send(a, b, c)
			for _, n := range nodes {
				n.WaitFor(time.Second, "m2 cluster with c", func(s xdstest.State) bool {
					var cl cluster.Cluster
					x := s.Resources[xdstest.ClusterType][xds.ModelCluster("m2")]
					return x != nil && x.UnmarshalTo(&cl) == nil &&
						len(addresses(t, s, xds.ModelCluster("m2"))) == 1 && len(addresses(t, s, xds.ModelCluster("m1"))) == 3
				})
			}

			// The same set again, in another order: nothing is pushed.
			before := nodes[0].State()
			pushes := srv.Pushes()
			send(c, b, a)
			time.Sleep(150 * time.Millisecond) // well past the debounce
			send(c, b, a)
			time.Sleep(150 * time.Millisecond)
			if srv.Pushes() != pushes {
				t.Errorf("an unchanged set pushed a snapshot (%d -> %d)", pushes, srv.Pushes())
			}
			after := nodes[0].State()
			for typ, n := range before.Responses {
				if after.Responses[typ] != n {
					t.Errorf("%s: %d responses after an unchanged set, want %d", typ, after.Responses[typ], n)
				}
			}

			// An engine leaves and another turns unhealthy.
			b.Healthy = false
			send(b, c)
			for _, n := range nodes {
				n.WaitFor(time.Second, "a gone, b unhealthy", func(s xdstest.State) bool {
					got := addresses(t, s, xds.ModelCluster("m1"))
					_, hasA := got["127.0.0.11:8000"]
					return len(got) == 2 && !hasA && got["127.0.0.12:8000"] == core.HealthStatus_UNHEALTHY
				})
			}
			// The model m2 disappears with its last engine: its cluster goes away.
			send(b)
			for _, n := range nodes {
				n.WaitFor(time.Second, "m2 removed", func(s xdstest.State) bool {
					return s.Resources[xdstest.ClusterType][xds.ModelCluster("m2")] == nil
				})
			}
		})
	}
}

func TestNewErrors(t *testing.T) {
	src := &pushSource{ch: make(chan []discovery.Endpoint)}
	tests := []struct {
		name string
		cfg  xds.Config
	}{
		{"no source", xds.Config{Model: xds.Model{Router: []string{"127.0.0.1:9002"}}}},
		{"no router", xds.Config{Source: src}},
		{"cert without key", xds.Config{Source: src, Model: xds.Model{Router: []string{"127.0.0.1:9002"}}, TLS: tlsconfig.Files{Cert: "c"}}},
		{"ca without cert", xds.Config{Source: src, Model: xds.Model{Router: []string{"127.0.0.1:9002"}}, TLS: tlsconfig.Files{CA: "c"}}},
		{"missing cert files", xds.Config{Source: src, Model: xds.Model{Router: []string{"127.0.0.1:9002"}}, TLS: tlsconfig.Files{Cert: "/nonexistent.crt", Key: "/nonexistent.key"}}},
		{"bad template", xds.Config{Source: src, Model: xds.Model{Router: []string{"127.0.0.1:9002"}, Listener: "x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := xds.New(tt.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}
