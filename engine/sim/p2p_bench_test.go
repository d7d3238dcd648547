package sim

import (
	"context"
	"testing"
)

// BenchmarkP2PPull times one peer pull of a 150-block prefix (2,400 tokens) from a source
// holding it, over loopback: the puller's side of the protocol (request line, reply, the
// blocks read and checked) against a real source server. The default Qwen3-8B block is
// 2.25 MiB; MB/s is the loopback transfer rate, which the sim does not add to the step time.
func BenchmarkP2PPull(b *testing.B) {
	for _, bc := range []struct {
		name       string
		blockBytes int
	}{
		{"4KiB-blocks", 4096},
		{"qwen3-8b-blocks", 2359296},
	} {
		b.Run(bc.name, func(b *testing.B) {
			src := testServer(b, ServerConfig{BlockBytes: bc.blockBytes})
			p := prompt(7, 2401)
			j := newJob()
			if err := src.drv.submit(j, []Request{{ID: "warm", Prompt: p, MaxTokens: 1}}); err != nil {
				b.Fatal(err)
			}
			for len(j.take()) == 0 {
				<-j.notify
			}
			hs, h := src.drv.holds(p, "", "")
			if h.Blocks != 150 {
				b.Fatalf("source holds %d blocks", h.Blocks)
			}
			b.SetBytes(int64(150 * src.cfg.BlockBytes))
			b.ReportAllocs()
			for b.Loop() {
				n, _, err := pullHashes(context.Background(), src.TransferAddr(), nil, 16, hs)
				if err != nil || n != 150 {
					b.Fatalf("pulled %d: %v", n, err)
				}
			}
		})
	}
}
