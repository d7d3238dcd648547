package router

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/tokenizer"
)

// Config configures a Router. Zero durations and sizes take the defaults of DefaultConfig.
type Config struct {
	// Policy is kv (default), round-robin, random, least-load or approx-prefix.
	Policy string
	// Models maps served model names to tokenizers and block sizes; nil means
	// tokenizer.DefaultModelMap().
	Models *tokenizer.ModelMap
	// LazyTokenizers leaves each model's tokenizer to be loaded by its first request instead
	// of when an endpoint serving the model arrives (New, SetEndpoints). For callers that
	// only Pick with token ids (replay), which would load a tokenizer they never use.
	LazyTokenizers bool
	// Adapters maps LoRA adapter names (requested as the model) to their base model in
	// Models; an adapter's blocks hash under its own seed, as vLLM's do.
	Adapters map[string]string
	// LoRA lets the router load adapters of Adapters onto engines at run time (lora.go).
	LoRA LoRAConfig
	// Endpoints is the initial endpoint set (SetEndpoints replaces it).
	Endpoints []Endpoint

	// Scoring weights the kv cost (tier credit, overlap weight, temperature).
	Scoring Scoring
	// TierCredits is how cached blocks in the lower tiers are credited: "fixed" (default)
	// uses Scoring.TierCredit as given; "derived" replaces it with Tiers.Credits(), the
	// prefill time a block there saves net of loading it.
	TierCredits string
	// Tiers is the engines' prefill speed and the tiers' and network's bandwidths, for
	// derived credits and P2P pulls; the zero value means DefaultTierModel().
	Tiers TierModel
	// P2P turns the cluster-wide cache on (kv policy, aggregated targets): when another
	// endpoint holds a longer prefix of the prompt (in any tier) than a candidate, the
	// candidate is credited with pulling it (Tiers.RemoteCredit per block, scaled by the
	// fixed CPU credit over the derived one under fixed credits), so a busy holder
	// can hand its prefix to a less-loaded endpoint; Decision.Pull then names the source.
	// Only pulls of at least P2PMinTokens more than the target holds are considered; 0 takes
	// Tiers.PullCrossover(), where pulling starts to beat recomputing.
	P2P          bool
	P2PMinTokens int
	// MaxFallbacks bounds the ordered alternatives returned with a pick.
	MaxFallbacks int
	// MaxModelLen maps model names to their context length (prompt plus output tokens);
	// prompts that cannot fit are refused with a 400 before they reach an engine. A model
	// not listed takes the largest max_model_len its endpoints report on /v1/models (asked
	// once per endpoint, after its first successful scrape); unknown means no check.
	MaxModelLen map[string]int
	// MaxBodyBytes rejects larger bodies with 413; the front doors check it first.
	MaxBodyBytes int64
	// ForceStreamUsage turns stream_options.include_usage on in streamed requests so the
	// front door can account usage; Decision.UsageForced says when the client did not ask.
	ForceStreamUsage bool

	// Saturation: an endpoint whose engine reports more than QueueThreshold waiting
	// requests or KV usage above KVUsageThreshold (0..1) is saturated; 0 turns a check off.
	// Saturated endpoints are picked only when no other is eligible, and then only when Shed
	// is off (Shed answers 429 instead).
	QueueThreshold   float64
	KVUsageThreshold float64
	Shed             bool
	// MaxInflight saturates an endpoint holding this many requests the router routed and
	// that have not ended (0: no limit). Unlike the engine's reports, it is exact at once.
	MaxInflight int

	// Admission queue (docs/TRAFFIC.md): when every eligible endpoint is saturated, requests
	// wait, per model, in priority bands, fair-queued by fairness ID within a band by deficit
	// round robin charged in uncached prompt tokens (FairnessQuantum tokens per round).
	// QueueSize bounds each band (0: DefaultQueueSize; negative: no queue, saturated
	// endpoints are picked as before) and QueueTTL the wait (0: DefaultQueueTTL).
	// DefaultPriority is the band of requests without HeaderPriority, unless ModelPriority
	// names their model; negative bands are sheddable (rejected at once under saturation).
	QueueSize       int
	QueueTTL        time.Duration
	DefaultPriority int
	ModelPriority   map[string]int
	FairnessQuantum int

	// Session affinity (docs/TRAFFIC.md): SessionAffinity is soft (default: the session's
	// endpoint is preferred until it is saturated), hard (always, waiting for it) or off.
	// Bindings are forgotten after SessionTTL idle (0: DefaultSessionTTL).
	SessionAffinity string
	SessionTTL      time.Duration

	// ScrapeInterval is how often each engine's /metrics is read (negative: never);
	// readings older than MetricsStaleAfter are ignored.
	ScrapeInterval    time.Duration
	ScrapeTimeout     time.Duration
	MetricsStaleAfter time.Duration
	// UnhealthyFor is how long an endpoint stays out after a connection failure (scrape or
	// proxied request).
	UnhealthyFor time.Duration

	// ApproxTTL and ApproxCapacity bound what approximate mode remembers per endpoint
	// (endpoints without KV events): prefixes routed there, for ApproxTTL, at most
	// ApproxCapacity blocks.
	ApproxTTL      time.Duration
	ApproxCapacity int
	// PendingTTL is how long the kv policy credits an endpoint WITH events for a prefix it
	// was just sent but has not reported yet (its prefill may still be running): requests
	// that share a prefix and arrive together follow each other instead of spreading before
	// the first BlockStored arrives. 0 takes the default (30 s); negative turns it off.
	PendingTTL time.Duration
	// ModelGrace is how long a model that some endpoint served stays known after the last
	// one leaves: requests for it get 503 (retry) rather than 404 (no such model) while
	// discovery is briefly empty, as after a Consul agent restart. 0 takes the default
	// (5 min); negative turns it off.
	ModelGrace time.Duration
	// TextChunk, TextMaxChunks and TextCapacity configure approx-prefix: the request text is
	// hashed in TextChunk-character chunks, at most TextMaxChunks of them, and each endpoint
	// remembers at most TextCapacity chunks (LRU).
	TextChunk     int
	TextMaxChunks int
	TextCapacity  int

	// Conditional disaggregation (see docs/DISAGG.md), when prefill-role endpoints serve the
	// model: a request is prefilled remotely only when its uncached prompt (prompt tokens less
	// the decode target's cached prefix) is at least DisaggMinUncachedTokens and at least
	// DisaggMinUncachedRatio (0..1) of the prompt, and some prefill endpoint holds at most
	// DisaggMaxPrefillTokens in-flight prefill tokens and reports at most
	// DisaggMaxPrefillQueue waiting requests (0 turns either check off).
	DisaggMinUncachedTokens int
	DisaggMinUncachedRatio  float64
	DisaggMaxPrefillTokens  int64
	DisaggMaxPrefillQueue   float64

	// KVEventLimits bounds what an engine's KV-event publisher (or replay socket) may send
	// the router's ZMQ subscribers; zero fields take engine's defaults (64 MiB).
	KVEventLimits engine.ZMQLimits

	// Seed seeds tie-breaking and sampling; 0 picks a random seed.
	Seed uint64
	// Now is the clock (approximate-mode TTLs, health, staleness); nil means time.Now.
	// Replays pass virtual time.
	Now func() time.Time
	// HTTPClient scrapes metrics; nil means a client with ScrapeTimeout (and EngineTLS).
	HTTPClient *http.Client
	// EngineTLS is the client TLS configuration for endpoints with TLS set (scrapes,
	// /v1/models, LoRA calls) when HTTPClient is nil; nil means the system roots and no
	// client certificate. See tlsconfig.Files.Client.
	EngineTLS *tls.Config
	// EventSource, when set, is asked for each endpoint's KV-event source as the endpoint
	// starts (kvgate router answers with workerd's relay client for endpoints that name a
	// workerd); a source it returns also reports the endpoint's load and health, so the
	// endpoint is not scraped. nil, or a nil answer, means the engine's own ZMQ publisher
	// (KVEvents) and scraping. It is called under the router's lock: it must not call the
	// Router.
	EventSource func(Endpoint) EventSource
	// Tracer, when set, records each Route as a span (SpanRoute, with SpanTokenize and
	// SpanPick children) under the caller's span in ctx; nil records nothing at no cost.
	Tracer trace.Tracer
}

