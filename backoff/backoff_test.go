package backoff_test

import (
	"context"
	"testing"
	"time"

	"github.com/kvgate/kvgate/backoff"
)

func TestGrowsCapsAndResets(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    float64
		want []time.Duration
	}{
		{name: "lowest draw", r: 0, want: []time.Duration{50, 100, 200, 400, 500, 500}},
		{name: "highest draw", r: 0.999999999, want: []time.Duration{100, 200, 400, 800, 1000, 1000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := backoff.New(100*time.Millisecond, time.Second)
			b.Rand = func() float64 { return tc.r }
			for i, w := range tc.want {
				if got := b.Next().Round(time.Millisecond); got != w*time.Millisecond {
					t.Fatalf("delay %d = %v, want %v", i, got, w*time.Millisecond)
				}
			}
			b.Reset()
			if got := b.Next().Round(time.Millisecond); got != tc.want[0]*time.Millisecond {
				t.Fatalf("after Reset: %v, want %v", got, tc.want[0]*time.Millisecond)
			}
		})
	}
}

// TestJitterSpreads: clients that lost the same server at the same moment must not retry at
// the same moment (the lockstep reconnects of the unjittered loops).
func TestJitterSpreads(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 50 {
		b := backoff.New(time.Second, 30*time.Second)
		d := b.Next()
		if d < 500*time.Millisecond || d > time.Second {
			t.Fatalf("first delay %v outside [500ms, 1s]", d)
		}
		seen[d] = true
	}
	if len(seen) < 40 {
		t.Fatalf("50 clients drew only %d distinct delays", len(seen))
	}
}

// TestWaitUsesClockAndContext: Wait sleeps on the injected clock and gives up as soon as the
// context ends.
func TestWaitUsesClockAndContext(t *testing.T) {
	fire := make(chan time.Time, 1)
	var asked []time.Duration
	b := backoff.New(time.Hour, time.Hour)
	b.Rand = func() float64 { return 0 }
	b.Clock = backoff.Clock{After: func(d time.Duration) (<-chan time.Time, func() bool) {
		asked = append(asked, d)
		return fire, func() bool { return true }
	}}
	fire <- time.Now()
	if !b.Wait(context.Background()) {
		t.Fatal("Wait returned false with a live context")
	}
	if len(asked) != 1 || asked[0] != 30*time.Minute {
		t.Fatalf("clock asked for %v, want [30m]", asked)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- b.Wait(ctx) }()
	cancel()
	if <-done {
		t.Fatal("Wait returned true after cancel")
	}
	if b.Wait(ctx) {
		t.Fatal("Wait on a dead context returned true")
	}
}
