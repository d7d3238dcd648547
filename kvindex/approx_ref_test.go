package kvindex_test

import (
	"cmp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kvgate/kvgate/kvindex"
)

// refApprox is the approximate index as it was before the rebuild on the
// radix tree (one prefix-key map per endpoint and a holders list per key),
// kept as the reference model that Approx is property-tested and benchmarked
// against. Its answers are Approx's contract.
type refApprox struct {
	mu       sync.RWMutex
	ttl      time.Duration
	capacity int
	eps      map[kvindex.EndpointID]*refEndpoint
	holders  map[uint64][]kvindex.EndpointID // prefix key -> endpoints that hold it

	// For Forget only (nil in the benchmarks, which do not call it): each
	// prefix key's parent key (0 for a first block; a key's parent never
	// changes), and the time of the latest Record, as of which Approx has swept
	// every endpoint's expired entries.
	parents  map[uint64]uint64
	recorded time.Time
}

type refEndpoint struct {
	entries map[uint64]*refEntry
	lru     refEntry // sentinel: lru.next is the most recently sent
}

type refEntry struct {
	key        uint64
	expires    time.Time
	prev, next *refEntry
}

// newRefApprox returns an empty Approx. A capacityBlocks below 1 means no limit.
func newRefApprox(ttl time.Duration, capacityBlocks int) *refApprox {
	return &refApprox{
		ttl:      ttl,
		capacity: capacityBlocks,
		eps:      map[kvindex.EndpointID]*refEndpoint{},
		holders:  map[uint64][]kvindex.EndpointID{},
	}
}

// withForget readies a for Forget.
func (a *refApprox) withForget() *refApprox {
	a.parents = map[uint64]uint64{}
	return a
}

// refPrefixKey chains block hashes into one key per prefix.
func refPrefixKey(prev uint64, h kvindex.BlockHash) uint64 {
	k := (prev ^ uint64(h)) * 0x9e3779b97f4a7c15
	k ^= k >> 29
	k *= 0xbf58476d1ce4e5b9
	return k ^ k>>32
}

// Record notes that the request whose blocks are hashes was sent to ep at now.
func (a *refApprox) Record(ep kvindex.EndpointID, hashes []kvindex.BlockHash, now time.Time) {
	if len(hashes) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.eps[ep]
	if e == nil {
		e = &refEndpoint{entries: map[uint64]*refEntry{}}
		e.lru.next, e.lru.prev = &e.lru, &e.lru
		a.eps[ep] = e
	}
	a.expire(ep, e, now)
	keys := make([]uint64, len(hashes))
	k := uint64(0)
	for i, h := range hashes {
		if a.parents != nil {
			a.parents[refPrefixKey(k, h)] = k
		}
		k = refPrefixKey(k, h)
		keys[i] = k
	}
	a.recorded = now
	// Touch the deepest block first so the shared leading blocks end up most
	// recent and eviction trims prefixes from their tails.
	exp := now.Add(a.ttl)
	for i := len(keys) - 1; i >= 0; i-- {
		en := e.entries[keys[i]]
		if en == nil {
			en = &refEntry{key: keys[i]}
			e.entries[keys[i]] = en
			a.holders[keys[i]] = append(a.holders[keys[i]], ep)
		} else {
			en.prev.next, en.next.prev = en.next, en.prev
		}
		en.expires = exp
		en.next, en.prev = e.lru.next, &e.lru
		e.lru.next.prev = en
		e.lru.next = en
	}
	for a.capacity > 0 && len(e.entries) > a.capacity {
		a.evict(ep, e, e.lru.prev)
	}
}

// expire drops ep's entries that expired by now (the oldest sit at the back).
func (a *refApprox) expire(ep kvindex.EndpointID, e *refEndpoint, now time.Time) {
	for en := e.lru.prev; en != &e.lru && !now.Before(en.expires); en = e.lru.prev {
		a.evict(ep, e, en)
	}
}

func (a *refApprox) evict(ep kvindex.EndpointID, e *refEndpoint, en *refEntry) {
	en.prev.next, en.next.prev = en.next, en.prev
	delete(e.entries, en.key)
	hs := a.holders[en.key]
	if i := slices.Index(hs, ep); i >= 0 {
		hs[i] = hs[len(hs)-1]
		hs = hs[:len(hs)-1]
	}
	if len(hs) == 0 {
		delete(a.holders, en.key)
	} else {
		a.holders[en.key] = hs
	}
}

