package router

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/kvgate/kvgate/engine"
)

// SetLoad records an engine-reported load for the endpoint called name as if it had been
// scraped now (replays feed load this way). Unknown names are ignored.
func (r *Router) SetLoad(name string, l engine.Load) {
	if s := r.state(name); s != nil {
		s.reading.Store(&loadReading{Load: l, at: r.cfg.Now()})
	}
}

// RecheckMin is the first delay before probing an endpoint again after a probe found it
// down; the delay doubles up to RecheckMax (or ScrapeInterval, if shorter) while it stays
// down.
const (
	RecheckMin = 25 * time.Millisecond
	RecheckMax = 500 * time.Millisecond
)

// scrapeLoop reads the endpoint's /metrics every ScrapeInterval until ctx ends; sooner
// (RecheckMin, doubling up to RecheckMax) while the endpoint is down, and at once when a request failed to
// connect to it (epState.wake), so an engine that restarts is back in rotation as soon as it
// answers rather than after UnhealthyFor.
func (r *Router) scrapeLoop(ctx context.Context, s *epState) {
	t := time.NewTimer(r.cfg.ScrapeInterval)
	defer t.Stop()
	var backoff time.Duration
	for {
		wait := r.cfg.ScrapeInterval
		if r.scrape(ctx, s) {
			backoff = min(max(2*backoff, RecheckMin), RecheckMax, r.cfg.ScrapeInterval)
			wait = backoff
		} else {
			backoff = 0
		}
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.recheck:
		}
	}
}

// scrape reads the endpoint's metrics once and reports whether the engine is down. A
// connection failure or a 5xx marks the endpoint unhealthy for UnhealthyFor. Any other
// answer means the engine is up: the endpoint is healthy again at once (after an outage its
// approximate cache is forgotten: engineBack). Text that is not vLLM's or SGLang's (a 404, a
// JSON document) leaves the load to the router's own accounting, said once per endpoint.
func (r *Router) scrape(ctx context.Context, s *epState) (down bool) {
	l, err := r.fetchLoad(ctx, s.ep.metricsURL())
	if ctx.Err() != nil {
		return false
	}
	now := r.cfg.Now()
	var de *downError
	if errors.As(err, &de) {
		r.m.scrapeErrors.Inc()
		if s.healthy(now) {
			r.log.Warn("endpoint unreachable, out of rotation", "endpoint", s.ep.Name, "for", r.cfg.UnhealthyFor, "err", err)
		}
		s.markUnhealthy(now, r.cfg.UnhealthyFor, err.Error())
		if isConnError(err) && s.answered.Load() {
			s.downAt.Store(now.UnixNano())
		}
		return true
	}
	r.engineBack(s)
	if err == nil {
		prev := s.reading.Swap(&loadReading{Load: l, at: now})
		if prev != nil && prev.StartTime != 0 && l.StartTime != 0 && prev.StartTime != l.StartTime {
			r.engineRestarted(s, "its process start time changed")
		}
		if s.noMetrics.Swap(false) {
			r.log.Info("engine metrics readable again; its load is the engine's", "endpoint", s.ep.Name)
		}
		if s.maxLens.Load() == nil {
			r.fetchModelLens(ctx, s)
		}
		return false
	}
	r.m.scrapeErrors.Inc()
	if !s.noMetrics.Swap(true) {
		r.log.Info("engine serves no vLLM or SGLang /metrics; its load is the router's own in-flight accounting",
			"endpoint", s.ep.Name, "err", err)
	}
	return false
}

// engineBack puts an endpoint that answered back in rotation. When it was out after a
// failure, its engine may have restarted with an empty cache: what approximate mode
// remembers sending there is forgotten (endpoints with KV events learn it from the events).
func (r *Router) engineBack(s *epState) {
	s.answered.Store(true)
	s.downAt.Store(0)
	if s.unhealthyUntil.Swap(0) == 0 {
		return
	}
	r.log.Info("endpoint answers again, back in rotation", "endpoint", s.ep.Name)
	r.engineRestarted(s, "it was out")
}

// engineRestarted forgets what approximate mode remembers sending to s: its engine may have
// restarted with an empty cache (endpoints with KV events learn it from their events).
func (r *Router) engineRestarted(s *epState, why string) {
	if s.hasEvents() {
		return
	}
	r.approx.RemoveEndpoint(s.id)
	r.m.approxCorrections.WithLabelValues(CorrectionRestart).Inc()
	r.log.Info("engine may have restarted; forgetting its approximate cache", "endpoint", s.ep.Name, "because", why)
}

// downError is a failure that says the engine is not serving.
type downError struct{ err error }

func (e *downError) Error() string { return e.err.Error() }
func (e *downError) Unwrap() error { return e.err }

func (r *Router) fetchLoad(ctx context.Context, url string) (engine.Load, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return engine.Load{}, err
	}
	req.Header.Set("Accept", "text/plain")
	// The page uncompressed: it is read every ScrapeInterval from every engine, and
	// gunzipping it cost the router more than parsing what it reads of it (and the engine
	// the compression). An engine that compresses anyway is still read.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := r.cfg.HTTPClient.Do(req)
	if err != nil {
		return engine.Load{}, &downError{err}
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return engine.Load{}, &downError{fmt.Errorf("metrics: HTTP %d", resp.StatusCode)}
	}
	if resp.StatusCode != http.StatusOK {
		return engine.Load{}, fmt.Errorf("metrics: HTTP %d", resp.StatusCode)
	}
	var body io.Reader = resp.Body
	if strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			return engine.Load{}, fmt.Errorf("metrics: %w", err)
		}
		defer zr.Close()
		body = zr
	}
	return engine.ParseLoad(io.LimitReader(body, engine.MaxLoadBytes))
}

// isConnError reports whether err says the endpoint could not be reached (as opposed to a
// client going away or an HTTP error status).
func isConnError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}
