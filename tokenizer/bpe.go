package tokenizer

import (
	"container/heap"
	"fmt"
	"unicode/utf8"
)

// bpe is the byte-pair-encoding model: merge ranks over token ids.
type bpe struct {
	vocab        *vocabTable
	merges       map[uint64]uint64 // (left<<32 | right) -> (rank<<32 | merged id)
	byteLevel    bool              // words are raw bytes mapped through the GPT-2 byte alphabet
	byteToID     [256]uint32       // byte-level: id of each byte's character
	byteKnown    [256]bool
	byteFallback bool
	fallbackID   [256]uint32 // ids of <0x00>..<0xFF>
	fallbackOK   [256]bool
	unk          uint32
	hasUnk       bool
	fuseUnk      bool
	ignoreMerges bool
}

func newBPE(m *modelJSON, byteLevel bool) (*bpe, error) {
	b := &bpe{
		vocab:        m.Vocab,
		merges:       make(map[uint64]uint64, m.Vocab.len()),
		byteLevel:    byteLevel,
		byteFallback: m.ByteFallback,
		fuseUnk:      m.FuseUnk,
		ignoreMerges: m.IgnoreMerges,
	}
	var cat []byte
	err := parseMergesInto(m.Merges, func(rank int, l, r []byte) error {
		a, okA := m.Vocab.getBytes(l)
		c, okC := m.Vocab.getBytes(r)
		if !okA || !okC {
			return fmt.Errorf("merge %d (%q %q) uses a token that is not in the vocab", rank, l, r)
		}
		cat = append(append(cat[:0], l...), r...)
		id, ok := m.Vocab.getBytes(cat)
		if !ok {
			return fmt.Errorf("merge %d (%q %q) produces %q, which is not in the vocab", rank, l, r, cat)
		}
		key := uint64(a)<<32 | uint64(c)
		if _, dup := b.merges[key]; !dup { // the first (lowest) rank wins
			b.merges[key] = uint64(rank)<<32 | uint64(id)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if byteLevel {
		for i := 0; i < 256; i++ {
			id, ok := m.Vocab.get(string(byteChar[i]))
			b.byteToID[i], b.byteKnown[i] = id, ok
		}
	}
	if m.ByteFallback {
		for i := 0; i < 256; i++ {
			id, ok := m.Vocab.get(fmt.Sprintf("<0x%02X>", i))
			b.fallbackID[i], b.fallbackOK[i] = id, ok
		}
	}
	if m.UnkToken != nil && *m.UnkToken != "" {
		id, ok := m.Vocab.get(*m.UnkToken)
		if !ok {
			return nil, fmt.Errorf("tokenizer: unk_token %q is not in the vocab", *m.UnkToken)
		}
		b.unk, b.hasUnk = id, true
	}
	return b, nil
}

// symbol is one part of a word during merging.
type symbol struct {
	id         uint32
	prev, next int32 // indexes into the symbol slice; -1 at the ends
	dead       bool
}

// encode appends the ids of word w (a pre-tokenized word, before byte-level mapping).
func (b *bpe) encode(dst []uint32, w string, st *encodeState) []uint32 {
	if b.ignoreMerges { // a word that is a token is that token, whatever the merges say
		if b.byteLevel {
			st.buf = appendByteLevel(st.buf[:0], w)
			if id, ok := b.vocab.getBytes(st.buf); ok {
				return append(dst, id)
			}
		} else if id, ok := b.vocab.get(w); ok {
			return append(dst, id)
		}
	}
	syms := st.sym[:0]
	push := func(id uint32) {
		syms = append(syms, symbol{id: id, prev: int32(len(syms)) - 1, next: int32(len(syms)) + 1})
	}
	if b.byteLevel {
		for i := 0; i < len(w); i++ {
			if b.byteKnown[w[i]] {
				push(b.byteToID[w[i]])
			} else if b.hasUnk {
				push(b.unk)
			}
		}
	} else {
		lastUnk := false
		for i := 0; i < len(w); {
			_, n := utf8.DecodeRuneInString(w[i:])
			ch := w[i : i+n]
			i += n
			if id, ok := b.vocab.get(ch); ok {
				push(id)
				lastUnk = false
				continue
			}
			if b.byteFallback {
				all := true
				for j := 0; j < len(ch); j++ {
					all = all && b.fallbackOK[ch[j]]
				}
				if all {
					for j := 0; j < len(ch); j++ {
						push(b.fallbackID[ch[j]])
					}
					lastUnk = false
					continue
				}
			}
			if b.hasUnk {
				if !(b.fuseUnk && lastUnk) {
					push(b.unk)
				}
				lastUnk = true
			}
		}
	}
	if len(syms) == 0 {
		st.sym = syms
		return dst
	}
	syms[len(syms)-1].next = -1
	if len(syms) <= 48 {
		b.mergeScan(syms)
	} else {
		b.mergeHeap(syms)
	}
	for i := int32(0); i >= 0; i = syms[i].next {
		dst = append(dst, syms[i].id)
	}
	st.sym = syms
	return dst
}

const noMerge = ^uint64(0)

func (b *bpe) rankOf(a, c uint32) uint64 {
	if v, ok := b.merges[uint64(a)<<32|uint64(c)]; ok {
		return v
	}
	return noMerge
}

// mergeScan merges a short word by repeatedly scanning for the lowest-ranked pair (leftmost
// on ties). syms are contiguous: symbol i's next is i+1 until merges remove some.
func (b *bpe) mergeScan(syms []symbol) {
	var ranks [48]uint64 // ranks[i]: merge of live symbol i with its next
	for i := range syms {
		ranks[i] = noMerge
		if syms[i].next >= 0 {
			ranks[i] = b.rankOf(syms[i].id, syms[syms[i].next].id)
		}
	}
	for {
		best, bi := noMerge, int32(-1)
		for i := int32(0); i >= 0; i = syms[i].next {
			if r := ranks[i]; r>>32 < best>>32 {
				best, bi = r, i
			}
		}
		if bi < 0 {
			return
		}
		nx := syms[bi].next
		syms[bi].id = uint32(best)
		syms[bi].next = syms[nx].next
		syms[nx].dead = true
		if syms[bi].next >= 0 {
			syms[syms[bi].next].prev = bi
			ranks[bi] = b.rankOf(syms[bi].id, syms[syms[bi].next].id)
		} else {
			ranks[bi] = noMerge
		}
		if p := syms[bi].prev; p >= 0 {
			ranks[p] = b.rankOf(syms[p].id, syms[bi].id)
		}
	}
}

// mergeCand is a possible merge of symbol pos with its next symbol.
type mergeCand struct {
	rank  uint32
	pos   int32
	left  uint32 // ids at push time, to detect stale candidates
	right uint32
	newID uint32
}

type candHeap []mergeCand

func (h candHeap) Len() int { return len(h) }
func (h candHeap) Less(i, j int) bool {
	if h[i].rank != h[j].rank {
		return h[i].rank < h[j].rank
	}
	return h[i].pos < h[j].pos
}
func (h candHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *candHeap) Push(x any)   { *h = append(*h, x.(mergeCand)) }
func (h *candHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// mergeHeap merges a long word with a priority queue of candidate merges.
func (b *bpe) mergeHeap(syms []symbol) {
	h := make(candHeap, 0, len(syms))
	try := func(i int32) {
		nx := syms[i].next
		if nx < 0 {
			return
		}
		if r := b.rankOf(syms[i].id, syms[nx].id); r != noMerge {
			h = append(h, mergeCand{rank: uint32(r >> 32), pos: i, left: syms[i].id, right: syms[nx].id, newID: uint32(r)})
		}
	}
	for i := range syms {
		try(int32(i))
	}
	heap.Init(&h)
	for h.Len() > 0 {
		c := heap.Pop(&h).(mergeCand)
		s := &syms[c.pos]
		if s.dead || s.id != c.left || s.next < 0 || syms[s.next].id != c.right {
			continue
		}
		nx := s.next
		s.id = c.newID
		s.next = syms[nx].next
		syms[nx].dead = true
		if s.next >= 0 {
			syms[s.next].prev = c.pos
		}
		if s.prev >= 0 {
			p := s.prev
			if r := b.rankOf(syms[p].id, s.id); r != noMerge {
				heap.Push(&h, mergeCand{rank: uint32(r >> 32), pos: p, left: syms[p].id, right: s.id, newID: uint32(r)})
			}
		}
		if s.next >= 0 {
			if r := b.rankOf(s.id, syms[s.next].id); r != noMerge {
				heap.Push(&h, mergeCand{rank: uint32(r >> 32), pos: c.pos, left: s.id, right: syms[s.next].id, newID: uint32(r)})
			}
		}
	}
}
