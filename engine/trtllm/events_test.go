package trtllm_test

import (
	"encoding/hex"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/engine/trtllm"
)

func u64(v uint64) engine.BlockHash { return engine.HashFromUint64(v) }

func toks(from, n uint32) []uint32 {
	out := make([]uint32, n)
	for i := range out {
		out[i] = from + uint32(i)
	}
	return out
}

// TestDecodeGolden: testdata/events.json (a /kv_cache_events response built from the
// documented layout) decodes to exactly these events.
func TestDecodeGolden(t *testing.T) {
	payload, err := os.ReadFile("testdata/events.json")
	if err != nil {
		t.Fatal(err)
	}
	d := trtllm.Decoder{BlockSize: 4}
	res, err := d.Decode(payload)
	if err != nil {
		t.Fatal(err)
	}
	if res.Gap {
		t.Fatalf("gap %d -> %d in a list that starts at event 0", res.ExpectedID, res.GotID)
	}
	sha, _ := hex.DecodeString(strings.Repeat("aa", 32))
	lora := 3
	max64 := u64(1<<64 - 1)
	want := []engine.Event{
		// events 0 and 1: the engine announces its pools (two attention windows): a clear.
		{Kind: engine.AllBlocksCleared},
		// event 2: two full blocks; the partial third one (1 token) is dropped.
		{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{u64(11), max64}, TokenIDs: toks(1, 8), BlockSize: 4, Medium: engine.MediumGPU},
		// event 3 is of the smaller window (128): skipped.
		// event 4: block -1 (the same 64 bits as 2^64-1) moves from GPU to host memory.
		{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{max64}, BlockSize: 4, Medium: trtllm.MediumCPU},
		{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{max64}, Medium: engine.MediumGPU},
		// event 5: a priority change only: nothing.
		// event 6: hash_algo v2_sha256 on the event: a 32-byte hash, stored in host memory.
		{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{engine.BlockHash(sha)}, TokenIDs: toks(100, 4), BlockSize: 4, Medium: trtllm.MediumCPU},
		// event 7: hash_algo v2_sha256_64 in its data, a LoRA block.
		{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{u64(7)}, Parent: u64(0xaaaaaaaaaaaaaaaa), TokenIDs: toks(104, 4), BlockSize: 4, Medium: engine.MediumGPU, LoRAID: &lora},
		// event 8: removed from the reuse tree, on both levels once host memory is in use.
		{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{u64(11), max64}, Medium: engine.MediumGPU},
		{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{u64(11), max64}, Medium: trtllm.MediumCPU},
		// event 9.
		{Kind: engine.AllBlocksCleared},
	}
	if len(res.Batch.Events) != len(want) {
		t.Fatalf("%d events, want %d: %+v", len(res.Batch.Events), len(want), res.Batch.Events)
	}
	for i := range want {
		if !reflect.DeepEqual(res.Batch.Events[i], want[i]) {
			t.Errorf("event %d:\n got %+v\nwant %+v", i, res.Batch.Events[i], want[i])
		}
	}
	if res.Batch.DPRank != nil {
		t.Errorf("dp rank %d, want none (rank 0 only)", *res.Batch.DPRank)
	}
}

// TestDecodeRefuses: what kvgate cannot interpret is refused with an error naming it, and
// the decoder's state is left as it was.
func TestDecodeRefuses(t *testing.T) {
	tests := []struct {
		name, payload, want string
	}{
		{"unknown hash algorithm on the event", `[{"event_id":0,"hash_algo":"xxh3_128","data":{"type":"removed","block_hashes":[1]}}]`, `unknown hash_algo "xxh3_128"`},
		{"unknown hash algorithm in the data", `[{"event_id":0,"data":{"type":"removed","hash_algo":"md5","block_hashes":[1]}}]`, `unknown hash_algo "md5"`},
		{"unknown hash algorithm on the list", `{"hash_algo":"blake3","events":[]}`, `unknown hash_algo "blake3"`},
		{"unknown event type", `[{"event_id":0,"data":{"type":"evicted"}}]`, `unknown event type "evicted"`},
		{"sha256 hash that is an integer", `[{"event_id":0,"hash_algo":"v2_sha256","data":{"type":"removed","block_hashes":[5]}}]`, "is not a hex string"},
		{"short sha256 hash", `[{"event_id":0,"hash_algo":"v2_sha256","data":{"type":"removed","block_hashes":["abcd"]}}]`, "is not 64 hex digits"},
		{"integer hash too large", `[{"event_id":0,"data":{"type":"removed","block_hashes":[18446744073709551616]}}]`, "is not a 64-bit integer"},
		{"token out of range", `[{"event_id":0,"data":{"type":"stored","parent_hash":null,"blocks":[{"block_hash":1,"tokens":[{"token_id":-1}]}]}}]`, "not a uint32"},
		{"unknown cache level", `[{"event_id":0,"data":{"type":"updated","block_hash":1,"cache_level":{"old_value":0,"new_value":7}}}]`, "unknown cache level 7"},
		{"not JSON", `\x93\x01`, "want a JSON array"},
		{"empty", ``, "empty body"},
		{"trailing data", `[] []`, "trailing data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var d trtllm.Decoder
			_, err := d.Decode([]byte(tc.payload))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			// Nothing was committed: event 0 is still the first one expected.
			res, err := d.Decode([]byte(`[{"event_id":0,"data":{"type":"all_cleared"}}]`))
			if err != nil || res.Gap {
				t.Fatalf("after a refused list: %+v, %v", res, err)
			}
		})
	}
}

