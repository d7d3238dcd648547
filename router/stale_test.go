package router_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/router"
)

// hookHandler is a slog handler that runs hook (once) on the first record whose message
// contains match: a way into the middle of a batch without a test-only hook in the router.
type hookHandler struct {
	match string
	once  *sync.Once
	hook  func()
}

func (h hookHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h hookHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		h.once.Do(h.hook)
	}
	return nil
}
func (h hookHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h hookHandler) WithGroup(string) slog.Handler      { return h }

// TestStaleEventsDroppedForReplacedEndpoint replays a batch from an endpoint that discovery removes
// while the batch is being applied, at a moment when the index hands the removed endpoint's
// ID to the endpoint that replaces it (the 65th name). Before, identity was checked once per
// batch, and the rest of the batch landed on the new endpoint, which then held blocks it
// never reported.
//
// The removal starts from the first event (the router logs that it learned the block size
// there) and is given 200ms to complete before the batch goes on: the old code let it
// complete at once; the router under test holds it off until that event is applied, and
// the removal then lands between two events.
func TestStaleEventsDroppedForReplacedEndpoint(t *testing.T) {
	eps := make([]router.Endpoint, 64)
	for i := range eps {
		eps[i] = router.Endpoint{Name: fmt.Sprintf("e%02d", i), Address: fmt.Sprintf("127.0.0.1:%d", 1+i), Models: []string{model}}
	}
	replaced := append([]router.Endpoint{{Name: "new", Address: "127.0.0.1:9999", Models: []string{model}}}, eps[1:]...)

	var r *router.Router
	removed := make(chan struct{})
	h := hookHandler{match: "learned the endpoint's block size", once: &sync.Once{}, hook: func() {
		go func() { r.SetEndpoints(replaced); close(removed) }()
		select {
		case <-removed:
		case <-time.After(200 * time.Millisecond):
		}
	}}
	cfg := router.DefaultConfig()
	cfg.Endpoints = eps
	cfg.ScrapeInterval = -1
	cfg.Seed = 1
	reg := prometheus.NewRegistry()
	var err error
	r, err = router.New(cfg, slog.New(h), reg)
	if err != nil {
		t.Fatal(err)
	}

	// Two BlockStored events of 32-token blocks (the model map says 16: the first event
	// makes the router learn the size and log it).
	const bs = 32
	tokens := make([]uint32, 4*bs)
	for i := range tokens {
		tokens[i] = uint32(1000 + i)
	}
	ev := func(from, n int, parent string) engine.Event {
		e := engine.Event{Kind: engine.BlockStored, BlockSize: bs, TokenIDs: tokens[from*bs : (from+n)*bs]}
		for i := range n {
			e.BlockHashes = append(e.BlockHashes, engine.HashFromUint64(uint64(100+from+i)))
		}
		if parent != "" {
			e.Parent = engine.HashFromUint64(uint64(100 + from - 1))
		}
		return e
	}
	r.ApplyEvents("e00", engine.EventBatch{TS: 1, Events: []engine.Event{ev(0, 2, ""), ev(2, 2, "parent")}})
	select {
	case <-removed:
	case <-time.After(10 * time.Second):
		t.Fatal("SetEndpoints did not complete")
	}

	if got := loadOf(r, "new").CachedBlocks; got != 0 {
		t.Errorf("the replacing endpoint holds %d blocks from the removed endpoint's events", got)
	}
	if got := metricstest.Value(reg, router.MetricStaleEvents); got < 1 {
		t.Errorf("%s = %v, want at least 1 dropped event", router.MetricStaleEvents, got)
	}
	// The new endpoint's own events still land.
	r.ApplyEvents("new", engine.EventBatch{TS: 2, Events: []engine.Event{ev(0, 2, "")}})
	if got := loadOf(r, "new").CachedBlocks; got != 2 {
		t.Errorf("the new endpoint holds %d blocks after its own event, want 2", got)
	}
}
