package workerd

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/kvgate/kvgate/engine"
)

// scrape fetches and parses url (an engine's /metrics).
func scrape(ctx context.Context, c *http.Client, url string) (engine.Load, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return engine.Load{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return engine.Load{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return engine.Load{}, fmt.Errorf("workerd: %s: %s", url, resp.Status)
	}
	return engine.ParseLoad(io.LimitReader(resp.Body, engine.MaxLoadBytes))
}

// healthy reports whether url (an engine's /health) answers 2xx.
func healthy(ctx context.Context, c *http.Client, url string) bool {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
	resp.Body.Close()
	return resp.StatusCode >= 200 && resp.StatusCode < 300
}