// DefaultConfig returns the defaults: policy kv, default scoring, 2 fallbacks, 16 MiB bodies,
// stream usage forced on, queue threshold 32, KV usage threshold 0.95, no shedding, scraping
// every 250 ms, approximate mode 120 s / 1M blocks, approx-prefix 64-character chunks (at
// most 256, 31,250 per endpoint, as the Inference Extension's prefix scorer).
func DefaultConfig() Config {
	return Config{
		Policy:            PolicyKV,
		Scoring:           DefaultScoring(),
		MaxFallbacks:      2,
		MaxBodyBytes:      openai.DefaultMaxBodyBytes,
		ForceStreamUsage:  true,
		QueueThreshold:    32,
		KVUsageThreshold:  0.95,
		ScrapeInterval:    250 * time.Millisecond,
		ScrapeTimeout:     2 * time.Second,
		MetricsStaleAfter: 2 * time.Second,
		UnhealthyFor:      5 * time.Second,
		ApproxTTL:         120 * time.Second,
		PendingTTL:        30 * time.Second,
		ModelGrace:        5 * time.Minute,
		ApproxCapacity:    1 << 20,
		TextChunk:         64,
		TextMaxChunks:     256,
		TextCapacity:      31250,

		DisaggMinUncachedTokens: DefaultDisaggMinUncachedTokens,
		DisaggMinUncachedRatio:  DefaultDisaggMinUncachedRatio,
		DisaggMaxPrefillTokens:  DefaultDisaggMaxPrefillTokens,
		DisaggMaxPrefillQueue:   DefaultDisaggMaxPrefillQueue,
	}
}

