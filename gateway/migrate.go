package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/kvgate/kvgate/anthropic"
	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/openai"
	"github.com/kvgate/kvgate/router"
)

// Migration reasons, the label of MetricMigrations.
const (
	migrateFailed = "engine_failed" // the response broke off: connection closed or reset, stream ended early
	migrateStall  = "stall"         // no event for Config.MigrationStall after the first token
	migrateError  = "engine_error"  // the engine put an error event into the stream
)

// Outcomes of migrated requests, the label of MetricMigratedRequests.
const (
	outcomeCompleted   = "completed"   // the client got the whole answer
	outcomeLimit       = "limit"       // Config.MigrationLimit migrations were not enough
	outcomeTooLong     = "too_long"    // more than Config.MigrationMaxTokens were generated
	outcomeUnsupported = "unsupported" // the answer so far cannot be continued (tool calls, reasoning)
	outcomeNoEndpoint  = "no_endpoint" // no other engine took the continuation
	outcomeClientGone  = "client_gone" // the client left
)

// migration is one streamed request the gateway may move to another engine after its
// first token: the stitching state (package openai), the engines that failed it and
// whether the client has seen a token.
type migration struct {
	*openai.Stitch
	failed []string
	first  bool // the client has seen a token
}

// newMigration returns the migration state of a request the gateway can migrate (see
// openai.NewStitch); nil for anything else.
func newMigration(path string, body []byte) *migration {
	if path == anthropic.Path { // an Anthropic stream: openai.Stitch knows only OpenAI's
		return nil
	}
	st := openai.NewStitch(path, body)
	if st == nil {
		return nil
	}
	return &migration{Stitch: st}
}

// finish sends the events that end the stitched stream (openai.Stitch.Finish).
func (m *migration) finish(c *copier, reason string, last *openai.Usage) error {
	b, err := m.Finish(reason, last)
	if err != nil {
		return err
	}
	return c.send(b)
}

// attemptEnd is how one attempt's stream ended.
type attemptEnd struct {
	done   bool   // the client got the whole answer
	gone   bool   // the client left
	reason string // why the attempt failed (a migrate reason), when neither
	err    error
	usage  *openai.Usage // the engine's own last usage
}

