package sidecar

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

	"github.com/kvgate/kvgate/httpproxy"
	"github.com/kvgate/kvgate/openai"
)

// Migration reasons, the label of MetricMigrations (the gateway's names).
const (
	MigrateFailed = "engine_failed" // the stream broke off: connection closed or reset, ended early
	MigrateStall  = "stall"         // no event for Config.MigrationStall after the first token
	MigrateError  = "engine_error"  // the engine put an error event into the stream
)

// Outcomes of migrated requests, the label of MetricMigratedRequests.
const (
	OutcomeCompleted   = "completed"   // the client got the whole answer
	OutcomeLimit       = "limit"       // Config.MigrationLimit migrations were not enough
	OutcomeTooLong     = "too_long"    // more than Config.MigrationMaxTokens were generated
	OutcomeUnsupported = "unsupported" // the answer so far cannot be continued (tool calls, reasoning)
	OutcomeNoEndpoint  = "no_endpoint" // no fallback decode endpoint took the continuation
	OutcomeClientGone  = "client_gone" // the client left
)

var (
	errStall      = errors.New("no token within the migration stall time")
	errEndedEarly = errors.New("the stream ended without a finish reason or [DONE]")
)

// fallbacks are the decode endpoints the router named after its pick (this sidecar) in
// HeaderDestination, less those outside Config.Decode: a continuation goes only where the
// router could have sent the request.
func (s *Server) fallbacks(r *http.Request) []string {
	v := r.Header.Get(HeaderDestination)
	if v == "" {
		return nil
	}
	var out []string
	for i, a := range strings.Split(v, ",") {
		a = strings.TrimSpace(a)
		if i == 0 || a == "" || slices.Contains(out, a) {
			continue
		}
		if !s.cfg.Decode.Has(a) {
			s.migrateRefused.Inc()
			continue
		}
		out = append(out, a)
	}
	return out
}

// migratable returns the stitching state of a disaggregated request whose decode half the
// sidecar may move to a fallback decode endpoint: migration on, a streamed completion or
// chat (openai.NewStitch) built from the client's body (without the prefill's
// kv_transfer_params), and at least one allowed fallback. nil: decode as before.
func (s *Server) migratable(r *http.Request, body []byte) (*openai.Stitch, []string) {
	if s.cfg.MigrationLimit <= 0 {
		return nil, nil
	}
	cands := s.fallbacks(r)
	if len(cands) == 0 {
		return nil, nil
	}
	m := openai.NewStitch(r.URL.Path, body)
	if m == nil {
		return nil, nil
	}
	return m, cands
}

// attemptEnd is how one attempt's stream ended.
type attemptEnd struct {
	done   bool   // the client got the whole answer
	gone   bool   // the client left
	reason string // why the attempt failed (a Migrate reason), when neither
	err    error
	usage  *openai.Usage // the engine's own last usage
}

