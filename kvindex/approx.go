package kvindex

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// Approx is the approximate index for engines that publish no KV events: it
// remembers which block prefixes the router sent to which endpoint, each for
// ttl after it was last sent there, and at most capacityBlocks prefixes per
// endpoint (least recently sent evicted first). Queries take the same block
// hashes as Index.FindMatches and fill the same Matches; every block counts as
// GPU. All methods are safe for concurrent use; the caller supplies the time.
type Approx struct {
	mu       sync.RWMutex
	ttl      time.Duration
	capacity int
	eps      map[EndpointID]*approxEndpoint
	holders  map[uint64][]EndpointID // prefix key -> endpoints that hold it
}

type approxEndpoint struct {
	entries map[uint64]*approxEntry
	lru     approxEntry // sentinel: lru.next is the most recently sent
}

type approxEntry struct {
	key        uint64
	expires    time.Time
	prev, next *approxEntry
}

// NewApprox returns an empty Approx. A capacityBlocks below 1 means no limit.
func NewApprox(ttl time.Duration, capacityBlocks int) *Approx {
	return &Approx{
		ttl:      ttl,
		capacity: capacityBlocks,
		eps:      map[EndpointID]*approxEndpoint{},
		holders:  map[uint64][]EndpointID{},
	}
}

// prefixKey chains block hashes into one key per prefix.
func prefixKey(prev uint64, h BlockHash) uint64 {
	k := (prev ^ uint64(h)) * 0x9e3779b97f4a7c15
	k ^= k >> 29
	k *= 0xbf58476d1ce4e5b9
	return k ^ k>>32
}

// Record notes that the request whose blocks are hashes was sent to ep at now.
func (a *Approx) Record(ep EndpointID, hashes []BlockHash, now time.Time) {
	if len(hashes) == 0 {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.eps[ep]
	if e == nil {
		e = &approxEndpoint{entries: map[uint64]*approxEntry{}}
		e.lru.next, e.lru.prev = &e.lru, &e.lru
		a.eps[ep] = e
	}
	a.expire(ep, e, now)
	keys := make([]uint64, len(hashes))
	k := uint64(0)
	for i, h := range hashes {
		k = prefixKey(k, h)
		keys[i] = k
	}
	// Touch the deepest block first so the shared leading blocks end up most
	// recent and eviction trims prefixes from their tails.
	exp := now.Add(a.ttl)
	for i := len(keys) - 1; i >= 0; i-- {
		en := e.entries[keys[i]]
		if en == nil {
			en = &approxEntry{key: keys[i]}
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
func (a *Approx) expire(ep EndpointID, e *approxEndpoint, now time.Time) {
	for en := e.lru.prev; en != &e.lru && !now.Before(en.expires); en = e.lru.prev {
		a.evict(ep, e, en)
	}
}

func (a *Approx) evict(ep EndpointID, e *approxEndpoint, en *approxEntry) {
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
func (a *Approx) FindMatches(hashes []BlockHash, now time.Time, out *Matches) {
	out.Endpoints = out.Endpoints[:0]
	out.Depth = 0
	if len(hashes) == 0 {
		return
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	k := prefixKey(0, hashes[0])
	for _, ep := range a.holders[k] {
		if en := a.eps[ep].entries[k]; now.Before(en.expires) {
			out.Endpoints = append(out.Endpoints, Match{Endpoint: ep, Blocks: 1})
		}
	}
	if len(out.Endpoints) == 0 {
		return
	}
	active := len(out.Endpoints) // out.Endpoints[:active] still match
	depth := 1
	for _, h := range hashes[1:] {
		k = prefixKey(k, h)
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
		out.Endpoints[i].Tiers = [NumTiers]int{out.Endpoints[i].Blocks}
	}
	slices.SortFunc(out.Endpoints, func(x, y Match) int { return cmp.Compare(x.Endpoint, y.Endpoint) })
	out.Depth = depth
}

// RemoveEndpoint forgets everything recorded for ep.
func (a *Approx) RemoveEndpoint(ep EndpointID) {
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
