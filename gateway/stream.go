package gateway

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// stream writes the engine's answer to the client: its headers (less hop-by-hop ones, plus
// the decision's), then the body as it arrives, flushed after every read, and ends the
// decision with the usage seen. It returns the status sent and whether the engine failed
// after the first byte: then an SSE stream has got an error event and the caller must abort
// the response.
func (g *Gateway) stream(w http.ResponseWriter, r *http.Request, d *router.Decision, up *upstream, buf []byte, picked time.Time) (int, bool) {
	resp := up.resp
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	httpproxy.RemoveHopByHop(h)
	h.Set(router.HeaderEndpoint, up.ep.Address)
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

	c := copier{w: w, rc: http.NewResponseController(w)}
	chunk, eof := up.first, up.eof
	for {
		if len(chunk) > 0 {
			if watch.Write(chunk) && !c.first {
				c.first = true
				d.FirstToken()
				g.metrics.ttft.Observe(time.Since(picked).Seconds())
			}
			out := chunk
			if strip != nil {
				out = strip.Write(out)
			}
			if err := c.send(out); err != nil {
				d.Done(watch.Close(), clientErr(r, err))
				return resp.StatusCode, false
			}
		}
		if eof {
			break
		}
		k, err := resp.Body.Read(buf)
		chunk = buf[:k]
		switch {
		case errors.Is(err, io.EOF):
			eof = true
		case err != nil:
			if k > 0 { // what arrived before the failure
				if strip != nil {
					chunk = strip.Write(chunk)
				}
				_ = c.send(chunk)
			}
			return g.cut(r, d, watch, &c, sse, up, err)
		}
	}
	if strip != nil {
		if err := c.send(strip.Flush()); err != nil {
			d.Done(watch.Close(), clientErr(r, err))
			return resp.StatusCode, false
		}
	}
	var err error
	if resp.StatusCode >= 400 {
		err = upstreamStatus(resp.StatusCode)
	}
	u := watch.Close()
	g.recordUsage(r.Context(), d, u)
	d.Done(u, err)
	return resp.StatusCode, false
}

// cut ends a response whose engine failed after its first byte: an error event closes an
// SSE stream, the decision ends with the error, and the metric counts it. The caller aborts
// the response. A client that is already gone is no cut.
func (g *Gateway) cut(r *http.Request, d *router.Decision, watch *openai.BodyWatcher, c *copier, sse bool, up *upstream, err error) (int, bool) {
	if r.Context().Err() != nil {
		d.Done(watch.Close(), r.Context().Err())
		return up.resp.StatusCode, false
	}
	g.metrics.streamsCut.Inc()
	g.log.Warn("upstream failed mid-response, aborting it", "endpoint", up.ep.Address, "bytes_sent", c.sent, "error", err)
	if sse {
		_ = c.send(errorEvent(c.tail[:c.ntail], streamCut()))
	}
	d.Done(watch.Close(), err)
	return up.resp.StatusCode, true
}

// errorEvent is the SSE event carrying e, starting on an event boundary after tail (the last
// bytes sent): a partial event the engine left is ended first.
func errorEvent(tail []byte, e *openai.Error) []byte {
	var b bytes.Buffer
	switch {
	case len(tail) == 0, bytes.HasSuffix(tail, []byte("\n\n")), bytes.HasSuffix(tail, []byte("\r\n\r\n")):
	case bytes.HasSuffix(tail, []byte("\n")):
		b.WriteString("\n")
	default:
		b.WriteString("\n\n")
	}
	b.WriteString("data: ")
	b.Write(e.Body())
	b.WriteString("\n\n")
	return b.Bytes()
}

// copier writes to the client, flushing after every write, and remembers the last bytes
// sent.
type copier struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	first bool    // the first token was seen
	sent  int64   // bytes written
	tail  [4]byte // the last bytes written (up to 4)
	ntail int
}

func (c *copier) send(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := c.w.Write(p)
	c.sent += int64(n)
	c.remember(p[:n])
	if err != nil {
		return err
	}
	if err := c.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return err
	}
	return nil
}

func (c *copier) remember(p []byte) {
	if len(p) >= len(c.tail) {
		c.ntail = copy(c.tail[:], p[len(p)-len(c.tail):])
		return
	}
	keep := min(c.ntail, len(c.tail)-len(p))
	copy(c.tail[:], c.tail[c.ntail-keep:c.ntail])
	c.ntail = keep + copy(c.tail[keep:], p)
}

// clientErr is the error a failed write to the client ends the decision with: the request's
// cancellation when the client went away.
func clientErr(r *http.Request, err error) error {
	if cerr := r.Context().Err(); cerr != nil {
		return cerr
	}
	return err
}

type upstreamStatus int

func (s upstreamStatus) Error() string { return "upstream answered HTTP " + http.StatusText(int(s)) }
