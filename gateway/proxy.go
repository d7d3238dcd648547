package gateway

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// proxy serves one completion request: read the body, route it, dial the engine (falling
// back before the first byte), stream the answer. A response cut after its first byte ends
// in an aborted connection, never a normal end.
func (g *Gateway) proxy(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	path := metricPath(r)
	g.metrics.inflight.Inc()
	defer g.metrics.inflight.Dec()
	var span trace.Span
	if g.cfg.Tracer != nil {
		r, span = g.startServerSpan(r)
	}
	code, cut := g.serveProxy(w, r)
	g.metrics.requests.WithLabelValues(path, strconv.Itoa(code)).Inc()
	g.metrics.duration.WithLabelValues(path).Observe(time.Since(start).Seconds())
	if span != nil {
		endServerSpan(span, code, cut)
	}
	if cut {
		// The server closes the connection without the terminating chunk (HTTP/1.1) or resets
		// the stream (HTTP/2): the client cannot mistake the cut response for a whole one.
		panic(http.ErrAbortHandler)
	}
}

// serveProxy routes and proxies one request. It returns the status the client got and
// whether the response was cut after it started, so the caller must abort it.
func (g *Gateway) serveProxy(w http.ResponseWriter, r *http.Request) (code int, cut bool) {
	body, oerr := g.readBody(w, r)
	if oerr != nil {
		return writeErr(w, oerr), false
	}
	ctx := r.Context()
	d, err := g.router.Route(ctx, router.Request{Path: r.URL.Path, Body: body, Headers: r.Header.Clone()})
	if err != nil {
		return writeErr(w, err), false
	}
	if d.Body != nil {
		body = d.Body
	}
	var mig *migration
	if g.cfg.MigrationLimit > 0 && d.Stream && migrates(r.URL.Path) {
		if mig = newMigration(r.URL.Path, body); mig != nil {
			if d.UsageForced { // the router asked for usage, not the client
				mig.NoClientUsage()
			}
			if b, err := mig.FirstBody(body); err == nil {
				body = b
			} else {
				mig = nil
			}
		}
	}
	// The pull source is for this first engine only: a migration re-issues the body as the
	// client sent it (newMigration above kept it), to another engine.
	body = g.pullBody(d, body)
	picked := time.Now()
	buf := g.bufs.Get().(*[]byte)
	defer g.bufs.Put(buf)
	actx, cancel := context.WithCancel(ctx) // a migration cancels a stalled attempt
	defer cancel()
	up, err := g.dial(actx, r, d, body, *buf)
	if err != nil {
		d.Done(nil, err)
		if ctx.Err() != nil {
			return statusClientGone, false // nobody reads a status
		}
		return writeErr(w, upstreamFailed()), false
	}
	defer func() { up.resp.Body.Close() }()
	if mig != nil && up.resp.StatusCode == http.StatusOK && strings.HasPrefix(up.resp.Header.Get("Content-Type"), "text/event-stream") {
		return g.migrateStream(w, r, d, up, cancel, mig, *buf, picked)
	}
	return g.stream(w, r, d, up, *buf, picked)
}

// statusClientGone is the status recorded for a request whose client went away (nginx's 499).
const statusClientGone = 499

// readBody reads the request body within cfg.BodyTimeout and cfg.MaxBodyBytes.
func (g *Gateway) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *openai.Error) {
	rc := http.NewResponseController(w)
	deadline := rc.SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout)) == nil
	var b bytes.Buffer
	if n := r.ContentLength; n > 0 && n <= g.cfg.MaxBodyBytes {
		b.Grow(int(n) + 1) // +1: ReadFrom's final read finds EOF without growing
	}
	_, err := b.ReadFrom(http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes))
	if err == nil {
		if deadline {
			// Cleared before the response streams: the server's watch for a client hang-up
			// reads under the same deadline. After a failure it stays, so that the server's
			// drain of the unread body before closing cannot wait on the client.
			_ = rc.SetReadDeadline(time.Time{})
		}
		return b.Bytes(), nil
	}
	var mbe *http.MaxBytesError
	var ne net.Error
	switch {
	case errors.As(err, &mbe):
		return nil, openai.TooLarge(g.cfg.MaxBodyBytes)
	case errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout():
		g.metrics.bodyTimeouts.Inc()
		if r.ProtoMajor == 1 {
			w.Header().Set(headerConnection, "close")
		}
		return nil, requestTimeout(g.cfg.BodyTimeout)
	}
	return nil, openai.BadRequest("", "Reading the request body failed: %v", err)
}

func writeErr(w http.ResponseWriter, err error) int {
	e := openai.AsError(err)
	openai.WriteError(w, e)
	return e.Status
}

// pullBody adds the router's P2P pull source to body as kv_transfer_params when
// cfg.P2PTransferPort is set. A body it cannot rewrite goes as it is (the header still names
// the source): the engine then recomputes at worst.
func (g *Gateway) pullBody(d *router.Decision, body []byte) []byte {
	b, err := d.PullBody(body, g.cfg.P2PTransferPort)
	if err != nil {
		g.log.Warn("P2P pull: kv_transfer_params not added", "source", d.Pull.From.Address, "error", err)
		return body
	}
	return b
}
