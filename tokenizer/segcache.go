package tokenizer

import (
	"hash/maphash"
	"sync"
)

// Chat templates put added tokens between messages, and text never tokenizes across an added
// token, so a stretch of text between two of them encodes to the same ids wherever it
// appears: in every later turn of a conversation, the earlier messages are such stretches.
// segmentCache keeps the ids of recently encoded stretches, so that a turn costs its new
// text. It is exact: an entry is found by a hash of (text, first) and then compared in full.

const (
	segShards = 16
	// segCacheBytes bounds the memory of the cache: segment text plus ids plus bookkeeping.
	segCacheBytes = 32 << 20
	// minCachedSegment: shorter stretches ("user\n", "\n") cost less to encode through the
	// word cache than to look up here.
	minCachedSegment = 64
	segEntryOverhead = 96 // entry struct, map slot
)

type segmentCache struct {
	seed     maphash.Seed
	perShard int // bytes
	shards   [segShards]segShard
}

type segShard struct {
	mu    sync.Mutex
	m     map[uint64]*segEntry
	lru   segEntry // sentinel: lru.next is the most recently used
	bytes int
}

type segEntry struct {
	key        uint64
	text       string
	first      bool
	ids        []uint32 // never modified once stored
	prev, next *segEntry
}

func newSegmentCache(capacityBytes int) *segmentCache {
	c := &segmentCache{seed: maphash.MakeSeed(), perShard: max(capacityBytes/segShards, 1)}
	for i := range c.shards {
		s := &c.shards[i]
		s.m = map[uint64]*segEntry{}
		s.lru.next, s.lru.prev = &s.lru, &s.lru
	}
	return c
}

func entrySize(text string, ids []uint32) int { return len(text) + 4*len(ids) + segEntryOverhead }

// cacheable reports whether seg is worth caching.
func (c *segmentCache) cacheable(seg string) bool {
	return len(seg) >= minCachedSegment && entrySize(seg, nil) <= c.perShard/4
}

func (c *segmentCache) hash(seg string, first bool) uint64 {
	h := maphash.String(c.seed, seg)
	if first {
		h = ^h
	}
	return h
}

// get returns the ids of (seg, first); the caller must not modify them.
func (c *segmentCache) get(h uint64, seg string, first bool) ([]uint32, bool) {
	s := &c.shards[h%segShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[h]
	if e == nil || e.first != first || e.text != seg {
		return nil, false
	}
	e.prev.next, e.next.prev = e.next, e.prev
	s.pushFront(e)
	return e.ids, true
}

// put stores a copy of ids for (seg, first), evicting the least recently used entries over
// the shard's budget.
func (c *segmentCache) put(h uint64, seg string, first bool, ids []uint32) {
	e := &segEntry{key: h, text: string([]byte(seg)), first: first, ids: append([]uint32(nil), ids...)}
	size := entrySize(seg, ids)
	s := &c.shards[h%segShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.m[h]; old != nil { // the same text again, or a hash collision: the newer wins
		s.remove(old)
	}
	s.m[h] = e
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
	s.bytes -= entrySize(e.text, e.ids)
}
