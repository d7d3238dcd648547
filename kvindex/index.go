// Package kvindex is the KV-cache prefix index: a radix tree of token blocks
// recording which endpoint holds each cached prefix on which memory tier.
// In a request's path it owns R4 (the prefix match per endpoint); in a KV event's path, E5
// (applying the event).
package kvindex

import (
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// EndpointID is a small integer naming an endpoint inside one Index.
type EndpointID uint32

// applyChunk bounds how many blocks an applier changes per hold of the write
// lock, so a large event never stalls readers for long.
const applyChunk = 256

type endpointState struct {
	ext    extTable
	blocks int // nodes this endpoint holds on some tier
}

// Index is the exact prefix index fed by KV events.
//
// All methods are safe for concurrent use. Readers (FindMatches, Blocks,
// EndpointName) run in parallel with each other and with an applier; appliers
// (Apply*, RemoveEndpoint, ReadSnapshot) run one at a time and take the write
// lock in bounded chunks, so a reader waits at most one chunk. A reader may
// see a large event half applied (a shorter prefix, or some of a cleared
// endpoint's blocks still present); it never sees a broken tree.
// The Index has no goroutines and reads no clock except to time applies.
type Index struct {
	applyMu sync.Mutex   // serialises appliers and snapshot writers
	mu      sync.RWMutex // guards everything below up to namesMu

	tree
	res   []uint64
	words int // 64-bit words per tier in each node's residency
	pairs int // resident (node, endpoint) pairs
	eps   []*endpointState

	namesMu sync.RWMutex
	ids     map[string]EndpointID
	names   []string
	alive   []bool
	freeIDs []EndpointID

	m    *metrics
	sink uint64 // keeps extTable.touch's loads alive
}

// New returns an empty Index whose metrics are registered with reg; reg may
// be nil.
func New(reg prometheus.Registerer) *Index {
	return &Index{
		tree:  newTree(),
		res:   make([]uint64, 3),
		words: 1,
		ids:   map[string]EndpointID{},
		m:     newMetrics(reg),
	}
}

// Endpoint returns the ID of the endpoint called name, allocating one on
// first use. IDs are dense and small. After RemoveEndpoint an ID may later be
// given to another name, so callers must drop IDs they removed.
func (x *Index) Endpoint(name string) EndpointID {
	x.namesMu.RLock()
	id, ok := x.ids[name]
	x.namesMu.RUnlock()
	if ok {
		return id
	}
	x.namesMu.Lock()
	defer x.namesMu.Unlock()
	if id, ok := x.ids[name]; ok {
		return id
	}
	// Prefer a fresh ID while the current residency words have room, so an
	// ID is reused only when it saves widening every node.
	if len(x.freeIDs) > 0 && len(x.names)%64 == 0 {
		slices.Sort(x.freeIDs)
		id = x.freeIDs[0]
		x.freeIDs = x.freeIDs[1:]
		x.names[id], x.alive[id] = name, true
	} else {
		id = EndpointID(len(x.names))
		x.names = append(x.names, name)
		x.alive = append(x.alive, true)
	}
	x.ids[name] = id
	x.m.endpoints.Set(float64(len(x.ids)))
	return id
}

// EndpointName returns the name of id, or "" when id names no endpoint.
func (x *Index) EndpointName(id EndpointID) string {
	x.namesMu.RLock()
	defer x.namesMu.RUnlock()
	if int(id) < len(x.names) && x.alive[id] {
		return x.names[id]
	}
	return ""
}

func (x *Index) aliveEndpoint(ep EndpointID) bool {
	x.namesMu.RLock()
	defer x.namesMu.RUnlock()
	return int(ep) < len(x.alive) && x.alive[ep]
}

// state returns ep's state, creating it and widening the residency bitsets
// as needed. The caller holds applyMu and x.mu for writing.
func (x *Index) state(ep EndpointID) *endpointState {
	if need := int(ep>>6) + 1; need > x.words {
		x.restride(need)
	}
	if int(ep) >= len(x.eps) {
		x.eps = append(x.eps, make([]*endpointState, int(ep)+1-len(x.eps))...)
	}
	st := x.eps[ep]
	if st == nil {
		st = &endpointState{}
		x.eps[ep] = st
	}
	return st
}

func (x *Index) ignore(reason string, n int) {
	x.m.ignored[reason].Add(float64(n))
}

func (x *Index) done(event string, start time.Time) {
	x.m.applied[event].Inc()
	x.m.applySeconds[event].Observe(time.Since(start).Seconds())
	x.m.nodes.Set(float64(x.live))
	x.m.blocks.Set(float64(x.pairs))
}

// ApplyStored records that ep holds ev's blocks on ev.Tier. An event whose
// parent ep does not hold, or that names an unknown endpoint or tier, is
// counted and ignored. A block whose external hash ep already used for a
// different prefix moves: ep's residency on the old prefix is dropped.
func (x *Index) ApplyStored(ep EndpointID, ev Stored) {
	start := time.Now()
	x.applyMu.Lock()
	defer x.applyMu.Unlock()
	if !x.aliveEndpoint(ep) {
		x.ignore(ReasonUnknownEndpoint, 1)
		return
	}
	if ev.Tier >= NumTiers {
		x.ignore(ReasonInvalidTier, 1)
		return
	}
	x.mu.Lock()
	st := x.state(ep)
	parent := uint32(0)
	if ev.HasParent {
		node, ok := x.resolve(st, ev.Parent)
		if !ok {
			x.mu.Unlock()
			x.ignore(ReasonUnknownParent, 1)
			return
		}
		parent = node
	}
	for i, b := range ev.Blocks {
		if i%applyChunk == 0 {
			if i > 0 {
				x.mu.Unlock() // let readers in; only this applier changes the tree
				x.mu.Lock()
			}
			x.sink += st.ext.touch(ev.Blocks[i:min(i+applyChunk, len(ev.Blocks))])
		}
		h := HashBlock(ev.Seed, b.Tokens)
		c := x.child(parent, h)
		if c == 0 {
			c = x.addChild(parent, h)
		}
		if x.setTier(c, ep, ev.Tier) {
			st.blocks++
			x.pairs++
		}
		old, had := st.ext.put(b.External, extRef{c, x.nodes[c].gen})
		if had && old.node != c && x.valid(old) {
			// c is held now, so freeing the old node cannot reach it.
			x.dropNode(st, ep, old.node)
		}
		parent = c
	}
	x.mu.Unlock()
	x.done(eventStored, start)
}

// ApplyStoredCopies records that ep now also holds, on tier, blocks it already reported
// under these external hashes: a store without token ids, as vLLM's offloading connector
// sends when it copies GPU blocks to CPU. Hashes ep never reported (or whose prefix is gone)
// are counted as unknown blocks and ignored; their position in the tree cannot be known.
func (x *Index) ApplyStoredCopies(ep EndpointID, tier Tier, hashes []ExternalHash) {
	x.applyKnown(ep, tier, hashes, eventStored, func(st *endpointState, _ ExternalHash, node uint32) {
		if x.setTier(node, ep, tier) {
			st.blocks++
			x.pairs++
		}
	})
}

// applyKnown is what the applies by external hash share: the endpoint and tier checks, the
// locking in chunks, and counting hashes ep never reported (or whose node is gone) as
// unknown blocks. f runs under x.mu for each known hash with its node.
func (x *Index) applyKnown(ep EndpointID, tier Tier, hashes []ExternalHash, event string, f func(st *endpointState, h ExternalHash, node uint32)) {
	start := time.Now()
	x.applyMu.Lock()
	defer x.applyMu.Unlock()
	if !x.aliveEndpoint(ep) {
		x.ignore(ReasonUnknownEndpoint, 1)
		return
	}
	if tier >= NumTiers {
		x.ignore(ReasonInvalidTier, 1)
		return
	}
	x.mu.Lock()
	st := x.state(ep)
	unknown := 0
	for i, h := range hashes {
		if i > 0 && i%applyChunk == 0 {
			x.mu.Unlock()
			x.mu.Lock()
		}
		node, ok := x.resolve(st, h)
		if !ok {
			unknown++
			continue
		}
		f(st, h, node)
	}
	x.mu.Unlock()
	if unknown > 0 {
		x.ignore(ReasonUnknownBlock, unknown)
	}
	x.done(event, start)
}

// resolve returns the node an endpoint's external hash names, dropping the name when its
// node was freed since (its generation moved on). Caller holds x.mu.
func (x *Index) resolve(st *endpointState, h ExternalHash) (uint32, bool) {
	r, ok := st.ext.get(h)
	if !ok {
		return 0, false
	}
	if !x.valid(r) {
		st.ext.del(h)
		return 0, false
	}
	return r.node, true
}

// dropNode removes all of ep's residency on node i. Caller holds x.mu.
func (x *Index) dropNode(st *endpointState, ep EndpointID, i uint32) {
	if before, _ := x.clearTiers(i, ep, 1<<NumTiers-1); before != 0 {
		st.blocks--
		x.pairs--
		x.maybeFree(i)
	}
}

// ApplyRemoved drops ev.Tier's copy of each named block of ep; copies on
// other tiers stay. Unknown hashes are counted and ignored.
func (x *Index) ApplyRemoved(ep EndpointID, ev Removed) {
	x.applyKnown(ep, ev.Tier, ev.Hashes, eventRemoved, func(st *endpointState, h ExternalHash, node uint32) {
		before, after := x.clearTiers(node, ep, 1<<ev.Tier)
		if after != 0 {
			return
		}
		st.ext.del(h)
		if before != 0 {
			st.blocks--
			x.pairs--
			x.maybeFree(node)
		}
	})
}

// ApplyCleared drops every block of ep (its engine restarted or reset its
// cache).
func (x *Index) ApplyCleared(ep EndpointID) {
	start := time.Now()
	x.applyMu.Lock()
	defer x.applyMu.Unlock()
	if !x.aliveEndpoint(ep) {
		x.ignore(ReasonUnknownEndpoint, 1)
		return
	}
	x.clear(ep)
	x.done(eventCleared, start)
}

// clear drops all of ep's residency in chunks. Caller holds applyMu.
func (x *Index) clear(ep EndpointID) {
	// Only appliers change eps and the ext tables, and the caller is the
	// applier: collect the refs before taking the write lock.
	if int(ep) >= len(x.eps) || x.eps[ep] == nil {
		return
	}
	st := x.eps[ep]
	refs := make([]extRef, 0, st.ext.Len())
	st.ext.all(func(_ ExternalHash, r extRef) { refs = append(refs, r) })
	st.ext = extTable{}
	x.mu.Lock()
	for i, r := range refs {
		if i > 0 && i%applyChunk == 0 {
			x.mu.Unlock()
			x.mu.Lock()
		}
		if x.valid(r) {
			x.dropNode(st, ep, r.node)
		}
	}
	x.mu.Unlock()
}

// RemoveEndpoint drops all of ep's blocks and forgets its name; the ID may be
// handed to another name later.
func (x *Index) RemoveEndpoint(ep EndpointID) {
	start := time.Now()
	x.applyMu.Lock()
	defer x.applyMu.Unlock()
	if !x.aliveEndpoint(ep) {
		x.ignore(ReasonUnknownEndpoint, 1)
		return
	}
	x.clear(ep)
	x.mu.Lock()
	if int(ep) < len(x.eps) {
		x.eps[ep] = nil
	}
	x.mu.Unlock()
	x.namesMu.Lock()
	delete(x.ids, x.names[ep])
	x.names[ep], x.alive[ep] = "", false
	x.freeIDs = append(x.freeIDs, ep)
	x.m.endpoints.Set(float64(len(x.ids)))
	x.namesMu.Unlock()
	x.done(eventEndpointRemoved, start)
}

// Blocks returns how many blocks ep holds (on any tier).
func (x *Index) Blocks(ep EndpointID) int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if int(ep) < len(x.eps) && x.eps[ep] != nil {
		return x.eps[ep].blocks
	}
	return 0
}

// Nodes returns the number of distinct cached prefixes (tree nodes).
func (x *Index) Nodes() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.live
}