// Conditional-disaggregation defaults, Dynamo's: stay aggregated under 2,048 uncached tokens
// or under 70% uncached; a prefill endpoint is saturated past 65,536 in-flight prefill tokens
// (a few seconds of prefill for an 8B model on one H100) or 8 waiting requests.
const (
	DefaultDisaggMinUncachedTokens = 2048
	DefaultDisaggMinUncachedRatio  = 0.70
	DefaultDisaggMaxPrefillTokens  = 65536
	DefaultDisaggMaxPrefillQueue   = 8
)

// withDefaults fills zero fields from DefaultConfig and checks the rest.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Policy == "" {
		c.Policy = d.Policy
	}
	if c.Models == nil {
		c.Models = tokenizer.DefaultModelMap()
	}
	if c.Scoring == (Scoring{}) {
		c.Scoring = d.Scoring
	}
	if err := c.applyTiers(); err != nil {
		return c, err
	}
	if c.MaxFallbacks < 0 {
		c.MaxFallbacks = 0
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = d.MaxBodyBytes
	}
	if c.ScrapeInterval == 0 {
		c.ScrapeInterval = d.ScrapeInterval
	}
	if c.ScrapeTimeout <= 0 {
		c.ScrapeTimeout = d.ScrapeTimeout
	}
	if c.MetricsStaleAfter <= 0 {
		c.MetricsStaleAfter = d.MetricsStaleAfter
	}
	if c.UnhealthyFor <= 0 {
		c.UnhealthyFor = d.UnhealthyFor
	}
	if c.ApproxTTL <= 0 {
		c.ApproxTTL = d.ApproxTTL
	}
	if c.PendingTTL == 0 {
		c.PendingTTL = d.PendingTTL
	}
	if c.ModelGrace == 0 {
		c.ModelGrace = d.ModelGrace
	}
	if c.ApproxCapacity == 0 {
		c.ApproxCapacity = d.ApproxCapacity
	}
	if c.TextChunk <= 0 {
		c.TextChunk = d.TextChunk
	}
	if c.TextMaxChunks <= 0 {
		c.TextMaxChunks = d.TextMaxChunks
	}
	if c.TextCapacity == 0 {
		c.TextCapacity = d.TextCapacity
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if err := c.trafficDefaults(); err != nil {
		return c, err
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: c.ScrapeTimeout}
		if c.EngineTLS != nil {
			t := http.DefaultTransport.(*http.Transport).Clone()
			t.TLSClientConfig = c.EngineTLS.Clone() // a Transport adds its ALPN protocols to its config: one each
			c.HTTPClient.Transport = t
		}
	}
	if c.QueueThreshold < 0 || c.KVUsageThreshold < 0 {
		return c, errors.New("router: saturation thresholds must not be negative")
	}
	if c.DisaggMinUncachedTokens < 0 || c.DisaggMinUncachedRatio < 0 || c.DisaggMinUncachedRatio > 1 ||
		c.DisaggMaxPrefillTokens < 0 || c.DisaggMaxPrefillQueue < 0 {
		return c, errors.New("router: disaggregation thresholds must not be negative (and the ratio at most 1)")
	}
	if c.LoRA.LoadTimeout <= 0 {
		c.LoRA.LoadTimeout = DefaultLoRALoadTimeout
	}
	if c.LoRA.MissBlocks <= 0 {
		c.LoRA.MissBlocks = DefaultLoRAMissBlocks
	}
	for a := range c.LoRA.Paths {
		if _, ok := c.Adapters[a]; !ok {
			return c, fmt.Errorf("router: adapter %q has a load path but no base model in Adapters", a)
		}
	}
	for a, base := range c.Adapters {
		if _, _, err := c.Models.Lookup(base); err != nil {
			return c, fmt.Errorf("router: adapter %q: base model: %w", a, err)
		}
	}
	return c, nil
}
