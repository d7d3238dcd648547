package xds

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/kvgate/kvgate/configfile"
	"github.com/kvgate/kvgate/tlsconfig"
)

// Model is everything the translation needs: where Envoy listens, where the router is, which
// engines serve which model, and the knobs. It is plain data; Translate never changes it.
type Model struct {
	// Listener is the address Envoy serves the OpenAI API on, host:port (default 127.0.0.1:8080: loopback unless told).
	Listener string `json:"listener,omitempty"`
	// Router lists the ext_proc addresses of the kvgate routers, host:port each; hostnames are
	// resolved by Envoy (STRICT_DNS), IPs are used as they are.
	Router []string `json:"router"`
	// RouterTLS, when set, makes Envoy talk to the router over TLS: CA verifies the router's
	// certificate (for ServerName, default the router's host), Cert and Key are Envoy's
	// client certificate for mTLS. The paths are on Envoy's host.
	RouterTLS *tlsconfig.Files `json:"router_tls,omitempty"`
	// Pools maps a model name to the engines serving it.
	Pools map[string][]Endpoint `json:"pools,omitempty"`
	// Options are the tunables, zero values meaning the defaults documented on each field.
	Options Options `json:"options,omitempty"`
}

// Endpoint is one engine as the translation sees it: the fields Envoy's clusters and endpoint
// metadata need, with the JSON names of the --config file. It is a separate type from
// discovery.Endpoint (which carries KV-event and metrics fields Envoy never sees, and whose
// file schema lives in discovery) because this one is part of xds's own config schema.
// Role takes discovery's RoleAggregated, RolePrefill or RoleDecode.
type Endpoint struct {
	// Name identifies the engine (for example its Consul service ID).
	Name string `json:"name,omitempty"`
	// Address is ip:port of the engine's OpenAI server; Envoy's EDS takes IPs only.
	Address string `json:"address"`
	// Role is aggregated (default), prefill or decode. Prefill engines never receive client
	// requests, so they are left out of the pools.
	Role string `json:"role,omitempty"`
	// Healthy marks the engine's health as discovery reports it.
	Healthy bool `json:"healthy"`
	// Workerd is the node daemon's address, carried as endpoint metadata.
	Workerd string `json:"workerd,omitempty"`
	// BlockSize is the engine's KV block size in tokens, carried as endpoint metadata.
	BlockSize int `json:"block_size,omitempty"`
}

// Body modes of the ext_proc filter, as kvgate spells them.
const (
	BodyBuffered   = "buffered"
	BodyStreamed   = "streamed"
	BodyFullDuplex = "full-duplex"
)

// Options are the tunables of the generated configuration.
type Options struct {
	// RequestBody is how Envoy sends request bodies to the router: buffered (default) or
	// full-duplex.
	RequestBody string `json:"request_body,omitempty"`
	// ResponseBody is how Envoy sends response bodies to the router: streamed (default) or
	// full-duplex. A full-duplex body has its trailers sent too, as Envoy requires.
	ResponseBody string `json:"response_body,omitempty"`
	// FailureModeAllow lets requests through when the router cannot be reached. Off by
	// default: without the router there is no endpoint to go to.
	FailureModeAllow bool `json:"failure_mode_allow,omitempty"`
	// MessageTimeout bounds how long Envoy waits for each router reply (default 5s; the
	// pick waits for a buffered body to be tokenized).
	MessageTimeout Duration `json:"message_timeout,omitempty"`
	// StreamIdleTimeout closes a stream silent this long; SSE streams stay silent while a
	// long prompt prefills, so the default is generous (5m).
	StreamIdleTimeout Duration `json:"stream_idle_timeout,omitempty"`
	// RequestTimeout bounds a whole inference request; zero (default) means none, since
	// generations can run for minutes.
	RequestTimeout Duration `json:"request_timeout,omitempty"`
	// ConnectTimeout bounds upstream connects (default 2s).
	ConnectTimeout Duration `json:"connect_timeout,omitempty"`
	// HealthCheckInterval is how often Envoy health-checks the router and the engines
	// (default 5s).
	HealthCheckInterval Duration `json:"health_check_interval,omitempty"`
	// EngineHealthPath is the HTTP path Envoy health-checks engines on (default /health).
	EngineHealthPath string `json:"engine_health_path,omitempty"`
	// MaxRequests caps concurrent requests per upstream cluster (default 100000: inference
	// streams are long, Envoy's default of 1024 is far too low).
	MaxRequests uint32 `json:"max_requests,omitempty"`
}

// Duration is a time.Duration written as Go duration text ("250ms", "5m") in YAML and JSON.
type Duration time.Duration

// MarshalJSON writes the duration as text.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads Go duration text.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be text such as \"2s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %s is negative", s)
	}
	*d = Duration(v)
	return nil
}

// renamed are old keys of the model that are not simply the camelCase of the new ones.
var renamed = map[string]string{"sni": "server_name"}

// ParseModel reads a Model from YAML or JSON, strictly: an unknown key is an error naming its
// line. Keys are snake_case; the old camelCase keys (routerTLS, messageTimeout, ...) and sni
// are still read, each reported in the returned warnings.
func ParseModel(data []byte) (Model, []string, error) {
	var m Model
	meta, err := configfile.Decode(data, &m, renamed)
	if err != nil {
		return Model{}, nil, fmt.Errorf("xds model: %w", err)
	}
	return m, meta.Warnings, nil
}

// withDefaults returns o with every zero field replaced by its default.
func (o Options) withDefaults() Options {
	if o.RequestBody == "" {
		o.RequestBody = BodyBuffered
	}
	if o.ResponseBody == "" {
		o.ResponseBody = BodyStreamed
	}
	if o.MessageTimeout == 0 {
		o.MessageTimeout = Duration(5 * time.Second)
	}
	if o.StreamIdleTimeout == 0 {
		o.StreamIdleTimeout = Duration(5 * time.Minute)
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = Duration(2 * time.Second)
	}
	if o.HealthCheckInterval == 0 {
		o.HealthCheckInterval = Duration(5 * time.Second)
	}
	if o.EngineHealthPath == "" {
		o.EngineHealthPath = "/health"
	}
	if o.MaxRequests == 0 {
		o.MaxRequests = 100000
	}
	return o
}
