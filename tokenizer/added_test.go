package tokenizer

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"golang.org/x/text/unicode/norm"
)

// findStep is one callback of tokenSet.find.
type findStep struct {
	seg     string
	id      uint32
	isToken bool
	start   int
}

// naiveFind is tokenSet.find as it was before the IndexByte jump: every byte of s is tried as
// the start of a token (with the same per-token match, addedToken.matchAt). It is the reference model of TestTokenSetFindMatchesNaive.
func naiveFind(ts *tokenSet, s string) []findStep {
	var out []findStep
	if !ts.any {
		return []findStep{{s, 0, false, 0}}
	}
	segStart := 0
	for i := 0; i < len(s); i++ {
		for _, c := range ts.byFirst[s[i]] {
			start, end, ok := c.matchAt(s, segStart, i)
			if !ok {
				continue
			}
			if start > segStart {
				out = append(out, findStep{s[segStart:start], 0, false, segStart})
			}
			out = append(out, findStep{"", c.id, true, start})
			segStart = end
			i = end - 1
			break
		}
	}
	if segStart < len(s) {
		out = append(out, findStep{s[segStart:], 0, false, segStart})
	}
	return out
}

func collectFind(ts *tokenSet, s string) []findStep {
	var out []findStep
	ts.find(s, func(seg string, id uint32, isToken bool, start int) {
		out = append(out, findStep{seg, id, isToken, start})
	})
	return out
}

// testTokenSets are a set whose tokens all start with '<' (the IndexByte jump) and one with
// several first bytes, with lstrip, rstrip and single_word tokens in both.
func testTokenSets() map[string]*tokenSet {
	sets := map[string][]addedTokenJSON{
		"one first byte": {
			{ID: 1, Content: "<|im_start|>"}, {ID: 2, Content: "<|im_end|>"}, {ID: 3, Content: "<think>"},
			{ID: 4, Content: "</think>", LStrip: true}, {ID: 5, Content: "<|im_", RStrip: true},
			{ID: 6, Content: "<w>", SingleWord: true}, {ID: 7, Content: "<"},
		},
		"several first bytes": {
			{ID: 1, Content: "<s>"}, {ID: 2, Content: "</s>", LStrip: true}, {ID: 3, Content: "[INST]", RStrip: true},
			{ID: 4, Content: "[/INST]"}, {ID: 5, Content: "word", SingleWord: true}, {ID: 6, Content: "é<"},
		},
	}
	out := map[string]*tokenSet{}
	for name, toks := range sets {
		a := newAddedVocab()
		for _, t := range toks {
			a.add(t, nil)
		}
		a.finish()
		out[name] = &a.raw
	}
	return out
}

// randomTokenText strings together token pieces, spaces, words and non-ASCII text.
func randomTokenText(rng *rand.Rand) string {
	parts := []string{"<|im_start|>", "<|im_end|>", "<|im_", "<think>", "</think>", "<w>", "<", "|", ">",
		"<s>", "</s>", "[INST]", "[/INST]", "[", "word", "words", " ", "  ", "\n", "\u00a0", "a", "é", "é<", "日本"}
	var b strings.Builder
	for range rng.IntN(30) {
		b.WriteString(parts[rng.IntN(len(parts))])
	}
	return b.String()
}

func TestTokenSetFindMatchesNaive(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 1))
	for name, ts := range testTokenSets() {
		t.Run(name, func(t *testing.T) {
			if name == "one first byte" && !ts.oneFirst {
				t.Fatal("the jump is not in use for a set whose tokens all start with '<'")
			}
			if name == "several first bytes" && ts.oneFirst {
				t.Fatal("the jump is in use for a set with several first bytes")
			}
			for range 20000 {
				s := randomTokenText(rng)
				if got, want := collectFind(ts, s), naiveFind(ts, s); !slices.Equal(got, want) {
					t.Fatalf("find(%q):\n got %+v\nwant %+v", s, got, want)
				}
			}
		})
	}
}

func FuzzTokenSetFind(f *testing.F) {
	for _, s := range []string{"", "<|im_start|>user\nhi<|im_end|>", "a </think> <w> b", "[INST] word</s>", "é<é<<"} {
		f.Add(s)
	}
	sets := testTokenSets()
	f.Fuzz(func(t *testing.T, s string) {
		for name, ts := range sets {
			if got, want := collectFind(ts, s), naiveFind(ts, s); !slices.Equal(got, want) {
				t.Fatalf("%s: find(%q):\n got %+v\nwant %+v", name, s, got, want)
			}
		}
	})
}

// randomNormText mixes ASCII with characters that compose or decompose under the four normal
// forms: combining marks (which attach to an ASCII letter before them), precomposed and
// compatibility characters, Hangul jamo and syllables.
func randomNormText(rng *rand.Rand) string {
	parts := []string{"e", "a", "A", " ", "<", "abcdefghij", "\u0301", "\u0308", "\u0323", "\u0338", "é", "e\u0301",
		"\u00c5", "\u212b", "\ufb01", "\u2460", "\u1100", "\u1161", "\u11a8", "\uac00", "\u00bd", "日本", "\u0344", "\u1e9b\u0323"}
	var b strings.Builder
	for range rng.IntN(24) {
		b.WriteString(parts[rng.IntN(len(parts))])
	}
	return b.String()
}

func TestUnicodeNormMatchesXText(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 2))
	forms := map[string]norm.Form{"NFC": norm.NFC, "NFD": norm.NFD, "NFKC": norm.NFKC, "NFKD": norm.NFKD}
	for name, f := range forms {
		t.Run(name, func(t *testing.T) {
			u := unicodeNorm{f}
			normal := 0
			for range 20000 {
				s := randomNormText(rng)
				if got, want := u.isNormal(s), f.IsNormalString(s); got != want {
					t.Fatalf("isNormal(%+q) = %v, x/text says %v", s, got, want)
				}
				if got, want := u.normalize(s), f.String(s); got != want {
					t.Fatalf("normalize(%+q) = %+q, want %+q", s, got, want)
				}
				if u.isNormal(s) {
					normal++
				}
			}
			// Both answers must be common, or the comparison proves little.
			if normal < 2000 || normal > 18000 {
				t.Fatalf("%d of 20000 random texts are normal", normal)
			}
		})
	}
}

func FuzzUnicodeNorm(f *testing.F) {
	for _, s := range []string{"", "plain ascii", "e\u0301", "abc\u0301def\u0308", "\u212b x \ufb01", "\xff\u0301"} {
		f.Add(s)
	}
	forms := []norm.Form{norm.NFC, norm.NFD, norm.NFKC, norm.NFKD}
	f.Fuzz(func(t *testing.T, s string) {
		for _, form := range forms {
			if got, want := (unicodeNorm{form}).isNormal(s), form.IsNormalString(s); got != want {
				t.Fatalf("form %v: isNormal(%+q) = %v, x/text says %v", form, s, got, want)
			}
		}
	})
}
