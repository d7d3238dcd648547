package sim

import (
	"testing"

	"github.com/kvgate/kvgate/engine"
)

// TestCPUTierOverHTTPAndZMQ: a sim with a 40-block GPU cache and a host tier. A prompt pushed
// out of the GPU by five others is published as BlockRemoved GPU and BlockStored CPU (read
// back through the ZMQ replay socket), and asking for it again reports its prefix as cached
// tokens, as vLLM counts connector-loaded tokens; without the host tier the same sequence
// reports none.
func TestCPUTierOverHTTPAndZMQ(t *testing.T) {
	for _, cpuBlocks := range []int{200, 0} {
		s := testServer(t, ServerConfig{Engine: Config{NumBlocks: 40, CPUBlocks: cpuBlocks}, HashFormat: engine.HashBytes})
		c := client(t)
		body := func(i int) map[string]any {
			return map[string]any{"prompt": longText(i, 150), "max_tokens": 2, "ignore_eos": true}
		}
		first := completion(t, c, s, body(0))
		var aHashes []engine.BlockHash
		for _, ev := range events(replay(t, s)) {
			if ev.Kind == engine.BlockStored {
				if ev.Medium != engine.MediumGPU {
					t.Fatalf("a prefill stored blocks on %q", ev.Medium)
				}
				aHashes = append(aHashes, ev.BlockHashes...)
			}
		}
		if len(aHashes) == 0 {
			t.Fatal("no BlockStored for the first prompt")
		}
		for i := 1; i <= 5; i++ {
			completion(t, c, s, body(i))
		}
		where := map[string]map[string]bool{engine.MediumGPU: {}, MediumCPU.String(): {}}
		for _, ev := range events(replay(t, s)) {
			for _, h := range ev.BlockHashes {
				switch ev.Kind {
				case engine.BlockStored:
					if where[ev.Medium] == nil {
						t.Fatalf("event on medium %q", ev.Medium)
					}
					where[ev.Medium][string(h)] = true
				case engine.BlockRemoved:
					delete(where[ev.Medium], string(h))
				}
			}
		}
		a0 := string(aHashes[0])
		if where[engine.MediumGPU][a0] {
			t.Fatal("the first prompt's first block is still on the GPU: nothing to test")
		}
		if got := where[MediumCPU.String()][a0]; got != (cpuBlocks > 0) {
			t.Fatalf("with %d CPU blocks, BlockStored CPU for the evicted block: %v", cpuBlocks, got)
		}
		again := completion(t, c, s, body(0))
		full := (first.Usage.PromptTokens - 1) / 16 * 16
		want := 0
		if cpuBlocks > 0 {
			want = full
		}
		if got := again.Usage.CachedTokens(); got != want {
			t.Fatalf("with %d CPU blocks the repeat reports %d cached tokens, want %d", cpuBlocks, got, want)
		}
		if st := s.Stats(); cpuBlocks > 0 && (st.CPUHitTokens != uint64(full) || st.CPUBlocks == 0) {
			t.Fatalf("stats %+v: want %d CPU hit tokens", st, full)
		}
	}
}
