package extproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// errAborted is what a decision is released with when its stream ends before the response.
var errAborted = errors.New("ext_proc stream ended before the response completed")

// Process serves one ext_proc stream: one HTTP request and its response.
//
// Each message is received, handled and answered on gRPC's stream goroutine itself (one of
// the server's stream workers, whose stack stays grown), with no hand-off per message and no
// goroutine per stream. A blocked Recv ends only when the stream's context does, so the idle
// timeout expires that context: the server's tap (Serve) gives each stream a context it can
// expire, and gRPC then answers the blocked Recv with DEADLINE_EXCEEDED. A stream without
// one (Process called on a gRPC server that Serve did not build) receives on a goroutine of
// its own instead, the handler waiting for the end of the stream, its context or the idle
// timeout (returning from the handler is what ends a stream there).
func (s *Server) Process(srv extprocv3.ExternalProcessor_ProcessServer) error {
	l := &streamLoop{srv: srv, ctx: srv.Context()}
	l.st = stream{s: s, reqMode: filterv3.ProcessingMode_BUFFERED, respMode: filterv3.ProcessingMode_NONE}
	l.tap = tappedStream(l.ctx)
	if l.tap == nil {
		l.idleC = make(chan struct{})
	}
	s.metrics.active.Inc()
	defer l.finish()
	if s.cfg.IdleTimeout > 0 {
		l.idle = time.AfterFunc(s.cfg.IdleTimeout, l.onIdle)
		defer l.idle.Stop()
	}
	if l.tap != nil {
		err := l.serve()
		l.mu.Lock()
		idled := l.idled
		l.mu.Unlock()
		if idled {
			return l.idleErr()
		}
		return streamErr(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.serve() }()
	select {
	case <-l.ctx.Done():
		return status.FromContextError(l.ctx.Err()).Err()
	case err := <-done:
		return streamErr(err)
	case <-l.idleC:
		return l.idleErr()
	}
}

// streamLoop is one stream's message loop, with the stream it serves (one allocation for
// both). mu guards the stream state between the loop, the timers (idle, response) and the
// finish, which always releases the request's load and records the outcome, however the
// stream ends; nothing is handled once the stream is closed.
type streamLoop struct {
	st    stream
	srv   extprocv3.ExternalProcessor_ProcessServer
	ctx   context.Context
	tap   *streamCtx    // the stream's context from the server's tap; nil: untapped
	idleC chan struct{} // untapped: closed by the idle timeout

	mu       sync.Mutex
	closed   bool        // the stream is ending: nothing more is handled
	idled    bool        // it ends because the proxy sent nothing for IdleTimeout
	idle     *time.Timer // the idle timeout; nil when off
	respWait *time.Timer // from the pick until the response starts
}

// serve is the message loop; it returns the reader's last word: nil after an
// ImmediateResponse or once the stream is closing.
func (l *streamLoop) serve() error {
	st, s := &l.st, l.st.s
	for {
		req, err := l.srv.Recv()
		if err != nil {
			return err
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return nil
		}
		if l.idle != nil && !st.skipped {
			l.idle.Reset(s.cfg.IdleTimeout)
		}
		picked := st.decision != nil
		out, final := st.handle(l.ctx, req)
		if st.skipped && l.idle != nil {
			// Silence until the request ends is expected now (no response body comes):
			// the idle bound would cut a long response. A proxy that vanishes still
			// ends the stream through its connection (TCP keepalive).
			l.idle.Stop()
		}
		if !picked && st.decision != nil && s.cfg.ResponseTimeout > 0 {
			l.respWait = time.AfterFunc(s.cfg.ResponseTimeout, l.noResponse)
		}
		for _, r := range out {
			if err = l.srv.Send(r); err != nil {
				break
			}
		}
		l.mu.Unlock()
		if err != nil || final {
			return err
		}
	}
}

// onIdle ends a stream on which the proxy has sent nothing for IdleTimeout (not one whose
// silence is expected: a skipped response body).
func (l *streamLoop) onIdle() {
	l.mu.Lock()
	if l.closed || l.st.skipped {
		l.mu.Unlock()
		return
	}
	l.closed, l.idled = true, true
	l.st.s.metrics.idle.Inc()
	l.st.outcome = outcomeIdle
	l.mu.Unlock()
	if l.tap != nil {
		l.tap.expire()
	} else {
		close(l.idleC)
	}
}

func (l *streamLoop) idleErr() error {
	return status.Errorf(codes.DeadlineExceeded, "ext_proc stream idle for %v", l.st.s.cfg.IdleTimeout)
}

// noResponse releases the pick's load when its response has not started in time.
func (l *streamLoop) noResponse() {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, s := &l.st, l.st.s
	if !l.closed && !st.started && st.decision != nil && !st.released {
		s.metrics.responseTimeouts.Inc()
		s.log.Warn("no response within the bound after the pick; its load is released",
			"endpoint", st.decision.Endpoint.Address, "timeout", s.cfg.ResponseTimeout)
		st.release(errNoResponse)
	}
}

// finish closes the stream: it releases the request's load and records its outcome.
func (l *streamLoop) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	st, s := &l.st, l.st.s
	l.closed = true
	if l.respWait != nil {
		l.respWait.Stop()
	}
	st.freeBody()
	if st.skipped && !st.released {
		// The proxy was told not to send the response body: the stream's end is the
		// request's end.
		st.complete()
	}
	st.release(errAborted)
	outcome := st.outcome
	if outcome == "" {
		outcome = outcomeAborted
	}
	if st.span != nil {
		st.endSpans(outcome)
	}
	s.metrics.outcomes[outcome].Inc()
	s.metrics.active.Dec()
}

