package sim

import (
	"slices"
	"time"
)

// EventKind says what a KVEvent reports.
type EventKind uint8

const (
	// BlockStored: blocks became full and entered the prefix cache.
	BlockStored EventKind = iota + 1
	// BlockRemoved: cached blocks were evicted to make room.
	BlockRemoved
	// AllBlocksCleared: the whole prefix cache was dropped.
	AllBlocksCleared
)

// KVEvent is one change to the prefix cache, in vLLM's event model. The engine builds these;
// the server turns them into the wire codec's events.
type KVEvent struct {
	Kind      EventKind
	Medium    Medium      // where the blocks are (or were)
	Hashes    []BlockHash // BlockStored, BlockRemoved: the blocks, in chain order for Stored
	Parent    BlockHash   // BlockStored: the hash of the block before Hashes[0]
	HasParent bool        // BlockStored: false when Hashes[0] is a first block
	Tokens    []uint32    // BlockStored: len(Hashes)*BlockSize token ids
	BlockSize int         // BlockStored
	LoRAName  string      // BlockStored: the adapter, "" for the base model
}

// block is one physical KV block.
type block struct {
	id     int
	ref    int
	hash   BlockHash
	cached bool // hash is set and the block is in kvCache.cached

	prev, next *block // free queue links; nil when not in the queue
	free       bool
}

// kvCache is vLLM v1's block pool: reference-counted blocks, a hash map of full cached blocks,
// and a free queue in eviction order (least recently freed first). A freed cached block stays
// findable until the allocator takes it from the queue's head, which evicts it.
type kvCache struct {
	blockSize int
	blocks    []block
	head      block // sentinel of the doubly linked free queue
	numFree   int
	cached    map[BlockHash]*block
	events    []KVEvent // produced since the last drain
	removed   []BlockHash

	lower      *tier         // host tier (chained to the disk tier) evictions go to; nil: none
	now        time.Duration // start of the current step, for the tiers' transfer clocks
	blockBytes int           // bytes of one block on an offload
	offload    []tierEntry   // evicted blocks waiting to be written to lower, reused
	meta       []tierEntry   // by block id, with lower only: what offloading the cached block needs
}

func newKVCache(numBlocks, blockSize int) *kvCache {
	c := &kvCache{blockSize: blockSize, blocks: make([]block, numBlocks), cached: make(map[BlockHash]*block)}
	c.head.next, c.head.prev = &c.head, &c.head
	for i := range c.blocks {
		c.blocks[i].id = i
		c.pushTail(&c.blocks[i])
	}
	return c
}

func (c *kvCache) pushTail(b *block) {
	b.prev, b.next = c.head.prev, &c.head
	c.head.prev.next = b
	c.head.prev = b
	b.free = true
	c.numFree++
}

func (c *kvCache) unlink(b *block) {
	b.prev.next, b.next.prev = b.next, b.prev
	b.prev, b.next = nil, nil
	b.free = false
	c.numFree--
}

// match returns how many of hashes, from the first, are cached.
func (c *kvCache) match(hashes []BlockHash) []*block {
	var out []*block
	for _, h := range hashes {
		b, ok := c.cached[h]
		if !ok {
			break
		}
		out = append(out, b)
	}
	return out
}

// freeAfterTouch is how many free blocks remain if hit blocks are taken out of the free queue.
func (c *kvCache) freeAfterTouch(hits []*block) int {
	n := c.numFree
	for _, b := range hits {
		if b.ref == 0 {
			n--
		}
	}
	return n
}

// touch takes a reference on each block, removing unreferenced ones from the free queue.
func (c *kvCache) touch(bs []*block) {
	for _, b := range bs {
		if b.ref == 0 && b.free {
			c.unlink(b)
		}
		b.ref++
	}
}

// allocate appends n blocks from the head of the free queue to out, evicting cached ones.
// The caller checked numFree.
func (c *kvCache) allocate(out []*block, n int) []*block {
	out = slices.Grow(out, n)
	for range n {
		b := c.head.next
		c.unlink(b)
		if b.cached {
			delete(c.cached, b.hash)
			c.removed = append(c.removed, b.hash)
			b.cached = false
			if c.lower != nil {
				c.offload = append(c.offload, c.meta[b.id])
				c.meta[b.id] = tierEntry{}
			}
		}
		b.ref = 1
		out = append(out, b)
	}
	// The lower-tier copies are published before the GPU removal (see offloadTo).
	c.offloadTo(c.lower, c.offload)
	clear(c.offload)
	c.offload = c.offload[:0]
	c.flushRemoved()
	return out
}

func (c *kvCache) flushRemoved() {
	if len(c.removed) == 0 {
		return
	}
	c.events = append(c.events, KVEvent{Kind: BlockRemoved, Medium: MediumGPU, Hashes: c.removed})
	c.removed = nil
}

// release drops one reference on each block, last block first, so that a request's tail
// blocks are evicted before its head blocks (which other requests are likelier to share).
func (c *kvCache) release(bs []*block) {
	for i := len(bs) - 1; i >= 0; i-- {
		b := bs[i]
		b.ref--
		if b.ref == 0 {
			c.pushTail(b)
		}
	}
}

// store caches bs (full blocks whose hashes are hs, chained after parent) and records one
// BlockStored event for the blocks that were not cached already.
func (c *kvCache) store(bs []*block, hs []BlockHash, tokens []uint32, parent BlockHash, hasParent bool, lora string) {
	var ev *KVEvent
	for i, b := range bs {
		if b.cached {
			ev = nil
			continue
		}
		if _, dup := c.cached[hs[i]]; dup {
			// Another block holds the same content; this one stays private and uncached.
			ev = nil
			continue
		}
		b.hash, b.cached = hs[i], true
		c.cached[hs[i]] = b
		p, hp := parent, hasParent
		if i > 0 {
			p, hp = hs[i-1], true
		}
		if c.lower != nil {
			c.meta[b.id] = tierEntry{hash: hs[i], parent: p, hasParent: hp, tokens: tokens[i*c.blockSize : (i+1)*c.blockSize : (i+1)*c.blockSize], lora: lora}
		}
		if ev == nil {
			c.events = append(c.events, KVEvent{Kind: BlockStored, Medium: MediumGPU, Parent: p, HasParent: hp, BlockSize: c.blockSize, LoRAName: lora})
			ev = &c.events[len(c.events)-1]
		}
		ev.Hashes = append(ev.Hashes, hs[i])
		ev.Tokens = append(ev.Tokens, tokens[i*c.blockSize:(i+1)*c.blockSize]...)
	}
}

// clear drops every cached block that nobody references, as vLLM's reset_prefix_cache.
// It reports false (and changes nothing) while any block is in use.
func (c *kvCache) clear() bool {
	if c.numFree != len(c.blocks) {
		return false
	}
	for h, b := range c.cached {
		b.cached = false
		delete(c.cached, h)
	}
	if c.lower != nil {
		clear(c.meta)
		c.lower.clear()
	}
	c.events = append(c.events, KVEvent{Kind: AllBlocksCleared})
	return true
}

func (c *kvCache) drain() []KVEvent {
	ev := c.events
	c.events = nil
	return ev
}
