package tokenizer

import (
	"bufio"
	"encoding/json"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

// prose returns the texts of the reference vectors (prose, code, unicode, whitespace, special
// tokens written in text), the material random conversations are cut from.
func prose(t testing.TB) []string {
	t.Helper()
	f, err := os.Open("testdata/qwen3/encode.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var v struct{ Text string }
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v.Text)
	}
	return out
}

// randMessage cuts 1 to 3 random stretches from texts (sometimes mid-rune), sometimes with an
// added token written in between.
func randMessage(rnd *rand.Rand, texts []string) string {
	var sb strings.Builder
	for range 1 + rnd.IntN(3) {
		s := texts[rnd.IntN(len(texts))]
		i := rnd.IntN(len(s))
		j := min(len(s), i+rnd.IntN(1500))
		sb.WriteString(s[i:j])
		switch rnd.IntN(6) {
		case 0:
			sb.WriteString("<|im_end|>")
		case 1:
			sb.WriteString("<|endoftext|>")
		case 2:
			sb.WriteString("  \n")
		}
	}
	return sb.String()
}

// TestSegmentCacheExact: on random multi-turn conversations rendered with the chat template
// (each turn repeats the previous ones, so later turns hit the cache), encodes through the
// segment cache, through a tiny one that evicts all the time, and without one agree.
func TestSegmentCacheExact(t *testing.T) {
	tok, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	texts := prose(t)
	tiny := newSegmentCache(16 * 1024)
	rnd := rand.New(rand.NewPCG(3, 4))
	hits := 0
	for conv := range 12 {
		msgs := []map[string]string{{"role": "system", "content": randMessage(rnd, texts)}}
		for turn := range 8 {
			msgs = append(msgs, map[string]string{"role": "user", "content": randMessage(rnd, texts)})
			raw, _ := json.Marshal(msgs)
			text, err := tok.RenderChat(ChatInput{Messages: raw, AddGenerationPrompt: true})
			if err != nil {
				t.Fatal(err)
			}
			want := tok.appendEncode(nil, text, nil)
			before := len(tok.segs.shards[0].m)
			got := tok.Encode(text)
			if len(tok.segs.shards[0].m) == before {
				hits++
			}
			if !slices.Equal(got, want) {
				t.Fatalf("conversation %d turn %d: cached encode differs from uncached", conv, turn)
			}
			if got := tok.appendEncode(nil, text, tiny); !slices.Equal(got, want) {
				t.Fatalf("conversation %d turn %d: encode through an evicting cache differs", conv, turn)
			}
			// The bare message: its text is a first segment, unlike inside the template.
			m := msgs[len(msgs)-1]["content"]
			if got, want := tok.Encode(m), tok.appendEncode(nil, m, nil); !slices.Equal(got, want) {
				t.Fatalf("conversation %d turn %d: cached encode of the bare message differs", conv, turn)
			}
			msgs = append(msgs, map[string]string{"role": "assistant", "content": randMessage(rnd, texts)})
		}
	}
	for i := range tiny.shards {
		if s := &tiny.shards[i]; s.bytes > tiny.perShard || s.bytes < 0 {
			t.Fatalf("shard %d holds %d bytes, budget %d", i, s.bytes, tiny.perShard)
		}
	}
	if hits == 0 {
		t.Fatal("the segment cache never served a segment")
	}
}

// TestSegmentCacheHitsEarlierTurns: encoding turn 2 finds turn 1's messages in the cache.
func TestSegmentCacheHitsEarlierTurns(t *testing.T) {
	tok, err := loadEmbedded()
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 4)
	turn1 := "<|im_start|>user\n" + long + "<|im_end|>\n<|im_start|>assistant\n"
	tok.Encode(turn1)
	seg := "\n" + long
	if _, ok := tok.segs.appendTo(nil, tok.segs.hash(seg, false)); !ok {
		// The template's segment is "user\n"+long: find what was stored.
		seg = "user\n" + long
		if _, ok := tok.segs.appendTo(nil, tok.segs.hash(seg, false)); !ok {
			t.Fatal("the user message's segment was not cached")
		}
	}
}

// TestSegmentCacheAnswers drives a small cache with random puts and gets: a hit is what was
// last put under its key (after the shard slid its ids down over evicted ones), a key just
// put is found, the shards stay within budget (garbage ids included), and the most recently
// used entry survives the eviction a put causes.
func TestSegmentCacheAnswers(t *testing.T) {
	c := newSegmentCache(16 * 4096)
	rng := rand.New(rand.NewPCG(18, 6))
	want := map[segKey][]uint32{}
	get := func(k segKey) ([]uint32, bool) {
		got, ok := c.appendTo([]uint32{7}, k) // appended after what dst holds
		if ok && got[0] != 7 {
			t.Fatalf("appendTo overwrote dst")
		}
		return got[1:], ok
	}
	hits := 0
	for i := range 30000 {
		k := segKey{uint64(rng.IntN(400)), 7}
		if ids, ok := get(k); ok {
			hits++
			if !slices.Equal(ids, want[k]) {
				t.Fatalf("get %v = %v, last put %v", k, ids, want[k])
			}
			// k is now the most recently used of its shard: one put more keeps it.
			k2 := segKey{uint64(400 + rng.IntN(400)), 7}
			k2.a = k2.a - k2.a%segShards + k.a%segShards // the same shard
			ids2 := make([]uint32, 1+rng.IntN(60))
			c.put(k2, ids2)
			want[k2] = ids2
			if _, ok := get(k); !ok {
				t.Fatalf("the most recently used entry %v was evicted by one put", k)
			}
			continue
		}
		ids := make([]uint32, 1+rng.IntN(120))
		for j := range ids {
			ids[j] = uint32(i*1000 + j)
		}
		c.put(k, ids)
		want[k] = ids
		if got, ok := get(k); !ok || !slices.Equal(got, ids) {
			t.Fatalf("get %v right after put = %v %v", k, got, ok)
		}
		for s := range c.shards {
			if sh := &c.shards[s]; sh.bytes > c.perShard || sh.bytes != 4*len(sh.ids)+segEntryOverhead*len(sh.m) {
				t.Fatalf("shard %d: %d bytes accounted, %d ids and %d entries held, budget %d", s, sh.bytes, len(sh.ids), len(sh.m), c.perShard)
			}
		}
	}
	if hits < 1000 {
		t.Fatalf("only %d hits", hits)
	}
}
