package router

// Header and metadata names of the Endpoint Picker Protocol (Gateway API Inference Extension)
// and kvgate's own explanation headers.
const (
	// HeaderDestination carries the pick: "ip:port" of the target, then ordered fallbacks,
	// comma-separated. The same key holds the same value in MetadataNamespace.
	HeaderDestination = "x-gateway-destination-endpoint"
	// HeaderDestinationServed is the endpoint that actually served (set by the proxy on the
	// response path, header or MetadataNamespace).
	HeaderDestinationServed = "x-gateway-destination-endpoint-served"
	// SubsetNamespace / SubsetKey: the proxy's subset hint in the request's filter metadata,
	// the only endpoints that may be picked.
	SubsetNamespace = "envoy.lb.subset_hint"
	SubsetKey       = "x-gateway-destination-endpoint-subset"
	// MetadataNamespace is the dynamic-metadata namespace of the pick.
	MetadataNamespace = "envoy.lb"

	// HeaderEndpoint names the endpoint (ip:port) that was picked.
	HeaderEndpoint = "x-kvgate-endpoint"
	// HeaderCachedBlocks is the number of leading prompt blocks the router saw cached on it.
	HeaderCachedBlocks = "x-kvgate-cached-blocks"
	// HeaderPrefiller is the prefill endpoint (ip:port) the decode side's sidecar reads
	// (llm-d's name for it).
	HeaderPrefiller = "x-prefiller-host-port"
	// HeaderPrefillEndpoint is kvgate's name for the same, echoed on the response.
	HeaderPrefillEndpoint = "x-kvgate-prefill-endpoint"
	// HeaderPrefillFallback, on an engine's response, says the decode sidecar could not use
	// the prefill endpoint and prefilled locally (the value is why); front doors then do not
	// echo HeaderPrefillEndpoint.
	HeaderPrefillFallback = "x-kvgate-prefill-fallback"
	// HeaderKVCacheSource names the endpoint (ip:port of its OpenAI server) the target should
	// pull the prompt's cached prefix from (Decision.Pull): llm-d's header, which its routing
	// sidecar turns into kv_transfer_params.remote_kv_source and kvgate's sim reads itself.
	HeaderKVCacheSource = "x-kv-cache-source-host-port"
)

// Traffic-management request headers (docs/TRAFFIC.md) and the rejection answers.
const (
	// HeaderPriority is the request's priority band, an integer in [MinPriority, MaxPriority];
	// higher is served first, negative is sheddable.
	HeaderPriority = "x-kvgate-priority"
	// HeaderFairnessID names the flow the request is fair-queued in within its band (a
	// tenant); without it the API key's hash is used, else one shared ID.
	HeaderFairnessID = "x-kvgate-fairness-id"
	// HeaderSessionID binds the request's session to one endpoint (session affinity).
	HeaderSessionID = "x-kvgate-session-id"
	// HeaderRejectedReason, on an answer the router refused, says why (a Rejected* value).
	HeaderRejectedReason = "x-kvgate-rejected-reason"
	// HeaderRetryAfter is the standard Retry-After, in seconds, on admission's 429s.
	HeaderRetryAfter = "Retry-After"
)

// Values of HeaderRejectedReason, llm-d's names.
const (
	RejectedSheddable   = "rejected-sheddable"    // 429: sheddable request under saturation
	RejectedQueueFull   = "rejected-queue-full"   // 429: its band's queue is full
	RejectedTTL         = "rejected-ttl"          // 429: waited its band's TTL without room
	RejectedNoEndpoints = "rejected-no-endpoints" // 503: no endpoint can serve the model now
)
