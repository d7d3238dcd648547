package xds

import (
	"fmt"
	"github.com/kvgate/kvgate/envoy"
	"net"
	"strconv"
	"time"

	mutationrules "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	extproc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	earlymutation "github.com/envoyproxy/go-control-plane/envoy/extensions/http/early_header_mutation/header_mutation/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Envoy's well-known filter names.
const (
	extProcFilterName = "envoy.filters.http.ext_proc"
	routerFilterName  = "envoy.filters.http.router"
	hcmFilterName     = "envoy.filters.network.http_connection_manager"
)

// DefaultEnvoyListen is where Envoy serves the OpenAI API unless the model says otherwise:
// loopback, so exposing it to other hosts is an explicit choice (--envoy-listen 0.0.0.0:8080).
const DefaultEnvoyListen = "127.0.0.1:8080"

// buildListener is the OpenAI listener: one HTTP connection manager speaking HTTP/1.1 and
// HTTP/2, the ext_proc filter that asks the router for an endpoint, then Envoy's router.
func buildListener(m Model, o Options) (*listener.Listener, error) {
	addr := m.Listener
	if addr == "" {
		addr = DefaultEnvoyListen
	}
	sa, err := socketAddress(addr)
	if err != nil {
		return nil, fmt.Errorf("listener: %w", err)
	}
	ep := ExtProcFilter(o)
	mgr := &hcm.HttpConnectionManager{
		CodecType:  hcm.HttpConnectionManager_AUTO,
		StatPrefix: "kvgate",
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			RouteConfigName: RouteConfigName,
			ConfigSource:    adsSource(),
		}},
		HttpFilters: []*hcm.HttpFilter{
			{Name: extProcFilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: envoy.Any(ep)}},
			{Name: routerFilterName, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: envoy.Any(&routerfilter.Router{})}},
		},
		// SSE streams sit silent while a long prompt prefills: the idle timeout is generous
		// and the whole-request timeout is off (routes bound inference requests instead).
		StreamIdleTimeout: durationpb.New(time.Duration(o.StreamIdleTimeout)),
		RequestTimeout:    durationpb.New(0),
		// Headers must arrive quickly even when bodies may not.
		RequestHeadersTimeout: durationpb.New(10 * time.Second),
		Http2ProtocolOptions: &core.Http2ProtocolOptions{
			MaxConcurrentStreams:        wrapperspb.UInt32(1024),
			InitialStreamWindowSize:     wrapperspb.UInt32(1 << 20),
			InitialConnectionWindowSize: wrapperspb.UInt32(16 << 20),
		},
		// The destination is the router's to choose: a client sending the picker's headers
		// itself is stripped before any filter runs (ext_proc sets them afterwards).
		EarlyHeaderMutationExtensions: []*core.TypedExtensionConfig{{
			Name:        "envoy.http.early_header_mutation.header_mutation",
			TypedConfig: envoy.Any(stripPickerHeaders()),
		}},
		NormalizePath:    wrapperspb.Bool(true),
		MergeSlashes:     true,
		UseRemoteAddress: wrapperspb.Bool(true),
	}
	return &listener.Listener{
		Name:    ListenerName,
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: sa}},
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{
				Name:       hcmFilterName,
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: envoy.Any(mgr)},
			}},
		}},
	}, nil
}

// stripPickerHeaders removes the headers only the router may set.
func stripPickerHeaders() *earlymutation.HeaderMutation {
	var ms []*mutationrules.HeaderMutation
	for _, h := range []string{DestinationHeader, ModelHeader} {
		ms = append(ms, &mutationrules.HeaderMutation{Action: &mutationrules.HeaderMutation_Remove{Remove: h}})
	}
	return &earlymutation.HeaderMutation{Mutations: ms}
}

// ExtProcFilter is the ext_proc filter configuration kvgate's router expects: request headers
// and the request body (buffered, or full-duplex streamed) so it can parse the OpenAI request
// and pick; response headers and streamed body so it can account usage and release load; the
// picked endpoint accepted as dynamic metadata in namespace envoy.lb.
func ExtProcFilter(o Options) *extproc.ExternalProcessor {
	o = o.withDefaults()
	mode := &extproc.ProcessingMode{
		RequestHeaderMode:   extproc.ProcessingMode_SEND,
		ResponseHeaderMode:  extproc.ProcessingMode_SEND,
		RequestBodyMode:     extproc.ProcessingMode_BUFFERED,
		ResponseBodyMode:    extproc.ProcessingMode_STREAMED,
		RequestTrailerMode:  extproc.ProcessingMode_SKIP,
		ResponseTrailerMode: extproc.ProcessingMode_SKIP,
	}
	// A FULL_DUPLEX_STREAMED body needs its trailers sent: they are how the processor learns
	// the body ended when the last chunk carried no end-of-stream flag.
	if o.RequestBody == BodyFullDuplex {
		mode.RequestBodyMode = extproc.ProcessingMode_FULL_DUPLEX_STREAMED
		mode.RequestTrailerMode = extproc.ProcessingMode_SEND
	}
	if o.ResponseBody == BodyFullDuplex {
		mode.ResponseBodyMode = extproc.ProcessingMode_FULL_DUPLEX_STREAMED
		mode.ResponseTrailerMode = extproc.ProcessingMode_SEND
	}
	return &extproc.ExternalProcessor{
		GrpcService: &core.GrpcService{
			TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{
				ClusterName: RouterCluster,
			}},
			Timeout: durationpb.New(time.Duration(o.MessageTimeout)),
		},
		FailureModeAllow:  o.FailureModeAllow,
		ProcessingMode:    mode,
		MessageTimeout:    durationpb.New(time.Duration(o.MessageTimeout)),
		MaxMessageTimeout: durationpb.New(time.Duration(o.MessageTimeout) * 5),
		// The router's mode_override: a response body it needs nothing from is skipped
		// (kvgate router --skip-response-body), and with body mode NONE the stream is kept
		// open to the request's end. Envoy ignores it in FULL_DUPLEX_STREAMED.
		AllowModeOverride: true,
		MetadataOptions: &extproc.MetadataOptions{
			ReceivingNamespaces: &extproc.MetadataOptions_MetadataNamespaces{
				Untyped: []string{DestinationMetadataNamespace},
			},
		},
	}
}

// socketAddress parses host:port into Envoy's SocketAddress.
func socketAddress(hostport string) (*core.SocketAddress, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, fmt.Errorf("address %q: port must be 1-65535", hostport)
	}
	if host == "" {
		return nil, fmt.Errorf("address %q: no host", hostport)
	}
	return &core.SocketAddress{
		Address:       host,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(p)},
	}, nil
}

// adsSource is the config source that says "over the ADS stream you already have".
func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}
