package kvindex

import "math/bits"

// Match is one endpoint's overlap with a query: Blocks leading blocks held
// contiguously from the start, of which Tiers[t] are held at best on tier t
// (a block held on GPU and CPU counts as GPU), so the Tiers sum to Blocks.
type Match struct {
	Endpoint EndpointID
	Blocks   int
	Tiers    [NumTiers]int
}

// Matches is the answer to a prefix query. Endpoints lists, in ascending ID
// order, every endpoint holding at least the first block; Depth is the
// longest of their overlaps, the number of leading query blocks that some
// endpoint holds. Reuse one Matches across queries to avoid allocating; the
// caller owns it and a query overwrites it.
type Matches struct {
	Endpoints []Match
	Depth     int

	// scratch, reused between queries
	active          []uint64
	blk, cpu, disks []int32
	path            []uint32 // Approx: the nodes walked
}

// Candidates returns how many endpoints hold at least the first block.
func (m *Matches) Candidates() int { return len(m.Endpoints) }

func (m *Matches) reset(words int) {
	m.Endpoints = m.Endpoints[:0]
	m.Depth = 0
	n := 64 * words
	if cap(m.blk) < n {
		m.active = make([]uint64, words)
		m.blk = make([]int32, n)
		m.cpu = make([]int32, n)
		m.disks = make([]int32, n)
	}
	m.active = m.active[:words]
	m.blk, m.cpu, m.disks = m.blk[:n], m.cpu[:n], m.disks[:n]
	clear(m.blk)
	clear(m.cpu)
	clear(m.disks)
}

// FindMatches walks hashes (a request's block hashes from HashBlocks, under
// the seed its blocks were stored with) down the tree and fills out with every
// endpoint's contiguous overlap. The walk stops at the first block no
// remaining endpoint holds. It does not allocate once out has been used for a
// query over as many endpoints.
func (x *Index) FindMatches(hashes []BlockHash, out *Matches) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	W := x.words
	out.reset(W)
	if len(hashes) == 0 {
		return
	}
	s := 3 * W
	act := out.active
	blk, cpu, disks := out.blk, out.cpu, out.disks
	cur := uint32(0)
	depth := 0
	for i, h := range hashes {
		c := x.child(cur, h)
		if c == 0 {
			break
		}
		r := x.res[int(c)*s : int(c)*s+s]
		any := uint64(0)
		for w := 0; w < W; w++ {
			gpu, cp, dk := r[w], r[W+w], r[2*W+w]
			next := gpu | cp | dk
			if i > 0 {
				a := act[w]
				next &= a
				for d := a &^ next; d != 0; d &= d - 1 {
					blk[w*64+bits.TrailingZeros64(d)] = int32(i)
				}
			}
			for sl := next &^ gpu; sl != 0; sl &= sl - 1 {
				b := bits.TrailingZeros64(sl)
				if cp&(1<<b) != 0 {
					cpu[w*64+b]++
				} else {
					disks[w*64+b]++
				}
			}
			act[w] = next
			any |= next
		}
		if any == 0 {
			break
		}
		depth = i + 1
		cur = c
	}
	if depth == 0 {
		return
	}
	for w := 0; w < W; w++ {
		for a := act[w]; a != 0; a &= a - 1 {
			blk[w*64+bits.TrailingZeros64(a)] = int32(depth)
		}
	}
	for k, b := range blk {
		if b == 0 {
			continue
		}
		c, d := int(cpu[k]), int(disks[k])
		out.Endpoints = append(out.Endpoints, Match{
			Endpoint: EndpointID(k),
			Blocks:   int(b),
			Tiers:    [NumTiers]int{int(b) - c - d, c, d},
		})
	}
	out.Depth = depth
}
