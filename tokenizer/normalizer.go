package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// normalizer rewrites text before pre-tokenization. Implementations are immutable.
type normalizer interface {
	normalize(s string) string
}

func parseNormalizer(raw json.RawMessage) (normalizer, error) {
	if isNull(raw) {
		return nil, nil
	}
	typ, err := typeOf(raw)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: normalizer: %w", err)
	}
	switch typ {
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNorm{}, nil
	case "Sequence":
		var s struct {
			Normalizers []json.RawMessage `json:"normalizers"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("tokenizer: normalizer Sequence: %w", err)
		}
		var seq sequenceNorm
		for _, r := range s.Normalizers {
			n, err := parseNormalizer(r)
			if err != nil {
				return nil, err
			}
			if n != nil {
				seq = append(seq, n)
			}
		}
		if len(seq) == 0 {
			return nil, nil
		}
		return seq, nil
	case "Replace":
		var s struct {
			Pattern patternJSON `json:"pattern"`
			Content string      `json:"content"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("tokenizer: normalizer Replace: %w", err)
		}
		m, err := newMatcher(s.Pattern)
		if err != nil {
			return nil, fmt.Errorf("tokenizer: normalizer Replace: %w", err)
		}
		return replaceNorm{m: m, content: s.Content}, nil
	case "Prepend":
		var s struct {
			Prepend string `json:"prepend"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("tokenizer: normalizer Prepend: %w", err)
		}
		return prependNorm(s.Prepend), nil
	}
	return nil, fmt.Errorf("tokenizer: normalizer %q is not supported (supported: NFC, NFD, NFKC, NFKD, Lowercase, Sequence, Replace, Prepend)", typ)
}

type unicodeNorm struct{ f norm.Form }

func (u unicodeNorm) normalize(s string) string {
	if u.isNormal(s) {
		return s
	}
	return u.f.String(s)
}

// isNormal is u.f.IsNormalString(s), with ASCII skipped 8 bytes at a time: ASCII text is in
// every normal form, and an ASCII character never composes with the character before it, so
// s is normal exactly when each run of non-ASCII bytes is, together with the ASCII character
// before it (a combining mark may attach to that one: "e" U+0301 is not NFC).
func (u unicodeNorm) isNormal(s string) bool {
	for i := 0; ; {
		i = skipASCII(s, i)
		if i == len(s) {
			return true
		}
		j := i + 1
		for j < len(s) && s[j] >= utf8.RuneSelf {
			j++
		}
		run := s[max(i-1, 0):j]
		if !utf8.ValidString(run) { // the split holds for valid UTF-8 (the tokenizer's input)
			return u.f.IsNormalString(s)
		}
		if !u.f.IsNormalString(run) {
			return false
		}
		i = j
	}
}

// skipASCII returns the index of the first byte of s at or after i that is not ASCII, or
// len(s).
func skipASCII(s string, i int) int {
	for ; i+8 <= len(s); i += 8 {
		w := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if w&0x8080808080808080 != 0 {
			break
		}
	}
	for ; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return i
		}
	}
	return i
}

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(s string) string { return strings.ToLower(s) }

type sequenceNorm []normalizer

func (q sequenceNorm) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

type replaceNorm struct {
	m       matcher
	content string
}

func (r replaceNorm) normalize(s string) string { return replaceAll(s, r.m, r.content) }

func replaceAll(s string, m matcher, content string) string {
	var b strings.Builder
	prev := 0
	m.find(s, func(a, e int) {
		b.WriteString(s[prev:a])
		b.WriteString(content)
		prev = e
	})
	if prev == 0 && b.Len() == 0 {
		return s
	}
	b.WriteString(s[prev:])
	return b.String()
}

// prependNorm prepends its text to non-empty input.
type prependNorm string

func (p prependNorm) normalize(s string) string {
	if s == "" {
		return s
	}
	return string(p) + s
}
