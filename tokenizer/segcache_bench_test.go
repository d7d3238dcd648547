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
		return strings.ToValidUTF8(corpus[i:i+n], "")
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
// repository's docs), each op a new conversation, through the segment cache ("segments") and
// past it ("words": the word cache only, as before the segment cache). Before a 10th turn is
// timed, turns 1 to 9 of its conversation were encoded, as a router would have. The word
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
	// and the segment cache starts empty.
	tok.appendEncode(nil, corpus, nil)
	for _, turn := range []int{1, 10} {
		for _, mode := range []string{"segments", "words"} {
			b.Run(mode+"/turn"+strconv.Itoa(turn), func(b *testing.B) {
				var segs *segmentCache
				if mode == "segments" {
					segs = tok.segs
				}
				durs := make([]time.Duration, 0, 1024)
				tokens := 0
				for b.Loop() {
					b.StopTimer()
					texts := turnTexts(b, tok, rng, corpus)
					for _, text := range texts[:turn-1] {
						tok.appendEncode(nil, text, segs)
					}
					b.StartTimer()
					t0 := time.Now()
					tokens = len(tok.appendEncode(nil, texts[turn-1], segs))
					durs = append(durs, time.Since(t0))
				}
				slices.Sort(durs)
				b.ReportMetric(float64(durs[len(durs)/2].Microseconds()), "p50-us")
				b.ReportMetric(float64(tokens), "tokens")
			})
		}
	}
}
