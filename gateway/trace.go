package gateway

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// Spans (Config.Tracer): the request's server span, named "<method> <route>" as the HTTP
// conventions name server spans, and one client span per upstream attempt, named
// "<gen_ai.operation.name> <model>" as the GenAI conventions name inference calls. The
// upstream request carries the client span's W3C trace context (traceparent).
const (
	AttrAttempt = "kvgate.upstream.attempt" // 1 for the target, 2.. for fallbacks
)

// Trace context goes in and out as W3C Trace Context (traceparent, tracestate).

// startServerSpan continues the client's traceparent (if any) with the gateway's server span
// and returns the request carrying it. For a remote EPP the request's headers then carry the
// span's trace context, so that the EPP's span is its child.
func (g *Gateway) startServerSpan(r *http.Request) (*http.Request, trace.Span) {
	ctx := propagation.TraceContext{}.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	ctx, span := g.cfg.Tracer.Start(ctx, r.Method+" "+r.URL.Path,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			semconv.HTTPRequestMethodKey.String(r.Method),
			semconv.HTTPRoute(r.URL.Path),
			semconv.URLPath(r.URL.Path),
			semconv.URLScheme(scheme(r)),
			semconv.NetworkProtocolVersion(strconv.Itoa(r.ProtoMajor)+"."+strconv.Itoa(r.ProtoMinor)),
			semconv.ClientAddress(host(r.RemoteAddr)),
		))
	if op := router.OperationName(r.URL.Path); op != "" {
		span.SetAttributes(semconv.GenAIOperationNameKey.String(op))
	}
	r = r.WithContext(ctx)
	if g.epp != nil {
		r.Header = r.Header.Clone()
		propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(r.Header))
	}
	return r, span
}

// endServerSpan records the status the client got and ends span; a cut response is an error.
func endServerSpan(span trace.Span, code int, cut bool) {
	span.SetAttributes(semconv.HTTPResponseStatusCode(code))
	switch {
	case cut:
		span.SetAttributes(semconv.ErrorTypeKey.String("response_cut"))
		span.SetStatus(codes.Error, "the upstream response was cut after it started")
	case code == statusClientGone:
		span.SetAttributes(semconv.ErrorTypeKey.String("client_gone"))
		span.SetStatus(codes.Error, "the client went away")
	case code >= 500:
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(code)))
		span.SetStatus(codes.Error, http.StatusText(code))
	}
	span.End()
}

// recordUsage puts the engine's token usage on the request's server span.
func (g *Gateway) recordUsage(ctx context.Context, d *router.Decision, u *openai.Usage) {
	if g.cfg.Tracer == nil {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(semconv.GenAIRequestModel(d.Model))
	if u != nil {
		span.SetAttributes(semconv.GenAIUsageInputTokens(u.PromptTokens), semconv.GenAIUsageOutputTokens(u.CompletionTokens))
		if u.PromptTokensDetails != nil { // the engine's prefix cache hit
			span.SetAttributes(semconv.GenAIUsageCacheReadInputTokens(u.CachedTokens()))
		}
	}
}

// startClientSpan starts the span of one upstream attempt and injects its trace context into
// req's headers (replacing a client's traceparent, which the server span continues). It
// returns nil when tracing is off.
func (g *Gateway) startClientSpan(ctx context.Context, req *http.Request, ep router.Endpoint, model string, attempt int) trace.Span {
	if g.cfg.Tracer == nil {
		return nil
	}
	op := router.OperationName(req.URL.Path)
	name := op
	if model != "" {
		name += " " + model
	}
	if name == "" {
		name = req.Method
	}
	addr, portStr, _ := net.SplitHostPort(req.URL.Host)
	port, _ := strconv.Atoi(portStr)
	attrs := []attribute.KeyValue{
		semconv.GenAIProviderNameOpenAI, // the API spoken; the engine behind it is vLLM, SGLang or the sim
		semconv.HTTPRequestMethodKey.String(req.Method),
		semconv.ServerAddress(addr),
		semconv.ServerPort(port),
		semconv.URLFull(req.URL.String()),
		attribute.String(router.AttrEndpointName, ep.Name),
		attribute.Int(AttrAttempt, attempt),
	}
	if op != "" {
		attrs = append(attrs, semconv.GenAIOperationNameKey.String(op))
	}
	if model != "" {
		attrs = append(attrs, semconv.GenAIRequestModel(model))
	}
	ctx, span := g.cfg.Tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))
	return span
}

// endClientSpan ends an attempt that failed before its answer.
func endClientSpan(span trace.Span, reason string, err error) {
	if span == nil {
		return
	}
	span.SetAttributes(semconv.ErrorTypeKey.String(reason))
	span.SetStatus(codes.Error, err.Error())
	span.End()
}

// tracedBody ends the attempt's client span when the response body is closed, with the
// response status and any read error.
type tracedBody struct {
	io.ReadCloser
	span trace.Span
	once sync.Once
	err  error // the first read error other than EOF
}

func traceResponse(span trace.Span, resp *http.Response) {
	span.SetAttributes(semconv.HTTPResponseStatusCode(resp.StatusCode))
	if resp.StatusCode >= 400 {
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(resp.StatusCode)))
		span.SetStatus(codes.Error, http.StatusText(resp.StatusCode))
	}
	resp.Body = &tracedBody{ReadCloser: resp.Body, span: span}
}

func (b *tracedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && b.err == nil {
		b.err = err
	}
	return n, err
}

func (b *tracedBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() {
		if b.err != nil {
			b.span.SetAttributes(semconv.ErrorTypeKey.String("response_cut"))
			b.span.SetStatus(codes.Error, b.err.Error())
		}
		b.span.End()
	})
	return err
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func host(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