// TestDecodeEventIDs: lost events (ids skipped) and a restart (ids back to 0) are gaps; a
// poller that joins a running engine sees a gap from 0; null (events off) is nothing.
func TestDecodeEventIDs(t *testing.T) {
	ev := func(id string) string {
		return `{"event_id":` + id + `,"data":{"type":"removed","block_hashes":[1]},"window_size":32}`
	}
	var d trtllm.Decoder
	steps := []struct {
		payload       string
		gap           bool
		expected, got int64
	}{
		{"[" + ev("5") + "]", true, 0, 5},                  // joined mid-stream
		{"[" + ev("6") + "," + ev("7") + "]", false, 0, 0}, // in order
		{"[]", false, 0, 0},
		{"null", false, 0, 0},
		{"[" + ev("10") + "]", true, 8, 10}, // 8 and 9 lost (buffer overflow)
		{`[{"event_id":0,"data":{"type":"created","num_blocks_per_cache_level":[10,0]},"window_size":32}]`, true, 11, 0}, // restart
		{"[" + ev("1") + "]", false, 0, 0},
	}
	for i, s := range steps {
		res, err := d.Decode([]byte(s.payload))
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if res.Gap != s.gap || (s.gap && (res.ExpectedID != s.expected || res.GotID != s.got)) {
			t.Fatalf("step %d: gap %v %d->%d, want %v %d->%d", i, res.Gap, res.ExpectedID, res.GotID, s.gap, s.expected, s.got)
		}
	}
}

// TestDecodeRestartClears: "created" events after other events (the engine restarted)
// clear once per run of them, and a stored event of the largest window after them is kept.
func TestDecodeRestartClears(t *testing.T) {
	var d trtllm.Decoder
	stored := `{"data":{"type":"stored","parent_hash":null,"blocks":[{"block_hash":1,"tokens":[{"token_id":1},{"token_id":2}]}]},"window_size":64}`
	created := `{"data":{"type":"created","num_blocks_per_cache_level":[4,0]},"window_size":64}`
	res, err := d.Decode([]byte("[" + stored + "," + created + "," + created + "," + stored + "]"))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []engine.EventKind
	for _, e := range res.Batch.Events {
		kinds = append(kinds, e.Kind)
	}
	want := []engine.EventKind{engine.BlockStored, engine.AllBlocksCleared, engine.BlockStored}
	if !reflect.DeepEqual(kinds, want) {
		t.Fatalf("kinds %v, want %v", kinds, want)
	}
}

func FuzzDecode(f *testing.F) {
	golden, err := os.ReadFile("testdata/events.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(golden)
	f.Add([]byte(`{"hash_algo":"v2_sha256","is_full_snapshot":true,"events":[{"data":{"type":"removed","block_hashes":["` + strings.Repeat("0f", 32) + `"]}}]}`))
	f.Add([]byte(`[{"event_id":3,"attention_dp_rank":1,"data":{"type":"updated","block_hash":-5,"cache_level":{"old_value":1,"new_value":0}}}]`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		d := trtllm.Decoder{BlockSize: 4}
		res, err := d.Decode(payload)
		if err != nil {
			return
		}
		for _, e := range res.Batch.Events {
			switch e.Kind {
			case engine.BlockStored:
				if len(e.TokenIDs) != 0 && len(e.TokenIDs) != len(e.BlockHashes)*e.BlockSize {
					t.Fatalf("stored event with %d tokens for %d blocks of %d", len(e.TokenIDs), len(e.BlockHashes), e.BlockSize)
				}
			case engine.BlockRemoved, engine.AllBlocksCleared:
			default:
				t.Fatalf("event kind %v", e.Kind)
			}
			if e.Medium != "" && e.Medium != engine.MediumGPU && e.Medium != trtllm.MediumCPU {
				t.Fatalf("medium %q", e.Medium)
			}
			// A decoded event must be representable on kvgate's own wire.
			if _, err := engine.EncodeBatch(engine.EventBatch{Events: []engine.Event{e}}, engine.ShapeMap, engine.HashBytes); err != nil {
				t.Fatalf("re-encode: %v", err)
			}
		}
	})
}
