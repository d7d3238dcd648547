package router

import (
	"fmt"
	"net"
	"slices"
)

// Role is what an endpoint does in (dis)aggregated serving. Its values are the strings of
// discovery's RoleAggregated, RolePrefill and RoleDecode (Consul metadata, endpoint files);
// the router cannot import discovery (docs/ARCHITECTURE.md), so it keeps a typed copy, and
// cmd/kvgate's TestRolesAgree holds the two sets equal.
type Role string

// The roles.
const (
	RoleAggregated Role = "aggregated" // prefill and decode
	RolePrefill    Role = "prefill"    // prefill only, hands KV to a decode endpoint
	RoleDecode     Role = "decode"     // decode, after a remote prefill
)

// Endpoint is one engine's OpenAI HTTP server as the router knows it. It differs from
// discovery.Endpoint on purpose: only healthy endpoints reach the router (no Healthy field),
// the role is typed, and there is no raw metadata; cmd/kvgate converts (routerEndpoints).
type Endpoint struct {
	Name       string   // unique id, e.g. "sim-0" or "10.0.0.5:8000"
	Address    string   // ip:port of the engine's OpenAI HTTP server
	Models     []string // served model names (base models and LoRA adapters)
	Role       Role     // "" means aggregated
	BlockSize  int      // KV block size in tokens; 0 = the model map's
	KVEvents   string   // ZMQ endpoint of its KV events, or trtllm-serve's http://host:port/kv_cache_events ("" = none: approximate mode)
	KVBind     bool     // bind instead of connect (publishers that dial, e.g. llm-d-inference-sim)
	KVReplay   string   // ZMQ replay endpoint, optional
	KVTopic    string   // subscription topic prefix; "" = every topic
	MetricsURL string   // "" = http://Address/metrics
	Workerd    string   // workerd gRPC address when the engine is behind a workerd
	// TLS means the engine serves HTTPS: the router's scrapes, /v1/models and LoRA calls and
	// the gateway's proxy reach it at https://Address with the engine client TLS
	// configuration (Config.EngineTLS, gateway.Config.EngineTLS). Address stays host:port.
	TLS bool
}

// URL is the base URL of the engine's OpenAI server: http://Address, or https://Address
// when TLS.
func (e *Endpoint) URL() string {
	if e.TLS {
		return "https://" + e.Address
	}
	return "http://" + e.Address
}

// Serves reports whether e serves model.
func (e *Endpoint) Serves(model string) bool { return slices.Contains(e.Models, model) }

func (e *Endpoint) role() Role {
	if e.Role == "" {
		return RoleAggregated
	}
	return e.Role
}

func (e *Endpoint) metricsURL() string {
	if e.MetricsURL != "" {
		return e.MetricsURL
	}
	return e.URL() + "/metrics"
}

func (e *Endpoint) validate() error {
	if e.Name == "" {
		return fmt.Errorf("router: endpoint %q has no name", e.Address)
	}
	if _, _, err := net.SplitHostPort(e.Address); err != nil {
		return fmt.Errorf("router: endpoint %s: address %q is not host:port", e.Name, e.Address)
	}
	switch e.role() {
	case RoleAggregated, RolePrefill, RoleDecode:
	default:
		return fmt.Errorf("router: endpoint %s: unknown role %q", e.Name, e.Role)
	}
	if e.BlockSize < 0 {
		return fmt.Errorf("router: endpoint %s: negative block size", e.Name)
	}
	return nil
}

// same reports whether a and b differ only in ways that keep the endpoint's live state
// (subscriptions, scraping) valid.
func same(a, b Endpoint) bool {
	return a.Address == b.Address && a.KVEvents == b.KVEvents && a.KVBind == b.KVBind &&
		a.KVReplay == b.KVReplay && a.KVTopic == b.KVTopic && a.MetricsURL == b.MetricsURL &&
		a.BlockSize == b.BlockSize && a.Role == b.Role && slices.Equal(a.Models, b.Models) && a.Workerd == b.Workerd &&
		a.TLS == b.TLS
}
