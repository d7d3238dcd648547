package sim

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkStep times one step of a busy engine at the default configuration with 256
// running requests:
//
//   - mixed: 1000-token prompts sharing a 512-token prefix, 256 output tokens, so every step
//     decodes ~250 requests and prefills a chunk of a newcomer;
//   - decode: 100-token prompts, 1000 output tokens, so steps are almost all decode.
//
// x-realtime is simulated time over wall time: how much faster than real time one engine runs.
func BenchmarkStep(b *testing.B) {
	for _, bc := range []struct {
		name             string
		shared, own, out int
	}{
		{"mixed", 512, 488, 256},
		{"decode", 0, 100, 1000},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e, err := New(Config{})
			if err != nil {
				b.Fatal(err)
			}
			shared := prompt(1, bc.shared)
			next := 0
			add := func() {
				p := append(append([]uint32(nil), shared...), prompt(1000+next, bc.own)...)
				if err := e.Add(Request{ID: fmt.Sprint(next), Prompt: p, MaxTokens: bc.out}); err != nil {
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
			tokens := 0
			b.ReportAllocs()
			b.ResetTimer()
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
			simulated := float64(now-start) / float64(b.N)
			b.ReportMetric(float64(tokens)/float64(b.N), "tokens/step")
			b.ReportMetric(simulated/float64(time.Millisecond), "sim-ms/step")
			b.ReportMetric(simulated/(float64(b.Elapsed())/float64(b.N)), "x-realtime")
		})
	}
}
