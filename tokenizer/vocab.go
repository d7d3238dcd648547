package tokenizer

import (
	"hash/maphash"
	"math/bits"
)

// The vocabulary without a pointer per token. A map[string]uint32 of 150,000 tokens and the
// []string from id to token held 300,000 pointers, which the garbage collector scanned on
// every cycle of a router that allocates per request: every byte a decision allocated paid
// for that scan. Here the tokens' texts are one string, and the tables hold offsets.

// tokSpan is where a token's text is: text[off : off+n].
type tokSpan struct{ off, n uint32 }

// vocabSlot is one slot of vocabTable's open-addressing table; id1 is the token's id plus
// one, 0 for an empty slot.
type vocabSlot struct {
	tokSpan
	id1 uint32
}

// vocabTable maps a token's text to its id (the model vocabulary). It is immutable once
// built and safe for concurrent reads.
type vocabTable struct {
	text  string
	slots []vocabSlot // linear probing, at most half full
	mask  uint64
	count int
	seed  maphash.Seed
}

// vocabEntry is one "token": id pair of tokenizer.json's vocab, its text at text[off:off+n].
type vocabEntry struct {
	off, n int
	id     uint32
}

// newVocabTable indexes entries, whose texts are in text. A token that comes twice keeps its
// last id, as decoding the JSON object into a map does.
func newVocabTable(text string, entries []vocabEntry) *vocabTable {
	size := 1 << bits.Len(uint(2*len(entries)|1))
	v := &vocabTable{text: text, slots: make([]vocabSlot, size), mask: uint64(size - 1), seed: maphash.MakeSeed()}
	for _, e := range entries {
		v.put(tokSpan{uint32(e.off), uint32(e.n)}, e.id)
	}
	return v
}

func (v *vocabTable) at(s tokSpan) string { return v.text[s.off : s.off+s.n] }

func (v *vocabTable) put(s tokSpan, id uint32) {
	key := v.at(s)
	for i := maphash.String(v.seed, key) & v.mask; ; i = (i + 1) & v.mask {
		sl := &v.slots[i]
		if sl.id1 == 0 {
			*sl = vocabSlot{s, id + 1}
			v.count++
			return
		}
		if v.at(sl.tokSpan) == key {
			sl.id1 = id + 1
			return
		}
	}
}

// get returns the id of token tok.
func (v *vocabTable) get(tok string) (uint32, bool) {
	for i := maphash.String(v.seed, tok) & v.mask; ; i = (i + 1) & v.mask {
		sl := &v.slots[i]
		if sl.id1 == 0 {
			return 0, false
		}
		if sl.n == uint32(len(tok)) && v.at(sl.tokSpan) == tok {
			return sl.id1 - 1, true
		}
	}
}

// getBytes is get for a token in bytes (not copied).
func (v *vocabTable) getBytes(tok []byte) (uint32, bool) {
	for i := maphash.Bytes(v.seed, tok) & v.mask; ; i = (i + 1) & v.mask {
		sl := &v.slots[i]
		if sl.id1 == 0 {
			return 0, false
		}
		if sl.n == uint32(len(tok)) && v.at(sl.tokSpan) == string(tok) {
			return sl.id1 - 1, true
		}
	}
}

// len is the number of distinct tokens.
func (v *vocabTable) len() int { return v.count }

// each calls fn for every token, in no particular order.
func (v *vocabTable) each(fn func(s tokSpan, id uint32)) {
	for _, sl := range v.slots {
		if sl.id1 != 0 {
			fn(sl.tokSpan, sl.id1-1)
		}
	}
}

// tokenNames maps an id to its token's text (model vocabulary and added tokens), "" where
// no token has that id.
type tokenNames struct {
	text  string
	spans []tokSpan
}

// newTokenNames names the ids of vocab's tokens, ids up to maxID.
func newTokenNames(v *vocabTable, maxID uint32) tokenNames {
	n := tokenNames{text: v.text, spans: make([]tokSpan, maxID+1)}
	v.each(func(s tokSpan, id uint32) { n.spans[id] = s })
	return n
}

func (n *tokenNames) len() int { return len(n.spans) }

// get returns id's token text, "" when there is none.
func (n *tokenNames) get(id uint32) string {
	if int(id) >= len(n.spans) {
		return ""
	}
	s := n.spans[id]
	return n.text[s.off : s.off+s.n]
}

// set names the ids of toks (added tokens: ids[i] is toks[i]'s), growing the table as needed.
// Each call copies the text once.
func (n *tokenNames) set(ids []uint32, toks []string) {
	size := len(n.text)
	for _, t := range toks {
		size += len(t)
	}
	b := make([]byte, 0, size)
	b = append(b, n.text...)
	for i, t := range toks {
		for int(ids[i]) >= len(n.spans) {
			n.spans = append(n.spans, tokSpan{})
		}
		n.spans[ids[i]] = tokSpan{uint32(len(b)), uint32(len(t))}
		b = append(b, t...)
	}
	n.text = string(b)
}
