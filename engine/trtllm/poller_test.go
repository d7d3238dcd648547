package trtllm_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/trtllm"
	"github.com/kvgate/kvgate/polltest"
)

// recorder is an engine.Handler that keeps what it is given.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) Batch(seq uint64, b engine.EventBatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range b.Events {
		r.calls = append(r.calls, fmt.Sprintf("batch %d %v %d", seq, e.Kind, len(e.BlockHashes)))
	}
}

func (r *recorder) Gap(expected, got uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, fmt.Sprintf("gap %d %d", expected, got))
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.calls...)
}

// fakeServe answers POST /kv_cache_events with the queued bodies, one per call (then "[]"),
// as trtllm-serve drains its buffer; any other method is refused.
type fakeServe struct {
	mu     sync.Mutex
	bodies []string
	polls  int
}

func (f *fakeServe) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != trtllm.EventsPath {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	body := "[]"
	if len(f.bodies) > 0 {
		body, f.bodies = f.bodies[0], f.bodies[1:]
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(body))
}

func (f *fakeServe) drained() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.bodies) == 0 && f.polls > 0
}

// TestPollerOverHTTP: the poller POSTs to /kv_cache_events, hands each list to the handler
// in order, turns an event-id hole and a refused list (unknown hash_algo) into gaps, and
// leaves no goroutine behind when its context ends.
func TestPollerOverHTTP(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	stored := func(id, h int) string {
		return fmt.Sprintf(`{"event_id":%d,"data":{"type":"stored","parent_hash":null,"blocks":[{"block_hash":%d,"tokens":[{"token_id":1},{"token_id":2}],"cache_level":0}]},"window_size":64}`, id, h)
	}
	fs := &fakeServe{bodies: []string{
		`[{"event_id":0,"data":{"type":"created","num_blocks_per_cache_level":[8,0]},"window_size":64},` + stored(1, 5) + `]`,
		`[` + stored(2, 6) + `]`,
		`[{"event_id":3,"hash_algo":"v3_unknown","data":{"type":"removed","block_hashes":[5]}}]`,
		`[` + stored(9, 7) + `]`, // 3 (refused, yet counted) .. 8 lost
	}}
	srv := httptest.NewServer(fs)
	defer srv.Close()

	p := trtllm.NewPoller(trtllm.PollerConfig{URL: srv.URL + trtllm.EventsPath, Interval: 5 * time.Millisecond, BlockSize: 2, Client: srv.Client()})
	rec := &recorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, rec) }()
	polltest.Until(t, 5*time.Second, "the poller drains the engine's events", func() bool { return fs.drained() && len(rec.get()) >= 6 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	want := []string{
		"batch 0 AllBlocksCleared 0", "batch 0 BlockStored 1",
		"batch 1 BlockStored 1",
		"gap 3 4", // the refused list
		"gap 3 9", // ids 3..8 never applied
		"batch 4 BlockStored 1",
	}
	got := rec.get()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("handler calls\n got %q\nwant %q", got, want)
	}
	srv.CloseClientConnections()
}

// TestPollerEngineAway: polls that fail (connection refused) deliver nothing and Run keeps
// polling until its context ends.
func TestPollerEngineAway(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL + trtllm.EventsPath
	srv.Close() // nothing listens there now
	p := trtllm.NewPoller(trtllm.PollerConfig{URL: url, Interval: time.Millisecond})
	rec := &recorder{}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := p.Run(ctx, rec); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if c := rec.get(); len(c) != 0 {
		t.Fatalf("handler called for a missing engine: %q", c)
	}
}
