// Package xdstest is an xDS client that subscribes like an Envoy node, for tests.
package xdstest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// Type URLs of the four resource types kvgate serves.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
)

// State is what the client holds: per type URL, the version last received (SotW; "" on
// delta) and the resources by name.
type State struct {
	Versions  map[string]string
	Resources map[string]map[string]*anypb.Any
	// Responses counts the responses received per type URL.
	Responses map[string]int
}

// Client subscribes over one ADS stream the way Envoy does: CDS and LDS first (wildcard),
// then EDS for every EDS cluster and RDS for every route configuration the listeners name,
// ACKing each response with its version and nonce. It is safe for concurrent use.
type Client struct {
	t     testing.TB
	delta bool

	mu      sync.Mutex
	state   State
	changed chan struct{}
	err     error
}

// Dial opens an ADS stream (state of the world, or delta when delta is true) on conn for
// a node with this id and cluster, and starts subscribing. The stream ends with the test.
func Dial(t testing.TB, conn *grpc.ClientConn, nodeID, nodeCluster string, delta bool) *Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{t: t, delta: delta, changed: make(chan struct{}), state: State{
		Versions: map[string]string{}, Resources: map[string]map[string]*anypb.Any{}, Responses: map[string]int{},
	}}
	node := &core.Node{Id: nodeID, Cluster: nodeCluster}
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	done := make(chan struct{})
	if delta {
		stream, err := ads.DeltaAggregatedResources(ctx)
		if err != nil {
			cancel()
			t.Fatalf("xdstest: delta ADS: %v", err)
		}
		go func() { defer close(done); c.runDelta(stream, node) }()
	} else {
		stream, err := ads.StreamAggregatedResources(ctx)
		if err != nil {
			cancel()
			t.Fatalf("xdstest: ADS: %v", err)
		}
		go func() { defer close(done); c.runSotW(stream, node) }()
	}
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *Client) runSotW(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, node *core.Node) {
	subscribed := map[string][]string{}
	send := func(typ string, names []string, version, nonce string) error {
		subscribed[typ] = names
		return stream.Send(&discovery.DiscoveryRequest{
			Node: node, TypeUrl: typ, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce,
		})
	}
	for _, typ := range []string{ClusterType, ListenerType} {
		if err := send(typ, nil, "", ""); err != nil {
			c.fail(err)
			return
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			c.fail(err)
			return
		}
		byName := map[string]*anypb.Any{}
		for _, r := range resp.GetResources() {
			byName[resourceName(r)] = r
		}
		typ := resp.GetTypeUrl()
		// ACK first, as Envoy does, then follow the references.
		if err := send(typ, subscribed[typ], resp.GetVersionInfo(), resp.GetNonce()); err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		c.state.Versions[typ] = resp.GetVersionInfo()
		c.state.Resources[typ] = byName
		c.state.Responses[typ]++
		c.mu.Unlock()
		if dep, names := references(typ, byName); dep != "" && !slices.Equal(names, subscribed[dep]) {
			c.mu.Lock()
			v := c.state.Versions[dep]
			c.mu.Unlock()
			if err := send(dep, names, v, ""); err != nil {
				c.fail(err)
				return
			}
		}
		c.notify()
	}
}

