package sim

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkStep times one step of a busy engine: 256 running requests decoding, with new
// requests (1000-token prompts sharing a 512-token prefix) replacing finished ones.
func BenchmarkStep(b *testing.B) {
	e, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	shared := prompt(1, 512)
	next := 0
	add := func() {
		p := append(append([]uint32(nil), shared...), prompt(1000+next, 488)...)
		if err := e.Add(Request{ID: fmt.Sprint(next), Prompt: p, MaxTokens: 256}); err != nil {
			b.Fatal(err)
		}
		next++
	}
	for range 256 {
		add()
	}
	var now time.Duration
	for e.Stats().Waiting > 0 || e.Stats().Running < 256 {
		now = e.Step(now).End
	}
	start := now
	b.ReportAllocs()
	b.ResetTimer()
	tokens := 0
	for b.Loop() {
		r := e.Step(now)
		now = r.End
		tokens += r.PrefillTokens + r.DecodeTokens
		for _, o := range r.Outputs {
			if o.Finish != NotFinished {
				add()
			}
		}
	}
	b.ReportMetric(float64(tokens)/float64(b.N), "tokens/step")
	simulated := float64(now-start) / float64(b.N)
	b.ReportMetric(simulated/float64(time.Millisecond), "sim-ms/step")
	// How much faster than real time one engine runs: simulated time over wall time.
	b.ReportMetric(simulated/(float64(b.Elapsed())/float64(b.N)), "x-realtime")
}
