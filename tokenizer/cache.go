package tokenizer

import (
	"hash/maphash"
	"sync"
)

const cacheShards = 32

// wordCache is a bounded map from pre-tokenized word to its BPE ids, safe for concurrent use.
// Each shard holds at most its share of the capacity and is emptied when full, which keeps the
// bound strict without per-entry bookkeeping. Returned slices must not be modified.
//
// It holds no pointer per word, so that the garbage collector does not scan 65,536 entries
// on every cycle: a shard's words and ids are appended to two arrays, and its map, keyed by
// the word's 64-bit hash, holds offsets into them (a map without pointers is not scanned).
// The word itself is kept and compared, so a collision of hashes is a miss, never a wrong
// answer. Bytes once written are never written again: an emptied shard starts new arrays,
// and a slice returned earlier keeps the old ones alive.
type wordCache struct {
	seed     maphash.Seed
	perShard int
	shards   [cacheShards]cacheShard
}

type cacheShard struct {
	mu    sync.RWMutex
	m     map[uint64]wordRef
	words []byte
	ids   []uint32
}

// wordRef is where a cached word is: its bytes at words[w:w+wn], its ids at ids[i:i+in].
type wordRef struct {
	w, i   uint32
	wn, in uint16
}

// maxCachedWord is the longest word (in bytes) the cache keeps; longer words are rare and
// would make the memory bound loose.
const maxCachedWord = 256

func newWordCache(capacity int) *wordCache {
	c := &wordCache{seed: maphash.MakeSeed(), perShard: max(capacity/cacheShards, 1)}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]wordRef)
	}
	return c
}

func (c *wordCache) get(w string) ([]uint32, bool) {
	if len(w) > maxCachedWord {
		return nil, false
	}
	h := maphash.String(c.seed, w)
	s := &c.shards[h%cacheShards]
	s.mu.RLock()
	r, ok := s.m[h]
	var ids []uint32
	if ok = ok && string(s.words[r.w:r.w+uint32(r.wn)]) == w; ok {
		end := r.i + uint32(r.in)
		ids = s.ids[r.i:end:end]
	}
	s.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []uint32) {
	if len(w) > maxCachedWord || len(ids) > 1<<16-1 {
		return
	}
	h := maphash.String(c.seed, w)
	s := &c.shards[h%cacheShards]
	s.mu.Lock()
	// The second bound holds when one word is put many times (concurrent misses of it).
	if len(s.m) >= c.perShard || len(s.words)+len(w) > c.perShard*maxCachedWord {
		clear(s.m)
		s.words, s.ids = nil, nil // new arrays: slices handed out keep the old ones
	}
	s.m[h] = wordRef{w: uint32(len(s.words)), wn: uint16(len(w)), i: uint32(len(s.ids)), in: uint16(len(ids))}
	s.words = append(s.words, w...)
	s.ids = append(s.ids, ids...)
	s.mu.Unlock()
}
