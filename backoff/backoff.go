// Package backoff is the one reconnect and retry delay of kvgate: exponential, capped,
// jittered so that many clients that lost the same server do not come back in lockstep, and
// context-aware. It owns no step of a request or a KV event; the loops that reconnect to
// Consul, a workerd relay or an engine use it.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Clock is the time a Backoff waits on; nil fields take the real clock. Tests inject one.
type Clock struct {
	// After returns a channel that receives after d, and a function that stops the timer.
	After func(d time.Duration) (<-chan time.Time, func() bool)
}

func (c Clock) after(d time.Duration) (<-chan time.Time, func() bool) {
	if c.After != nil {
		return c.After(d)
	}
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// Backoff hands out growing delays: the n-th (from 0) is Min*2^n capped at Max, each drawn
// uniformly from [d/2, d] ("equal jitter"), so a delay is never under half its nominal value
// and never over Max. Reset starts over after progress. A Backoff is not safe for concurrent
// use: each reconnect loop owns one.
type Backoff struct {
	Min, Max time.Duration
	Clock    Clock
	// Rand returns a float64 in [0, 1); nil = math/rand/v2.
	Rand func() float64

	cur time.Duration
}

// New returns a Backoff from min to max (min at least 1ms, max at least min).
func New(min, max time.Duration) *Backoff {
	b := &Backoff{Min: min, Max: max}
	b.normalize()
	return b
}

func (b *Backoff) normalize() {
	if b.Min <= 0 {
		b.Min = time.Millisecond
	}
	if b.Max < b.Min {
		b.Max = b.Min
	}
}

// Next returns the next delay and advances.
func (b *Backoff) Next() time.Duration {
	b.normalize()
	if b.cur < b.Min {
		b.cur = b.Min
	}
	d := b.cur
	b.cur = min(2*b.cur, b.Max)
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d/2 + time.Duration(r()*float64(d-d/2))
}

// Reset makes the next delay Min again (call it when the connection made progress).
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps for Next() and reports true, or returns false as soon as ctx ends.
func (b *Backoff) Wait(ctx context.Context) bool {
	return Sleep(ctx, b.Clock, b.Next())
}

// Sleep waits d on clock and reports true, or returns false as soon as ctx ends.
func Sleep(ctx context.Context, clock Clock, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	c, stop := clock.after(d)
	defer stop()
	select {
	case <-ctx.Done():
		return false
	case <-c:
		return true
	}
}
