package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// hopHeaders are connection-level headers a proxy does not forward (RFC 9110 7.6.1).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// echoHeaders are the decision's headers reported to the client on the response.
var echoHeaders = []string{router.HeaderOverlap, router.HeaderPrefillEndpoint}

func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	path := r.URL.Path
	g.metrics.inflight.Inc()
	defer g.metrics.inflight.Dec()
	code := g.serveProxy(w, r)
	g.metrics.requests.WithLabelValues(path, strconv.Itoa(code)).Inc()
	g.metrics.duration.WithLabelValues(path).Observe(time.Since(start).Seconds())
}

// serveProxy routes and proxies one request and returns the status the client got.
func (g *Gateway) serveProxy(w http.ResponseWriter, r *http.Request) int {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return writeErr(w, openai.TooLarge(g.cfg.MaxBodyBytes))
		}
		return writeErr(w, openai.BadRequest("", "reading the request body: %v", err))
	}
	ctx := r.Context()
	d, err := g.picker.Route(ctx, router.Request{Path: r.URL.Path, Body: body, Headers: r.Header.Clone()})
	if err != nil {
		return writeErr(w, err)
	}
	if d.Body != nil {
		body = d.Body
	}
	picked := time.Now()

	targets := append([]router.Endpoint{d.Endpoint}, d.Fallbacks...)
	var resp *http.Response
	var served router.Endpoint
	for i, ep := range targets {
		req, err := g.upstreamRequest(ctx, r, ep, body, d.Header())
		if err != nil {
			d.Done(nil, err)
			return writeErr(w, openai.Errorf(http.StatusBadGateway, openai.TypeInternal, "", "endpoint %s: %v", ep.Address, err))
		}
		resp, err = g.transport.RoundTrip(req)
		if err == nil {
			served = ep
			if i > 0 {
				d.Served(ep.Address)
			}
			break
		}
		if ctx.Err() != nil {
			d.Done(nil, ctx.Err())
			return 499 // the client went away; nobody reads a status
		}
		if !beforeFirstByte(err) || i == len(targets)-1 {
			d.Done(nil, err)
			g.log.Warn("upstream failed", "endpoint", ep.Address, "error", err)
			return writeErr(w, openai.Errorf(http.StatusBadGateway, openai.TypeUnavailable, "", "endpoint %s: %v", ep.Address, err))
		}
		g.metrics.retries.Inc()
		g.log.Info("upstream unreachable, trying the next endpoint", "endpoint", ep.Address, "next", targets[i+1].Address, "error", err)
	}
	defer resp.Body.Close()

	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
	h.Set(router.HeaderEndpoint, served.Address)
	dh := d.Header()
	for _, k := range echoHeaders {
		if v := dh.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	if resp.Header.Get(router.HeaderPrefillFallback) != "" { // the decode side prefilled
		h.Del(router.HeaderPrefillEndpoint)
	}

	sse := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	watch := openai.NewBodyWatcher(sse, 4<<20)
	var strip *openai.UsageStripper
	if sse && d.UsageForced {
		strip = &openai.UsageStripper{} // the client did not ask for the usage chunk
		h.Del("Content-Length")
	}
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	send := func(p []byte) error {
		if len(p) == 0 {
			return nil
		}
		if _, err := w.Write(p); err != nil {
			return err
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		return nil
	}
	buf := make([]byte, 32<<10)
	first := false
	var copyErr error
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if watch.Write(buf[:n]) && !first {
				first = true
				d.FirstToken()
				g.metrics.ttft.Observe(time.Since(picked).Seconds())
			}
			out := buf[:n]
			if strip != nil {
				out = strip.Write(out)
			}
			if copyErr = send(out); copyErr != nil {
				break
			}
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				copyErr = rerr
			} else if strip != nil {
				copyErr = send(strip.Flush())
			}
			break
		}
	}
	switch {
	case copyErr != nil && ctx.Err() != nil:
		d.Done(watch.Close(), ctx.Err())
	case copyErr != nil:
		d.Done(watch.Close(), copyErr)
	case resp.StatusCode >= 400:
		d.Done(watch.Close(), fmt.Errorf("upstream answered HTTP %d", resp.StatusCode))
	default:
		d.Done(watch.Close(), nil)
	}
	return resp.StatusCode
}

// upstreamRequest is the request to ep: the client's headers less hop-by-hop ones, plus the
// decision's headers, with the routed body.
func (g *Gateway) upstreamRequest(ctx context.Context, r *http.Request, ep router.Endpoint, body []byte, extra http.Header) (*http.Request, error) {
	base := ep.Address
	if !strings.Contains(base, "://") {
		base = "http://" + base
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
	for _, k := range hopHeaders {
		req.Header.Del(k)
	}
	req.Header.Del("Content-Length")
	req.Header.Del("Accept-Encoding")
	// Only the router names prefill endpoints: a client's header would make the decode
	// sidecar post the prompt wherever it says.
	req.Header.Del(router.HeaderPrefiller)
	for k, vs := range extra {
		req.Header[http.CanonicalHeaderKey(k)] = vs
	}
	req.ContentLength = int64(len(body))
	return req, nil
}

// beforeFirstByte reports whether err means the request never reached the endpoint (the
// connection could not be made), so that another endpoint may safely be tried.
func beforeFirstByte(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func writeErr(w http.ResponseWriter, err error) int {
	e := openai.AsError(err)
	openai.WriteError(w, e)
	return e.Status
}
