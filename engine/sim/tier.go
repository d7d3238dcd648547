package sim

import "time"

// Medium is where a block is: the GPU cache or a lower tier. Its String is the name vLLM's
// kv_events.py gives it (MEDIUM_GPU, MEDIUM_CPU, MEDIUM_STORAGE; its offloading connector
// publishes LoadStoreSpec.medium(), "CPU" for the host tier). The disk tier is vLLM's storage.
type Medium uint8

const (
	MediumGPU  Medium = iota // "GPU"
	MediumCPU                // "CPU"
	MediumDisk               // "STORAGE"
)

func (m Medium) String() string {
	switch m {
	case MediumCPU:
		return "CPU"
	case MediumDisk:
		return "STORAGE"
	}
	return "GPU"
}

// tierEntry is one block held in a lower tier: enough to publish it and to onboard it.
type tierEntry struct {
	hash       BlockHash
	parent     BlockHash
	hasParent  bool
	tokens     []uint32
	lora       string
	readyAt    time.Duration // when its offload transfer completes; not found before
	prev, next *tierEntry
}

// tier is a lower KV tier (host memory or disk): an LRU set of block hashes of fixed capacity.
// Writes into it are asynchronous and bandwidth-limited: a block becomes findable when its copy
// over the tier's write link completes, copies queue on the link one after another.
type tier struct {
	medium   Medium
	capacity int
	entries  map[BlockHash]*tierEntry
	head     tierEntry // sentinel; head.next is least recently used
	writeBW  float64   // bytes per second of the link that fills this tier
	linkFree time.Duration
	next     *tier // where this tier's evictions go; nil drops them
}

func newTier(medium Medium, capacity int, writeBW float64) *tier {
	t := &tier{medium: medium, capacity: capacity, entries: make(map[BlockHash]*tierEntry, capacity), writeBW: writeBW}
	t.head.next, t.head.prev = &t.head, &t.head
	return t
}

func (t *tier) unlink(e *tierEntry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (t *tier) pushTail(e *tierEntry) {
	e.prev, e.next = t.head.prev, &t.head
	t.head.prev.next = e
	t.head.prev = e
}

// lookup returns the entry for h if it is in the tier and its write completed by now, and
// marks it recently used.
func (t *tier) lookup(h BlockHash, now time.Duration) (*tierEntry, bool) {
	if t == nil {
		return nil, false
	}
	e, ok := t.entries[h]
	if !ok || e.readyAt > now {
		return nil, false
	}
	t.unlink(e)
	t.pushTail(e)
	return e, true
}

// insert stores a copy of e (taken at now, over blockBytes of link) and publishes it; a block
// already there is only refreshed. It appends the least recently used entries it pushed out
// to victims; the caller moves them down and publishes their removal.
func (t *tier) insert(c *kvCache, e tierEntry, now time.Duration, blockBytes int, victims []tierEntry) []tierEntry {
	if old, ok := t.entries[e.hash]; ok {
		t.unlink(old)
		t.pushTail(old)
		return victims
	}
	for len(t.entries) >= t.capacity {
		v := t.head.next
		t.unlink(v)
		delete(t.entries, v.hash)
		victims = append(victims, *v)
	}
	start := max(now, t.linkFree)
	if t.writeBW > 0 {
		t.linkFree = start + time.Duration(float64(blockBytes)/t.writeBW*float64(time.Second))
	} else {
		t.linkFree = start
	}
	ne := e
	ne.readyAt = t.linkFree
	ne.prev, ne.next = nil, nil
	t.entries[e.hash] = &ne
	t.pushTail(&ne)
	c.emitStored(t.medium, &ne)
	return victims
}

// offloadTo writes es into t and cascades t's victims to the tiers below. Every copy is
// published before the removal that made it (a block is never absent from the events while
// it is still somewhere), and es goes parent first, so that a consumer that indexes chains
// (the router drops a stored block whose parent it does not know) can follow every store.
func (c *kvCache) offloadTo(t *tier, es []tierEntry) {
	if t == nil || len(es) == 0 {
		return
	}
	var victims []tierEntry
	for _, e := range chainOrder(es) {
		victims = t.insert(c, e, c.now, c.blockBytes, victims)
	}
	c.offloadTo(t.next, victims)
	for _, v := range victims {
		c.emitRemoved(t.medium, v.hash)
	}
}

// chainOrder returns es with every entry after its parent when both are in es, otherwise in
// the given order (the GPU evicts a request's blocks tail first).
func chainOrder(es []tierEntry) []tierEntry {
	if len(es) < 2 {
		return es
	}
	idx := make(map[BlockHash]int, len(es))
	for i, e := range es {
		idx[e.hash] = i
	}
	out := make([]tierEntry, 0, len(es))
	done := make([]bool, len(es))
	var walk []int
	for i := range es {
		walk = walk[:0]
		for j := i; !done[j]; {
			done[j] = true
			walk = append(walk, j)
			p, ok := idx[es[j].parent]
			if !es[j].hasParent || !ok {
				break
			}
			j = p
		}
		for k := len(walk) - 1; k >= 0; k-- {
			out = append(out, es[walk[k]])
		}
	}
	return out
}

// clear drops every entry (no events: the caller publishes AllBlocksCleared).
func (t *tier) clear() {
	for x := t; x != nil; x = x.next {
		clear(x.entries)
		x.head.next, x.head.prev = &x.head, &x.head
	}
}

// emitRemoved records that medium dropped h, joining the previous event when it removed from
// the same medium.
func (c *kvCache) emitRemoved(medium Medium, h BlockHash) {
	if n := len(c.events); n > 0 && c.events[n-1].Kind == BlockRemoved && c.events[n-1].Medium == medium {
		c.events[n-1].Hashes = append(c.events[n-1].Hashes, h)
		return
	}
	c.events = append(c.events, KVEvent{Kind: BlockRemoved, Medium: medium, Hashes: []BlockHash{h}})
}

// emitStored records that medium now holds e, joining the previous event when e continues
// its chain on the same medium.
func (c *kvCache) emitStored(medium Medium, e *tierEntry) {
	if n := len(c.events); n > 0 && e.hasParent {
		last := &c.events[n-1]
		if last.Kind == BlockStored && last.Medium == medium && last.LoRAName == e.lora &&
			len(last.Hashes) > 0 && last.Hashes[len(last.Hashes)-1] == e.parent {
			last.Hashes = append(last.Hashes, e.hash)
			last.Tokens = append(last.Tokens, e.tokens...)
			return
		}
	}
	c.events = append(c.events, KVEvent{Kind: BlockStored, Medium: medium, Hashes: []BlockHash{e.hash},
		Parent: e.parent, HasParent: e.hasParent, Tokens: append([]uint32(nil), e.tokens...), BlockSize: c.blockSize, LoRAName: e.lora})
}
