package kvindex

import (
	"cmp"
	"math"
	"math/bits"
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
//
// Expiry times never go back: a prefix sent at an earlier now than a previous
// Record's (callers racing on the clock) expires with the later one.
type Approx struct {
	mu       sync.RWMutex
	ttl      int64 // nanoseconds
	capacity int

	// The prefixes sent anywhere form a radix tree like Index's; hold is the
	// holder bitset of each node (words 64-bit words per node, a bit per
	// slot), so a lookup ANDs words instead of visiting endpoints.
	tree
	hold  []uint64
	words int

	// One entry per (node, slot) held: its expiry, its place in the slot's
	// LRU and in the slot's entry tree. at finds the entry of a (node, slot).
	ents    []approxEnt // ents[0] is unused: index 0 means none
	entFree uint32      // free entries, linked through next
	at      map[uint64]uint32

	// Endpoints are interned to dense slots, the bit positions in hold.
	slots     []approxSlot
	slotOf    map[EndpointID]uint32
	freeSlots []uint32
	order     []uint32 // live slots in ascending EndpointID order

	lastExp int64 // the latest expiry handed out
	oldest  int64 // no entry expires before this (a lower bound)
	path    []uint32
}

type approxEnt struct {
	exp   int64 // UnixNano; expired from then on
	node  uint32
	newer uint32 // toward the slot's most recently sent entry
	older uint32 // toward its least recently sent one
	// A slot's prefixes form a subtree, and its entries form the same tree:
	// kid is the entry of one child node the slot holds, next and prev link the
	// entries of its siblings, and prev of the first one is the parent's entry
	// marked with entParent. Entries of the root's children are in no list. So
	// Forget visits only the entries it drops.
	kid, next, prev uint32
}

// entParent marks approxEnt.prev as the parent's entry rather than a sibling's.
// It limits entries to 2^31 (64 GiB of them).
const entParent = 1 << 31

type approxSlot struct {
	id     EndpointID
	n      int    // entries held
	newest uint32 // most recently sent entry, 0 when none
	oldest uint32 // least recently sent entry
}

// NewApprox returns an empty Approx. A capacityBlocks below 1 means no limit.
func NewApprox(ttl time.Duration, capacityBlocks int) *Approx {
	return &Approx{
		ttl:      int64(ttl),
		capacity: capacityBlocks,
		tree:     newTree(),
		hold:     make([]uint64, 1),
		words:    1,
		ents:     make([]approxEnt, 1),
		at:       map[uint64]uint32{},
		slotOf:   map[EndpointID]uint32{},
		oldest:   math.MaxInt64,
	}
}

func entKey(node, slot uint32) uint64 { return uint64(node)<<32 | uint64(slot) }

// Record notes that the request whose blocks are hashes was sent to ep at now.
func (a *Approx) Record(ep EndpointID, hashes []BlockHash, now time.Time) {
	if len(hashes) == 0 {
		return
	}
	t := now.UnixNano()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.expire(t)
	s := a.slot(ep)
	exp := t + a.ttl
	if a.ttl > 0 && exp < t {
		exp = math.MaxInt64
	}
	exp = max(exp, a.lastExp)
	a.lastExp = exp
	a.oldest = min(a.oldest, exp)

	path := a.path[:0]
	cur := uint32(0)
	for _, h := range hashes {
		c := a.child(cur, h)
		if c == 0 {
			var fresh bool
			if c, fresh = a.add(cur, h); fresh {
				if len(a.hold)+a.words > cap(a.hold) {
					a.hold = slices.Grow(a.hold, len(a.hold)+a.words)
				}
				a.hold = append(a.hold, make([]uint64, a.words)...)
			}
		}
		path = append(path, c)
		cur = c
	}
	a.path = path
	// Touch the deepest block first so the shared leading blocks end up most
	// recent and eviction trims prefixes from their tails. So a slot's
	// prefixes always form a subtree, and expiries never grow going down it.
	// A new entry's parent entry is touched next: it exists before this Record
	// when the child's did.
	w, bit := int(s>>6), uint64(1)<<(s&63)
	kid, kidNew := uint32(0), false
	for i := len(path) - 1; i >= 0; i-- {
		e, fresh := a.touch(s, path[i], w, bit, exp)
		if kidNew {
			a.adopt(e, kid)
		}
		kid, kidNew = e, fresh
	}
	sl := &a.slots[s]
	for a.capacity > 0 && sl.n > a.capacity {
		a.evict(s, sl.oldest)
	}
}

// touch makes (node, s) the slot's most recently sent entry, expiring at exp,
// and returns it and whether it is new (in no entry list yet).
func (a *Approx) touch(s, node uint32, w int, bit uint64, exp int64) (e uint32, fresh bool) {
	sl := &a.slots[s]
	h := &a.hold[int(node)*a.words+w]
	if fresh = *h&bit == 0; fresh {
		*h |= bit
		if e = a.entFree; e != 0 {
			a.entFree = a.ents[e].older
		} else {
			e = uint32(len(a.ents))
			if len(a.ents) == cap(a.ents) {
				a.ents = slices.Grow(a.ents, len(a.ents))
			}
			a.ents = append(a.ents, approxEnt{})
		}
		a.ents[e] = approxEnt{node: node}
		a.at[entKey(node, s)] = e
		sl.n++
	} else {
		e = a.at[entKey(node, s)]
		if sl.newest == e {
			a.ents[e].exp = exp
			return e, false
		}
		a.unlinkEnt(sl, e)
	}
	en := &a.ents[e]
	en.exp, en.newer, en.older = exp, 0, sl.newest
	if sl.newest != 0 {
		a.ents[sl.newest].newer = e
	} else {
		sl.oldest = e
	}
	sl.newest = e
	return e, fresh
}

// adopt puts entry k, in no list, first among the kids of entry p.
func (a *Approx) adopt(p, k uint32) {
	pe := &a.ents[p]
	ke := &a.ents[k]
	ke.prev, ke.next = p|entParent, pe.kid
	if pe.kid != 0 {
		a.ents[pe.kid].prev = k
	}
	pe.kid = k
}

func (a *Approx) unlinkEnt(sl *approxSlot, e uint32) {
	en := &a.ents[e]
	if en.newer != 0 {
		a.ents[en.newer].older = en.older
	} else {
		sl.newest = en.older
	}
	if en.older != 0 {
		a.ents[en.older].newer = en.newer
	} else {
		sl.oldest = en.newer
	}
}

// evict drops entry e of slot s, which has no kids (a slot's oldest entry
// never has: its kids' entries are older), and the nodes that nobody holds any
// more.
func (a *Approx) evict(s, e uint32) {
	en := a.ents[e]
	sl := &a.slots[s]
	a.unlinkEnt(sl, e)
	sl.n--
	if en.prev&entParent != 0 {
		a.ents[en.prev&^entParent].kid = en.next
	} else if en.prev != 0 {
		a.ents[en.prev].next = en.next
	}
	if en.next != 0 {
		a.ents[en.next].prev = en.prev
	}
	a.hold[int(en.node)*a.words+int(s>>6)] &^= 1 << (s & 63)
	delete(a.at, entKey(en.node, s))
	a.ents[e] = approxEnt{older: a.entFree}
	a.entFree = e
	for i := en.node; i != 0 && a.nodes[i].nkids == 0 && !a.held(i); {
		i = a.unlink(i)
	}
}

func (a *Approx) held(i uint32) bool {
	for _, w := range a.hold[int(i)*a.words : int(i+1)*a.words] {
		if w != 0 {
			return true
		}
	}
	return false
}

// expire drops every entry that expired by t (each slot's oldest first).
func (a *Approx) expire(t int64) {
	if t < a.oldest {
		return
	}
	oldest := int64(math.MaxInt64)
	for s := range a.slots {
		sl := &a.slots[s]
		for sl.oldest != 0 && a.ents[sl.oldest].exp <= t {
			a.evict(uint32(s), sl.oldest)
		}
		if sl.oldest != 0 {
			oldest = min(oldest, a.ents[sl.oldest].exp)
		}
	}
	a.oldest = oldest
}

// slot returns ep's slot, interning ep on first use.
func (a *Approx) slot(ep EndpointID) uint32 {
	if s, ok := a.slotOf[ep]; ok {
		return s
	}
	var s uint32
	if k := len(a.freeSlots); k > 0 {
		// Lowest free slot first, keeping the holder bitsets narrow.
		slices.Sort(a.freeSlots)
		s = a.freeSlots[0]
		a.freeSlots = slices.Delete(a.freeSlots, 0, 1)
	} else {
		s = uint32(len(a.slots))
		a.slots = append(a.slots, approxSlot{})
		if w := len(a.slots)/64 + 1; len(a.slots)%64 == 1 && len(a.slots) > 64 {
			a.restride(w)
		}
	}
	a.slots[s] = approxSlot{id: ep}
	a.slotOf[ep] = s
	a.order = append(a.order, s)
	slices.SortFunc(a.order, func(x, y uint32) int { return cmp.Compare(a.slots[x].id, a.slots[y].id) })
	return s
}

// restride widens every node's holder bitset to words 64-bit words.
func (a *Approx) restride(words int) {
	old, ow := a.hold, a.words
	a.hold = make([]uint64, len(a.nodes)*words, cap(a.nodes)*words)
	for i := range a.nodes {
		copy(a.hold[i*words:], old[i*ow:(i+1)*ow])
	}
	a.words = words
}

// FindMatches fills out with every endpoint's contiguous overlap with hashes
// as of now, like Index.FindMatches. Expired entries do not match. It does not
// allocate once out has been used for a query as long over as many endpoints.
func (a *Approx) FindMatches(hashes []BlockHash, now time.Time, out *Matches) {
	out.Endpoints = out.Endpoints[:0]
	out.Depth = 0
	if len(hashes) == 0 {
		return
	}
	t := now.UnixNano()
	a.mu.RLock()
	defer a.mu.RUnlock()
	W := a.words
	out.reset(W)
	act, blk := out.active, out.blk
	path := slices.Grow(out.path[:0], len(hashes))
	cur := uint32(0)
	depth := 0
	for i, h := range hashes {
		c := a.child(cur, h)
		if c == 0 {
			break
		}
		r := a.hold[int(c)*W : int(c)*W+W]
		any := uint64(0)
		for w := 0; w < W; w++ {
			next := r[w]
			if i > 0 {
				prev := act[w]
				next &= prev
				for d := prev &^ next; d != 0; d &= d - 1 {
					blk[w*64+bits.TrailingZeros64(d)] = int32(i)
				}
			}
			act[w] = next
			any |= next
		}
		if any == 0 {
			break
		}
		path = append(path, c)
		depth = i + 1
		cur = c
	}
	out.path = path
	if depth == 0 {
		return
	}
	for w := 0; w < W; w++ {
		for x := act[w]; x != 0; x &= x - 1 {
			blk[w*64+bits.TrailingZeros64(x)] = int32(depth)
		}
	}
	depth = 0
	for _, s := range a.order {
		b := int(blk[s])
		if b == 0 {
			continue
		}
		if t >= a.oldest {
			b = a.unexpired(s, path[:b], t)
			if b == 0 {
				continue
			}
		}
		depth = max(depth, b)
		out.Endpoints = append(out.Endpoints, Match{Endpoint: a.slots[s].id, Blocks: b, Tiers: [NumTiers]int{b}})
	}
	out.Depth = depth
}

// unexpired returns how many of the nodes on path, which slot s holds, it
// still holds at t. Expiries never grow going down a slot's prefixes, so the
// answer is a binary search, and no search at all while none of s's entries
// has expired.
func (a *Approx) unexpired(s uint32, path []uint32, t int64) int {
	sl := &a.slots[s]
	if a.ents[sl.oldest].exp > t {
		return len(path)
	}
	exp := func(i int) int64 { return a.ents[a.at[entKey(path[i], s)]].exp }
	if exp(len(path)-1) > t {
		return len(path)
	}
	lo, hi := 0, len(path)-1 // path[hi] has expired; path[:lo] has not
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if exp(m) > t {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// RemoveEndpoint forgets everything recorded for ep.
func (a *Approx) RemoveEndpoint(ep EndpointID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.slotOf[ep]
	if !ok {
		return
	}
	sl := &a.slots[s]
	for sl.oldest != 0 {
		a.evict(s, sl.oldest)
	}
	*sl = approxSlot{}
	delete(a.slotOf, ep)
	a.order = slices.DeleteFunc(a.order, func(x uint32) bool { return x == s })
	a.freeSlots = append(a.freeSlots, s)
}

// Forget drops what ep was recorded to hold from block keep of hashes on: the block
// hashes[keep] and every block below it that ep holds, whichever prompts they were recorded
// for (an engine that no longer holds a block no longer holds what was computed after it).
// It returns how many blocks it dropped. A keep at or beyond len(hashes) drops nothing. The
// cost is the walk down hashes[:keep+1] plus the blocks dropped: what ep holds elsewhere and
// what other endpoints hold under the same prefix are not visited.
func (a *Approx) Forget(ep EndpointID, hashes []BlockHash, keep int) int {
	if keep < 0 {
		keep = 0
	}
	if keep >= len(hashes) {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.slotOf[ep]
	if !ok {
		return 0
	}
	cur := uint32(0)
	for _, h := range hashes[:keep+1] {
		if cur = a.child(cur, h); cur == 0 {
			return 0
		}
	}
	if a.hold[int(cur)*a.words+int(s>>6)]&(1<<(s&63)) == 0 {
		return 0 // ep's prefixes form a subtree: nothing of it below either
	}
	// Drop top's entry subtree leaves first: down first kids to a leaf, drop it,
	// back up to its parent (whose first kid is now the next sibling).
	top := a.at[entKey(cur, s)]
	n := 0
	for e := top; ; {
		for a.ents[e].kid != 0 {
			e = a.ents[e].kid
		}
		up := a.ents[e].prev &^ entParent // e is a first kid here, or top
		a.evict(s, e)
		n++
		if e == top {
			return n
		}
		e = up
	}
}
