package replay

import (
	"github.com/kvgate/kvgate/kvindex"
	"github.com/kvgate/kvgate/workload"
)

// BoundHitRatio replays the trace through one pooled LRU prefix cache of capacity blocks of
// blockSize tokens (all engines' capacity together, in all their tiers) and returns the share
// of prompt blocks served from it: the ceiling any router can reach on this trace with this
// much memory. Blocks count as hits only as a leading prefix, as an engine's prefix cache
// serves them; a request's blocks are refreshed tail first, so the head of a prompt is the
// last to go.
func BoundHitRatio(tr *workload.Trace, blockSize, capacity int) float64 {
	b, _ := bounds(tr, blockSize, capacity, false)
	return b
}

// InfiniteHitRatio is BoundHitRatio with a cache that never evicts: the share of prompt
// blocks the trace itself repeats as a leading prefix of an earlier prompt.
func InfiniteHitRatio(tr *workload.Trace, blockSize int) float64 {
	_, inf := bounds(tr, blockSize, 0, true)
	return inf
}

// bounds returns BoundHitRatio for capacity and, when infinite is set, InfiniteHitRatio, in
// one pass over the trace's blocks.
func bounds(tr *workload.Trace, blockSize, capacity int, infinite bool) (bound, inf float64) {
	lru := newLRU(capacity)
	var seen map[uint64]struct{}
	if infinite {
		seen = map[uint64]struct{}{}
	}
	var tokens []uint32
	var hashes []kvindex.BlockHash
	var keys []uint64
	var hits, infHits, total int64
	for i := range tr.Requests {
		tokens = tr.Requests[i].AppendTokens(tokens[:0])
		n := cacheableBlocks(len(tokens), blockSize)
		// Every full block is cached after the request (a prompt of whole blocks leaves its
		// last one, which it had to compute, for the next turn), hits only among the first n.
		hashes = kvindex.HashBlocks(hashes[:0], 0, tokens, blockSize)
		keys = chain(keys[:0], hashes)
		total += int64(n)
		if capacity > 0 {
			for _, k := range keys[:n] {
				if !lru.has(k) {
					break
				}
				hits++
			}
			for j := len(keys) - 1; j >= 0; j-- {
				lru.touch(keys[j])
			}
		}
		if infinite {
			j := 0
			for ; j < n; j++ {
				if _, ok := seen[keys[j]]; !ok {
					break
				}
			}
			infHits += int64(j)
			for _, k := range keys[j:] {
				seen[k] = struct{}{}
			}
		}
	}
	if total == 0 {
		return 0, 0
	}
	return float64(hits) / float64(total), float64(infHits) / float64(total)
}

// cacheableBlocks is how many leading full blocks of a prompt an engine can serve from its
// prefix cache: at least one prompt token is always computed, as in vLLM.
func cacheableBlocks(promptTokens, blockSize int) int {
	if promptTokens <= 0 {
		return 0
	}
	return (promptTokens - 1) / blockSize
}

// chain turns per-block hashes into prefix-chained keys.
func chain(dst []uint64, hashes []kvindex.BlockHash) []uint64 {
	var k uint64 = 0x6b76676174650001
	for _, h := range hashes {
		k = (k ^ uint64(h)) * 0x9e3779b97f4a7c15
		k ^= k >> 29
		dst = append(dst, k)
	}
	return dst
}

// lru is a fixed-capacity set of keys evicting the least recently touched.
type lru struct {
	cap   int
	index map[uint64]int32
	nodes []lruNode // nodes[0] is the list's sentinel
	free  []int32
}

type lruNode struct {
	key        uint64
	prev, next int32
}

func newLRU(capacity int) *lru {
	l := &lru{cap: max(capacity, 0), index: make(map[uint64]int32, capacity), nodes: make([]lruNode, 1, capacity+1)}
	return l
}

func (l *lru) has(k uint64) bool { _, ok := l.index[k]; return ok }

// touch makes k the most recently used key, inserting it (and evicting) when absent.
func (l *lru) touch(k uint64) {
	if l.cap == 0 {
		return
	}
	if i, ok := l.index[k]; ok {
		l.unlink(i)
		l.pushFront(i)
		return
	}
	if len(l.index) >= l.cap {
		victim := l.nodes[0].prev
		l.unlink(victim)
		delete(l.index, l.nodes[victim].key)
		l.free = append(l.free, victim)
	}
	var i int32
	if n := len(l.free); n > 0 {
		i, l.free = l.free[n-1], l.free[:n-1]
	} else {
		l.nodes = append(l.nodes, lruNode{})
		i = int32(len(l.nodes) - 1)
	}
	l.nodes[i].key = k
	l.index[k] = i
	l.pushFront(i)
}

func (l *lru) unlink(i int32) {
	n := &l.nodes[i]
	l.nodes[n.prev].next = n.next
	l.nodes[n.next].prev = n.prev
}

func (l *lru) pushFront(i int32) {
	head := l.nodes[0].next
	l.nodes[i].prev, l.nodes[i].next = 0, head
	l.nodes[head].prev = i
	l.nodes[0].next = i
}
