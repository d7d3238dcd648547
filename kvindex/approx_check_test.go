package kvindex

import "fmt"

// CheckEntries verifies Approx's per-slot structures against each other (for
// the property tests in package kvindex_test): every slot's LRU list holds its
// n entries, each with its holder bit and at entry; the slot holds every
// ancestor of what it holds, more recently sent and expiring no earlier; and
// each entry sits in its parent's kid list (none for the root's children),
// with kid lists holding exactly the entries of held children.
func (a *Approx) CheckEntries() error {
	a.mu.RLock()
	defer a.mu.RUnlock()
	for s := range a.slots {
		sl := &a.slots[s]
		if sl.n == 0 && sl.newest == 0 && sl.oldest == 0 {
			continue
		}
		rank := map[uint32]int{} // entry -> place in the LRU, 0 newest
		prev := uint32(0)
		for e := sl.newest; e != 0; e = a.ents[e].older {
			if _, dup := rank[e]; dup || len(rank) > sl.n {
				return fmt.Errorf("slot %d: LRU list loops or is longer than n=%d", s, sl.n)
			}
			if a.ents[e].newer != prev {
				return fmt.Errorf("slot %d entry %d: newer %d, want %d", s, e, a.ents[e].newer, prev)
			}
			rank[e] = len(rank)
			prev = e
		}
		if len(rank) != sl.n || sl.oldest != prev {
			return fmt.Errorf("slot %d: LRU list of %d entries ending at %d, n=%d oldest=%d", s, len(rank), prev, sl.n, sl.oldest)
		}
		w, bit := s>>6, uint64(1)<<(s&63)
		for e := range rank {
			en := &a.ents[e]
			if a.hold[int(en.node)*a.words+w]&bit == 0 || a.at[entKey(en.node, uint32(s))] != e {
				return fmt.Errorf("slot %d entry %d (node %d): no holder bit or at entry", s, e, en.node)
			}
			kids := 0
			for k, last := en.kid, e|entParent; k != 0; last, k = k, a.ents[k].next {
				if _, ok := rank[k]; !ok || kids > sl.n {
					return fmt.Errorf("slot %d entry %d: kid %d is not the slot's, or the list loops", s, e, k)
				}
				if a.ents[k].prev != last || a.nodes[a.ents[k].node].parent != en.node {
					return fmt.Errorf("slot %d entry %d: kid %d has prev %d (want %d), node parent %d (want %d)", s, e, k, a.ents[k].prev, last, a.nodes[a.ents[k].node].parent, en.node)
				}
				kids++
			}
			p := a.nodes[en.node].parent
			if p == 0 {
				if en.prev != 0 || en.next != 0 {
					return fmt.Errorf("slot %d entry %d: a root child's entry in a list (prev %d, next %d)", s, e, en.prev, en.next)
				}
				continue
			}
			pe, ok := a.at[entKey(p, uint32(s))]
			if !ok || a.hold[int(p)*a.words+w]&bit == 0 {
				return fmt.Errorf("slot %d holds node %d but not its parent %d", s, en.node, p)
			}
			if rank[pe] > rank[e] || a.ents[pe].exp < en.exp {
				return fmt.Errorf("slot %d: parent entry %d (rank %d, exp %d) older than child entry %d (rank %d, exp %d)", s, pe, rank[pe], a.ents[pe].exp, e, rank[e], en.exp)
			}
			found := false
			for k := a.ents[pe].kid; k != 0 && !found; k = a.ents[k].next {
				found = k == e
			}
			if !found {
				return fmt.Errorf("slot %d entry %d (node %d) missing from its parent entry %d's kids", s, e, en.node, pe)
			}
		}
	}
	return nil
}
