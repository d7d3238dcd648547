package gateway

import (
	"context"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// EPP outcomes, the label of MetricEPPRequests.
const (
	eppPicked      = "picked"          // the EPP named endpoints of the pool
	eppImmediate   = "immediate"       // the EPP answered the request itself
	eppFailedOpen  = "failed_open"     // the EPP failed; the gateway picked (FailOpen)
	eppFailedClose = "failed_close"    // the EPP failed; 503 (FailClose)
	eppBadPick     = "bad_destination" // the EPP named nothing usable in the pool; 503
)

// proxyEPP serves one completion request through the remote EPP, as Envoy would: the EPP
// sees the request and picks, the gateway forwards to its pick (falling back in its order
// before the first byte), and the response goes back through the EPP to the client.
func (g *Gateway) proxyEPP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	path := metricPath(r)
	g.metrics.inflight.Inc()
	defer g.metrics.inflight.Dec()
	var span trace.Span
	if g.cfg.Tracer != nil {
		r, span = g.startServerSpan(r)
	}
	code, cut := g.serveEPP(w, r)
	g.metrics.requests.WithLabelValues(path, strconv.Itoa(code)).Inc()
	g.metrics.duration.WithLabelValues(path).Observe(time.Since(start).Seconds())
	if span != nil {
		endServerSpan(span, code, cut)
	}
	if cut {
		panic(http.ErrAbortHandler)
	}
}

func (g *Gateway) serveEPP(w http.ResponseWriter, r *http.Request) (code int, cut bool) {
	body, oerr := g.readBody(w, r)
	if oerr != nil {
		return writeErr(w, oerr), false
	}
	ctx := r.Context()
	e := g.epp
	began := time.Now()
	x, p, err := e.ask(ctx, r, body, g.cfg.MaxBodyBytes)
	e.m.pickDuration.Observe(time.Since(began).Seconds())
	if x != nil {
		defer x.close()
	}
	var cands []string
	switch {
	case ctx.Err() != nil:
		return statusClientGone, false
	case err != nil && e.cfg.FailureMode == FailClose:
		e.m.requests.WithLabelValues(eppFailedClose).Inc()
		e.log.Warn("endpoint picker failed, answering 503 (FailClose)", "epp", e.cfg.Addr, "error", err)
		return writeErr(w, eppUnavailable()), false
	case err != nil:
		e.m.requests.WithLabelValues(eppFailedOpen).Inc()
		e.log.Warn("endpoint picker failed, picking among the pool (FailOpen)", "epp", e.cfg.Addr, "error", err)
		if x != nil {
			x.close()
			x = nil
		}
		p = &eppPick{header: r.Header.Clone(), body: body}
		cands = e.failOpenPick()
	case p.immediate != nil:
		e.m.requests.WithLabelValues(eppImmediate).Inc()
		return writeImmediate(w, p.immediate), false
	default:
		var dropped []string
		cands, dropped = e.candidates(p)
		if len(dropped) > 0 || (p.meta != "" && p.destHeader != "" && p.meta != p.destHeader) {
			e.log.Warn("endpoint picker named unusable destinations", "header", p.destHeader, "metadata", p.meta, "dropped", dropped)
		}
		if len(cands) == 0 {
			e.m.requests.WithLabelValues(eppBadPick).Inc()
			return writeErr(w, eppNoEndpoint()), false
		}
		e.m.requests.WithLabelValues(eppPicked).Inc()
	}

	picked := time.Now()
	buf := g.bufs.Get().(*[]byte)
	defer g.bufs.Put(buf)
	up, err := g.dialAddrs(ctx, r, p, cands, *buf)
	if err != nil {
		if ctx.Err() != nil {
			return statusClientGone, false
		}
		return writeErr(w, upstreamFailed()), false
	}
	defer up.resp.Body.Close()
	rs := &eppResponse{g: g, w: w, r: r, up: up, buf: *buf, picked: picked, c: copier{w: w, rc: http.NewResponseController(w)}}
	rs.sse = strings.HasPrefix(up.resp.Header.Get("Content-Type"), "text/event-stream")
	switch {
	case x == nil:
		return rs.passthrough()
	case e.cfg.Mode == EPPBuffered:
		return rs.streamed(x)
	default:
		return rs.fullDuplex(x)
	}
}