// FindMatches fills out with every endpoint's contiguous overlap with hashes
// as of now, like Index.FindMatches. Expired entries do not match.
func (a *refApprox) FindMatches(hashes []kvindex.BlockHash, now time.Time, out *kvindex.Matches) {
	out.Endpoints = out.Endpoints[:0]
	out.Depth = 0
	if len(hashes) == 0 {
		return
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	k := refPrefixKey(0, hashes[0])
	for _, ep := range a.holders[k] {
		if en := a.eps[ep].entries[k]; now.Before(en.expires) {
			out.Endpoints = append(out.Endpoints, kvindex.Match{Endpoint: ep, Blocks: 1})
		}
	}
	if len(out.Endpoints) == 0 {
		return
	}
	active := len(out.Endpoints) // out.Endpoints[:active] still match
	depth := 1
	for _, h := range hashes[1:] {
		k = refPrefixKey(k, h)
		for i := 0; i < active; {
			m := &out.Endpoints[i]
			if en := a.eps[m.Endpoint].entries[k]; en != nil && now.Before(en.expires) {
				m.Blocks++
				i++
				continue
			}
			active--
			out.Endpoints[i], out.Endpoints[active] = out.Endpoints[active], out.Endpoints[i]
		}
		if active == 0 {
			break
		}
		depth++
	}
	for i := range out.Endpoints {
		out.Endpoints[i].Tiers = [kvindex.NumTiers]int{out.Endpoints[i].Blocks}
	}
	slices.SortFunc(out.Endpoints, func(x, y kvindex.Match) int { return cmp.Compare(x.Endpoint, y.Endpoint) })
	out.Depth = depth
}

// RemoveEndpoint forgets everything recorded for ep.
func (a *refApprox) RemoveEndpoint(ep kvindex.EndpointID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.eps[ep]
	if e == nil {
		return
	}
	for e.lru.prev != &e.lru {
		a.evict(ep, e, e.lru.prev)
	}
	delete(a.eps, ep)
}

// TestApproxAgainstReference drives Approx and refApprox with the same random
// records, endpoint removals, Forgets (at every depth of prompts many
// endpoints share) and queries (a forward-only clock, queries also between
// records so that some entries have expired unswept, endpoint IDs sparse, out
// of order and past 64) and requires identical Matches and Forget counts, and
// Approx's entry structures consistent after every step.
func TestApproxAgainstReference(t *testing.T) {
	for run := range 200 {
		rnd := newRand(uint64(run) + 1000)
		ttl := time.Duration(1+rnd.IntN(20)) * time.Second
		capacity := []int{0, 0, 1, 3, 8, 40}[rnd.IntN(6)]
		a := kvindex.NewApprox(ttl, capacity)
		ref := newRefApprox(ttl, capacity).withForget()
		ids := []kvindex.EndpointID{0, 1, 2, 3}
		switch run % 4 {
		case 1: // sparse and out of order
			ids = []kvindex.EndpointID{900, 7, 1 << 31, 64, 63}
		case 2: // past one word of bitset
			ids = nil
			for i := range 140 {
				ids = append(ids, kvindex.EndpointID(i*7%141))
			}
		}
		// Block contents from a small pool so that prompts share prefixes
		// often, with a rare third content for branching.
		contents := [][]uint32{{1, 2, 3, 4}, {5, 6, 7, 8}, {9, 9, 9, 9}}
		randHashes := func() []kvindex.BlockHash {
			var toks []uint32
			for range rnd.IntN(9) {
				toks = append(toks, contents[min(rnd.IntN(5), 2)%3]...)
			}
			return kvindex.HashBlocks(nil, 0, toks, 4)
		}
		now := time.Unix(1000, 0)
		var got, want kvindex.Matches
		type prompt struct {
			ep kvindex.EndpointID
			hs []kvindex.BlockHash
		}
		var sent []prompt // recent records, for Forget and queries
		for step := range 400 {
			now = now.Add(time.Duration(rnd.IntN(2500)) * time.Millisecond)
			ep := ids[rnd.IntN(len(ids))]
			q := randHashes()
			if len(sent) > 0 && rnd.IntN(2) == 0 {
				p := sent[rnd.IntN(len(sent))]
				q = p.hs
				if rnd.IntN(2) == 0 {
					ep = p.ep
				}
			}
			switch rnd.IntN(10) {
			case 0, 1, 2, 3:
				a.Record(ep, q, now)
				ref.Record(ep, q, now)
				if sent = append(sent, prompt{ep, q}); len(sent) > 20 {
					sent = sent[1:]
				}
			case 4:
				if rnd.IntN(3) == 0 {
					a.RemoveEndpoint(ep)
					ref.RemoveEndpoint(ep)
				}
			case 5, 6:
				// The router's correction: forget from the first block the engine did not
				// hold (before, within or past the prompt), and often record it again.
				keep := rnd.IntN(len(q)+3) - 1
				if g, w := a.Forget(ep, q, keep), ref.Forget(ep, q, keep); g != w {
					t.Fatalf("run %d step %d: Forget(%d, %x, %d) dropped %d blocks, want %d", run, step, ep, q, keep, g, w)
				}
				if rnd.IntN(2) == 0 {
					a.Record(ep, q, now)
					ref.Record(ep, q, now)
				}
			default:
				at := now.Add(time.Duration(rnd.IntN(3000)) * time.Millisecond) // not recorded at: unswept expiries
				a.FindMatches(q, at, &got)
				ref.FindMatches(q, at, &want)
				if got.Depth != want.Depth || !slices.Equal(got.Endpoints, want.Endpoints) {
					t.Fatalf("run %d step %d: got %+v depth %d, want %+v depth %d", run, step, got.Endpoints, got.Depth, want.Endpoints, want.Depth)
				}
			}
			if err := a.CheckEntries(); err != nil {
				t.Fatalf("run %d step %d: %v", run, step, err)
			}
		}
	}
}

// Forget drops ep's entries for the prefix hashes[:keep+1] and every longer prefix of it,
// whichever prompts they were recorded for, and returns how many of them Approx still
// held: those not expired as of the latest Record (which sweeps every endpoint in Approx,
// and only the recorded one here).
func (a *refApprox) Forget(ep kvindex.EndpointID, hashes []kvindex.BlockHash, keep int) int {
	keep = max(keep, 0)
	if keep >= len(hashes) {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.eps[ep]
	if e == nil {
		return 0
	}
	top := uint64(0)
	for _, h := range hashes[:keep+1] {
		top = refPrefixKey(top, h)
	}
	n := 0
	for key, en := range e.entries {
		below := false
		for k := key; k != 0 && !below; k = a.parents[k] {
			below = k == top
		}
		if below {
			if en.expires.After(a.recorded) {
				n++
			}
			a.evict(ep, e, en)
		}
	}
	return n
}
