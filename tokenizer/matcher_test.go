package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"unicode/utf8"
)

type span struct{ a, b int }

func spans(m matcher, s string) []span {
	var out []span
	m.find(s, func(a, b int) { out = append(out, span{a, b}) })
	return out
}

// matcherCorpus is tricky input for the GPT-style regexes plus every reference text.
func matcherCorpus(t testing.TB) []string {
	corpus := []string{
		"", "a", " ", "  ", "\n", "\r\n", "x  ", "  x", "   x  y   ", "\t\tnow \r\n end   ",
		"'s 'S 'Re 'LL 'd 've 'm 't", "it's", "IT'S", "'", "''", "' s", "'ll'", "don't'", "a'sb",
		"  \n\n  x", "\r\n\r\n", "a\n \n b", " \n", "\n ", "x \n\t y", "\u00a0x", " \u3000x", "\u3000\u3000",
		"123456789", " 12", "a1b22c333", "¹²³ Ⅻ ½", "3.14159", "1e-9", "-42",
		"…!!\n\n", "foo\u2028bar", "((x))", " ((x))\n\n", "!x", " !x", "\n!x", "\r\nx", "é́ñ", "日本語のテキスト",
		"🙂👍🏽🚀 ok", " 🙂x", "a\u200db", "x\x00y\x01", "$3.50", "__init__", "a_b", " _x", "ελληνικά русский",
	}
	f, err := os.Open("testdata/qwen3/encode.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var v struct{ Text string }
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		corpus = append(corpus, v.Text)
	}
	return corpus
}

var knownPatterns = []struct {
	name    string
	pattern string
}{
	{"gpt2", patternGPT2},
	{"qwen2", patternQwen2},
	{"llama3", patternLlama3},
}

// TestHandWrittenMatchersEqualRegexp2 checks the fast matchers against regexp2 running the
// very pattern string they replace.
func TestHandWrittenMatchersEqualRegexp2(t *testing.T) {
	corpus := matcherCorpus(t)
	for _, p := range knownPatterns {
		t.Run(p.name, func(t *testing.T) {
			fast := knownMatcher(p.pattern)
			if fast == nil {
				t.Fatal("no hand-written matcher")
			}
			slow, err := newRegexMatcher(p.pattern)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range corpus {
				if got, want := spans(fast, s), spans(slow, s); !slices.Equal(got, want) {
					t.Errorf("%q:\n fast %v\n re2  %v", s, got, want)
				}
			}
		})
	}
}

func FuzzMatcher(f *testing.F) {
	for _, s := range []string{"Hello, world!", "it's  \n\n x", "123 4567", "🙂 ñ\u3000x", "'LL\r\n"} {
		f.Add(s)
	}
	var fast, slow []matcher
	for _, p := range knownPatterns {
		re, err := newRegexMatcher(p.pattern)
		if err != nil {
			f.Fatal(err)
		}
		fast, slow = append(fast, knownMatcher(p.pattern)), append(slow, re)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !utf8.ValidString(s) {
			return // Encode replaces invalid bytes before matching
		}
		for i := range fast {
			if got, want := spans(fast[i], s), spans(slow[i], s); !slices.Equal(got, want) {
				t.Fatalf("%s %q:\n fast %v\n re2  %v", knownPatterns[i].name, s, got, want)
			}
		}
	})
}

func TestSplitBehaviors(t *testing.T) {
	m := literalMatcher("-")
	tests := []struct {
		behavior splitBehavior
		invert   bool
		want     []string
	}{
		{behaviorRemoved, false, []string{"a", "b", "c"}},
		{behaviorIsolated, false, []string{"a", "-", "b", "-", "-", "c"}},
		{behaviorMergedWithPrevious, false, []string{"a-", "b-", "-", "c"}},
		{behaviorMergedWithNext, false, []string{"a", "-b", "-", "-c"}},
		{behaviorContiguous, false, []string{"a", "-", "b", "--", "c"}},
		{behaviorRemoved, true, []string{"-", "-", "-"}},
	}
	for _, tc := range tests {
		var got []string
		for _, p := range splitOne(nil, piece{text: "a-b--c"}, m, tc.behavior, tc.invert) {
			got = append(got, p.text)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("behavior %d invert %v: got %q, want %q", tc.behavior, tc.invert, got, tc.want)
		}
	}
}
