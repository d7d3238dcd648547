package tokenizer

import (
	"hash/maphash"
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

type segShard struct {
	mu    sync.Mutex
	m     map[segKey]*segEntry
	lru   segEntry // sentinel: lru.next is the most recently used
	bytes int
}

type segEntry struct {
	key        segKey
	ids        []uint32 // never modified once stored
	prev, next *segEntry
}

func newSegmentCache(capacityBytes int) *segmentCache {
	c := &segmentCache{seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()}, perShard: max(capacityBytes/segShards, 1)}
	for i := range c.shards {
		s := &c.shards[i]
		s.m = map[segKey]*segEntry{}
		s.lru.next, s.lru.prev = &s.lru, &s.lru
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

// get returns the ids stored under k; the caller must not modify them.
func (c *segmentCache) get(k segKey) ([]uint32, bool) {
	s := &c.shards[k.a%segShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[k]
	if e == nil {
		return nil, false
	}
	e.prev.next, e.next.prev = e.next, e.prev
	s.pushFront(e)
	return e.ids, true
}

// put stores a copy of ids under k, evicting the least recently used entries over the
// shard's budget.
func (c *segmentCache) put(k segKey, ids []uint32) {
	e := &segEntry{key: k, ids: append([]uint32(nil), ids...)}
	size := entrySize(ids)
	s := &c.shards[k.a%segShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.m[k]; old != nil { // stored meanwhile by another encode of the same text
		s.remove(old)
	}
	s.m[k] = e
	s.pushFront(e)
	s.bytes += size
	for s.bytes > c.perShard {
		s.remove(s.lru.prev)
	}
}

func (s *segShard) pushFront(e *segEntry) {
	e.next, e.prev = s.lru.next, &s.lru
	s.lru.next.prev = e
	s.lru.next = e
}

func (s *segShard) remove(e *segEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	delete(s.m, e.key)
	s.bytes -= entrySize(e.ids)
}
