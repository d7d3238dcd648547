package router

import (
	"context"
	"errors"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.41.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/kvindex"
	"github.com/kvgate/kvgate/openai"
)

// Span names of a routing decision (Config.Tracer): SpanRoute is the decision, a child of the
// front door's span; SpanTokenize (rendering the chat template and tokenizing) and SpanPick
// (admission, match and score; events EventMatch and EventScore) are its children.
const (
	SpanRoute    = "kvgate.route"
	SpanTokenize = "kvgate.tokenize"
	SpanPick     = "kvgate.pick"
	EventMatch   = "match"
	EventScore   = "score"
	EventQueued  = "queued"
)

// Attributes of the route span (and its events). GenAI semantic conventions where they apply
// (gen_ai.request.model, gen_ai.operation.name); the rest are kvgate's own. No prompt text is
// ever recorded.
const (
	AttrPolicy           = "kvgate.route.policy"
	AttrPromptTokens     = "kvgate.route.prompt_tokens"
	AttrRequestBlocks    = "kvgate.route.request_blocks"
	AttrCachedBlocks     = "kvgate.route.cached_blocks"
	AttrCachedTierPrefix = "kvgate.route.cached_blocks." // + gpu, cpu, disk
	AttrEndpoint         = "kvgate.route.endpoint"       // ip:port picked
	AttrEndpointName     = "kvgate.route.endpoint_name"
	AttrPrefillEndpoint  = "kvgate.route.prefill_endpoint"
	AttrAggregatedReason = "kvgate.route.aggregated_reason"
	AttrFallbacks        = "kvgate.route.fallbacks" // ip:port, best first
	AttrCost             = "kvgate.route.cost"
	AttrQueueWait        = "kvgate.route.queue_wait_seconds"
	AttrPullFrom         = "kvgate.route.pull_from"
	AttrPullBlocks       = "kvgate.route.pull_blocks"
	AttrCandidates       = "kvgate.route.candidates"
	AttrMatchedEndpoints = "kvgate.route.matched_endpoints" // candidates holding at least one block
	AttrErrorCode        = "kvgate.route.error_code"
)

// OperationName is the gen_ai.operation.name of an OpenAI path ("" for one the router does
// not generate for).
func OperationName(path string) string {
	switch path {
	case "/v1/chat/completions":
		return "chat"
	case "/v1/completions":
		return "text_completion"
	}
	return ""
}

// startSpan starts a child span of ctx when tracing is on; the span is nil when it is off.
func (r *Router) startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	if r.cfg.Tracer == nil {
		return ctx, nil
	}
	return r.cfg.Tracer.Start(ctx, name)
}

// endRouteSpan records the decision (or the refusal) on the route span and ends it.
func endRouteSpan(span trace.Span, path string, d *Decision, err error) {
	if op := OperationName(path); op != "" {
		span.SetAttributes(semconv.GenAIOperationNameKey.String(op))
	}
	if err != nil {
		var e *openai.Error
		if errors.As(err, &e) {
			span.SetAttributes(semconv.ErrorTypeKey.String(e.Type), attribute.String(AttrErrorCode, e.Code),
				semconv.HTTPResponseStatusCode(e.Status))
		} else {
			span.SetAttributes(semconv.ErrorTypeKey.String("_OTHER"))
		}
		span.SetStatus(codes.Error, statusText(err))
		span.End()
		return
	}
	attrs := []attribute.KeyValue{
		semconv.GenAIRequestModel(d.Model),
		attribute.String(AttrPolicy, d.Policy),
		attribute.Int(AttrPromptTokens, d.PromptTokens),
		attribute.Int(AttrRequestBlocks, d.RequestBlocks),
		attribute.Int(AttrCachedBlocks, d.CachedBlocks),
		attribute.String(AttrEndpoint, d.Endpoint.Address),
		attribute.String(AttrEndpointName, d.Endpoint.Name),
		attribute.Float64(AttrCost, d.Cost),
		attribute.Float64(AttrQueueWait, d.QueueWait.Seconds()),
	}
	for t := range kvindex.NumTiers {
		attrs = append(attrs, attribute.Int(AttrCachedTierPrefix+t.String(), d.CachedTiers[t]))
	}
	if len(d.Fallbacks) > 0 {
		fb := make([]string, len(d.Fallbacks))
		for i, f := range d.Fallbacks {
			fb[i] = f.Address
		}
		attrs = append(attrs, attribute.StringSlice(AttrFallbacks, fb))
	}
	if d.Prefill != nil {
		attrs = append(attrs, attribute.String(AttrPrefillEndpoint, d.Prefill.Address))
	} else if d.AggregatedReason != "" {
		attrs = append(attrs, attribute.String(AttrAggregatedReason, d.AggregatedReason))
	}
	if d.Pull != nil {
		attrs = append(attrs, attribute.String(AttrPullFrom, d.Pull.From.Address), attribute.Int(AttrPullBlocks, d.Pull.Blocks))
	}
	span.SetAttributes(attrs...)
	span.End()
}

// endTokenizeSpan records the prompt's token count (never its text) and ends span; nil span:
// tracing is off.
func endTokenizeSpan(span trace.Span, tokens int, err error) {
	if span == nil {
		return
	}
	span.SetAttributes(attribute.Int(AttrPromptTokens, tokens))
	if err != nil {
		span.SetStatus(codes.Error, statusText(err))
	}
	span.End()
}

// endPickSpan ends the pick span, failed when err is set.
func endPickSpan(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, statusText(err))
	}
	span.End()
}

// statusText describes a refusal for a span without its message, which may quote the
// request (a template error, a bad field): the HTTP status and the OpenAI error code or type.
func statusText(err error) string {
	var e *openai.Error
	if !errors.As(err, &e) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err.Error()
		}
		return "routing failed"
	}
	what := e.Code
	if what == "" {
		what = e.Type
	}
	return strconv.Itoa(e.Status) + " " + what
}

// matchEvent records how many candidates there are and how many hold some of the prompt.
func matchEvent(span trace.Span, cands []Candidate) {
	matched := 0
	for i := range cands {
		if cands[i].CachedBlocks() > 0 || cands[i].Matched > 0 || cands[i].Remote > 0 {
			matched++
		}
	}
	span.AddEvent(EventMatch, trace.WithAttributes(attribute.Int(AttrCandidates, len(cands)), attribute.Int(AttrMatchedEndpoints, matched)))
}

// scoreEvent records the best candidate's score.
func scoreEvent(span trace.Span, ep Endpoint, c Candidate, cost float64) {
	attrs := []attribute.KeyValue{attribute.String(AttrEndpoint, ep.Address), attribute.Float64(AttrCost, cost),
		attribute.Int(AttrCachedBlocks, c.CachedBlocks())}
	for t := range kvindex.NumTiers {
		attrs = append(attrs, attribute.Int(AttrCachedTierPrefix+t.String(), c.Cached[t]))
	}
	span.AddEvent(EventScore, trace.WithAttributes(attrs...))
}