// streamErr is what Process returns when its message loop ended with err: nil when the
// proxy half-closed or went away, or after an ImmediateResponse.
func streamErr(err error) error {
	if err == nil || errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
		return nil
	}
	return err
}

// errNoResponse releases a decision whose response did not start within ResponseTimeout.
var errNoResponse = errors.New("no response within the ext_proc response timeout")

// stream is the state of one ext_proc stream. Routing state (the decision) is kept apart
// from the buffers the protocol needs (the request body, the response watcher).
type stream struct {
	s *Server

	reqMode, respMode filterv3.ProcessingMode_BodySendMode

	// request side
	path    string
	headers http.Header
	subset  []string
	body    []byte
	held    int64 // bytes of body counted in the server's buffered total
	routed  bool  // a pick was made (or the request was passed on without one)

	// decision and response side
	decision *router.Decision
	pickedAt time.Time
	watcher  *openai.BodyWatcher
	strip    *openai.UsageStripper // drops the usage chunk the client did not ask for
	started  bool                  // response headers (or body) arrived
	skipped  bool                  // the response body was skipped (mode_override): the stream's end completes the request
	first    bool
	status   int
	released bool
	outcome  string

	// tracing (Config.Tracer); span nil when off
	ctx    context.Context // the stream's context carrying span
	span   trace.Span      // the stream's server span
	upSpan trace.Span      // Envoy's call to the picked engine
}

