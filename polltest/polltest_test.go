package polltest_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvgate/kvgate/polltest"
)

func TestWait(t *testing.T) {
	var n atomic.Int32
	go func() {
		for range 3 {
			n.Add(1)
		}
	}()
	if !polltest.Wait(5*time.Second, func() bool { return n.Load() == 3 }) {
		t.Fatal("a condition another goroutine makes true was not seen")
	}
	calls := 0
	if polltest.Wait(20*time.Millisecond, func() bool { calls++; return false }) {
		t.Fatal("a condition that never holds was reported held")
	}
	if calls < 2 {
		t.Fatalf("checked %d times in 20ms, want at least twice", calls)
	}
}