func (c *Client) runDelta(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, node *core.Node) {
	subscribed := map[string][]string{}
	for _, typ := range []string{ClusterType, ListenerType} {
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}); err != nil {
			c.fail(err)
			return
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			c.fail(err)
			return
		}
		typ := resp.GetTypeUrl()
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typ, ResponseNonce: resp.GetNonce()}); err != nil {
			c.fail(err)
			return
		}
		c.mu.Lock()
		have := c.state.Resources[typ]
		if have == nil {
			have = map[string]*anypb.Any{}
			c.state.Resources[typ] = have
		}
		for _, r := range resp.GetResources() {
			have[r.GetName()] = r.GetResource()
		}
		for _, name := range resp.GetRemovedResources() {
			delete(have, name)
		}
		c.state.Versions[typ] = resp.GetSystemVersionInfo()
		c.state.Responses[typ]++
		current := maps.Clone(have)
		c.mu.Unlock()
		if dep, names := references(typ, current); dep != "" && !slices.Equal(names, subscribed[dep]) {
			var sub, unsub []string
			for _, n := range names {
				if !slices.Contains(subscribed[dep], n) {
					sub = append(sub, n)
				}
			}
			for _, n := range subscribed[dep] {
				if !slices.Contains(names, n) {
					unsub = append(unsub, n)
				}
			}
			subscribed[dep] = names
			if err := stream.Send(&discovery.DeltaDiscoveryRequest{
				Node: node, TypeUrl: dep, ResourceNamesSubscribe: sub, ResourceNamesUnsubscribe: unsub,
			}); err != nil {
				c.fail(err)
				return
			}
		}
		c.notify()
	}
}

// references: clusters lead to the EDS names they use, listeners to the RDS names.
func references(typ string, byName map[string]*anypb.Any) (string, []string) {
	var names []string
	switch typ {
	case ClusterType:
		for name, a := range byName {
			var cl cluster.Cluster
			if a.UnmarshalTo(&cl) == nil && cl.GetType() == cluster.Cluster_EDS {
				if sn := cl.GetEdsClusterConfig().GetServiceName(); sn != "" {
					name = sn
				}
				names = append(names, name)
			}
		}
		slices.Sort(names)
		return EndpointType, names
	case ListenerType:
		for _, a := range byName {
			var l listener.Listener
			if a.UnmarshalTo(&l) != nil {
				continue
			}
			for _, fc := range l.GetFilterChains() {
				for _, f := range fc.GetFilters() {
					var m hcm.HttpConnectionManager
					if f.GetTypedConfig().UnmarshalTo(&m) == nil && m.GetRds() != nil {
						names = append(names, m.GetRds().GetRouteConfigName())
					}
				}
			}
		}
		slices.Sort(names)
		return RouteType, slices.Compact(names)
	}
	return "", nil
}

func resourceName(a *anypb.Any) string {
	m, err := a.UnmarshalNew()
	if err != nil {
		return ""
	}
	type named interface{ GetName() string }
	type clusterNamed interface{ GetClusterName() string }
	switch v := m.(type) {
	case clusterNamed:
		return v.GetClusterName()
	case named:
		return v.GetName()
	}
	return ""
}

func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.notify()
}

func (c *Client) notify() {
	c.mu.Lock()
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
}

// State returns a copy of what the client holds.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := State{Versions: maps.Clone(c.state.Versions), Resources: map[string]map[string]*anypb.Any{}, Responses: maps.Clone(c.state.Responses)}
	for k, v := range c.state.Resources {
		s.Resources[k] = maps.Clone(v)
	}
	return s
}

// WaitFor waits until cond holds for the client's state, failing the test after timeout or
// when the stream breaks. It returns the state that satisfied cond.
func (c *Client) WaitFor(timeout time.Duration, what string, cond func(State) bool) State {
	c.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		ch, err := c.changed, c.err
		c.mu.Unlock()
		s := c.State()
		if cond(s) {
			return s
		}
		if err != nil {
			c.t.Fatalf("xdstest: waiting for %s: stream ended: %v", what, err)
		}
		select {
		case <-ch:
		case <-deadline.C:
			c.t.Fatalf("xdstest: no %s within %v; state: %s", what, timeout, s)
		}
	}
}

func (s State) String() string {
	out := ""
	for _, typ := range []string{ListenerType, ClusterType, RouteType, EndpointType} {
		out += fmt.Sprintf("\n  %s v=%q responses=%d names=%v", typ[len("type.googleapis.com/"):], s.Versions[typ], s.Responses[typ], slices.Sorted(maps.Keys(s.Resources[typ])))
	}
	return out
}
