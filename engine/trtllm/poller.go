package trtllm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/kvgate/kvgate/engine"
)

// Defaults of a Poller.
const (
	DefaultPollInterval = 100 * time.Millisecond
	DefaultMaxBody      = 64 << 20
	// failedPollLogEvery bounds the log of a poller whose engine is away.
	failedPollLogEvery = 10 * time.Second
)

// PollerConfig is one engine's /kv_cache_events.
type PollerConfig struct {
	URL       string        // http://host:port/kv_cache_events (required)
	Interval  time.Duration // between polls; 0 = DefaultPollInterval
	BlockSize int           // the engine's tokens_per_block (Decoder.BlockSize)
	MaxBody   int64         // largest response read; 0 = DefaultMaxBody
	Client    *http.Client  // nil = a client with a 10 s timeout
	Logger    *slog.Logger  // nil = discard
}

// Poller is an event source (what router.EventSource and workerd's relay read) for
// trtllm-serve: it POSTs to /kv_cache_events every Interval and hands the decoded events to
// the handler. trtllm-serve's endpoint drains its buffer on each call, so an engine must have
// exactly one poller (workerd's relay, or one router without workerd).
type Poller struct {
	cfg PollerConfig
	dec Decoder
	seq uint64
}

// NewPoller returns a poller for cfg.
func NewPoller(cfg PollerConfig) *Poller {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultPollInterval
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Poller{cfg: cfg, dec: Decoder{BlockSize: cfg.BlockSize}}
}

// Run polls until ctx ends and returns nil then. Handler calls come from Run's goroutine.
// A list with lost or restarted event ids is preceded by h.Gap; a list that does not decode
// (an unknown event type or hash algorithm) is logged and reported as a gap of one batch, so
// the router forgets the engine's cache rather than trust half of it. A poll that fails
// (the engine is away or restarting) is retried next interval; its restart shows in the
// event ids.
func (p *Poller) Run(ctx context.Context, h engine.Handler) error {
	if p.cfg.URL == "" {
		return errors.New("trtllm: poller without a URL")
	}
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	var lastFailLog time.Time
	failures := 0
	for {
		body, err := p.poll(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			failures++
			if now := time.Now(); now.Sub(lastFailLog) >= failedPollLogEvery {
				p.cfg.Logger.Warn("trtllm: polling KV-cache events failed", "url", p.cfg.URL, "err", err, "count", failures)
				lastFailLog, failures = now, 0
			}
		default:
			p.deliver(body, h)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (p *Poller) deliver(body []byte, h engine.Handler) {
	res, err := p.dec.Decode(body)
	if err != nil {
		p.cfg.Logger.Warn("trtllm: KV-cache events refused, clearing the engine's cache state", "url", p.cfg.URL, "err", err)
		h.Gap(p.seq+1, p.seq+2)
		p.seq += 2
		return
	}
	if res.Gap {
		// Event ids are 0-based like ZMQ seqs: a join reads as Gap(0, got).
		h.Gap(uint64(max(res.ExpectedID, 0)), uint64(max(res.GotID, 0)))
	}
	if len(res.Batch.Events) == 0 {
		return
	}
	res.Batch.TS = float64(time.Now().UnixNano()) / 1e9
	h.Batch(p.seq, res.Batch)
	p.seq++
}

func (p *Poller) poll(ctx context.Context) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Client.Timeout+time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.cfg.URL, http.NoBody)
	if err != nil {
		return nil, err
	}
	resp, err := p.cfg.Client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%s: HTTP %d", p.cfg.URL, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, p.cfg.MaxBody+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > p.cfg.MaxBody {
		return nil, fmt.Errorf("%s: response over %d bytes", p.cfg.URL, p.cfg.MaxBody)
	}
	return body, nil
}
