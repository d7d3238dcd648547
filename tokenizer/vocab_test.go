package tokenizer

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
)

// TestVocabTableMatchesMap compares vocabTable with the map[string]uint32 it replaced, on
// random vocabularies with repeated tokens (the last id wins, as in a decoded JSON object),
// the empty token, and lookups of absent tokens.
func TestVocabTableMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 4))
	for round := range 200 {
		var arena strings.Builder
		var entries []vocabEntry
		want := map[string]uint32{}
		n := rng.IntN(3000)
		for range n {
			tok := randomToken(rng)
			if rng.IntN(50) == 0 {
				tok = ""
			}
			id := uint32(rng.IntN(5000))
			entries = append(entries, vocabEntry{off: arena.Len(), n: len(tok), id: id})
			arena.WriteString(tok)
			want[tok] = id
		}
		v := newVocabTable(arena.String(), entries)
		if v.len() != len(want) {
			t.Fatalf("round %d: len %d, want %d", round, v.len(), len(want))
		}
		for tok, id := range want {
			if got, ok := v.get(tok); !ok || got != id {
				t.Fatalf("round %d: get(%q) = %d %v, want %d", round, tok, got, ok, id)
			}
			if got, ok := v.getBytes([]byte(tok)); !ok || got != id {
				t.Fatalf("round %d: getBytes(%q) = %d %v, want %d", round, tok, got, ok, id)
			}
		}
		for range 500 {
			tok := randomToken(rng) + "~"
			if _, in := want[tok]; in {
				continue
			}
			if id, ok := v.get(tok); ok {
				t.Fatalf("round %d: get(%q) = %d for an absent token", round, tok, id)
			}
		}
		seen := map[string]uint32{}
		v.each(func(s tokSpan, id uint32) { seen[v.at(s)] = id })
		if fmt.Sprint(seen) != fmt.Sprint(want) {
			t.Fatalf("round %d: each visited %d tokens, want %d", round, len(seen), len(want))
		}
	}
}

func randomToken(rng *rand.Rand) string {
	const alphabet = "abcĠé<|>_ 0"
	r := []rune(alphabet)
	var b strings.Builder
	for range 1 + rng.IntN(6) {
		b.WriteRune(r[rng.IntN(len(r))])
	}
	return b.String()
}

// TestTokenNames: ids name their vocabulary token, added tokens override and extend the
// table, and ids without a token are "".
func TestTokenNames(t *testing.T) {
	v := newVocabTable("abcd", []vocabEntry{{0, 1, 0}, {1, 2, 2}, {3, 1, 4}})
	n := newTokenNames(v, 4)
	n.set([]uint32{4, 7}, []string{"<s>", "<x>"})
	want := []string{"a", "", "bc", "", "<s>", "", "", "<x>"}
	if n.len() != len(want) {
		t.Fatalf("len %d, want %d", n.len(), len(want))
	}
	for id, w := range want {
		if got := n.get(uint32(id)); got != w {
			t.Errorf("get(%d) = %q, want %q", id, got, w)
		}
	}
	if got := n.get(100); got != "" {
		t.Errorf("get(100) = %q past the table", got)
	}
}

// TestLoadedTokenizerHeapIsNotScanned: a loaded tokenizer (vocabulary, merges, names) and
// its caches, filled, add almost nothing to the heap the garbage collector scans on each
// cycle. Before, Qwen3's map and []string added 9.8 MB, the word and segment caches a string
// and a slice per word and three pointers per segment (20.6 MB in all when full; 20,000 words
// and 5,000 segments, as here, about 2.5 MB).
func TestLoadedTokenizerHeapIsNotScanned(t *testing.T) {
	scannable := func() uint64 {
		runtime.GC()
		runtime.GC()
		s := []metrics.Sample{{Name: "/gc/scan/heap:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	before := scannable()
	tok, err := loadEmbedded()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(18, 7))
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte('a' + rng.IntN(26))
		}
		return string(b)
	}
	for range 20000 {
		tok.Encode(" " + word(3+rng.IntN(6)))
	}
	for range 5000 {
		var sb strings.Builder
		for range 60 {
			sb.WriteString(word(5))
			sb.WriteByte(' ')
		}
		tok.Encode(sb.String())
	}
	after := scannable()
	runtime.KeepAlive(tok)
	if grown := int64(after) - int64(before); grown > 1<<20 {
		t.Fatalf("the tokenizer and its caches added %.1f MB of scannable heap, want under 1 MB", float64(grown)/(1<<20))
	}
}
