package xds

// Resource names kvgate gives Envoy. Stable names keep Envoy's stats and the golden files
// steady across versions.
const (
	// ListenerName is the one listener serving the OpenAI API.
	ListenerName = "kvgate"
	// RouteConfigName is the RDS route configuration the listener's HCM asks for.
	RouteConfigName = "kvgate"
	// RouterCluster is the cluster of kvgate routers (ext_proc over HTTP/2).
	RouterCluster = "kvgate_router"
	// PickedCluster is the ORIGINAL_DST cluster that forwards to the endpoint the router picked.
	PickedCluster = "kvgate_picked"
	// EnginesCluster is the EDS cluster of every serving engine, for /v1/models.
	EnginesCluster = "kvgate_engines"
	// modelClusterPrefix + model name is the EDS cluster of one model's pool.
	modelClusterPrefix = "kvgate_model_"
)

// Header names and metadata keys of the Endpoint Picker Protocol and of kvgate.
const (
	// DestinationHeader carries the picked endpoint, ip:port (Endpoint Picker Protocol).
	DestinationHeader = "x-gateway-destination-endpoint"
	// DestinationMetadataNamespace is the dynamic metadata namespace the router writes the
	// picked endpoint to, under the key DestinationHeader.
	DestinationMetadataNamespace = "envoy.lb"
	// ModelHeader, set by the router (with clear_route_cache) when it leaves the choice of
	// engine to Envoy, sends the request to that model's EDS pool instead.
	ModelHeader = "x-kvgate-model"
	// metadataNamespace holds kvgate's endpoint metadata in EDS.
	metadataNamespace = "kvgate"
)

// Metric names of the xDS server.
const (
	metricSnapshots = "kvgate_xds_snapshots_total"
	metricProblems  = "kvgate_xds_translation_problems"
	metricStreams   = "kvgate_xds_streams_active"
	metricNACKs     = "kvgate_xds_nacks_total"
	metricEndpoints = "kvgate_xds_endpoints"
)

// API paths the listener routes (the router's own: router.PathResponses, anthropic.Path ...).
const (
	PathChatCompletions = "/v1/chat/completions"
	PathCompletions     = "/v1/completions"
	PathResponses       = "/v1/responses"
	PathEmbeddings      = "/v1/embeddings"
	PathMessages        = "/v1/messages" // Anthropic
	PathModels          = "/v1/models"
	// PathPassthrough prefixes every other API path: the router passes those through to a
	// load-aware pick (GET /v1/files/x, POST /v1/audio/...).
	PathPassthrough = "/v1/"
)

// inferencePaths are the paths the router reads the body of to pick an engine, each matched
// exactly; every other path under PathPassthrough is picked too, after them.
func inferencePaths() []string {
	return []string{PathChatCompletions, PathCompletions, PathResponses, PathEmbeddings, PathMessages}
}

// ModelCluster names the EDS cluster of a model's pool.
func ModelCluster(model string) string { return modelClusterPrefix + model }