// handle answers one message. final reports that the stream is over for the server (an
// ImmediateResponse was sent).
func (st *stream) handle(ctx context.Context, req *extprocv3.ProcessingRequest) (out []*extprocv3.ProcessingResponse, final bool) {
	if pc := req.GetProtocolConfig(); pc != nil {
		st.reqMode, st.respMode = pc.GetRequestBodyMode(), pc.GetResponseBodyMode()
	}
	m := &st.s.metrics.msg
	switch v := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		m.requestHeaders.Inc()
		return st.requestHeaders(ctx, req, v.RequestHeaders)
	case *extprocv3.ProcessingRequest_RequestBody:
		m.requestBody.Inc()
		return st.requestBody(ctx, v.RequestBody)
	case *extprocv3.ProcessingRequest_RequestTrailers:
		m.requestTrailers.Inc()
		if st.reqMode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED && !st.routed {
			out, final = st.pick(ctx, false)
			if final {
				return out, true
			}
		}
		return append(out, trailersResponse(false)), false
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		m.responseHeaders.Inc()
		return st.responseHeaders(req, v.ResponseHeaders), false
	case *extprocv3.ProcessingRequest_ResponseBody:
		m.responseBody.Inc()
		return st.responseBody(v.ResponseBody), false
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		m.responseTrailers.Inc()
		st.complete()
		return []*extprocv3.ProcessingResponse{trailersResponse(true)}, false
	default:
		m.unknown.Inc()
		return nil, false
	}
}

func (st *stream) requestHeaders(ctx context.Context, req *extprocv3.ProcessingRequest, h *extprocv3.HttpHeaders) ([]*extprocv3.ProcessingResponse, bool) {
	hdr, path := headerMap(h.GetHeaders())
	st.headers = hdr
	st.path = path
	if i := strings.IndexByte(st.path, '?'); i >= 0 {
		st.path = st.path[:i]
	}
	if st.s.cfg.Tracer != nil && st.span == nil {
		st.startSpan(ctx, headerValue(h.GetHeaders(), ":method"))
	}
	st.subset = subsetHint(req.GetMetadataContext())
	if h.GetEndOfStream() && picksWithoutBody(st.path) {
		return st.pickOnHeaders(ctx)
	}
	if h.GetEndOfStream() {
		// No body to route on (GET /v1/models, /health): pass it on unpicked.
		st.routed = true
		st.outcome = outcomePassed
		return []*extprocv3.ProcessingResponse{continueHeaders(false, nil, false)}, false
	}
	switch st.reqMode {
	case filterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		// The header mutation can only go out once the body is in: answer later.
		return nil, false
	case filterv3.ProcessingMode_STREAMED:
		return st.reject(openai.Errorf(http.StatusInternalServerError, openai.TypeInternal, "",
			"ext_proc request_body_mode STREAMED cannot carry the pick; configure BUFFERED or FULL_DUPLEX_STREAMED")), true
	case filterv3.ProcessingMode_NONE:
		st.routed = true
		st.outcome = outcomePassed
		st.s.log.Warn("ext_proc request_body_mode NONE: request passed on unpicked", "path", st.path)
		return []*extprocv3.ProcessingResponse{continueHeaders(false, nil, false)}, false
	}
	// BUFFERED (and BUFFERED_PARTIAL): Envoy waits for this answer before sending the body;
	// the pick goes back on the body response.
	return []*extprocv3.ProcessingResponse{continueHeaders(false, nil, false)}, false
}

func (st *stream) requestBody(ctx context.Context, b *extprocv3.HttpBody) ([]*extprocv3.ProcessingResponse, bool) {
	if st.routed {
		// Body after the pick (a trailer-ended stream): nothing more to do with it.
		if st.reqMode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
			return streamedBody(false, b.GetBody(), b.GetEndOfStream()), false
		}
		return []*extprocv3.ProcessingResponse{bodyResponse(false, &extprocv3.CommonResponse{})}, false
	}
	if len(st.body)+len(b.GetBody()) > st.s.cfg.MaxBodyBytes {
		st.freeBody()
		return st.reject(openai.TooLarge(int64(st.s.cfg.MaxBodyBytes))), true
	}
	if !st.hold(len(b.GetBody())) {
		st.freeBody()
		st.s.metrics.bufferFull.Inc()
		return st.reject(openai.Unavailable("The router is buffering too many request bodies; retry later.")), true
	}
	st.appendBody(b.GetBody(), b.GetEndOfStream())
	full := st.reqMode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	if !b.GetEndOfStream() && full {
		return nil, false
	}
	return st.pick(ctx, true)
}

