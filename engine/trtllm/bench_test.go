package trtllm_test

import (
	"encoding/json"
	"testing"

	"github.com/kvgate/kvgate/engine/trtllm"
)

// BenchmarkDecode decodes one /kv_cache_events response of 64 stored events of 8 blocks of
// 32 tokens (a busy engine's 100 ms), reporting bytes per second and blocks per second.
func BenchmarkDecode(b *testing.B) {
	var events []map[string]any
	for e := range 64 {
		var blocks []map[string]any
		for k := range 8 {
			toks := make([]map[string]any, 32)
			for j := range toks {
				toks[j] = map[string]any{"type": "unique_token", "token_id": 1000 + e*256 + k*32 + j, "token_extra_id": 0}
			}
			blocks = append(blocks, map[string]any{"type": "stored_block", "block_hash": uint64(e*8+k) * 0x9e3779b97f4a7c15,
				"tokens": toks, "cache_level": 0, "priority": 35})
		}
		events = append(events, map[string]any{"event_id": e, "window_size": 4096,
			"data": map[string]any{"type": "stored", "parent_hash": nil, "blocks": blocks}})
	}
	payload, _ := json.Marshal(events)
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	var d trtllm.Decoder
	id := 0
	for b.Loop() {
		d = trtllm.Decoder{BlockSize: 32} // fresh ids each time: no gap bookkeeping across loops
		res, err := d.Decode(payload)
		if err != nil || len(res.Batch.Events) != 64 {
			b.Fatalf("%v, %d events", err, len(res.Batch.Events))
		}
		id++
	}
	b.ReportMetric(float64(64*8*id)/b.Elapsed().Seconds(), "blocks/s")
}
