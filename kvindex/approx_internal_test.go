package kvindex

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestApproxFreesEverything: once every endpoint is removed, or everything
// recorded has expired and been swept, no node, entry or holder bit is left.
func TestApproxFreesEverything(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int
		end      func(a *Approx, now time.Time)
	}{
		{"removed", 0, func(a *Approx, _ time.Time) {
			for ep := range EndpointID(130) {
				a.RemoveEndpoint(ep * 5)
			}
		}},
		{"removed with capacity", 7, func(a *Approx, _ time.Time) {
			for ep := range EndpointID(130) {
				a.RemoveEndpoint(ep * 5)
			}
		}},
		{"expired", 0, func(a *Approx, now time.Time) {
			a.Record(1, []BlockHash{42}, now.Add(time.Hour))
			a.RemoveEndpoint(1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(1, 2))
			a := NewApprox(time.Minute, tc.capacity)
			now := time.Unix(0, 0)
			for range 2000 {
				hs := make([]BlockHash, rnd.IntN(12))
				for i := range hs {
					hs[i] = BlockHash(rnd.IntN(3))
				}
				now = now.Add(time.Duration(rnd.IntN(100)) * time.Millisecond)
				a.Record(EndpointID(rnd.IntN(130)*5), hs, now)
			}
			if a.live == 0 {
				t.Fatal("nothing recorded")
			}
			tc.end(a, now)
			if a.live != 0 || len(a.at) != 0 || len(a.kids) != 0 {
				t.Fatalf("%d nodes, %d entries, %d child links left", a.live, len(a.at), len(a.kids))
			}
			for i, w := range a.hold {
				if w != 0 {
					t.Fatalf("holder word %d still set", i)
				}
			}
		})
	}
}

// TestApproxConcurrent runs recorders, removers and readers at once (for the
// race detector); a prefix recorded far in the future must always match.
func TestApproxConcurrent(t *testing.T) {
	a := NewApprox(time.Minute, 50)
	pinned := []BlockHash{7, 8, 9}
	far := time.Unix(1<<40, 0)
	a.Record(1000, pinned, far)
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(g), 0))
			for i := range 2000 {
				hs := []BlockHash{7, BlockHash(rnd.IntN(4)), BlockHash(rnd.IntN(4))}
				ep := EndpointID(rnd.IntN(100))
				if i%50 == 0 {
					a.RemoveEndpoint(ep)
				}
				a.Record(ep, hs, far)
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			var m Matches
			for range 2000 {
				a.FindMatches(pinned, far, &m)
				found := false
				for _, e := range m.Endpoints {
					found = found || e.Endpoint == 1000 && e.Blocks == 3
				}
				if !found {
					t.Error("pinned prefix lost")
					return
				}
			}
		})
	}
	wg.Wait()
}
