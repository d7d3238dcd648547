package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user+system CPU time. Benchmarks report it per op next to ns/op:
// on the shared 2-core machines wall time swings with other people's load, CPU time much less.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports CPU time per op since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

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
	cpu := cpuTime(b)
	for b.Loop() {
		tok.appendEncode(nil, text, nil) // the text is one segment: past the segment cache
	}
	reportCPU(b, cpu)
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
	cpu := cpuTime(b)
	for b.Loop() {
		cold.cache = newWordCache(1 << 16)
		cold.segs = newSegmentCache(segCacheBytes)
		cold.Encode(text)
	}
	reportCPU(b, cpu)
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
	cpu := cpuTime(b)
	for b.Loop() {
		if _, err := tok.RenderChat(in); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

func BenchmarkLoad(b *testing.B) {
	b.ReportAllocs()
	cpu := cpuTime(b)
	for b.Loop() {
		if _, err := loadEmbedded(); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkEncode4096Regexp2 is the baseline for the hand-written pre-tokenizer: the same
// encode with the Qwen regex run by regexp2 (the general fallback).
func BenchmarkEncode4096Regexp2(b *testing.B) {
	tok, err := loadEmbedded()
	if err != nil {
		b.Fatal(err)
	}
	re, err := newRegexMatcher(patternQwen2)
	if err != nil {
		b.Fatal(err)
	}
	tok.pre = &splitPre{m: re, behavior: behaviorIsolated}
	text, n := benchText(b, tok)
	tok.Encode(text)
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime(b)
	for b.Loop() {
		tok.Encode(text)
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(n), "tokens/op")
}
