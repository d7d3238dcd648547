package tokenizer

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// turnTexts renders the 10 turns of a chat cut from corpus at random offsets (user and
// assistant messages of about 170 tokens; turn 10 about 4,096 tokens).
func turnTexts(b *testing.B, tok *Tokenizer, rng *rand.Rand, corpus string) []string {
	cut := func(n int) string {
		i := rng.IntN(len(corpus) - n)
		// Without think tags, which would send the render to the template engine.
		return noThink.Replace(strings.ToValidUTF8(corpus[i:i+n], ""))
	}
	msgs := []map[string]string{{"role": "system", "content": "You are a helpful assistant. " + cut(200)}}
	var out []string
	for range 10 {
		msgs = append(msgs, map[string]string{"role": "user", "content": cut(720)})
		raw, _ := json.Marshal(msgs)
		text, err := tok.RenderChat(ChatInput{Messages: raw, AddGenerationPrompt: true})
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, text)
		msgs = append(msgs, map[string]string{"role": "assistant", "content": cut(720)})
	}
	return out
}

// BenchmarkEncodeTurns encodes the 1st and the 10th turn of conversations of real prose (the
// repository's docs), each op a new conversation, both through the segment cache
// ("segments") and past it ("words": the word cache only, as before the segment cache), in
// alternating order; ratio is segments over words at p50. Before a 10th turn is timed, turns
// 1 to 9 of its conversation were encoded, as a router would have. The word
// cache holds every word of the corpus for both.
func BenchmarkEncodeTurns(b *testing.B) {
	tok, err := loadEmbedded()
	if err != nil {
		b.Fatal(err)
	}
	files, _ := filepath.Glob("../docs/*.md")
	var sb strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		sb.Write(data)
	}
	corpus := sb.String()
	rng := rand.New(rand.NewPCG(9, 9))
	// Warm the word cache with the whole corpus, so that both modes find every word in it
	// and the segment cache starts full of other entries.
	tok.appendEncode(nil, corpus, nil)
	// Fill the segment cache to its budget, as a running router's is: a put then recycles an
	// evicted entry's memory rather than growing the heap.
	fill := make([]uint32, 256)
	for i := range segCacheBytes / entrySize(fill) {
		tok.segs.put(tok.segs.hash(strconv.Itoa(i), false), fill)
	}
	for _, turn := range []int{1, 10} {
		b.Run("turn"+strconv.Itoa(turn), func(b *testing.B) {
			var segs, words []time.Duration
			tokens := 0
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				texts := turnTexts(b, tok, rng, corpus)
				for _, text := range texts[:turn-1] {
					tok.appendEncode(nil, text, tok.segs)
				}
				b.StartTimer()
				// Both ways on the same text, in alternating order.
				for k := range 2 {
					withSegs := (i+k)%2 == 0
					c := tok.segs
					if !withSegs {
						c = nil
					}
					t0 := time.Now()
					tokens = len(tok.appendEncode(nil, texts[turn-1], c))
					if el := time.Since(t0); withSegs {
						segs = append(segs, el)
					} else {
						words = append(words, el)
					}
				}
			}
			slices.Sort(segs)
			slices.Sort(words)
			b.ReportMetric(float64(segs[len(segs)/2].Microseconds()), "segments-p50-us")
			b.ReportMetric(float64(words[len(words)/2].Microseconds()), "words-p50-us")
			b.ReportMetric(float64(segs[len(segs)/2])/float64(words[len(words)/2]), "ratio")
			b.ReportMetric(float64(tokens), "tokens")
		})
	}
}

// BenchmarkRenderChatTurn10 renders a 10th turn (20 messages, about 4,096 tokens of real
// prose) natively and through the template engine.
func BenchmarkRenderChatTurn10(b *testing.B) {
	tok, err := Default()
	if err != nil {
		b.Fatal(err)
	}
	files, _ := filepath.Glob("../docs/*.md")
	var sb strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		sb.Write(data)
	}
	corpus := sb.String()
	rng := rand.New(rand.NewPCG(9, 9))
	cut := func(n int) string {
		i := rng.IntN(len(corpus) - n)
		// Without think tags, which would send the render to the template engine.
		return noThink.Replace(strings.ToValidUTF8(corpus[i:i+n], ""))
	}
	msgs := []map[string]string{{"role": "system", "content": "You are a helpful assistant. " + cut(200)}}
	for range 9 {
		msgs = append(msgs, map[string]string{"role": "user", "content": cut(720)}, map[string]string{"role": "assistant", "content": cut(720)})
	}
	msgs = append(msgs, map[string]string{"role": "user", "content": cut(720)})
	raw, _ := json.Marshal(msgs)
	in := ChatInput{Messages: raw, AddGenerationPrompt: true}
	for _, native := range []bool{true, false} {
		name := "engine"
		if native {
			name = "native"
		}
		b.Run(name, func(b *testing.B) {
			if !nativePath(in) {
				b.Fatal("not a plain chat")
			}
			b.ReportAllocs()
			cpu := cpuTime(b)
			for b.Loop() {
				if _, err := tok.renderChat(in, native); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
		})
	}
}

var noThink = strings.NewReplacer("<think>", "", "</think>", "")
