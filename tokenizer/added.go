package tokenizer

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// addedVocab finds added tokens (special or not) in text, before normalization and BPE, as
// Hugging Face's AddedVocabulary does: leftmost-longest match, honouring lstrip, rstrip,
// single_word, and normalized (matched on normalized text).
type addedVocab struct {
	byContent map[string]uint32
	raw       tokenSet // normalized=false: matched on the input text
	norm      tokenSet // normalized=true: matched on each normalized segment
}

type addedToken struct {
	content    string
	id         uint32
	lstrip     bool
	rstrip     bool
	singleWord bool
}

// tokenSet indexes tokens by first byte, longest first.
type tokenSet struct {
	byFirst [256][]addedToken
	any     bool
	// first is the first byte of every token when they all share one (as the special tokens
	// of Qwen, Llama 3 and GPT-style tokenizers all start with '<'); find then jumps between
	// its occurrences with IndexByte instead of looking at every byte.
	first    byte
	oneFirst bool
}

func newAddedVocab() *addedVocab { return &addedVocab{byContent: map[string]uint32{}} }

func (a *addedVocab) add(t addedTokenJSON, n normalizer) {
	a.byContent[t.Content] = t.ID
	tok := addedToken{content: t.Content, id: t.ID, lstrip: t.LStrip, rstrip: t.RStrip, singleWord: t.SingleWord}
	set := &a.raw
	if t.Normalized && n != nil {
		tok.content = n.normalize(t.Content)
		set = &a.norm
	}
	if tok.content == "" {
		return
	}
	set.byFirst[tok.content[0]] = append(set.byFirst[tok.content[0]], tok)
	set.oneFirst = !set.any || set.oneFirst && set.first == tok.content[0]
	set.first = tok.content[0]
	set.any = true
}

func (a *addedVocab) finish() {
	for _, set := range []*tokenSet{&a.raw, &a.norm} {
		for i := range set.byFirst {
			l := set.byFirst[i]
			sort.SliceStable(l, func(x, y int) bool { return len(l[x].content) > len(l[y].content) })
		}
	}
}

// split calls fn for each stretch of text (normalized, isToken false) and each added token
// found (isToken true) in order. first is true for the stretch that starts the text.
func (a *addedVocab) split(text string, n normalizer, fn func(seg string, id uint32, isToken, first bool)) {
	a.raw.find(text, func(seg string, id uint32, isToken bool, start int) {
		if isToken {
			fn("", id, true, false)
			return
		}
		if n != nil {
			seg = n.normalize(seg)
		}
		if !a.norm.any {
			fn(seg, 0, false, start == 0)
			return
		}
		a.norm.find(seg, func(s2 string, id2 uint32, tok2 bool, start2 int) {
			fn(s2, id2, tok2, start == 0 && start2 == 0)
		})
	})
}

// find walks s, calling fn for the text between tokens and for each token matched.
func (ts *tokenSet) find(s string, fn func(seg string, id uint32, isToken bool, start int)) {
	if !ts.any {
		fn(s, 0, false, 0)
		return
	}
	segStart := 0
	for i := 0; i < len(s); i++ {
		if ts.oneFirst {
			k := strings.IndexByte(s[i:], ts.first)
			if k < 0 {
				break
			}
			i += k
		}
		cands := ts.byFirst[s[i]]
		if len(cands) == 0 {
			continue
		}
		for _, c := range cands {
			start, end, ok := c.matchAt(s, segStart, i)
			if !ok {
				continue
			}
			if start > segStart {
				fn(s[segStart:start], 0, false, segStart)
			}
			fn("", c.id, true, start)
			segStart = end
			i = end - 1
			break
		}
	}
	if segStart < len(s) {
		fn(s[segStart:], 0, false, segStart)
	}
}

// matchAt reports whether the token matches s at i, and the span it takes: its own bytes
// plus the spaces it strips on either side (not reaching back past segStart, where the
// current stretch of text began).
func (c *addedToken) matchAt(s string, segStart, i int) (start, end int, ok bool) {
	if !strings.HasPrefix(s[i:], c.content) {
		return 0, 0, false
	}
	end = i + len(c.content)
	if c.singleWord && !(wordBoundaryBefore(s, i) && wordBoundaryAfter(s, end)) {
		return 0, 0, false
	}
	start = i
	if c.lstrip {
		for start > segStart {
			r, n := utf8.DecodeLastRuneInString(s[segStart:start])
			if !unicode.IsSpace(r) {
				break
			}
			start -= n
		}
	}
	if c.rstrip {
		for end < len(s) {
			r, n := utf8.DecodeRuneInString(s[end:])
			if !unicode.IsSpace(r) {
				break
			}
			end += n
		}
	}
	return start, end, true
}

func isWordRune(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) }

func wordBoundaryBefore(s string, i int) bool {
	if i == 0 {
		return true
	}
	r, _ := utf8.DecodeLastRuneInString(s[:i])
	return !isWordRune(r)
}

func wordBoundaryAfter(s string, i int) bool {
	if i >= len(s) {
		return true
	}
	r, _ := utf8.DecodeRuneInString(s[i:])
	return !isWordRune(r)
}
