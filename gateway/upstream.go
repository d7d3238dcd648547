package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"

	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/router"
)

// upstream is the engine response the gateway commits to: its headers and the first piece
// of its body have arrived, so nothing was sent to the client yet and a failure up to here
// could still go to another endpoint.
type upstream struct {
	resp  *http.Response
	ep    router.Endpoint
	first []byte // the first bytes of the body (in the caller's buffer); empty for an empty body
	eof   bool   // the body ended with first
}

// Retry reasons, the label of MetricRetries.
const (
	retryConnect  = "connect"   // the connection could not be made
	retryNoAnswer = "no_answer" // connected, but no response headers (closed, reset, timeout)
	retryNoBody   = "no_body"   // headers, then the body failed before its first byte
)

// dial sends the request to the decision's target and, while an attempt fails before the
// first byte of its body, to the next fallback, trying at most cfg.MaxAttempts endpoints.
// It reports a fallback that served to the router. buf receives the first body bytes. The
// error is the last attempt's, or ctx's when the client went away.
func (g *Gateway) dial(ctx context.Context, r *http.Request, d *router.Decision, body, buf []byte) (*upstream, error) {
	n := min(1+len(d.Fallbacks), g.cfg.MaxAttempts)
	extra := d.Header()
	var last error
	for i := range n {
		ep := d.Endpoint
		if i > 0 {
			ep = d.Fallbacks[i-1]
		}
		up, reason, err := g.attempt(ctx, r, ep, body, extra, buf, d.Model, i+1)
		if err == nil {
			if i > 0 {
				d.Served(ep.Address)
			}
			return up, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		last = err
		if i+1 < n {
			g.metrics.retries.WithLabelValues(reason).Inc()
			g.log.Info("upstream failed before answering, trying the next endpoint", "endpoint", ep.Address, "next", d.Fallbacks[i].Address, "reason", reason, "error", err)
		} else {
			g.log.Warn("upstream failed before answering", "endpoint", ep.Address, "attempts", n, "reason", reason, "error", err)
		}
	}
	return nil, last
}

// attempt sends one request to ep and reads the first piece of the answer's body into buf.
// On failure it returns why (a retry reason) and has closed what it opened. model and n (1
// for the target, 2.. for fallbacks) describe the attempt's span when tracing; closing the
// response body ends it.
func (g *Gateway) attempt(ctx context.Context, r *http.Request, ep router.Endpoint, body []byte, extra http.Header, buf []byte, model string, n int) (*upstream, string, error) {
	req, err := upstreamRequest(ctx, r, ep, body, extra)
	if err != nil {
		return nil, retryConnect, err
	}
	span := g.startClientSpan(ctx, req, ep, model, n)
	resp, err := g.transport.RoundTrip(req)
	if err != nil {
		reason := retryNoAnswer
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			reason = retryConnect
		}
		endClientSpan(span, reason, err)
		return nil, reason, err
	}
	if span != nil {
		traceResponse(span, resp)
	}
	for {
		k, err := resp.Body.Read(buf)
		if k > 0 || errors.Is(err, io.EOF) {
			return &upstream{resp: resp, ep: ep, first: buf[:k], eof: errors.Is(err, io.EOF)}, "", nil
		}
		if err != nil {
			resp.Body.Close()
			return nil, retryNoBody, fmt.Errorf("reading the response: %w", err)
		}
	}
}

// upstreamRequest is the request to ep: the client's headers less hop-by-hop ones, with
// X-Forwarded-For and the decision's headers, and the routed body.
func upstreamRequest(ctx context.Context, r *http.Request, ep router.Endpoint, body []byte, extra http.Header) (*http.Request, error) {
	base := ep.Address
	if !strings.Contains(base, "://") {
		base = ep.URL()
	}
	u := strings.TrimRight(base, "/") + r.URL.Path
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, u, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = r.Header.Clone()
	httpproxy.RemoveHopByHop(req.Header)
	req.Header.Del("Content-Length")
	req.Header.Del("Accept-Encoding")
	// Only the router names prefill endpoints: a client's header would make the decode
	// sidecar post the prompt wherever it says.
	req.Header.Del(router.HeaderPrefiller)
	// Nor pull sources: an engine would fetch blocks from wherever a client says.
	req.Header.Del(router.HeaderKVCacheSource)
	httpproxy.AddForwardedFor(req.Header, r.RemoteAddr)
	for k, vs := range extra {
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	req.ContentLength = int64(len(body))
	return req, nil
}
