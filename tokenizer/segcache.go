package tokenizer

import (
	"cmp"
	"hash/maphash"
	"slices"
	"sync"
)

// Chat templates put added tokens between messages, and text never tokenizes across an added
// token, so a stretch of text between two of them encodes to the same ids wherever it
// appears: in every later turn of a conversation, the earlier messages are such stretches.
// segmentCache keeps the ids of recently encoded stretches, so that a turn costs its new
// text. An entry is keyed by a 128-bit hash of (text, first) under two seeds drawn per
// cache (so per tokenizer, per process); the text itself is not kept, which halves the
// memory and spares comparing it on every hit. Two stretches would have to collide in both
// 64-bit halves under seeds nobody outside the process knows: odds about n^2/2^129 for n
// cached stretches, far below any hardware error rate.

const (
	segShards = 16
	// segCacheBytes bounds the memory of the cache: segment text plus ids plus bookkeeping.
	segCacheBytes = 32 << 20
	// minCachedSegment: shorter stretches ("user\n", "\n") cost less to encode through the
	// word cache than to look up here.
	minCachedSegment = 64
	segEntryOverhead = 96 // entry struct, map slot
	// maxCachedSegment: longer stretches are encoded every time (their ids alone would take
	// a large share of a shard).
	maxCachedSegment = segCacheBytes / segShards / 8
)

type segmentCache struct {
	seeds    [2]maphash.Seed
	perShard int // bytes
	shards   [segShards]segShard
}

type segKey struct{ a, b uint64 }

// segShard holds no pointer per entry, so that the garbage collector does not scan tens of
// thousands of entries on every cycle: the entries are a slice linked by index (an LRU list
// whose sentinel is ents[0]), the map from key to entry holds indexes (a map without
// pointers is not scanned), and the ids of all entries are appended to one array. An evicted
// entry's ids stay in that array as garbage until the shard, over its budget, evicts down to
// three quarters of it and slides the live ids down over the garbage. No slice of the array
// leaves the shard's lock (appendTo copies), so it is reused: a full cache allocates nothing.
type segShard struct {
	mu    sync.Mutex
	m     map[segKey]uint32
	ents  []segEntry
	free  []uint32 // unused entries
	ids   []uint32
	live  int      // ids of live entries
	bytes int      // 4*len(ids) (garbage included) + segEntryOverhead per live entry
	order []uint32 // shrink's scratch: live entries by offset
}

type segEntry struct {
	key        segKey
	off, n     uint32 // ids[off : off+n]
	prev, next uint32 // LRU list; ents[0].next is the most recently used
}

func newSegmentCache(capacityBytes int) *segmentCache {
	c := &segmentCache{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, perShard: max(capacityBytes/segShards, 1)}
	for i := range c.shards {
		s := &c.shards[i]
		s.m = map[segKey]uint32{}
		s.ents = make([]segEntry, 1) // the sentinel, linked to itself
	}
	return c
}

func entrySize(ids []uint32) int { return 4*len(ids) + segEntryOverhead }

// cacheable reports whether seg is worth caching.
func (c *segmentCache) cacheable(seg string) bool {
	return len(seg) >= minCachedSegment && len(seg) <= maxCachedSegment
}

func (c *segmentCache) hash(seg string, first bool) segKey {
	k := segKey{maphash.String(c.seeds[0], seg), maphash.String(c.seeds[1], seg)}
	if first {
		k.a, k.b = ^k.a, ^k.b
	}
	return k
}

// appendTo appends the ids stored under k to dst; ok is false (dst unchanged) when there are
// none.
func (c *segmentCache) appendTo(dst []uint32, k segKey) ([]uint32, bool) {
	s := &c.shards[k.a%segShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.m[k]
	if !ok {
		return dst, false
	}
	s.unlink(i)
	s.pushFront(i)
	e := &s.ents[i]
	return append(dst, s.ids[e.off:e.off+e.n]...), true
}

// put stores a copy of ids under k, evicting the least recently used entries over the
// shard's budget.
func (c *segmentCache) put(k segKey, ids []uint32) {
	size := entrySize(ids)
	if size > c.perShard { // more than the shard may hold (only in a tiny cache)
		return
	}
	s := &c.shards[k.a%segShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.m[k]; ok { // stored meanwhile by another encode of the same text
		s.remove(old)
	}
	if s.bytes+size > c.perShard {
		s.shrink(c.perShard*3/4 - size)
	}
	var i uint32
	if n := len(s.free); n > 0 {
		i, s.free = s.free[n-1], s.free[:n-1]
	} else {
		i = uint32(len(s.ents))
		s.ents = append(s.ents, segEntry{})
	}
	s.ents[i] = segEntry{key: k, off: uint32(len(s.ids)), n: uint32(len(ids))}
	s.ids = append(s.ids, ids...)
	s.live += len(ids)
	s.bytes += size
	s.m[k] = i
	s.pushFront(i)
}

func (s *segShard) pushFront(i uint32) {
	e, head := &s.ents[i], &s.ents[0]
	e.next, e.prev = head.next, 0
	s.ents[head.next].prev = i
	head.next = i
}

func (s *segShard) unlink(i uint32) {
	e := &s.ents[i]
	s.ents[e.prev].next, s.ents[e.next].prev = e.next, e.prev
}

// remove forgets entry i; its ids stay in s.ids as garbage until the next shrink.
func (s *segShard) remove(i uint32) {
	s.unlink(i)
	e := &s.ents[i]
	delete(s.m, e.key)
	s.live -= int(e.n)
	s.bytes -= segEntryOverhead
	*e = segEntry{}
	s.free = append(s.free, i)
}

// shrink evicts least recently used entries until the live ones take at most target bytes,
// then slides their ids down over the garbage, in the order they lie in the array.
func (s *segShard) shrink(target int) {
	for len(s.m) > 0 && 4*s.live+segEntryOverhead*len(s.m) > target {
		s.remove(s.ents[0].prev)
	}
	s.order = s.order[:0]
	for i := s.ents[0].next; i != 0; i = s.ents[i].next {
		s.order = append(s.order, i)
	}
	slices.SortFunc(s.order, func(a, b uint32) int { return cmp.Compare(s.ents[a].off, s.ents[b].off) })
	w := uint32(0)
	for _, i := range s.order {
		e := &s.ents[i]
		copy(s.ids[w:], s.ids[e.off:e.off+e.n]) // w <= e.off: never over a live id not yet moved
		e.off = w
		w += e.n
	}
	s.ids = s.ids[:w]
	s.bytes = 4*len(s.ids) + segEntryOverhead*len(s.m)
}
