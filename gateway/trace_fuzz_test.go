package gateway_test

import (
	"context"
	"net/http"
	"regexp"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// wellFormed is the only traceparent kvgate sends: version 00, hex ids and flags.
var wellFormed = regexp.MustCompile(`^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$`)

// FuzzTraceContext feeds arbitrary traceparent and tracestate headers, as a client or Envoy
// may send them, through what the gateway and ext_proc do with them: extract, start a span
// under them, inject the span's context. Nothing may panic, and what goes to the engine is
// always a well-formed traceparent (a malformed one starts a new trace).
func FuzzTraceContext(f *testing.F) {
	f.Add(clientParent, "")
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "vendor=abc,other=1")
	f.Add("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "")
	f.Add("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "=,,==")
	f.Add("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra", "a=b")
	f.Add("", "")
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())))
	tr := tp.Tracer("fuzz")
	f.Fuzz(func(t *testing.T, parent, state string) {
		in := http.Header{}
		in.Set("traceparent", parent)
		in.Set("tracestate", state)
		ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.HeaderCarrier(in))
		ctx, span := tr.Start(ctx, "fuzz", trace.WithSpanKind(trace.SpanKindServer))
		defer span.End()
		out := http.Header{}
		propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(out))
		got := out.Get("traceparent")
		if span.SpanContext().IsSampled() && !wellFormed.MatchString(got) {
			t.Fatalf("traceparent %q in, %q out", parent, got)
		}
		if !span.SpanContext().IsSampled() && got != "" && !wellFormed.MatchString(got) {
			t.Fatalf("traceparent %q in, %q out", parent, got)
		}
	})
}