// ask opens a stream and runs the request path; the stream is returned whenever it was
// opened, for the caller to close.
func (e *epp) ask(ctx context.Context, r *http.Request, body []byte, maxBody int64) (*eppStream, *eppPick, error) {
	x, err := e.open(ctx, maxBody)
	if err != nil {
		return nil, nil, err
	}
	p, err := x.pick(ctx, r, body)
	return x, p, err
}

// candidates is the pick's ordered list, less what is not host:port of the pool or repeats
// (dropped says which).
func (e *epp) candidates(p *eppPick) (cands, dropped []string) {
	for _, a := range strings.Split(p.destinations(), ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		hp, err := hostPort(a)
		if err != nil || !e.pool[hp] {
			dropped = append(dropped, a)
			continue
		}
		if !slices.Contains(cands, hp) {
			cands = append(cands, hp)
		}
	}
	return cands, dropped
}

// dialAddrs sends the request to the candidates in order until one answers, trying at most
// cfg.MaxAttempts.
func (g *Gateway) dialAddrs(ctx context.Context, r *http.Request, p *eppPick, cands []string, buf []byte) (*upstream, error) {
	// The EPP's headers go as extra, set after the client's prefill header is removed: only
	// a picker names prefill endpoints.
	extra := http.Header{}
	if v := p.header.Values(router.HeaderPrefiller); len(v) > 0 && p.header.Get(router.HeaderPrefiller) != r.Header.Get(router.HeaderPrefiller) {
		extra[http.CanonicalHeaderKey(router.HeaderPrefiller)] = v
	}
	rr := *r
	rr.Header = p.header
	n := min(len(cands), g.cfg.MaxAttempts)
	var last error
	for i := range n {
		up, reason, err := g.attempt(ctx, &rr, router.Endpoint{Address: cands[i], TLS: g.epp.tls[cands[i]]}, p.body, extra, buf, "", i+1)
		if err == nil {
			return up, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		last = err
		if i+1 < n {
			g.metrics.retries.WithLabelValues(reason).Inc()
			g.log.Info("upstream failed before answering, trying the next endpoint", "endpoint", cands[i], "next", cands[i+1], "reason", reason, "error", err)
		} else {
			g.log.Warn("upstream failed before answering", "endpoint", cands[i], "attempts", n, "reason", reason, "error", err)
		}
	}
	return nil, last
}

// eppResponse is the engine's answer on its way to the client.
type eppResponse struct {
	g      *Gateway
	w      http.ResponseWriter
	r      *http.Request
	up     *upstream
	buf    []byte
	picked time.Time
	c      copier
	sse    bool
	status int // sent to the client; 0 before
}

// writeHeader sends the engine's headers (after mutation h) to the client.
func (rs *eppResponse) writeHeader(h http.Header) {
	dst := rs.w.Header()
	for k, vs := range h {
		dst[k] = vs
	}
	httpproxy.RemoveHopByHop(dst)
	dst.Del("Content-Length") // the EPP may change the body
	dst.Del(router.HeaderDestinationServed)
	dst.Set(router.HeaderEndpoint, rs.up.ep.Address) // the endpoint that served, as in-process
	rs.status = rs.up.resp.StatusCode
	rs.w.WriteHeader(rs.status)
}

func (rs *eppResponse) send(p []byte) error {
	if len(p) > 0 && !rs.c.first {
		rs.c.first = true
		rs.g.metrics.ttft.Observe(time.Since(rs.picked).Seconds())
	}
	return rs.c.send(p)
}

// fail ends a response whose engine or EPP failed: before the headers went out, a 502;
// after, an SSE error event and an aborted response. A client already gone is no cut.
func (rs *eppResponse) fail(err error) (int, bool) {
	if rs.r.Context().Err() != nil {
		return statusClientGone, false
	}
	if rs.status == 0 {
		rs.g.log.Warn("the response failed before its headers", "endpoint", rs.up.ep.Address, "error", err)
		return writeErr(rs.w, eppResponseFailed()), false
	}
	rs.g.metrics.streamsCut.Inc()
	rs.g.log.Warn("response failed midway, aborting it", "endpoint", rs.up.ep.Address, "bytes_sent", rs.c.sent, "error", err)
	if rs.sse {
		_ = rs.c.send(errorEvent(rs.c.tail[:rs.c.ntail], streamCut()))
	}
	return rs.status, true
}

// read reads the next piece of the engine's body (after the first).
func (rs *eppResponse) read() ([]byte, bool, error) {
	k, err := rs.up.resp.Body.Read(rs.buf)
	switch {
	case errors.Is(err, io.EOF):
		return rs.buf[:k], true, nil
	case err != nil:
		return rs.buf[:k], false, err
	}
	return rs.buf[:k], false, nil
}

// passthrough streams the engine's answer unchanged (FailOpen: no EPP in the path).
func (rs *eppResponse) passthrough() (int, bool) {
	rs.writeHeader(rs.up.resp.Header)
	code, cut, _ := rs.copyBody()
	return code, cut
}

// copyBody sends the engine's body (from its first piece) to the client unchanged;
// complete says it all went out.
func (rs *eppResponse) copyBody() (code int, cut, complete bool) {
	chunk, eof := rs.up.first, rs.up.eof
	for {
		if err := rs.send(chunk); err != nil {
			return rs.status, false, false
		}
		if eof {
			return rs.status, false, true
		}
		var err error
		if chunk, eof, err = rs.read(); err != nil {
			_ = rs.send(chunk)
			code, cut = rs.fail(err)
			return code, cut, false
		}
	}
}

// headersAnswer waits for the EPP's answer to the response headers and applies it; mo is
// the answer's mode_override (nil when none).
func (rs *eppResponse) headersAnswer(x *eppStream) (h http.Header, im *extprocv3.ImmediateResponse, mo *filterv3.ProcessingMode, err error) {
	m, err := x.next(rs.r.Context(), x.e.cfg.Timeout)
	if err != nil {
		return nil, nil, nil, err
	}
	if im := m.GetImmediateResponse(); im != nil {
		return nil, im, nil, nil
	}
	if m.GetResponseHeaders() == nil {
		return nil, nil, nil, eppFailed("want a response headers answer, got %T", m.GetResponse())
	}
	h = rs.up.resp.Header.Clone()
	applyMutation(h, m.GetResponseHeaders().GetResponse().GetHeaderMutation())
	return h, nil, m.GetModeOverride(), nil
}

// streamed is the BUFFERED mode's response path: the body goes STREAMED, each chunk
// answered before it reaches the client (possibly replaced). As Envoy with
// allow_mode_override (what kvgate's Envoy configs set), a mode_override on the response
// headers answer with response body mode NONE stops the body messages: the body goes
// straight to the client, and the stream stays open until the response ends, then is
// half-closed as after any complete response (the EPP ends the request there). No response
// trailers message goes, though such an override asks for trailers (SEND): an HTTP/1.1
// engine's response has none, and Envoy too sends nothing then.
func (rs *eppResponse) streamed(x *eppStream) (int, bool) {
	ctx := rs.r.Context()
	bodyless := rs.up.eof && len(rs.up.first) == 0
	if err := x.responseHeaders(rs.up.resp.StatusCode, rs.up.resp.Header, rs.up.ep.Address, bodyless); err != nil {
		return rs.fail(err)
	}
	h, im, mo, err := rs.headersAnswer(x)
	if err != nil {
		return rs.fail(err)
	}
	if im != nil {
		return writeImmediate(rs.w, im), false
	}
	rs.writeHeader(h)
	if mo != nil && mo.GetResponseBodyMode() == filterv3.ProcessingMode_NONE {
		code, cut, complete := rs.copyBody()
		if complete {
			x.finish()
		}
		return code, cut
	}
	chunk, eof := rs.up.first, rs.up.eof
	for !bodyless {
		if err := x.responseBody(chunk, eof); err != nil {
			return rs.fail(err)
		}
		m, err := x.next(ctx, x.e.cfg.Timeout)
		if err != nil {
			return rs.fail(err)
		}
		rb := m.GetResponseBody()
		if rb == nil {
			return rs.fail(eppFailed("want a response body answer, got %T", m.GetResponse()))
		}
		out := chunk
		switch bm := rb.GetResponse().GetBodyMutation().GetMutation().(type) {
		case *extprocv3.BodyMutation_Body:
			out = bm.Body
		case *extprocv3.BodyMutation_ClearBody:
			if bm.ClearBody {
				out = nil
			}
		}
		if err := rs.send(out); err != nil {
			return rs.status, false
		}
		if eof {
			break
		}
		if chunk, eof, err = rs.read(); err != nil {
			_ = rs.send(chunk)
			return rs.fail(err)
		}
	}
	x.finish()
	return rs.status, false
}

// fullDuplex is the FULL_DUPLEX_STREAMED response path: the engine's body goes to the EPP
// as it arrives (a pump goroutine) and the client gets what the EPP sends back.
func (rs *eppResponse) fullDuplex(x *eppStream) (int, bool) {
	ctx := rs.r.Context()
	bodyless := rs.up.eof && len(rs.up.first) == 0
	if err := x.responseHeaders(rs.up.resp.StatusCode, rs.up.resp.Header, rs.up.ep.Address, bodyless); err != nil {
		return rs.fail(err)
	}
	pumped := make(chan error, 1)
	if bodyless {
		pumped <- nil
	} else {
		go func() { pumped <- rs.pump(x) }()
	}
	pumping := pumped
	stop := func() {
		// The engine's body and the stream close, so the pump returns.
		rs.up.resp.Body.Close()
		x.cancel()
		if pumping != nil {
			<-pumping
		}
	}
	// Envoy ignores a mode_override when a body mode is FULL_DUPLEX_STREAMED.
	h, im, _, err := rs.headersAnswer(x)
	if err != nil {
		stop()
		return rs.fail(err)
	}
	if im != nil {
		stop()
		return writeImmediate(rs.w, im), false
	}
	rs.writeHeader(h)
	if bodyless {
		<-pumped
		x.finish()
		return rs.status, false
	}
	var tail <-chan time.Time // after the engine's body ended: the wait for the rest
	for {
		select {
		case err := <-pumping:
			pumping = nil
			if err != nil {
				stop()
				return rs.fail(err)
			}
			t := time.NewTimer(x.e.cfg.Timeout)
			defer t.Stop()
			tail = t.C
		case rcv := <-x.recv:
			if rcv.err != nil {
				stop()
				return rs.fail(errEPP{rcv.err})
			}
			sr := rcv.m.GetResponseBody().GetResponse().GetBodyMutation().GetStreamedResponse()
			if sr == nil {
				stop()
				return rs.fail(eppFailed("want a streamed response body answer, got %T", rcv.m.GetResponse()))
			}
			if err := rs.send(sr.GetBody()); err != nil {
				stop()
				return rs.status, false
			}
			if sr.GetEndOfStream() {
				if pumping != nil {
					<-pumping
				}
				x.finish()
				return rs.status, false
			}
		case <-tail:
			stop()
			return rs.fail(eppFailed("the response body did not come back within %s", x.e.cfg.Timeout))
		case <-ctx.Done():
			stop()
			return statusClientGone, false
		}
	}
}

// pump sends the engine's body to the EPP as it arrives; an error is the engine's (or the
// stream's).
func (rs *eppResponse) pump(x *eppStream) error {
	chunk, eof := rs.up.first, rs.up.eof
	for {
		for len(chunk) > eppChunk {
			if err := x.responseBody(chunk[:eppChunk], false); err != nil {
				return err
			}
			chunk = chunk[eppChunk:]
		}
		if err := x.responseBody(chunk, eof); err != nil {
			return err
		}
		if eof {
			return nil
		}
		var err error
		if chunk, eof, err = rs.read(); err != nil {
			if len(chunk) > 0 {
				_ = x.responseBody(chunk, false)
			}
			return err
		}
	}
}

// writeImmediate answers the client with the EPP's ImmediateResponse: its status, headers
// and body. A body-less refusal gets an OpenAI error body; a status that is not HTTP's, a 502.
func writeImmediate(w http.ResponseWriter, im *extprocv3.ImmediateResponse) int {
	code := int(im.GetStatus().GetCode())
	if code < 200 || code > 599 {
		return writeErr(w, eppBadImmediate(code))
	}
	h := http.Header{}
	applyMutation(h, im.GetHeaders())
	if len(im.GetBody()) == 0 && code >= 400 {
		e := eppRefused(code, im.GetDetails())
		for k, vs := range h {
			if !strings.EqualFold(k, "content-type") {
				w.Header()[k] = vs
			}
		}
		openai.WriteError(w, e)
		return code
	}
	for k, vs := range h {
		w.Header()[k] = vs
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(im.GetBody())))
	w.WriteHeader(code)
	_, _ = w.Write(im.GetBody())
	return code
}
