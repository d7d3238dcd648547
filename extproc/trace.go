package extproc

import (
	"context"
	"net"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// Spans (Config.Tracer): one server span per ext_proc stream, that is per HTTP request Envoy
// processes, named SpanStreamPrefix + "<method> <path>" and continuing the request's own
// traceparent; the router's decision under it; and, after a pick, a client span for the call
// Envoy makes to the picked engine ("<gen_ai.operation.name> <model>"), whose trace context
// goes to the engine as a traceparent header mutation. Trace context is W3C Trace Context.
const (
	SpanStreamPrefix = "ext_proc "
	AttrOutcome      = "kvgate.extproc.outcome" // a MetricStreams outcome
)

// startSpan opens the stream's span from the request headers.
func (st *stream) startSpan(ctx context.Context, method string) {
	ctx = propagation.TraceContext{}.Extract(ctx, propagation.HeaderCarrier(st.headers))
	st.ctx, st.span = st.s.cfg.Tracer.Start(ctx, SpanStreamPrefix+method+" "+st.path,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(semconv.HTTPRequestMethodKey.String(method), semconv.URLPath(st.path)))
	if op := router.OperationName(st.path); op != "" {
		st.span.SetAttributes(semconv.GenAIOperationNameKey.String(op))
	}
}

// traceUpstream opens the span of Envoy's call to the picked engine and adds its trace
// context to the request headers h that the pick sets.
func (st *stream) traceUpstream(d *router.Decision, h *headerSet) {
	name := router.OperationName(st.path)
	if name == "" {
		name = "upstream"
	}
	host, port, _ := net.SplitHostPort(d.Endpoint.Address)
	p, _ := strconv.Atoi(port)
	ctx, span := st.s.cfg.Tracer.Start(st.ctx, name+" "+d.Model, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			semconv.GenAIProviderNameOpenAI, // the API spoken; the engine behind it is vLLM, SGLang or the sim
			semconv.GenAIRequestModel(d.Model),
			semconv.ServerAddress(host),
			semconv.ServerPort(p),
			attribute.String(router.AttrEndpointName, d.Endpoint.Name),
		))
	if op := router.OperationName(st.path); op != "" {
		span.SetAttributes(semconv.GenAIOperationNameKey.String(op))
	}
	st.upSpan = span
	propagation.TraceContext{}.Inject(ctx, h)
	st.span.SetAttributes(semconv.GenAIRequestModel(d.Model))
}

// traceStatus records the response status on the stream's spans.
func (st *stream) traceStatus(code int) {
	attr := semconv.HTTPResponseStatusCode(code)
	st.span.SetAttributes(attr)
	if st.upSpan != nil {
		st.upSpan.SetAttributes(attr)
		if code >= 400 {
			st.upSpan.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(code)))
			st.upSpan.SetStatus(codes.Error, http.StatusText(code))
		}
	}
	if code >= 500 {
		st.span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(code)))
		st.span.SetStatus(codes.Error, http.StatusText(code))
	}
}

// traceReject records an ImmediateResponse.
func (st *stream) traceReject(e *openai.Error) {
	st.traceStatus(e.Status)
	st.span.SetAttributes(semconv.ErrorTypeKey.String(e.Type))
}

// traceUsage records the engine's token usage.
func (st *stream) traceUsage(u *openai.Usage) {
	if u == nil {
		return
	}
	attrs := []attribute.KeyValue{semconv.GenAIUsageInputTokens(u.PromptTokens), semconv.GenAIUsageOutputTokens(u.CompletionTokens)}
	if u.PromptTokensDetails != nil { // the engine's prefix cache hit
		attrs = append(attrs, semconv.GenAIUsageCacheReadInputTokens(u.CachedTokens()))
	}
	st.span.SetAttributes(attrs...)
	if st.upSpan != nil {
		st.upSpan.SetAttributes(attrs...)
	}
}

// endSpans ends the stream's spans with its outcome; a stream that ended before its response
// did is an error.
func (st *stream) endSpans(outcome string) {
	if st.upSpan != nil {
		if outcome != outcomeCompleted {
			st.upSpan.SetStatus(codes.Error, "the ext_proc stream ended before the response: "+outcome)
		}
		st.upSpan.End()
	}
	st.span.SetAttributes(attribute.String(AttrOutcome, outcome))
	if outcome == outcomeAborted || outcome == outcomeIdle {
		st.span.SetStatus(codes.Error, "the ext_proc stream ended before the response: "+outcome)
	}
	st.span.End()
}
