package xds

import (
	"github.com/kvgate/kvgate/envoy"
	"net"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreams "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	metadata "github.com/envoyproxy/go-control-plane/envoy/type/metadata/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// buildRouterCluster is the cluster of kvgate routers: gRPC, so HTTP/2 set explicitly, with
// gRPC health checks (grpc.health.v1) so Envoy stops sending streams to a dead router.
func buildRouterCluster(m Model, o Options) (*cluster.Cluster, error) {
	var lbs []*endpoint.LbEndpoint
	dns := false
	for _, a := range m.Router {
		sa, err := socketAddress(a)
		if err != nil {
			return nil, err
		}
		if net.ParseIP(sa.GetAddress()) == nil {
			dns = true
		}
		lbs = append(lbs, &endpoint.LbEndpoint{HostIdentifier: &endpoint.LbEndpoint_Endpoint{
			Endpoint: &endpoint.Endpoint{Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: sa}}},
		}})
	}
	c := &cluster.Cluster{
		Name:                 RouterCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Duration(o.ConnectTimeout)),
		LbPolicy:             cluster.Cluster_LEAST_REQUEST,
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: RouterCluster,
			Endpoints:   []*endpoint.LocalityLbEndpoints{{LbEndpoints: lbs}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptionsKey: envoy.Any(&upstreams.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreams.HttpProtocolOptions_ExplicitHttpConfig_{
					ExplicitHttpConfig: &upstreams.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreams.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
							Http2ProtocolOptions: &core.Http2ProtocolOptions{
								// Keepalive pings notice a router gone without a FIN.
								ConnectionKeepalive: &core.KeepaliveSettings{
									Interval: durationpb.New(30 * time.Second),
									Timeout:  durationpb.New(5 * time.Second),
								},
							},
						},
					},
				},
			}),
		},
		HealthChecks: []*core.HealthCheck{{
			Timeout:            durationpb.New(time.Second),
			Interval:           durationpb.New(time.Duration(o.HealthCheckInterval)),
			UnhealthyThreshold: wrapperspb.UInt32(2),
			HealthyThreshold:   wrapperspb.UInt32(1),
			HealthChecker:      &core.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &core.HealthCheck_GrpcHealthCheck{}},
		}},
		CircuitBreakers: circuitBreakers(o),
	}
	if dns {
		c.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
		c.DnsLookupFamily = cluster.Cluster_V4_PREFERRED
	}
	if m.RouterTLS != nil {
		c.TransportSocket = envoy.UpstreamTLS(m.RouterTLS.Cert, m.RouterTLS.Key, m.RouterTLS.CA, m.RouterTLS.ServerName)
	}
	return c, nil
}

// buildPickedCluster is the ORIGINAL_DST cluster that sends each request to the endpoint the
// router picked: first from dynamic metadata envoy.lb/x-gateway-destination-endpoint, then
// from the x-gateway-destination-endpoint header (Endpoint Picker Protocol).
func buildPickedCluster(o Options) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 PickedCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_ORIGINAL_DST},
		LbPolicy:             cluster.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(time.Duration(o.ConnectTimeout)),
		// Engines come and go; forget hosts unused for a while.
		CleanupInterval: durationpb.New(time.Minute),
		LbConfig: &cluster.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &cluster.Cluster_OriginalDstLbConfig{
			UseHttpHeader:  true,
			HttpHeaderName: DestinationHeader,
			MetadataKey: &metadata.MetadataKey{
				Key:  DestinationMetadataNamespace,
				Path: []*metadata.MetadataKey_PathSegment{{Segment: &metadata.MetadataKey_PathSegment_Key{Key: DestinationHeader}}},
			},
		}},
		TypedExtensionProtocolOptions: engineProtocolOptions(),
		CircuitBreakers:               circuitBreakers(o),
	}
}

// buildPoolCluster is an EDS cluster of engines: Envoy health-checks them over HTTP and
// balances by least requests when the router leaves the choice to Envoy.
func buildPoolCluster(name string, o Options) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource()},
		ConnectTimeout:       durationpb.New(time.Duration(o.ConnectTimeout)),
		LbPolicy:             cluster.Cluster_LEAST_REQUEST,
		HealthChecks: []*core.HealthCheck{{
			Timeout:            durationpb.New(2 * time.Second),
			Interval:           durationpb.New(time.Duration(o.HealthCheckInterval)),
			UnhealthyThreshold: wrapperspb.UInt32(2),
			HealthyThreshold:   wrapperspb.UInt32(1),
			HealthChecker: &core.HealthCheck_HttpHealthCheck_{HttpHealthCheck: &core.HealthCheck_HttpHealthCheck{
				Path: o.EngineHealthPath,
			}},
		}},
		// An engine that keeps failing is ejected for a while even between health checks.
		OutlierDetection: &cluster.OutlierDetection{
			Consecutive_5Xx:    wrapperspb.UInt32(5),
			BaseEjectionTime:   durationpb.New(30 * time.Second),
			MaxEjectionPercent: wrapperspb.UInt32(50),
		},
		TypedExtensionProtocolOptions: engineProtocolOptions(),
		CircuitBreakers:               circuitBreakers(o),
	}
}

// engineProtocolOptions: engines speak HTTP/1.1 (vLLM and SGLang serve uvicorn); idle
// upstream connections are closed after a while.
func engineProtocolOptions() map[string]*anypb.Any {
	return map[string]*anypb.Any{
		httpProtocolOptionsKey: envoy.Any(&upstreams.HttpProtocolOptions{
			CommonHttpProtocolOptions: &core.HttpProtocolOptions{IdleTimeout: durationpb.New(5 * time.Minute)},
			UpstreamProtocolOptions: &upstreams.HttpProtocolOptions_ExplicitHttpConfig_{
				ExplicitHttpConfig: &upstreams.HttpProtocolOptions_ExplicitHttpConfig{
					ProtocolConfig: &upstreams.HttpProtocolOptions_ExplicitHttpConfig_HttpProtocolOptions{
						HttpProtocolOptions: &core.Http1ProtocolOptions{},
					},
				},
			},
		}),
	}
}

// circuitBreakers raises Envoy's defaults (1024 requests), far too low for long streams.
func circuitBreakers(o Options) *cluster.CircuitBreakers {
	n := wrapperspb.UInt32(o.MaxRequests)
	return &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
		Priority:           core.RoutingPriority_DEFAULT,
		MaxConnections:     n,
		MaxPendingRequests: n,
		MaxRequests:        n,
		MaxRetries:         wrapperspb.UInt32(3),
	}}}
}
