package kube

// Defaults, as the Gateway API Inference Extension's Endpoint Picker and llm-d name them.
const (
	// DefaultPoolGroup is the API group of the v1 InferencePool.
	DefaultPoolGroup = "inference.networking.k8s.io"
	// AlphaPoolGroup is the group of the older v1alpha2 InferencePool (spec.targetPortNumber,
	// spec.selector as a plain map), still read.
	AlphaPoolGroup = "inference.networking.x-k8s.io"
	// DefaultRoleLabel is llm-d's Pod label for the role an engine plays.
	DefaultRoleLabel = "llm-d.ai/role"
	// DefaultModelLabel is llm-d's Pod label for the model an engine serves.
	DefaultModelLabel = "llm-d.ai/model"
)

// Values of the role label (llm-d's). Any other value (an encoder) is not a text engine the
// router can pick, and its Pod is left out.
const (
	roleLabelPrefill       = "prefill"
	roleLabelDecode        = "decode"
	roleLabelBoth          = "both"
	roleLabelPrefillDecode = "prefill-decode"
)

// Pod annotations that tell the router what a label cannot hold or the pool does not say.
const (
	// AnnotationModels lists the models the Pod's engine serves, comma-separated (model names
	// such as Qwen/Qwen3-8B are not valid label values). It wins over the model label.
	AnnotationModels = "kvgate.io/models"
	// AnnotationKVEventsPort is the port of the engine's ZMQ KV-event publisher on the Pod's IP
	// (the first target port's; the n-th target port uses this port plus n, as vLLM offsets it
	// per data-parallel rank). It wins over Config.KVEventsPort; "0" turns events off.
	AnnotationKVEventsPort = "kvgate.io/kv-events-port"
	// AnnotationKVReplayPort is the port of the publisher's replay socket, offset the same way.
	AnnotationKVReplayPort = "kvgate.io/kv-replay-port"
	// AnnotationBlockSize is the engine's KV block size in tokens.
	AnnotationBlockSize = "kvgate.io/block-size"
	// AnnotationWorkerd is the workerd relay (host:port, or a port on the Pod's IP) that
	// carries the engine's KV events and load.
	AnnotationWorkerd = "kvgate.io/workerd"
)

// Keys of Endpoint.Meta set from Kubernetes.
const (
	MetaNamespace   = "namespace"
	MetaPod         = "pod"
	MetaPool        = "pool"
	MetaAppProtocol = "app_protocol" // the pool's appProtocol: http or kubernetes.io/h2c
)
