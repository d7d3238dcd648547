package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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

// scrapeLoop reads the endpoint's /metrics every ScrapeInterval until ctx ends.
func (r *Router) scrapeLoop(ctx context.Context, s *epState) {
	t := time.NewTicker(r.cfg.ScrapeInterval)
	defer t.Stop()
	for {
		r.scrape(ctx, s)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scrape reads the endpoint's metrics once. A connection failure or a 5xx marks the endpoint
// unhealthy for UnhealthyFor; a success clears that. Text that is not vLLM's or SGLang's
// leaves the endpoint healthy with unknown load.
func (r *Router) scrape(ctx context.Context, s *epState) {
	l, err := r.fetchLoad(ctx, s.ep.metricsURL())
	if ctx.Err() != nil {
		return
	}
	now := r.cfg.Now()
	if err == nil {
		s.reading.Store(&loadReading{Load: l, at: now})
		s.unhealthyUntil.Store(0)
		if s.maxLens.Load() == nil {
			r.fetchModelLens(ctx, s)
		}
		return
	}
	r.m.scrapeErrors.Inc()
	var down *downError
	if errors.As(err, &down) {
		if s.healthy(now) {
			r.log.Warn("endpoint unreachable, out of rotation", "endpoint", s.ep.Name, "for", r.cfg.UnhealthyFor, "err", err)
		}
		s.markUnhealthy(now, r.cfg.UnhealthyFor, err.Error())
		return
	}
	r.log.Debug("metrics unreadable, load unknown", "endpoint", s.ep.Name, "err", err)
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
	return engine.ParseLoad(io.LimitReader(resp.Body, engine.MaxLoadBytes))
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
