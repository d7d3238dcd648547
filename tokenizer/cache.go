package tokenizer

import (
	"hash/maphash"
	"sync"
)

const cacheShards = 32

// wordCache is a bounded map from pre-tokenized word to its BPE ids, safe for concurrent use.
// Each shard holds at most its share of the capacity and is emptied when full, which keeps the
// bound strict without per-entry bookkeeping. Returned slices must not be modified.
type wordCache struct {
	seed     maphash.Seed
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]uint32
}

// maxCachedWord is the longest word (in bytes) the cache keeps; longer words are rare and
// would make the memory bound loose.
const maxCachedWord = 256

func newWordCache(capacity int) *wordCache {
	c := &wordCache{seed: maphash.MakeSeed(), perShard: max(capacity/cacheShards, 1)}
	for i := range c.shards {
		c.shards[i].m = make(map[string][]uint32)
	}
	return c
}

func (c *wordCache) shard(w string) *cacheShard {
	return &c.shards[maphash.String(c.seed, w)%cacheShards]
}

func (c *wordCache) get(w string) ([]uint32, bool) {
	if len(w) > maxCachedWord {
		return nil, false
	}
	s := c.shard(w)
	s.mu.RLock()
	ids, ok := s.m[w]
	s.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []uint32) {
	if len(w) > maxCachedWord {
		return
	}
	own := append([]uint32(nil), ids...)
	key := string([]byte(w)) // do not keep the caller's (possibly large) text alive
	s := c.shard(w)
	s.mu.Lock()
	if len(s.m) >= c.perShard {
		clear(s.m)
	}
	s.m[key] = own
	s.mu.Unlock()
}
