package tokenizer

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// TestMergeScanEqualsHeap runs both merge loops (the scan for short words, the priority queue
// for long ones) on the same words and expects the same tokens.
func TestMergeScanEqualsHeap(t *testing.T) {
	tok, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	words := []string{"a", "hello", " world", "tokenization", strings.Repeat("a", 47), " " + strings.Repeat("=", 40),
		"日本語のテキスト", " internationalization", "0x1234abcd", "\n\n\n\n", strings.Repeat("ab", 23)}
	for _, s := range matcherCorpus(t) {
		for _, w := range spans(knownMatcher(patternQwen2), s) {
			if w.b-w.a <= 48 {
				words = append(words, s[w.a:w.b])
			}
		}
	}
	b := tok.bpe
	for _, w := range words {
		if len(w) > 48 {
			t.Fatalf("test word %q too long for the scan", w)
		}
		mk := func() []symbol {
			syms := make([]symbol, len(w))
			for i := range syms {
				syms[i] = symbol{id: b.byteToID[w[i]], prev: int32(i - 1), next: int32(i + 1)}
			}
			syms[len(syms)-1].next = -1
			return syms
		}
		collect := func(syms []symbol) []uint32 {
			var out []uint32
			for i := int32(0); i >= 0; i = syms[i].next {
				out = append(out, syms[i].id)
			}
			return out
		}
		a, h := mk(), mk()
		b.mergeScan(a)
		b.mergeHeap(h)
		if x, y := collect(a), collect(h); !slices.Equal(x, y) {
			t.Fatalf("%q: scan %v, heap %v", w, x, y)
		}
	}
}

func TestPyFloat(t *testing.T) {
	tests := map[float64]string{
		0: "0.0", 1: "1.0", -2: "-2.0", 0.5: "0.5", 0.1: "0.1", 1e-7: "1e-07", 1e20: "1e+20",
		1e16: "1e+16", 1234567890123456: "1234567890123456.0", 0.0001: "0.0001", 0.00001: "1e-05",
		3.14159: "3.14159", 1.5e300: "1.5e+300", -0.25: "-0.25", 123.456: "123.456",
	}
	for f, want := range tests {
		if got := pyFloat(f); got != want {
			t.Errorf("pyFloat(%v) = %q, want %q", f, got, want)
		}
	}
}

func TestWordCacheBounded(t *testing.T) {
	c := newWordCache(64)
	for i := 0; i < 10000; i++ {
		c.put(strings.Repeat("x", i%200), []uint32{uint32(i)})
	}
	n := 0
	for i := range c.shards {
		n += len(c.shards[i].m)
	}
	if n > 64 {
		t.Fatalf("cache holds %d words, capacity 64", n)
	}
	c.put(strings.Repeat("y", maxCachedWord+1), []uint32{1})
	if _, ok := c.get(strings.Repeat("y", maxCachedWord+1)); ok {
		t.Fatal("cache kept a word longer than maxCachedWord")
	}
}

// TestWordCacheAnswers: whatever the cache answers for a word is what was last put for it,
// and a word just put is found, over random words in a small cache that empties its shards
// often (the arrays of an emptied shard are new ones: earlier answers stay intact).
func TestWordCacheAnswers(t *testing.T) {
	c := newWordCache(64)
	rng := rand.New(rand.NewPCG(18, 5))
	want := map[string][]uint32{}
	var held [][]uint32 // answers handed out earlier, and what they said then
	var heldWant [][]uint32
	for i := range 20000 {
		w := strings.Repeat(string(rune('a'+rng.IntN(26))), 1+rng.IntN(5)) + fmt.Sprint(rng.IntN(300))
		if ids, ok := c.get(w); ok {
			if !slices.Equal(ids, want[w]) {
				t.Fatalf("get(%q) = %v, last put %v", w, ids, want[w])
			}
			held, heldWant = append(held, ids), append(heldWant, slices.Clone(ids))
			continue
		}
		ids := []uint32{uint32(i), uint32(len(w)), uint32(rng.IntN(1000))}[:1+rng.IntN(3)]
		c.put(w, ids)
		want[w] = ids
		if got, ok := c.get(w); !ok || !slices.Equal(got, ids) {
			t.Fatalf("get(%q) right after put = %v %v, want %v", w, got, ok, ids)
		}
	}
	for i := range held {
		if !slices.Equal(held[i], heldWant[i]) {
			t.Fatalf("an answer changed after its shard was emptied: %v, was %v", held[i], heldWant[i])
		}
	}
}
