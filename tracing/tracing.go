// Package tracing builds a command's OpenTelemetry tracer provider (OTLP over gRPC or HTTP,
// off by default) from flags and the standard OTEL_* variables; it owns no step of a request.
package tracing

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/credentials"

	"github.com/kvgate/kvgate/tlsconfig"
)

// Protocols of Config.Protocol.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http" // OTLP/HTTP with protobuf bodies ("http/protobuf" in OTEL_* variables)
)

// Config says where spans go. The zero value (with no OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT in the environment) is off.
type Config struct {
	// Endpoint is the collector: host:port, or a URL (http:// means plaintext; for HTTP a URL
	// without a path gets /v1/traces). Empty: the OTEL_* variables, else tracing is off.
	Endpoint string
	// Protocol is ProtocolGRPC or ProtocolHTTP. Empty: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
	// OTEL_EXPORTER_OTLP_PROTOCOL, else gRPC.
	Protocol string
	// Insecure sends spans in plaintext. Without it (and without TLS files or an http:// URL)
	// the exporter speaks TLS verified against the system roots, or OTEL_* settings.
	Insecure bool
	// TLS verifies the collector with a CA and presents a client certificate (mTLS).
	TLS tlsconfig.Files
	// SampleRatio is the fraction of new traces recorded, in [0, 1]; a request that arrives
	// with a traceparent follows its sampled flag. 1 leaves OTEL_TRACES_SAMPLER in charge
	// when that is set.
	SampleRatio float64
	// ServiceName is service.name of every span; OTEL_SERVICE_NAME overrides it.
	ServiceName string
}

// AddFlags registers --otlp-endpoint, --otlp-protocol, --otlp-insecure, the --otlp-tls-*
// client flags and --trace-sample-ratio; service is the default service.name.
func (c *Config) AddFlags(fs *pflag.FlagSet, service string) {
	if c.SampleRatio == 0 {
		c.SampleRatio = 1
	}
	c.ServiceName = service
	fs.StringVar(&c.Endpoint, "otlp-endpoint", c.Endpoint, "send OpenTelemetry traces to this OTLP collector (host:port or URL); empty: OTEL_EXPORTER_OTLP_ENDPOINT, else no tracing")
	fs.StringVar(&c.Protocol, "otlp-protocol", c.Protocol, "OTLP protocol: grpc or http (default: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc)")
	fs.BoolVar(&c.Insecure, "otlp-insecure", c.Insecure, "send traces in plaintext (without it the collector is reached over TLS)")
	c.TLS.AddClientFlags(fs, "otlp-", "the OTLP collector")
	fs.Float64Var(&c.SampleRatio, "trace-sample-ratio", c.SampleRatio, "fraction of new traces recorded (0-1); an incoming traceparent's sampled flag is followed")
}

// Enabled reports whether c (with the environment) turns tracing on.
func (c Config) Enabled() bool {
	if b, _ := strconv.ParseBool(os.Getenv("OTEL_SDK_DISABLED")); b {
		return false
	}
	return c.Endpoint != "" || os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Provider holds a command's tracer provider. The zero Provider (tracing off) hands out a nil
// Tracer, which the instrumented packages read as "no spans, no cost".
type Provider struct {
	tp *sdktrace.TracerProvider
}

// New builds the provider c describes: a batching OTLP exporter and a parent-based ratio
// sampler. When c is off it returns the zero Provider and opens no connection. The exporter
// connects lazily; a collector that is down costs dropped spans, never requests.
func New(ctx context.Context, c Config) (*Provider, error) {
	if !c.Enabled() {
		return &Provider{}, nil
	}
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		return nil, fmt.Errorf("tracing: sample ratio %v is not in [0, 1]", c.SampleRatio)
	}
	proto, err := protocol(c.Protocol)
	if err != nil {
		return nil, err
	}
	tc, err := c.TLS.Client()
	if err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	if tc != nil && c.Insecure {
		return nil, errors.New("tracing: --otlp-insecure and --otlp-tls-* exclude each other")
	}
	var exp sdktrace.SpanExporter
	switch proto {
	case ProtocolGRPC:
		var opts []otlptracegrpc.Option
		switch {
		case strings.Contains(c.Endpoint, "://"):
			opts = append(opts, otlptracegrpc.WithEndpointURL(c.Endpoint))
		case c.Endpoint != "":
			opts = append(opts, otlptracegrpc.WithEndpoint(c.Endpoint))
		}
		if c.Insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		if tc != nil {
			opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(tc)))
		}
		exp, err = otlptracegrpc.New(ctx, opts...)
	case ProtocolHTTP:
		var opts []otlptracehttp.Option
		switch {
		case strings.Contains(c.Endpoint, "://"):
			opts = append(opts, otlptracehttp.WithEndpointURL(c.Endpoint))
		case c.Endpoint != "":
			opts = append(opts, otlptracehttp.WithEndpoint(c.Endpoint))
		}
		if c.Insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		}
		if tc != nil {
			opts = append(opts, otlptracehttp.WithTLSClientConfig(tc))
		}
		exp, err = otlptracehttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("tracing: OTLP exporter: %w", err)
	}
	service := c.ServiceName
	if service == "" {
		service = "kvgate"
	}
	// Later detectors win: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES over the default.
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", service)),
		resource.WithTelemetrySDK(),
		resource.WithFromEnv(),
	)
	if err != nil && res == nil {
		return nil, fmt.Errorf("tracing: resource: %w", err)
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithBatcher(exp), sdktrace.WithResource(res)}
	if os.Getenv("OTEL_TRACES_SAMPLER") == "" || c.SampleRatio != 1 {
		opts = append(opts, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.SampleRatio))))
	}
	return &Provider{tp: sdktrace.NewTracerProvider(opts...)}, nil
}

// protocol resolves the OTLP protocol from the flag or the OTEL_* variables.
func protocol(flag string) (string, error) {
	p := flag
	if p == "" {
		p = os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	}
	if p == "" {
		p = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	switch p {
	case "", ProtocolGRPC:
		return ProtocolGRPC, nil
	case ProtocolHTTP, "http/protobuf":
		return ProtocolHTTP, nil
	}
	return "", fmt.Errorf("tracing: OTLP protocol %q is not grpc or http (http/protobuf)", p)
}

// Enabled reports whether p records spans.
func (p *Provider) Enabled() bool { return p != nil && p.tp != nil }

// Tracer returns the tracer named for the instrumented package (for example
// "github.com/kvgate/kvgate/gateway"); nil when tracing is off.
func (p *Provider) Tracer(name string) trace.Tracer {
	if !p.Enabled() {
		return nil
	}
	return p.tp.Tracer(name)
}

// Shutdown flushes the spans not yet sent and stops the exporter, within ctx. It is a no-op
// when tracing is off.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	if err := p.tp.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: flushing spans: %w", err)
	}
	return nil
}
