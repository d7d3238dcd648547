package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/kvgate/kvgate/tracing"
)

// Instrumentation scopes: the tracer of each package is named for it.
const (
	scopeRouter  = "github.com/kvgate/kvgate/router"
	scopeExtproc = "github.com/kvgate/kvgate/extproc"
	scopeGateway = "github.com/kvgate/kvgate/gateway"
)

// traceFlushTimeout bounds the flush of the last spans at exit.
const traceFlushTimeout = 5 * time.Second

// traceFlags are the OpenTelemetry flags of a serving command (docs/TRACING.md).
type traceFlags struct{ cfg tracing.Config }

func (t *traceFlags) add(f *pflag.FlagSet, service string) { t.cfg.AddFlags(f, service) }

// start builds the tracer provider (off unless --otlp-endpoint or OTEL_EXPORTER_OTLP_*
// says where); stop flushes the spans not yet sent.
func (t *traceFlags) start(ctx context.Context, log *slog.Logger) (p *tracing.Provider, stop func(), err error) {
	p, err = tracing.New(ctx, t.cfg)
	if err != nil {
		return nil, nil, err
	}
	if p.Enabled() {
		log.Info("tracing on", "otlp_endpoint", t.cfg.Endpoint, "protocol", t.cfg.Protocol, "sample_ratio", t.cfg.SampleRatio)
	}
	return p, func() {
		ctx, cancel := context.WithTimeout(context.Background(), traceFlushTimeout)
		defer cancel()
		if err := p.Shutdown(ctx); err != nil {
			log.Warn("spans not sent at exit", "error", err)
		}
	}, nil
}
