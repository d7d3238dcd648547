package tokenizer

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlclark/regexp2"
)

// matcher finds the non-empty, non-overlapping matches of a pattern in s, left to right, and
// calls fn with their byte offsets. Implementations are safe for concurrent use.
type matcher interface {
	find(s string, fn func(start, end int))
}

// Patterns with a hand-written matcher. Tests check each against regexp2 on the same input.
const (
	// patternGPT2 is GPT-2's pre-tokenization regex, used by ByteLevel with use_regex.
	patternGPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
	// patternQwen2 is the Qwen2/Qwen3 regex (cl100k-like, one digit per word).
	patternQwen2 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
	// patternLlama3 is the Llama 3 / cl100k regex (up to three digits per word).
	patternLlama3 = `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
)

var gpt2Matcher matcher = &gptMatcher{gpt2: true}

// newMatcher builds the matcher of a Split/Replace pattern: a hand-written one for the
// well-known GPT-style regexes, regexp2 for any other regex, a literal search for String.
func newMatcher(p patternJSON) (matcher, error) {
	switch {
	case p.String != nil:
		if *p.String == "" {
			return nil, fmt.Errorf("empty String pattern")
		}
		return literalMatcher(*p.String), nil
	case p.Regex != nil:
		if m := knownMatcher(*p.Regex); m != nil {
			return m, nil
		}
		return newRegexMatcher(*p.Regex)
	}
	return nil, fmt.Errorf("pattern has neither String nor Regex")
}

func knownMatcher(re string) matcher {
	switch re {
	case patternGPT2:
		return gpt2Matcher
	case patternQwen2:
		return &gptMatcher{maxDigits: 1}
	case patternLlama3:
		return &gptMatcher{maxDigits: 3}
	}
	return nil
}

// literalMatcher finds a fixed string.
type literalMatcher string

func (l literalMatcher) find(s string, fn func(int, int)) {
	off := 0
	for {
		i := strings.Index(s[off:], string(l))
		if i < 0 {
			return
		}
		fn(off+i, off+i+len(l))
		off += i + len(l)
	}
}

// regexMatcher is the general fallback: regexp2, which supports lookahead like Oniguruma.
type regexMatcher struct {
	re *regexp2.Regexp
}

func newRegexMatcher(expr string) (*regexMatcher, error) {
	re, err := regexp2.Compile(expr, regexp2.None)
	if err != nil {
		return nil, fmt.Errorf("regex %q: %w", expr, err)
	}
	return &regexMatcher{re: re}, nil
}

func (r *regexMatcher) find(s string, fn func(int, int)) {
	if s == "" {
		return
	}
	// regexp2 reports rune offsets; map them to byte offsets.
	offs := make([]int, 0, len(s)+1)
	for i := range s {
		offs = append(offs, i)
	}
	offs = append(offs, len(s))
	m, err := r.re.FindStringMatch(s)
	for err == nil && m != nil {
		if m.Length > 0 {
			fn(offs[m.Index], offs[m.Index+m.Length])
		}
		m, err = r.re.FindNextMatch(m)
	}
}

// gptMatcher is a hand-written matcher equivalent to patternGPT2 (gpt2) or to patternQwen2 /
// patternLlama3 (maxDigits 1 or 3).
type gptMatcher struct {
	gpt2      bool
	maxDigits int
}

type charClass uint8

const (
	classEnd charClass = iota
	classLetter
	classNumber
	classSpace
	classOther // [^\s\p{L}\p{N}]
)

func classify(r rune) charClass {
	if r < utf8.RuneSelf {
		return asciiClass[r]
	}
	switch {
	case unicode.IsLetter(r):
		return classLetter
	case unicode.IsNumber(r):
		return classNumber
	case unicode.IsSpace(r):
		return classSpace
	}
	return classOther
}

var asciiClass = func() (t [utf8.RuneSelf]charClass) {
	for r := rune(0); r < utf8.RuneSelf; r++ {
		switch {
		case unicode.IsLetter(r):
			t[r] = classLetter
		case unicode.IsNumber(r):
			t[r] = classNumber
		case unicode.IsSpace(r):
			t[r] = classSpace
		default:
			t[r] = classOther
		}
	}
	return t
}()

// at decodes the rune at byte offset i: its class, the rune and its width (classEnd at the end).
func at(s string, i int) (charClass, rune, int) {
	if i >= len(s) {
		return classEnd, 0, 0
	}
	if c := s[i]; c < utf8.RuneSelf {
		return asciiClass[c], rune(c), 1
	}
	r, n := utf8.DecodeRuneInString(s[i:])
	return classify(r), r, n
}

// run returns the end of the run of class c starting at i.
func run(s string, i int, c charClass) int {
	for i < len(s) {
		cl, _, n := at(s, i)
		if cl != c {
			break
		}
		i += n
	}
	return i
}

func (g *gptMatcher) find(s string, fn func(int, int)) {
	for i := 0; i < len(s); {
		e := g.match(s, i)
		fn(i, e)
		i = e
	}
}

// contraction returns the end of 's|'t|'re|'ve|'m|'ll|'d at i (case-insensitive unless gpt2),
// or -1.
func (g *gptMatcher) contraction(s string, i int) int {
	if s[i] != '\'' || i+1 >= len(s) {
		return -1
	}
	lower := func(c byte) byte {
		if !g.gpt2 && c >= 'A' && c <= 'Z' {
			return c + 'a' - 'A'
		}
		return c
	}
	switch lower(s[i+1]) {
	case 's', 't', 'm', 'd':
		return i + 2
	}
	if i+2 < len(s) {
		a, b := lower(s[i+1]), lower(s[i+2])
		if (a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l') {
			return i + 3
		}
	}
	return -1
}

// match returns the end of the match starting at i (< len(s)); every position matches.
func (g *gptMatcher) match(s string, i int) int {
	if e := g.contraction(s, i); e >= 0 {
		return e
	}
	c0, r0, n0 := at(s, i)
	c1, _, _ := at(s, i+n0)
	if g.gpt2 {
		if r0 == ' ' && (c1 == classLetter || c1 == classNumber || c1 == classOther) {
			return run(s, i+n0, c1)
		}
		if c0 != classSpace {
			return run(s, i, c0)
		}
		return g.spaces(s, i)
	}
	// [^\r\n\p{L}\p{N}]?\p{L}+
	if c0 == classLetter {
		return run(s, i, classLetter)
	}
	if c1 == classLetter && c0 != classNumber && r0 != '\r' && r0 != '\n' {
		return run(s, i+n0, classLetter)
	}
	// \p{N} or \p{N}{1,3}
	if c0 == classNumber {
		e := i
		for k := 0; k < g.maxDigits; k++ {
			c, _, n := at(s, e)
			if c != classNumber {
				break
			}
			e += n
		}
		return e
	}
	// ' ?[^\s\p{L}\p{N}]+[\r\n]*'
	if (r0 == ' ' && c1 == classOther) || c0 == classOther {
		start := i
		if c0 != classOther {
			start += n0
		}
		e := run(s, start, classOther)
		for e < len(s) && (s[e] == '\r' || s[e] == '\n') {
			e++
		}
		return e
	}
	// c0 is whitespace: \s*[\r\n]+ ends after the last \r or \n of the whitespace run.
	end := run(s, i, classSpace)
	// Bytes of multi-byte spaces are >= 0x80, so a byte scan is exact.
	for k := end - 1; k >= i; k-- {
		if s[k] == '\r' || s[k] == '\n' {
			return k + 1
		}
	}
	return g.spaces(s, i)
}

// spaces matches \s+(?!\S)|\s+ at i, where s[i] is whitespace.
func (g *gptMatcher) spaces(s string, i int) int {
	end := run(s, i, classSpace)
	if end == len(s) {
		return end
	}
	// Leave the last whitespace character to the next word when there are two or more.
	_, last := utf8.DecodeLastRuneInString(s[:end])
	if end-last > i {
		return end - last
	}
	return end
}
