package discovery_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/discovery"
	"github.com/kvgate/kvgate/polltest"
)

// TestFollowAddresses: the follower gets the healthy endpoints of the role asked for, again on
// every change of the source, and returns when the context ends.
func TestFollowAddresses(t *testing.T) {
	src := discovery.NewStatic([]discovery.Endpoint{
		{Name: "p0", Address: "10.0.0.1:8000", Role: discovery.RolePrefill, Healthy: true},
		{Name: "p1", Address: "10.0.0.2:8000", Role: discovery.RolePrefill, Healthy: false},
		{Name: "d0", Address: "10.0.0.3:8000", Role: discovery.RoleDecode, Healthy: true},
	})
	var mu sync.Mutex
	var got [][]string
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		discovery.FollowAddresses(ctx, src, discovery.RolePrefill, func(a []string) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, a)
		})
	}()
	wait := func(n int) []string {
		t.Helper()
		polltest.Until(t, 5*time.Second, fmt.Sprintf("update %d", n), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(got) >= n
		})
		mu.Lock()
		defer mu.Unlock()
		return got[n-1]
	}
	if a := wait(1); !slices.Equal(a, []string{"10.0.0.1:8000"}) {
		t.Fatalf("first set %v, want only the healthy prefill engine", a)
	}
	src.Set([]discovery.Endpoint{{Name: "p2", Address: "10.0.0.9:8000", Role: discovery.RolePrefill, Healthy: true}})
	if a := wait(2); !slices.Equal(a, []string{"10.0.0.9:8000"}) {
		t.Fatalf("after the change %v", a)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("FollowAddresses did not return after cancel")
	}
}
