package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"
)

// benchText returns a ~4,096-token text (Go source and licence prose from the reference
// vectors) and its token count.
func benchText(b *testing.B, tok *Tokenizer) (string, int) {
	b.Helper()
	f, err := os.Open("testdata/qwen3/encode.jsonl")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	var text string
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var v struct {
			Name, Text string
		}
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			b.Fatal(err)
		}
		if v.Name == "code_go" || v.Name == "license" {
			text += v.Text
		}
	}
	ids := tok.Encode(text)
	if len(ids) < 4096 {
		b.Fatalf("bench text has %d tokens", len(ids))
	}
	text = tok.Decode(ids[:4096])
	return text, len(tok.Encode(text))
}

func BenchmarkEncode4096(b *testing.B) {
	tok, err := Default()
	if err != nil {
		b.Fatal(err)
	}
	text, n := benchText(b, tok)
	tok.Encode(text) // warm the word cache
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		tok.Encode(text)
	}
	b.ReportMetric(float64(n), "tokens/op")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/token")
}

// BenchmarkEncode4096Cold encodes with an empty word cache every time (the first request of
// a kind of text).
func BenchmarkEncode4096Cold(b *testing.B) {
	tok, err := Default()
	if err != nil {
		b.Fatal(err)
	}
	text, n := benchText(b, tok)
	cold, err := loadEmbedded()
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		cold.cache = newWordCache(1 << 16)
		cold.Encode(text)
	}
	b.ReportMetric(float64(n), "tokens/op")
}

func BenchmarkRenderChat(b *testing.B) {
	tok, err := Default()
	if err != nil {
		b.Fatal(err)
	}
	in := ChatInput{
		Messages:            json.RawMessage(`[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France, and what is it known for?"}]`),
		AddGenerationPrompt: true,
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tok.RenderChat(in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoad(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := loadEmbedded(); err != nil {
			b.Fatal(err)
		}
	}
}