// appendBody adds one chunk of the request body. A body that comes whole (BUFFERED, or one
// streamed chunk) is kept as received, without a copy: the message is this stream's alone. A
// body in pieces is gathered in one buffer sized from content-length when the client gave it.
func (st *stream) appendBody(chunk []byte, end bool) {
	if st.body == nil && end {
		st.body = chunk
		return
	}
	if st.body == nil {
		want, _ := strconv.Atoi(st.headers.Get("Content-Length"))
		if want < len(chunk) || want > st.s.cfg.MaxBodyBytes {
			want = len(chunk)
		}
		st.body = make([]byte, 0, want)
	}
	st.body = append(st.body, chunk...)
}

// pick routes the accumulated body and answers with the pick: on the buffered body response,
// or, in FULL_DUPLEX_STREAMED, with the request headers response followed by the body
// re-emitted in chunks (the last ending the stream when endOfStream).
func (st *stream) pick(ctx context.Context, endOfStream bool) ([]*extprocv3.ProcessingResponse, bool) {
	st.routed = true
	start := time.Now()
	if st.span != nil {
		ctx = st.ctx
	}
	d, err := st.s.router.Route(ctx, router.Request{Path: st.path, Body: st.body, Headers: st.headers, Subset: st.subset})
	st.s.metrics.pick.Observe(time.Since(start).Seconds())
	if err != nil {
		st.freeBody()
		return st.reject(openai.AsError(err)), true
	}
	st.decision, st.pickedAt = d, time.Now()
	body := st.body
	if d.Body != nil {
		body = d.Body
	}
	// The router hands back the client's own bytes unless it rewrote them: only a rewritten
	// body goes back to a BUFFERED proxy (before, every pick echoed the whole body).
	mutated := !sameBytes(body, st.body)
	if d.Pull != nil && st.s.cfg.P2PTransferPort > 0 {
		if b, err := d.PullBody(body, st.s.cfg.P2PTransferPort); err != nil {
			st.s.log.Warn("P2P pull: kv_transfer_params not added", "source", d.Pull.From.Address, "error", err)
		} else {
			body, mutated = b, true
		}
	}
	st.freeBody() // body is answered below; the stream keeps no copy
	var hdr headerSet
	decisionHeaders(&hdr, d)
	hdr.set("content-length", strconv.Itoa(len(body))) // the body that will be sent
	if st.span != nil {
		st.traceUpstream(d, &hdr)
	}
	md := pickMetadata(hdr.get(router.HeaderDestination))
	st.s.log.Debug("picked", "path", st.path, "endpoint", d.Endpoint.Address, "model", d.Model,
		"prompt_tokens", d.PromptTokens, "cached_blocks", d.CachedBlocks)

	mut := hdr.mutation()
	if d.Prefill == nil && st.headers.Get(router.HeaderPrefiller) != "" {
		// Only the router names prefill endpoints: a client's header would make the decode
		// sidecar post the prompt wherever it says.
		mut.RemoveHeaders = append(mut.RemoveHeaders, router.HeaderPrefiller)
	}
	if d.Pull == nil && st.headers.Get(router.HeaderKVCacheSource) != "" {
		// Nor pull sources: an engine would fetch blocks from wherever a client says.
		mut.RemoveHeaders = append(mut.RemoveHeaders, router.HeaderKVCacheSource)
	}
	if st.reqMode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
		hr := continueHeaders(false, mut, true)
		hr.DynamicMetadata = md
		out := make([]*extprocv3.ProcessingResponse, 1, 2+len(body)/MaxChunk)
		out[0] = hr
		return appendStreamedBody(out, false, body, endOfStream), false
	}
	cr := &extprocv3.CommonResponse{HeaderMutation: mut, ClearRouteCache: true}
	if mutated {
		cr.BodyMutation = &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}}
	}
	br := bodyResponse(false, cr)
	br.DynamicMetadata = md
	return []*extprocv3.ProcessingResponse{br}, false
}

