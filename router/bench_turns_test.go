package router_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kvgate/kvgate/router"
	"github.com/kvgate/kvgate/tokenizer"
)

// proseCorpus is real English prose: the repository's own README and docs.
func proseCorpus(b *testing.B) string {
	b.Helper()
	files, _ := filepath.Glob("../docs/*.md")
	files = append(files, "../README.md")
	var sb strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			b.Fatal(err)
		}
		sb.Write(data)
	}
	if sb.Len() < 100_000 {
		b.Fatalf("prose corpus has %d bytes", sb.Len())
	}
	return sb.String()
}

// turnsConversation returns the request bodies of a 10-turn chat cut from corpus at random
// offsets (a system prompt, then user and assistant messages of about 210 tokens), so that
// the 10th turn's prompt is about 4,096 tokens and every conversation's text is its own.
func turnsConversation(rng *rand.Rand, corpus string) [][]byte {
	cut := func(n int) string {
		i := rng.IntN(len(corpus) - n)
		// Without think tags, which would send the render to the template engine.
		return noThink.Replace(strings.ToValidUTF8(corpus[i:i+n], ""))
	}
	msgs := []map[string]string{{"role": "system", "content": "You are a helpful assistant. " + cut(200)}}
	bodies := make([][]byte, 0, 10)
	for range 10 {
		msgs = append(msgs, map[string]string{"role": "user", "content": cut(720)})
		body, _ := json.Marshal(map[string]any{"model": model, "stream": true, "max_tokens": 128, "messages": msgs})
		bodies = append(bodies, body)
		msgs = append(msgs, map[string]string{"role": "assistant", "content": cut(720)})
	}
	return bodies
}

// BenchmarkRoute4096Turns times whole decisions (parse, chat template, tokenize, hash, match,
// score, pick) on varied real text: each op routes the next turn of a conversation, every
// conversation new text cut from real prose, turn 10 at about 4,096 prompt tokens. Turn 1 is
// all new text; at turn 10 only the last user message is (the earlier ones were tokenized at
// earlier turns). Same index as BenchmarkRoute4096. It reports p50/p99 of turn 1 and turn 10,
// in wall time and (Linux) in CPU time of the routing thread, which a loaded machine changes
// much less.
func BenchmarkRoute4096Turns(b *testing.B) {
	corpus := proseCorpus(b)
	r, _ := newRouter(b, endpoints(8), func(c *router.Config) { c.Seed = 1 })
	rng := rand.New(rand.NewPCG(2, 2))
	conv := make([]uint32, 4096)
	for e := range 8 {
		for c := range 64 {
			for i := range conv {
				conv[i] = uint32(rng.IntN(150000))
			}
			r.ApplyEvents(endpoints(8)[e].Name, stored(conv, 16, uint64(e*1_000_000+c*1000), ""))
		}
	}
	tok, err := tokenizer.Default()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	runtime.LockOSThread() // threadCPU measures this goroutine's decisions
	defer runtime.UnlockOSThread()
	route := func(body []byte) (wall, cpu time.Duration) {
		c0, t0 := threadCPU(), time.Now()
		d, err := r.Route(ctx, router.Request{Path: "/v1/chat/completions", Body: body})
		wall, cpu = time.Since(t0), threadCPU()-c0
		if err != nil {
			b.Fatal(err)
		}
		d.Done(nil, nil)
		return wall, cpu
	}
	// Warm the word cache on other text of the same corpus, as a running router's would be.
	for _, body := range turnsConversation(rng, corpus) {
		route(body)
	}
	var turn1, turn10, cpu1, cpu10 []time.Duration
	var bodies [][]byte
	tokens := 0
	gc := startGCMeter()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if i%10 == 0 {
			b.StopTimer()
			bodies = turnsConversation(rng, corpus)
			if tokens == 0 {
				var req struct{ Messages json.RawMessage }
				_ = json.Unmarshal(bodies[9], &req)
				text, err := tok.RenderChat(tokenizer.ChatInput{Messages: req.Messages, AddGenerationPrompt: true})
				if err != nil {
					b.Fatal(err)
				}
				tokens = len(tok.Encode(text))
			}
			b.StartTimer()
		}
		wall, cpu := route(bodies[i%10])
		switch i % 10 {
		case 0:
			turn1, cpu1 = append(turn1, wall), append(cpu1, cpu)
		case 9:
			turn10, cpu10 = append(turn10, wall), append(cpu10, cpu)
		}
	}
	gc.report(b, b.N)
	report := func(name string, d []time.Duration) {
		if len(d) == 0 {
			return
		}
		slices.Sort(d)
		b.ReportMetric(float64(d[len(d)/2].Microseconds()), name+"-p50-us")
		b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), name+"-p99-us")
	}
	report("turn1", turn1)
	report("turn10", turn10)
	if threadCPU() > 0 {
		report("turn1-cpu", cpu1)
		report("turn10-cpu", cpu10)
	}
	b.ReportMetric(float64(tokens), "turn10-tokens")
}

var noThink = strings.NewReplacer("<think>", "", "</think>", "")
