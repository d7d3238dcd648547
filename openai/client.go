package openai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// maxModelList bounds the /v1/models response a client reads.
const maxModelList = 4 << 20

// ListModels asks the OpenAI-compatible server at base (scheme://host:port, with or without
// a trailing /v1) which models it serves, in the order it lists them. A non-empty apiKey is
// sent as a bearer token. A server that answers with an error status, with something that is
// not a model list, or with no model at all is an error.
func ListModels(ctx context.Context, c *http.Client, base, apiKey string) ([]string, error) {
	base = strings.TrimSuffix(strings.TrimRight(base, "/"), "/v1")
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/models", nil)
	if err != nil {
		return nil, err
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("listing models: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxModelList))
	if err != nil {
		return nil, fmt.Errorf("listing models: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		msg := strings.TrimSpace(string(body))
		if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
			msg = e.Error.Message
		}
		return nil, fmt.Errorf("listing models: HTTP %d: %.200s", resp.StatusCode, msg)
	}
	var list ModelList
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("listing models: %w", err)
	}
	out := make([]string, 0, len(list.Data))
	for _, m := range list.Data {
		if m.ID != "" {
			out = append(out, m.ID)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("listing models: the server lists none")
	}
	return out, nil
}

// WaitModels calls ListModels every interval until it succeeds or ctx ends (for a server that
// is still starting); the error then names the last failure.
func WaitModels(ctx context.Context, c *http.Client, base, apiKey string, interval time.Duration) ([]string, error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		m, err := ListModels(ctx, c, base, apiKey)
		if err == nil {
			return m, nil
		}
		if last == nil || ctx.Err() == nil { // not the attempt the deadline cut short
			last = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up: %v)", last, context.Cause(ctx))
		case <-t.C:
		}
	}
}
