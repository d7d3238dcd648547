package workerd

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/relay"
)

// The relay client's handler side, as a router would hold it (a copy of relay's test
// recorder: workerd's tests read its relay through the real client).

// recorder is an engine.Handler that keeps what it is given.
type recorder struct {
	mu      sync.Mutex
	batches []recBatch
	gaps    [][2]uint64
	loads   []engine.Load
	notify  chan struct{}
}

type recBatch struct {
	seq uint64
	b   engine.EventBatch
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) Batch(seq uint64, b engine.EventBatch) {
	r.mu.Lock()
	r.batches = append(r.batches, recBatch{seq, b})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) Gap(expected, got uint64) {
	r.mu.Lock()
	r.gaps = append(r.gaps, [2]uint64{expected, got})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) snapshot() ([]recBatch, [][2]uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches), slices.Clone(r.gaps)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type loadRecorder struct {
	*recorder
	healthy []bool
}

func (l *loadRecorder) Load(x engine.Load, healthy bool) {
	l.mu.Lock()
	l.loads = append(l.loads, x)
	l.healthy = append(l.healthy, healthy)
	l.mu.Unlock()
}

func (l *loadRecorder) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.loads)
}

// storedHashes lists the BlockStored hashes of a batch, in order.
func storedHashes(b engine.EventBatch) []uint64 {
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

// run starts c.Run and returns a stop function that waits for it.
func run(t *testing.T, c *relay.Client, h engine.Handler) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
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
