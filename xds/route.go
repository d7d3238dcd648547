package xds

import (
	"github.com/kvgate/kvgate/envoy"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extproc "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// notFoundBody is the OpenAI-shaped error for paths kvgate does not serve.
const notFoundBody = `{"error":{"message":"kvgate serves the OpenAI API and Anthropic /v1/messages under /v1/","type":"invalid_request_error","param":null,"code":"not_found"}}`

// buildRoutes is the route table, in match order (Envoy takes the first route that matches):
//  1. per model and inference path, header x-kvgate-model = model and no picked endpoint:
//     the model's EDS pool (Envoy balances; used when the router leaves the choice to Envoy);
//  2. per inference path (exact): the ORIGINAL_DST cluster, to the endpoint the router picked;
//  3. /v1/models: any engine, without calling the router;
//  4. /v1/ itself: the 404 below (no API lives there);
//  5. any other path under /v1/ (prefix): the picked endpoint; the router passes it through;
//  6. anything else: an OpenAI-shaped 404.
func buildRoutes(models []string, o Options) *route.RouteConfiguration {
	var routes []*route.Route
	for _, model := range models {
		for _, p := range inferencePaths() {
			routes = append(routes, &route.Route{
				Name: ModelCluster(model) + p,
				Match: &route.RouteMatch{
					PathSpecifier: &route.RouteMatch_Path{Path: p},
					Headers: []*route.HeaderMatcher{
						{Name: ModelHeader, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
							MatchPattern: &matcher.StringMatcher_Exact{Exact: model},
						}}},
						{Name: DestinationHeader, HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true},
					},
				},
				Action: &route.Route_Route{Route: inferenceAction(ModelCluster(model), o)},
			})
		}
	}
	for _, p := range inferencePaths() {
		routes = append(routes, &route.Route{
			Name:   PickedCluster + p,
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: p}},
			Action: &route.Route_Route{Route: inferenceAction(PickedCluster, o)},
		})
	}
	routes = append(routes,
		&route.Route{
			Name:  EnginesCluster + PathModels,
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: PathModels}},
			Action: &route.Route_Route{Route: &route.RouteAction{
				ClusterSpecifier: &route.RouteAction_Cluster{Cluster: EnginesCluster},
				Timeout:          durationpb.New(30 * time.Second),
				RetryPolicy: &route.RetryPolicy{
					RetryOn:    "connect-failure,refused-stream,reset,5xx",
					NumRetries: wrapperspb.UInt32(2),
				},
			}},
			// Listing models picks nothing: the router is not asked.
			TypedPerFilterConfig: extProcOff(),
		},
		notFoundRoute("not_found"+PathPassthrough, &route.RouteMatch{PathSpecifier: &route.RouteMatch_Path{Path: PathPassthrough}}),
		&route.Route{
			// Every other API path: the router picks on the headers (no body) or passes the
			// body through unread, to the least loaded engine of the pool.
			Name:   PickedCluster + PathPassthrough,
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: PathPassthrough}},
			Action: &route.Route_Route{Route: inferenceAction(PickedCluster, o)},
		},
		notFoundRoute("not_found", &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}),
	)
	return &route.RouteConfiguration{
		Name: RouteConfigName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    "openai",
			Domains: []string{"*"},
			Routes:  routes,
		}},
	}
}

// inferenceAction: no overall timeout (a generation may stream for minutes), an idle timeout
// between chunks instead.
func inferenceAction(clusterName string, o Options) *route.RouteAction {
	return &route.RouteAction{
		ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName},
		Timeout:          durationpb.New(time.Duration(o.RequestTimeout)),
		IdleTimeout:      durationpb.New(time.Duration(o.StreamIdleTimeout)),
	}
}

// notFoundRoute answers requests matching m with the OpenAI-shaped 404, without the router.
func notFoundRoute(name string, m *route.RouteMatch) *route.Route {
	return &route.Route{
		Name:  name,
		Match: m,
		Action: &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{
			Status: 404,
			Body:   &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: notFoundBody}},
		}},
		TypedPerFilterConfig: extProcOff(),
		ResponseHeadersToAdd: []*core.HeaderValueOption{{
			Header:       &core.HeaderValue{Key: "content-type", Value: "application/json"},
			AppendAction: core.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
		}},
	}
}

// extProcOff disables the ext_proc filter on a route.
func extProcOff() map[string]*anypb.Any {
	return map[string]*anypb.Any{
		extProcFilterName: envoy.Any(&extproc.ExtProcPerRoute{
			Override: &extproc.ExtProcPerRoute_Disabled{Disabled: true},
		}),
	}
}