// decodeMigrating runs the decode half on the local engine as forward does, and when the
// engine fails or stalls midway, continues the request on the router's fallback decode
// endpoints, stitching the answers into one stream (openai.Stitch): the first attempt's id,
// each token once, one final usage with the true totals.
func (s *Server) decodeMigrating(w http.ResponseWriter, r *http.Request, body []byte, extra http.Header, m *openai.Stitch, cands []string) {
	first, err := m.FirstBody(body)
	if err != nil {
		s.forward(w, r, body, extra)
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	resp, err := s.send(ctx, r, "http://"+s.cfg.Engine, first, s.transport)
	if err != nil {
		cancel()
		if r.Context().Err() == nil {
			s.log.Warn("decode engine unreachable", "err", err)
			writeError(w, http.StatusBadGateway, "decode engine unreachable")
		}
		return
	}
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	httpproxy.RemoveHopByHop(h)
	for k, vs := range extra {
		h[k] = vs
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		// Not a stream (an error answer): relayed as it is.
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		resp.Body.Close()
		cancel()
		return
	}
	h.Del("Content-Length")
	w.WriteHeader(resp.StatusCode)
	rc := http.NewResponseController(w)
	send := func(b []byte) error {
		if _, err := w.Write(b); err != nil {
			return err
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		return nil
	}
	from := s.cfg.Engine
	var failed []string
	for {
		end := s.relay(r, resp, cancel, m, send)
		resp.Body.Close()
		cancel()
		switch {
		case end.done:
			if m.Attempts() > 0 {
				s.migrated.WithLabelValues(OutcomeCompleted).Inc()
			}
			return
		case end.gone:
			if m.Attempts() > 0 {
				s.migrated.WithLabelValues(OutcomeClientGone).Inc()
			}
			return
		}
		failed = append(failed, from)
		outcome := ""
		switch {
		case m.Unsupported():
			outcome = OutcomeUnsupported
		case m.Attempts() >= s.cfg.MigrationLimit:
			outcome = OutcomeLimit
		case m.Tokens() > s.cfg.MigrationMaxTokens:
			outcome = OutcomeTooLong
		}
		if outcome == "" && m.Exhausted() {
			// Everything was generated but the engine failed before saying so: end it here.
			s.migrations.WithLabelValues(end.reason).Inc()
			s.migrated.WithLabelValues(OutcomeCompleted).Inc()
			if b, err := m.Finish("length", end.usage); err == nil {
				_ = send(b)
			}
			return
		}
		if outcome != "" {
			s.abandon(send, from, outcome, end.err)
		}
		s.migrations.WithLabelValues(end.reason).Inc()
		m.Next()
		s.log.Info("migrating a decode stream", "from", from, "reason", end.reason, "tokens_so_far", m.Tokens(),
			"migration", m.Attempts(), "error", end.err)
		ctx, cancel = context.WithCancel(r.Context())
		var next string
		resp, next, err = s.reissue(ctx, r, m, cands, failed)
		if err != nil {
			cancel()
			if r.Context().Err() != nil {
				s.migrated.WithLabelValues(OutcomeClientGone).Inc()
				return
			}
			s.abandon(send, from, OutcomeNoEndpoint, err)
		}
		from = next
	}
}

// abandon cuts a stream that could not be migrated: an error event, then the response
// aborted (the client sees a broken stream, never a clean end). It does not return: it
// panics with http.ErrAbortHandler, which the server turns into a dropped connection.
func (s *Server) abandon(send func([]byte) error, from, outcome string, err error) {
	s.migrated.WithLabelValues(outcome).Inc()
	s.log.Warn("decode stream failed and was not migrated, aborting it", "endpoint", from, "outcome", outcome, "error", err)
	e := openai.Errorf(http.StatusBadGateway, openai.TypeUnavailable, "", "The inference engine failed while streaming; the response is incomplete.")
	e.Code = openai.CodeUpstreamFailed
	_ = send(append(append([]byte("data: "), e.Body()...), "\n\n"...))
	panic(http.ErrAbortHandler)
}

// reissue sends the continuation to the first fallback that has not failed this request and
// answers with a stream; it returns the response and the endpoint.
func (s *Server) reissue(ctx context.Context, r *http.Request, m *openai.Stitch, cands, failed []string) (*http.Response, string, error) {
	body, err := m.Continuation()
	if err != nil {
		return nil, "", err
	}
	last := errors.New("every fallback decode endpoint already failed this request")
	for _, ep := range cands {
		if slices.Contains(failed, ep) {
			continue
		}
		resp, err := s.send(ctx, r, s.decodeScheme+ep, body, s.decodeTransport)
		if err == nil && (resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")) {
			resp.Body.Close()
			err = fmt.Errorf("the continuation was answered HTTP %d", resp.StatusCode)
		}
		if err == nil {
			return resp, ep, nil
		}
		if ctx.Err() != nil {
			return nil, ep, ctx.Err()
		}
		s.log.Warn("fallback decode endpoint refused the continuation", "endpoint", ep, "error", err)
		last = err
	}
	return nil, "", last
}

// send posts body to base+r.URL.Path with the client's headers, less hop-by-hop ones, the
// body's length, Accept-Encoding and the routing headers (a continuation is a plain
// aggregated request; the fallback must not prefill remotely or migrate it again), with the
// client's address appended to X-Forwarded-For.
func (s *Server) send(ctx context.Context, r *http.Request, base string, body []byte, rt http.RoundTripper) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+r.URL.Path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = prefillHeader(r)
	req.Header.Del(HeaderDestination)
	req.Header.Set("Content-Type", "application/json")
	req.ContentLength = int64(len(body))
	return rt.RoundTrip(req)
}

// relay copies one attempt's events to the client, rewritten into the stitched stream,
// until the answer ends, the client leaves or the attempt fails.
func (s *Server) relay(r *http.Request, resp *http.Response, cancel context.CancelFunc, m *openai.Stitch, send func([]byte) error) attemptEnd {
	var stalled atomic.Bool
	timer := time.AfterFunc(time.Hour, func() { stalled.Store(true); cancel() })
	timer.Stop()
	defer timer.Stop()
	src := openai.NewSSEReader(resp.Body)
	var last *openai.Usage
	attemptFirst := false
	finish := func() attemptEnd {
		b, err := m.Finish("", last)
		if err == nil {
			err = send(b)
		}
		if err != nil {
			return attemptEnd{gone: true, err: err}
		}
		return attemptEnd{done: true, usage: last}
	}
	fail := func(reason string, err error) attemptEnd {
		if r.Context().Err() != nil {
			return attemptEnd{gone: true, err: r.Context().Err()}
		}
		if stalled.Load() {
			reason, err = MigrateStall, errStall
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
				return finish()
			}
			if errors.Is(err, io.EOF) {
				err = errEndedEarly
			}
			return fail(MigrateFailed, err)
		}
		if string(data) == openai.Done {
			return finish()
		}
		out, tok, u, err := m.Rewrite(data)
		if err != nil {
			return fail(MigrateError, err)
		}
		if u != nil {
			last = u
		}
		attemptFirst = attemptFirst || tok
		if attemptFirst && s.cfg.MigrationStall > 0 {
			timer.Reset(s.cfg.MigrationStall)
		}
		if out != nil {
			if err := send(out); err != nil {
				return attemptEnd{gone: true, err: err}
			}
		}
	}
}
