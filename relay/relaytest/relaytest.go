// Package relaytest is the receiving end of a KV-event source for tests: an engine.Handler
// that records what it is given (with the relay's load, optionally), a way to run a source
// until the test ends, and a wait on an observable condition.
package relaytest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/polltest"
)

// Batch is one delivered batch with its sequence number.
type Batch struct {
	Seq uint64
	B   engine.EventBatch
}

// Recorder is an engine.Handler that keeps every batch and gap. Safe for concurrent use.
type Recorder struct {
	mu      sync.Mutex
	batches []Batch
	gaps    [][2]uint64
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{} }

var _ engine.Handler = (*Recorder)(nil)

// Batch records a batch.
func (r *Recorder) Batch(seq uint64, b engine.EventBatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, Batch{seq, b})
}

// Gap records a gap.
func (r *Recorder) Gap(expected, got uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gaps = append(r.gaps, [2]uint64{expected, got})
}

// Snapshot returns copies of the batches and gaps so far.
func (r *Recorder) Snapshot() ([]Batch, [][2]uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches), slices.Clone(r.gaps)
}

// LoadRecorder is a Recorder that also takes the relay's load reports (relay.LoadHandler).
type LoadRecorder struct {
	*Recorder
	mu      sync.Mutex
	loads   []engine.Load
	healthy []bool
}

// NewLoadRecorder returns an empty load recorder.
func NewLoadRecorder() *LoadRecorder { return &LoadRecorder{Recorder: NewRecorder()} }

// Load records a load report.
func (l *LoadRecorder) Load(x engine.Load, healthy bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.loads = append(l.loads, x)
	l.healthy = append(l.healthy, healthy)
}

// Loads returns copies of the load reports and their health so far.
func (l *LoadRecorder) Loads() ([]engine.Load, []bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.loads), slices.Clone(l.healthy)
}

// Count is the number of load reports so far.
func (l *LoadRecorder) Count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.loads)
}

// WaitFor polls cond until it holds, failing the test after d.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	polltest.Until(t, d, what, cond)
}

// Source is a KV-event source (relay.Client, engine.Subscriber).
type Source interface {
	Run(ctx context.Context, h engine.Handler) error
}

// Run starts src.Run(h) and returns a stop function that cancels it and checks that it
// returned nil; stop also runs when the test ends.
func Run(t testing.TB, src Source, h engine.Handler) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// StoredHashes lists the BlockStored hashes of a batch, in order.
func StoredHashes(b engine.EventBatch) []uint64 {
	var out []uint64
	for _, e := range b.Events {
		if e.Kind == engine.BlockStored {
			for _, h := range e.BlockHashes {
				out = append(out, h.Uint64())
			}
		}
	}
	return out
}
