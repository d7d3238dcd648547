package kvindex

import "slices"

// The radix tree lives in an arena: nodes[i] is node i, node 0 is the root.
// A node's key is its own block's hash under its parent; a node keeps one
// child inline (most cached prefixes are chains) and the others sit in one
// map keyed by (parent, hash). Residency sits in a second arena, res: node i
// owns res[i*3*words : (i+1)*3*words], one bitset of endpoints per tier.
// A node is freed as soon as no endpoint holds it and it has no children, so
// a node exists exactly when some endpoint holds it or a block below it.
// Freed slots are reused; gen changes on every free so that stale references
// (an external hash of a block that has since gone) are detected.

type node struct {
	hash   BlockHash
	parent uint32
	kid    uint32 // one child kept inline; 0 when none is
	nkids  uint32 // all children: the inline one and those in Index.kids
	gen    uint32
}

type kidKey struct {
	parent uint32
	hash   BlockHash
}

// extRef is where an endpoint's external hash points: a node, valid while the
// node's generation is unchanged.
type extRef struct {
	node, gen uint32
}

func (x *Index) valid(r extRef) bool {
	return r.node != 0 && int(r.node) < len(x.nodes) && x.nodes[r.node].gen == r.gen
}

// tree is the node arena and child links shared by Index and Approx; what an
// endpoint holds on a node lives beside it in the owner's own arena.
type tree struct {
	nodes []node
	kids  map[kidKey]uint32
	free  []uint32
	live  int // nodes other than the root
}

func newTree() tree {
	return tree{nodes: make([]node, 1), kids: map[kidKey]uint32{}}
}

// child returns the child of p keyed h, or 0.
func (x *tree) child(p uint32, h BlockHash) uint32 {
	n := &x.nodes[p]
	if n.kid != 0 {
		if x.nodes[n.kid].hash == h {
			return n.kid
		}
		if n.nkids == 1 {
			return 0
		}
	} else if n.nkids == 0 {
		return 0
	}
	return x.kids[kidKey{p, h}]
}

// add creates the child of p keyed h (the caller checked it is absent) and
// reports whether it took a fresh slot at the end of the arena rather than a
// freed one, so that the owner grows its own arena alongside.
func (x *tree) add(p uint32, h BlockHash) (c uint32, fresh bool) {
	if k := len(x.free); k > 0 {
		c = x.free[k-1]
		x.free = x.free[:k-1]
	} else {
		c, fresh = uint32(len(x.nodes)), true
		// Double by hand: append grows large slices by 1.25x, copying the
		// whole arena four times over on the way to its final size.
		if len(x.nodes) == cap(x.nodes) {
			x.nodes = slices.Grow(x.nodes, len(x.nodes))
		}
		x.nodes = append(x.nodes, node{})
	}
	n := &x.nodes[c]
	n.hash, n.parent, n.kid, n.nkids = h, p, 0, 0
	pn := &x.nodes[p]
	if pn.kid == 0 {
		pn.kid = c
	} else {
		x.kids[kidKey{p, h}] = c
	}
	pn.nkids++
	x.live++
	return c, fresh
}

// unlink frees node i (which has no children) and returns its parent.
func (x *tree) unlink(i uint32) uint32 {
	n := &x.nodes[i]
	p := n.parent
	pn := &x.nodes[p]
	if pn.kid == i {
		pn.kid = 0
	} else {
		delete(x.kids, kidKey{p, n.hash})
	}
	pn.nkids--
	n.gen++
	n.hash, n.parent = 0, 0
	x.free = append(x.free, i)
	x.live--
	return p
}

// addChild creates the child of p keyed h (the caller checked it is absent).
func (x *Index) addChild(p uint32, h BlockHash) uint32 {
	c, fresh := x.add(p, h)
	if fresh {
		if s := 3 * x.words; len(x.res)+s > cap(x.res) {
			x.res = slices.Grow(x.res, len(x.res)+s)
		}
		x.res = append(x.res, make([]uint64, 3*x.words)...)
	}
	return c
}

// held reports whether any endpoint holds node i on any tier.
func (x *Index) held(i uint32) bool {
	s := 3 * x.words
	for _, w := range x.res[int(i)*s : int(i+1)*s] {
		if w != 0 {
			return true
		}
	}
	return false
}

// maybeFree frees node i, and then its ancestors, while they are neither held
// nor have children.
func (x *Index) maybeFree(i uint32) {
	for i != 0 && x.nodes[i].nkids == 0 && !x.held(i) {
		i = x.unlink(i)
	}
}

// tiers returns the tier mask (bit t = Tier t) of ep on node i.
func (x *Index) tiers(i uint32, ep EndpointID) uint8 {
	base := int(i)*3*x.words + int(ep>>6)
	bit := uint64(1) << (ep & 63)
	var m uint8
	for t := 0; t < int(NumTiers); t++ {
		if x.res[base+t*x.words]&bit != 0 {
			m |= 1 << t
		}
	}
	return m
}

// setTier marks ep as holding node i on tier t and reports whether ep did
// not hold i on any tier before.
func (x *Index) setTier(i uint32, ep EndpointID, t Tier) bool {
	was := x.tiers(i, ep)
	x.res[int(i)*3*x.words+int(t)*x.words+int(ep>>6)] |= 1 << (ep & 63)
	return was == 0
}

// clearTiers removes ep's residency on node i for the tiers in mask and
// returns what ep held before and after.
func (x *Index) clearTiers(i uint32, ep EndpointID, mask uint8) (before, after uint8) {
	before = x.tiers(i, ep)
	base := int(i)*3*x.words + int(ep>>6)
	bit := uint64(1) << (ep & 63)
	for t := 0; t < int(NumTiers); t++ {
		if mask&(1<<t) != 0 {
			x.res[base+t*x.words] &^= bit
		}
	}
	return before, before &^ mask
}

// restride widens every node's bitsets to words 64-bit words per tier.
func (x *Index) restride(words int) {
	old, ow := x.res, x.words
	x.res = make([]uint64, len(x.nodes)*3*words)
	for i := range x.nodes {
		for t := 0; t < int(NumTiers); t++ {
			copy(x.res[i*3*words+t*words:], old[i*3*ow+t*ow:i*3*ow+(t+1)*ow])
		}
	}
	x.words = words
}
