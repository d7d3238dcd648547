// Package polltest waits in tests for a condition that another goroutine or process makes
// true (a metric reached, a log line written, a port answering): one loop instead of a
// sleep-and-check copy in every package.
package polltest

import (
	"testing"
	"time"
)

// Interval is how often a condition is checked.
const Interval = 5 * time.Millisecond

// Wait checks cond at once and then every Interval until it holds or timeout passes, and
// reports whether it held. cond runs on the caller's goroutine.
func Wait(timeout time.Duration, cond func() bool) bool {
	if cond() {
		return true
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			if cond() {
				return true
			}
		case <-deadline.C:
			return cond()
		}
	}
}

// Until is Wait that fails t, naming what it waited for, when cond never held.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Wait(timeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}
