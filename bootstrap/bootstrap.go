// Package bootstrap writes the Envoy bootstrap that points Envoy at kvgate's xDS server.
// It owns no step of a request or a KV event; it configures Envoy, which does R1 and R7.
package bootstrap

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreams "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kvgate/kvgate/envoy"
)

// XDSCluster is the name of the static cluster Envoy reaches kvgate's xDS server through.
const XDSCluster = "kvgate_xds"

// Config says where kvgate's xDS server is and who this Envoy is.
type Config struct {
	// XDS is the xDS server, host:port (a hostname is resolved by Envoy).
	XDS string `json:"xds"`
	// NodeID is the Envoy node id (default "kvgate-envoy"); kvgate serves every node the
	// same configuration, the id shows in its logs.
	NodeID string `json:"nodeID,omitempty"`
	// Cluster is the Envoy node cluster (default "kvgate").
	Cluster string `json:"cluster,omitempty"`
	// Admin is the admin interface address, host:port (default 127.0.0.1:9901).
	Admin string `json:"admin,omitempty"`
	// Delta selects incremental xDS (DELTA_GRPC) instead of state of the world.
	Delta bool `json:"delta,omitempty"`
	// TLS, when set, connects to the xDS server over TLS: CA verifies the server, Cert and
	// Key are Envoy's client certificate for mTLS, SNI the server name to ask for.
	TLS *TLS `json:"tls,omitempty"`
}

// TLS names PEM files as Envoy will find them on its own filesystem.
type TLS struct {
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	CA   string `json:"ca,omitempty"`
	SNI  string `json:"sni,omitempty"`
}

// Build returns the bootstrap: admin, node, ADS over gRPC to kvgate for listeners and
// clusters (routes and endpoints follow over the same stream), and the static cluster of
// the xDS server over HTTP/2. The result passes Envoy's proto validation.
func Build(cfg Config) (*bootstrapv3.Bootstrap, error) {
	if cfg.NodeID == "" {
		cfg.NodeID = "kvgate-envoy"
	}
	if cfg.Cluster == "" {
		cfg.Cluster = "kvgate"
	}
	if cfg.Admin == "" {
		cfg.Admin = "127.0.0.1:9901"
	}
	if cfg.XDS == "" {
		return nil, errors.New("bootstrap: no xDS server address")
	}
	xdsAddr, err := socketAddress(cfg.XDS)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: xds: %w", err)
	}
	adminAddr, err := socketAddress(cfg.Admin)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: admin: %w", err)
	}
	if t := cfg.TLS; t != nil && (t.Cert == "") != (t.Key == "") {
		return nil, errors.New("bootstrap: TLS needs both a certificate and a key, or neither")
	}

	apiType := core.ApiConfigSource_GRPC
	if cfg.Delta {
		apiType = core.ApiConfigSource_DELTA_GRPC
	}
	ads := &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
	xds := &cluster.Cluster{
		Name:                 XDSCluster,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: XDSCluster,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: xdsAddr}},
				}},
			}}}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": envoy.Any(&upstreams.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreams.HttpProtocolOptions_ExplicitHttpConfig_{
					ExplicitHttpConfig: &upstreams.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreams.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
							Http2ProtocolOptions: &core.Http2ProtocolOptions{
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
	}
	if net.ParseIP(xdsAddr.GetAddress()) == nil {
		xds.ClusterDiscoveryType = &cluster.Cluster_Type{Type: cluster.Cluster_STRICT_DNS}
		xds.DnsLookupFamily = cluster.Cluster_V4_PREFERRED
	}
	if cfg.TLS != nil {
		xds.TransportSocket = envoy.UpstreamTLS(cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA, cfg.TLS.SNI)
	}
	b := &bootstrapv3.Bootstrap{
		Node: &core.Node{Id: cfg.NodeID, Cluster: cfg.Cluster},
		Admin: &bootstrapv3.Admin{
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: adminAddr}},
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &core.ApiConfigSource{
				ApiType:             apiType,
				TransportApiVersion: core.ApiVersion_V3,
				GrpcServices: []*core.GrpcService{{
					TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSCluster}},
				}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: ads,
			CdsConfig: ads,
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{xds}},
	}
	if err := envoy.Validate(b); err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// YAML is Build rendered as YAML, ready for `envoy -c`.
func YAML(cfg Config) ([]byte, error) {
	b, err := Build(cfg)
	if err != nil {
		return nil, err
	}
	return envoy.ToYAML(b)
}

func socketAddress(hostport string) (*core.SocketAddress, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || host == "" {
		return nil, fmt.Errorf("address %q: want host:port with a port 1-65535", hostport)
	}
	return &core.SocketAddress{Address: host, PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(p)}}, nil
}