// migrateStream relays an SSE answer to the client as stream does, and when the engine
// fails or stalls midway, continues the request on another engine and stitches the answers
// into one stream: the first attempt's id, each token once, one final usage with the true
// totals. It returns the status sent and whether the response must be aborted (cut).
func (g *Gateway) migrateStream(w http.ResponseWriter, r *http.Request, d *router.Decision, up *upstream, cancel context.CancelFunc, m *migration, buf []byte, picked time.Time) (int, bool) {
	h := w.Header()
	for k, vs := range up.resp.Header {
		h[k] = vs
	}
	httpproxy.RemoveHopByHop(h)
	h.Del("Content-Length")
	h.Set(router.HeaderEndpoint, up.ep.Address)
	dh := d.Header()
	for _, k := range echoHeaders {
		if v := dh.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	w.WriteHeader(up.resp.StatusCode)
	c := copier{w: w, rc: http.NewResponseController(w)}
	for {
		end := g.relay(r, d, up, cancel, m, &c, picked)
		up.resp.Body.Close()
		cancel()
		switch {
		case end.done:
			if m.Attempts() > 0 {
				g.metrics.migrated.WithLabelValues(outcomeCompleted).Inc()
			}
			g.recordUsage(r.Context(), d, end.usage)
			d.Done(end.usage, nil)
			return http.StatusOK, false
		case end.gone:
			if m.Attempts() > 0 {
				g.metrics.migrated.WithLabelValues(outcomeClientGone).Inc()
			}
			d.Done(nil, clientErr(r, end.err))
			return http.StatusOK, false
		}
		m.failed = append(m.failed, up.ep.Address)
		d.Done(nil, end.err)
		outcome := ""
		switch {
		case m.Unsupported():
			outcome = outcomeUnsupported
		case m.Attempts() >= g.cfg.MigrationLimit:
			outcome = outcomeLimit
		case m.Tokens() > g.cfg.MigrationMaxTokens:
			outcome = outcomeTooLong
		}
		if outcome == "" && m.Exhausted() {
			// Everything was generated but the engine failed before saying so: end it here.
			if err := m.finish(&c, "length", end.usage); err != nil {
				return http.StatusOK, false
			}
			g.metrics.migrations.WithLabelValues(end.reason).Inc()
			g.metrics.migrated.WithLabelValues(outcomeCompleted).Inc()
			return http.StatusOK, false
		}
		if outcome != "" {
			return g.abandon(r, d, &c, up.ep.Address, outcome, end.err)
		}
		g.metrics.migrations.WithLabelValues(end.reason).Inc()
		m.Next()
		g.log.Info("migrating a stream", "from", up.ep.Address, "reason", end.reason, "tokens_so_far", m.Tokens(), "migration", m.Attempts(), "error", end.err)
		var ctx context.Context
		ctx, cancel = context.WithCancel(r.Context())
		nd, nup, err := g.reissue(ctx, r, m, buf)
		if err != nil {
			cancel()
			if r.Context().Err() != nil {
				g.metrics.migrated.WithLabelValues(outcomeClientGone).Inc()
				return http.StatusOK, false
			}
			return g.abandon(r, d, &c, up.ep.Address, outcomeNoEndpoint, err)
		}
		d, up = nd, nup
	}
}

// abandon cuts a stream that could not be migrated: an error event, the decision ended,
// the response aborted by the caller.
func (g *Gateway) abandon(r *http.Request, d *router.Decision, c *copier, addr, outcome string, err error) (int, bool) {
	g.metrics.migrated.WithLabelValues(outcome).Inc()
	if r.Context().Err() != nil {
		d.Done(nil, r.Context().Err())
		return http.StatusOK, false
	}
	g.metrics.streamsCut.Inc()
	g.log.Warn("upstream failed mid-response and the stream was not migrated, aborting it", "endpoint", addr, "outcome", outcome, "bytes_sent", c.sent, "error", err)
	_ = c.send(errorEvent(c.tail[:c.ntail], streamCut()))
	d.Done(nil, err)
	return http.StatusOK, true
}

// reissue routes the continuation and sends it to the best candidate that has not failed
// this request, trying at most cfg.MaxAttempts of them before a first byte.
func (g *Gateway) reissue(ctx context.Context, r *http.Request, m *migration, buf []byte) (*router.Decision, *upstream, error) {
	body, err := m.Continuation()
	if err != nil {
		return nil, nil, err
	}
	d, err := g.router.Route(ctx, router.Request{Path: r.URL.Path, Body: body, Headers: r.Header.Clone()})
	if err != nil {
		return nil, nil, err
	}
	if d.Body != nil {
		body = d.Body
	}
	var cands []router.Endpoint
	for _, ep := range append([]router.Endpoint{d.Endpoint}, d.Fallbacks...) {
		if !slices.Contains(m.failed, ep.Address) && len(cands) < g.cfg.MaxAttempts {
			cands = append(cands, ep)
		}
	}
	last := errors.New("every candidate endpoint already failed this request")
	for _, ep := range cands {
		up, _, err := g.attempt(ctx, r, ep, body, d.Header(), buf, d.Model, 1)
		if err == nil && (up.resp.StatusCode != http.StatusOK || !strings.HasPrefix(up.resp.Header.Get("Content-Type"), "text/event-stream")) {
			up.resp.Body.Close()
			err = fmt.Errorf("the continuation was answered HTTP %d", up.resp.StatusCode)
		}
		if err == nil {
			if ep.Address != d.Endpoint.Address {
				d.Served(ep.Address)
			}
			return d, up, nil
		}
		if ctx.Err() != nil {
			d.Done(nil, ctx.Err())
			return nil, nil, ctx.Err()
		}
		m.failed = append(m.failed, ep.Address)
		last = err
	}
	d.Done(nil, last)
	return nil, nil, last
}

var (
	errStall      = errors.New("no token within the migration stall time")
	errEndedEarly = errors.New("the stream ended without a finish reason or [DONE]")
)

// relay copies one attempt's events to the client, rewritten into the stitched stream,
// until the answer ends, the client leaves or the attempt fails.
func (g *Gateway) relay(r *http.Request, d *router.Decision, up *upstream, cancel context.CancelFunc, m *migration, c *copier, picked time.Time) attemptEnd {
	var stalled atomic.Bool
	timer := time.AfterFunc(time.Hour, func() { stalled.Store(true); cancel() })
	timer.Stop()
	defer timer.Stop()
	src := openai.NewSSEReader(io.MultiReader(bytes.NewReader(up.first), up.resp.Body))
	var last *openai.Usage
	attemptFirst := false
	fail := func(reason string, err error) attemptEnd {
		if r.Context().Err() != nil {
			return attemptEnd{gone: true, err: r.Context().Err()}
		}
		if stalled.Load() {
			reason, err = migrateStall, errStall
		}
		return attemptEnd{reason: reason, err: err, usage: last}
	}
	for {
		data, err := src.Next()
		if err != nil {
			if r.Context().Err() != nil {
				return attemptEnd{gone: true, err: r.Context().Err()}
			}
			if m.Finished() { // only the usage chunk or [DONE] were missing
				if e := m.finish(c, "", last); e != nil {
					return attemptEnd{gone: true, err: e}
				}
				return attemptEnd{done: true, usage: last}
			}
			if errors.Is(err, io.EOF) && m.Finished() {
				if e := m.finish(c, "", last); e != nil {
					return attemptEnd{gone: true, err: e}
				}
				return attemptEnd{done: true, usage: last}
			}
			if errors.Is(err, io.EOF) {
				err = errEndedEarly
			}
			return fail(migrateFailed, err)
		}
		if string(data) == openai.Done { // the engine ended its answer (normally after a finish reason)
			if e := m.finish(c, "", last); e != nil {
				return attemptEnd{gone: true, err: e}
			}
			return attemptEnd{done: true, usage: last}
		}
		out, tok, u, err := m.Rewrite(data)
		if err != nil {
			return fail(migrateError, err)
		}
		if u != nil {
			last = u
		}
		if tok && !attemptFirst {
			attemptFirst = true
			d.FirstToken()
			if !m.first {
				m.first = true
				g.metrics.ttft.Observe(time.Since(picked).Seconds())
			}
		}
		if attemptFirst && g.cfg.MigrationStall > 0 {
			timer.Reset(g.cfg.MigrationStall)
		}
		if out != nil {
			if err := c.send(out); err != nil {
				return attemptEnd{gone: true, err: err}
			}
		}
	}
}

func sseEvent(data []byte) []byte {
	b := make([]byte, 0, len(data)+8)
	b = append(b, "data: "...)
	b = append(b, data...)
	return append(b, "\n\n"...)
}
