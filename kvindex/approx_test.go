package kvindex_test

import (
	"testing"
	"time"

	"github.com/kvgate/kvgate/kvindex"
)

func approxMatches(a *kvindex.Approx, q []kvindex.BlockHash, now time.Time) (map[kvindex.EndpointID]int, int) {
	var out kvindex.Matches
	a.FindMatches(q, now, &out)
	got := map[kvindex.EndpointID]int{}
	for i, m := range out.Endpoints {
		if i > 0 && out.Endpoints[i-1].Endpoint >= m.Endpoint {
			panic("unsorted")
		}
		if m.Tiers != [3]int{m.Blocks, 0, 0} {
			panic("approximate blocks must count as GPU")
		}
		got[m.Endpoint] = m.Blocks
	}
	return got, out.Depth
}

func TestApprox(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	q := query(8)
	tests := []struct {
		name      string
		ttl       time.Duration
		capacity  int
		record    func(a *kvindex.Approx)
		at        time.Duration
		query     []kvindex.BlockHash
		want      map[kvindex.EndpointID]int
		wantDepth int
	}{
		{
			name: "longest recorded prefix per endpoint",
			ttl:  time.Minute,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[:6], t0)
				a.Record(2, q[:3], t0)
			},
			query: q, want: map[kvindex.EndpointID]int{1: 6, 2: 3}, wantDepth: 6,
		},
		{
			name: "expired after ttl",
			ttl:  time.Minute,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[:6], t0)
				a.Record(2, q[:3], t0.Add(30*time.Second))
			},
			at:    61 * time.Second,
			query: q, want: map[kvindex.EndpointID]int{2: 3}, wantDepth: 3,
		},
		{
			name: "re-sending refreshes the ttl of the shared prefix only",
			ttl:  time.Minute,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[:6], t0)
				a.Record(1, q[:2], t0.Add(50*time.Second))
			},
			at:    70 * time.Second,
			query: q, want: map[kvindex.EndpointID]int{1: 2}, wantDepth: 2,
		},
		{
			name:     "capacity evicts the least recently sent tails first",
			ttl:      time.Hour,
			capacity: 5,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[:4], t0)
				// a different prompt of 3 blocks pushes 2 of the oldest out
				a.Record(1, query(11)[8:11], t0.Add(time.Second))
			},
			query: q, want: map[kvindex.EndpointID]int{1: 2}, wantDepth: 2,
		},
		{
			name:     "capacity is per endpoint",
			ttl:      time.Hour,
			capacity: 4,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[:4], t0)
				a.Record(2, q[:8], t0)
			},
			query: q, want: map[kvindex.EndpointID]int{1: 4, 2: 4}, wantDepth: 4,
		},
		{
			name: "a different first block matches nothing",
			ttl:  time.Minute,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[1:5], t0)
			},
			query: q, want: map[kvindex.EndpointID]int{}, wantDepth: 0,
		},
		{
			name: "removed endpoint is forgotten",
			ttl:  time.Minute,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[:4], t0)
				a.Record(2, q[:2], t0)
				a.RemoveEndpoint(1)
				a.RemoveEndpoint(9)
			},
			query: q, want: map[kvindex.EndpointID]int{2: 2}, wantDepth: 2,
		},
		{
			name: "empty query",
			ttl:  time.Minute,
			record: func(a *kvindex.Approx) {
				a.Record(1, q[:4], t0)
				a.Record(1, nil, t0)
			},
			query: nil, want: map[kvindex.EndpointID]int{}, wantDepth: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := kvindex.NewApprox(tc.ttl, tc.capacity)
			tc.record(a)
			got, depth := approxMatches(a, tc.query, t0.Add(tc.at))
			if len(got) != len(tc.want) || depth != tc.wantDepth {
				t.Fatalf("got %v depth %d, want %v depth %d", got, depth, tc.want, tc.wantDepth)
			}
			for ep, n := range tc.want {
				if got[ep] != n {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestApproxExpiryFreesCapacity(t *testing.T) {
	t0 := time.Unix(0, 0)
	a := kvindex.NewApprox(time.Second, 4)
	a.Record(1, query(4), t0)
	// After expiry the old entries are dropped on the next record rather
	// than evicting the new request's blocks.
	a.Record(1, query(12)[8:12], t0.Add(2*time.Second))
	got, _ := approxMatches(a, query(12)[8:12], t0.Add(2*time.Second))
	if got[1] != 4 {
		t.Fatalf("new request holds %d blocks, want 4", got[1])
	}
	got, _ = approxMatches(a, query(4), t0.Add(2*time.Second))
	if len(got) != 0 {
		t.Fatalf("expired prefix still matches: %v", got)
	}
}

// TestApproxModel compares Approx with a naive model (a list of touched
// prefixes per endpoint, evicting the least recently touched) over random
// records and queries with a clock that only moves forward.
func TestApproxModel(t *testing.T) {
	type entry struct {
		expires time.Time
		seq     int
	}
	for run := range 50 {
		rnd := newRand(uint64(run))
		ttl := time.Duration(1+rnd.IntN(20)) * time.Second
		capacity := rnd.IntN(12) // 0: unlimited
		a := kvindex.NewApprox(ttl, capacity)
		model := map[kvindex.EndpointID]map[string]entry{}
		now := time.Unix(1000, 0)
		seq := 0
		randHashes := func() []kvindex.BlockHash {
			var toks []uint32
			for range rnd.IntN(7) {
				toks = append(toks, pool[rnd.IntN(2)]...) // two block contents: heavy sharing
			}
			return kvindex.HashBlocks(nil, 0, toks, 4)
		}
		for step := range 300 {
			now = now.Add(time.Duration(rnd.IntN(3000)) * time.Millisecond)
			ep := kvindex.EndpointID(rnd.IntN(4))
			switch rnd.IntN(6) {
			case 0, 1, 2:
				hs := randHashes()
				a.Record(ep, hs, now)
				if len(hs) == 0 {
					break
				}
				m := model[ep]
				if m == nil {
					m = map[string]entry{}
					model[ep] = m
				}
				for k, e := range m {
					if !now.Before(e.expires) {
						delete(m, k)
					}
				}
				for i := len(hs) - 1; i >= 0; i-- {
					seq++
					m[pathKeyOf(hs[:i+1])] = entry{now.Add(ttl), seq}
				}
				for capacity > 0 && len(m) > capacity {
					oldest, os := "", -1
					for k, e := range m {
						if os < 0 || e.seq < os {
							oldest, os = k, e.seq
						}
					}
					delete(m, oldest)
				}
			case 3:
				if rnd.IntN(4) == 0 {
					a.RemoveEndpoint(ep)
					delete(model, ep)
				}
			default:
				q := randHashes()
				got, depth := approxMatches(a, q, now)
				wantDepth := 0
				want := map[kvindex.EndpointID]int{}
				for e, m := range model {
					n := 0
					for n < len(q) {
						en, ok := m[pathKeyOf(q[:n+1])]
						if !ok || !now.Before(en.expires) {
							break
						}
						n++
					}
					if n > 0 {
						want[e] = n
						wantDepth = max(wantDepth, n)
					}
				}
				if len(got) != len(want) || depth != wantDepth {
					t.Fatalf("run %d step %d: got %v depth %d, want %v depth %d", run, step, got, depth, want, wantDepth)
				}
				for e, n := range want {
					if got[e] != n {
						t.Fatalf("run %d step %d: got %v, want %v", run, step, got, want)
					}
				}
			}
		}
	}
}

func pathKeyOf(hs []kvindex.BlockHash) string {
	p := ""
	for _, h := range hs {
		p = pathKey(p, h)
	}
	return p
}

func TestApproxFindMatchesNoAlloc(t *testing.T) {
	a := kvindex.NewApprox(time.Hour, 0)
	now := time.Unix(0, 0)
	q := query(64)
	for ep := range kvindex.EndpointID(16) {
		a.Record(ep, q[:1+int(ep)*4], now)
	}
	var out kvindex.Matches
	a.FindMatches(q, now, &out)
	if out.Depth != 61 || len(out.Endpoints) != 16 {
		t.Fatalf("depth %d, %d endpoints; want 61, 16", out.Depth, len(out.Endpoints))
	}
	if n := testing.AllocsPerRun(50, func() { a.FindMatches(q, now, &out) }); n != 0 {
		t.Fatalf("Approx.FindMatches allocates %v times with a reused Matches", n)
	}
}

// TestApproxForget: forgetting an endpoint's blocks from one depth of a prompt drops that
// block and everything the endpoint holds below it (other prompts sharing it included),
// keeps the blocks above and other endpoints' blocks, and a later Record brings back only
// what it records.
func TestApproxForget(t *testing.T) {
	a := kvindex.NewApprox(time.Hour, 0)
	now := time.Unix(1000, 0)
	h := func(xs ...uint64) []kvindex.BlockHash {
		out := make([]kvindex.BlockHash, len(xs))
		for i, x := range xs {
			out[i] = kvindex.BlockHash(x)
		}
		return out
	}
	p1 := h(1, 2, 3, 4, 5)
	p2 := h(1, 2, 3, 9, 10) // shares 1,2,3 with p1
	p3 := h(7, 8)
	a.Record(1, p1, now)
	a.Record(1, p2, now)
	a.Record(1, p3, now)
	a.Record(2, p1, now)
	var m kvindex.Matches
	blocks := func(ep kvindex.EndpointID, hs []kvindex.BlockHash) int {
		a.FindMatches(hs, now, &m)
		for _, x := range m.Endpoints {
			if x.Endpoint == ep {
				return x.Blocks
			}
		}
		return 0
	}
	if got := a.Forget(1, p1, 2); got != 5 {
		t.Fatalf("Forget dropped %d blocks, want 5 (3, 4, 5 and 9, 10 under 3)", got)
	}
	for _, c := range []struct {
		ep   kvindex.EndpointID
		hs   []kvindex.BlockHash
		want int
	}{{1, p1, 2}, {1, p2, 2}, {1, p3, 2}, {2, p1, 5}} {
		if got := blocks(c.ep, c.hs); got != c.want {
			t.Errorf("endpoint %d, prompt %v: %d blocks, want %d", c.ep, c.hs, got, c.want)
		}
	}
	if got := a.Forget(1, p1, 2); got != 0 {
		t.Errorf("second Forget dropped %d", got)
	}
	if got := a.Forget(1, p1, 5); got != 0 {
		t.Errorf("Forget beyond the prompt dropped %d", got)
	}
	a.Record(1, p1, now)
	if got := blocks(1, p2); got != 3 {
		t.Errorf("after re-recording p1, p2 matches %d blocks, want 3 (its own tail was forgotten)", got)
	}
}