// sameBytes reports whether a and b are the same bytes in memory (not merely equal ones).
func sameBytes(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// hold counts n more body bytes in the server's buffered total; false when that would pass
// MaxBufferedBytes (nothing is counted then).
func (st *stream) hold(n int) bool {
	if n == 0 {
		return true
	}
	if st.s.buffered.Add(int64(n)) > st.s.cfg.MaxBufferedBytes {
		st.s.buffered.Add(-int64(n))
		return false
	}
	st.held += int64(n)
	return true
}

// freeBody drops the buffered body and its count in the server's total.
func (st *stream) freeBody() {
	st.s.buffered.Add(-st.held)
	st.held, st.body = 0, nil
}

// reject ends the request with an ImmediateResponse carrying e.
func (st *stream) reject(e *openai.Error) []*extprocv3.ProcessingResponse {
	st.outcome = outcomeRejected
	if st.span != nil {
		st.traceReject(e)
	}
	st.s.metrics.immediate.WithLabelValues(strconv.Itoa(e.Status)).Inc()
	st.s.log.Debug("rejected", "path", st.path, "status", e.Status, "error", e.Message)
	im := immediate(e)
	if st.path == anthropic.Path { // the Messages API answers in Anthropic's error shape
		im.GetImmediateResponse().Body = anthropic.ErrorBody(e)
	}
	return []*extprocv3.ProcessingResponse{im}
}

func (st *stream) responseHeaders(req *extprocv3.ProcessingRequest, h *extprocv3.HttpHeaders) []*extprocv3.ProcessingResponse {
	// The response headers are read in place: only a few of them matter.
	hm := h.GetHeaders()
	st.started = true
	st.status, _ = strconv.Atoi(headerValue(hm, ":status"))
	if st.span != nil {
		st.traceStatus(st.status)
	}
	d := st.decision
	if d == nil {
		return []*extprocv3.ProcessingResponse{continueHeaders(true, nil, false)}
	}
	if served := servedEndpoint(req.GetMetadataContext(), hm); served != "" {
		d.Served(served)
	}
	ctype := headerValue(hm, "content-type")
	sse := strings.HasPrefix(ctype, "text/event-stream") || (d.Stream && ctype == "")
	st.watcher = openai.NewBodyWatcher(sse, st.s.cfg.MaxResponseBuffer)
	if sse && d.UsageForced && st.respMode != filterv3.ProcessingMode_NONE {
		st.strip = &openai.UsageStripper{}
	}
	// The decision's own headers the client sees: the target, the overlap, the prefill
	// endpoint unless the decode side prefilled.
	var echo headerSet
	if v := d.Endpoint.Address; v != "" {
		echo.set(router.HeaderEndpoint, v)
	}
	echo.set(router.HeaderCachedBlocks, strconv.Itoa(d.CachedBlocks))
	if d.Prefill != nil && d.Prefill.Address != "" && headerValue(hm, router.HeaderPrefillFallback) == "" {
		echo.set(router.HeaderPrefillEndpoint, d.Prefill.Address)
	}
	mut := echo.mutation()
	if st.strip != nil {
		// The body will be shorter than the engine said.
		if mut == nil {
			mut = &extprocv3.HeaderMutation{}
		}
		mut.RemoveHeaders = append(mut.RemoveHeaders, "content-length")
	}
	hr := continueHeaders(true, mut, false)
	if !h.GetEndOfStream() {
		switch {
		case st.respMode == filterv3.ProcessingMode_NONE:
			// The body never comes: the same override keeps Envoy 1.37+ from closing the
			// stream now, so that its end is the request's.
			hr.ModeOverride = skipBodyMode(st.reqMode)
			st.skipped = true
		case st.skipBody(d):
			hr.ModeOverride = skipBodyMode(st.reqMode)
			st.skipped = true
			st.s.metrics.skipped.Inc()
		}
		if st.skipped && !sse {
			// A non-streamed answer's headers come with its body: the first token is in.
			st.firstToken()
		}
	}
	if h.GetEndOfStream() {
		st.complete()
	}
	return []*extprocv3.ProcessingResponse{hr}
}

// skipBody reports whether the response body of d may be skipped (Config.SkipResponseBody):
// the server need not cut anything out of it, the router needs nothing from it, and the
// proxy will honour a mode_override (Envoy ignores one when either body mode is
// FULL_DUPLEX_STREAMED; with NONE there is nothing to skip).
func (st *stream) skipBody(d *router.Decision) bool {
	return st.s.cfg.SkipResponseBody && st.strip == nil && !d.NeedsUsage() &&
		st.reqMode != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED &&
		st.respMode != filterv3.ProcessingMode_FULL_DUPLEX_STREAMED &&
		st.respMode != filterv3.ProcessingMode_NONE
}

// skipBodyMode is the mode_override that stops the response body messages. Trailers stay
// SEND: Envoy (1.37+) closes the stream as soon as nothing more is to be sent, which would
// end it at the response headers; with trailers SEND it stays open until the request ends
// (an HTTP/1.1 engine's response has no trailers, so none comes). Header modes are SEND and
// the request body mode unchanged, for Envoy before 1.34, which replaces the whole mode.
func skipBodyMode(reqMode filterv3.ProcessingMode_BodySendMode) *filterv3.ProcessingMode {
	return &filterv3.ProcessingMode{
		RequestHeaderMode:   filterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  filterv3.ProcessingMode_SEND,
		RequestBodyMode:     reqMode,
		ResponseBodyMode:    filterv3.ProcessingMode_NONE,
		RequestTrailerMode:  filterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: filterv3.ProcessingMode_SEND,
	}
}

func (st *stream) responseBody(b *extprocv3.HttpBody) []*extprocv3.ProcessingResponse {
	st.started = true
	if st.decision != nil {
		if st.watcher == nil { // body without headers: a misbehaving proxy, still account it
			st.watcher = openai.NewBodyWatcher(st.decision.Stream, st.s.cfg.MaxResponseBuffer)
		}
		if st.watcher.Write(b.GetBody()) {
			st.firstToken()
		}
	}
	body := b.GetBody()
	if st.strip != nil {
		body = st.strip.Write(body)
		if b.GetEndOfStream() {
			body = append(body, st.strip.Flush()...)
		}
	}
	var out []*extprocv3.ProcessingResponse
	switch {
	case st.respMode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		out = streamedBody(true, body, b.GetEndOfStream())
	case st.strip != nil:
		out = []*extprocv3.ProcessingResponse{bodyResponse(true, &extprocv3.CommonResponse{
			BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_Body{Body: body}},
		})}
	default:
		out = []*extprocv3.ProcessingResponse{bodyResponse(true, &extprocv3.CommonResponse{})}
	}
	if b.GetEndOfStream() {
		st.complete()
	}
	return out
}

// firstToken tells the decision its first token arrived, once.
func (st *stream) firstToken() {
	if st.first {
		return
	}
	st.first = true
	st.decision.FirstToken()
	st.s.metrics.ttft.Observe(time.Since(st.pickedAt).Seconds())
}

// complete marks the response as ended normally and releases the decision.
func (st *stream) complete() {
	if st.outcome == "" || st.outcome == outcomeAborted {
		st.outcome = outcomeCompleted
	}
	var err error
	if st.status >= 400 {
		err = fmt.Errorf("upstream answered HTTP %d", st.status)
	}
	st.release(err)
}

// release hands the decision back with the usage seen, once.
func (st *stream) release(err error) {
	if st.decision == nil || st.released {
		return
	}
	st.released = true
	var u *openai.Usage
	if st.watcher != nil {
		u = st.watcher.Close()
	}
	if st.span != nil {
		st.traceUsage(u)
	}
	st.decision.Done(u, err)
}
