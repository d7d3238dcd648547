package engine_test

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/engine"
)

// readHex reads an annotated hex golden file: '#' starts a comment, tokens are
// hex bytes or "quoted" strings (their UTF-8 bytes, no spaces inside).
func readHex(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	for line := range strings.Lines(string(raw)) {
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		for _, tok := range strings.Fields(line) {
			if strings.HasPrefix(tok, `"`) {
				if len(tok) < 2 || !strings.HasSuffix(tok, `"`) {
					t.Fatalf("%s: bad string token %q", name, tok)
				}
				out = append(out, tok[1:len(tok)-1]...)
				continue
			}
			b, err := hex.DecodeString(tok)
			if err != nil {
				t.Fatalf("%s: bad hex token %q: %v", name, tok, err)
			}
			out = append(out, b...)
		}
	}
	return out
}

func intp(v int) *int { return &v }

func seqBytes(from, to byte) engine.BlockHash {
	var b []byte
	for c := from; c <= to; c++ {
		b = append(b, c)
	}
	return engine.BlockHash(b)
}

var h = engine.HashFromUint64

// mixedBatch is the batch of vllm_main_map_int.hex and vllm_array_int.hex.
var mixedBatch = engine.EventBatch{
	TS: 1732550400.25,
	Events: []engine.Event{
		{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(1), h(300), h(0xfedcba9876543210)},
			TokenIDs: []uint32{1, 2, 3, 4, 5, 6}, BlockSize: 2, Medium: "GPU"},
		{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{h(70000)}, Medium: "GPU"},
		{Kind: engine.AllBlocksCleared},
	},
	DPRank: intp(0),
}

// bytesBatch is the batch of vllm_array_bytes.hex (DPRank nil) and
// vllm_main_map_bytes.hex (DPRank 1).
func bytesBatch(dp *int) engine.EventBatch {
	return engine.EventBatch{
		TS: 1.5,
		Events: []engine.Event{{
			Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{seqBytes(0x00, 0x1f)},
			Parent: seqBytes(0x20, 0x3f), TokenIDs: []uint32{7, 8}, BlockSize: 2, LoRAID: intp(3),
			LoRAName: "sql", Medium: "CPU", ExtraKeys: []string{"img-abc"}, BlockExtraKeys: [][]string{{"img-abc"}},
		}},
		DPRank: dp,
	}
}

// loraBatch is the batch of vllm_lora_map.hex and vllm_lora_array.hex: an adapter's blocks,
// named in lora_id/lora_name and in every block's extra_keys, as vLLM writes them.
var loraBatch = engine.EventBatch{TS: 1.5, Events: []engine.Event{{
	Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(7), h(8)}, TokenIDs: []uint32{1, 2, 3, 4}, BlockSize: 2,
	LoRAID: intp(1), LoRAName: "sql", Medium: "GPU",
	ExtraKeys: []string{"sql", "sql"}, BlockExtraKeys: [][]string{{"sql"}, {"sql"}},
}}}

func TestGolden(t *testing.T) {
	tests := []struct {
		name   string
		file   string
		want   engine.EventBatch
		shape  engine.Shape      // 0: decode only
		format engine.HashFormat // for encoding
	}{
		{"vllm main map int", "vllm_main_map_int.hex", mixedBatch, engine.ShapeMap, engine.HashInt},
		{"vllm array int", "vllm_array_int.hex", mixedBatch, engine.ShapeArray, engine.HashInt},
		{"vllm array bytes", "vllm_array_bytes.hex", bytesBatch(nil), engine.ShapeArray, engine.HashBytes},
		{"vllm main map bytes", "vllm_main_map_bytes.hex", bytesBatch(intp(1)), engine.ShapeMap, engine.HashBytes},
		{"array batch map events", "vllm_map_events.hex", engine.EventBatch{TS: 1.5, DPRank: intp(0), Events: []engine.Event{
			{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{h(5)}, Medium: "GPU", GroupIdx: intp(1)},
		}}, engine.ShapeMapEvents, engine.HashInt},
		{"sglang", "sglang_array.hex", engine.EventBatch{TS: 1.5, Events: []engine.Event{
			{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(10), h(11)}, TokenIDs: []uint32{1, 2, 3, 4}, BlockSize: 2, Medium: "GPU"},
			{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{h(10)}, Medium: "GPU"},
		}}, 0, 0},
		{"llm-d-inference-sim", "llmd_sim_array.hex", engine.EventBatch{TS: 1.5, DPRank: intp(0), Events: []engine.Event{
			{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(10)}, TokenIDs: []uint32{1, 2}, BlockSize: 2, Medium: "GPU"},
		}}, 0, 0},
		{"vllm lora map", "vllm_lora_map.hex", loraBatch, engine.ShapeMap, engine.HashInt},
		{"vllm lora array", "vllm_lora_array.hex", loraBatch, engine.ShapeArray, engine.HashInt},
		{"oddities", "oddities.hex", engine.EventBatch{TS: 1.5, Events: []engine.Event{
			{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(1)}, TokenIDs: []uint32{5, 6}, BlockSize: 2, Medium: "GPU"},
			{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{h(0xffffffffffffffff)}, Medium: "GPU"},
			{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(2)}, TokenIDs: []uint32{7, 8}, BlockSize: 2, Medium: "GPU",
				ExtraKeys: []string{"mm", "7"}, BlockExtraKeys: [][]string{{"mm", "7"}}},
			{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{h(3)}, Medium: "GPU"},
		}}, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			golden := readHex(t, tc.file)
			got, err := engine.DecodeBatch(golden)
			if err != nil {
				t.Fatalf("DecodeBatch: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("DecodeBatch:\n got %s\nwant %s", dump(got), dump(tc.want))
			}
			if tc.shape == 0 {
				return
			}
			enc, err := engine.EncodeBatch(tc.want, tc.shape, tc.format)
			if err != nil {
				t.Fatalf("EncodeBatch: %v", err)
			}
			if !bytes.Equal(enc, golden) {
				t.Fatalf("EncodeBatch differs from golden:\n got % x\nwant % x", enc, golden)
			}
		})
	}
}

func dump(b engine.EventBatch) string {
	var s strings.Builder
	fmt.Fprintf(&s, "{TS:%v DPRank:%v", b.TS, deref(b.DPRank))
	for _, e := range b.Events {
		fmt.Fprintf(&s, "\n  %+v lora=%v group=%v", e, deref(e.LoRAID), deref(e.GroupIdx))
	}
	return s.String() + "}"
}

func deref(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestRoundTrip(t *testing.T) {
	stored := engine.Event{
		Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(1), h(2)}, Parent: h(9),
		TokenIDs: []uint32{1, 2, 3, 4}, BlockSize: 2, LoRAID: intp(-4), LoRAName: "a", Medium: "GPU",
		BlockExtraKeys: [][]string{nil, {"x", "y"}}, ExtraKeys: []string{"x", "y"},
		GroupIdx: intp(2), KVCacheSpecKind: "full_attention", KVCacheSpecSlidingWindow: intp(4096),
		Locality: "LOCAL", Ownership: "o", SessionID: "s",
	}
	onlyTail := engine.Event{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(1)},
		TokenIDs: []uint32{1, 2}, BlockSize: 2, Medium: "CPU", SessionID: "late"}
	removed := engine.Event{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{h(1 << 40)}, Medium: "DISK",
		GroupIdx: intp(0), Ownership: "x"}
	big := engine.Event{Kind: engine.BlockStored, Medium: "GPU", BlockSize: 16}
	for i := range 70000 { // forces array16/array32 headers
		big.TokenIDs = append(big.TokenIDs, uint32(i)*65537)
	}
	for i := range 300 {
		big.BlockHashes = append(big.BlockHashes, h(uint64(i)<<50))
	}
	batches := []engine.EventBatch{
		{TS: 0, Events: []engine.Event{}},
		{TS: 12.25, Events: []engine.Event{stored, onlyTail, removed, {Kind: engine.AllBlocksCleared}}, DPRank: intp(7)},
		{TS: -1, Events: []engine.Event{big}, DPRank: intp(-1)},
	}
	for _, shape := range []engine.Shape{engine.ShapeArray, engine.ShapeMap, engine.ShapeMapEvents} {
		for _, hf := range []engine.HashFormat{engine.HashInt, engine.HashBytes} {
			for i, b := range batches {
				t.Run(fmt.Sprintf("shape%d/hash%d/batch%d", shape, hf, i), func(t *testing.T) {
					enc, err := engine.EncodeBatch(b, shape, hf)
					if err != nil {
						t.Fatal(err)
					}
					got, err := engine.DecodeBatch(enc)
					if err != nil {
						t.Fatal(err)
					}
					if !reflect.DeepEqual(got, b) {
						t.Fatalf("round trip:\n got %s\nwant %s", dump(got), dump(b))
					}
				})
			}
		}
	}
}

func TestEncodeDefaults(t *testing.T) {
	// An empty Medium is written as "GPU"; a non-8-byte hash under HashInt is
	// written as its Uint64().
	b := engine.EventBatch{Events: []engine.Event{{Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{"abc"}}}}
	enc, err := engine.EncodeBatch(b, engine.ShapeArray, engine.HashInt)
	if err != nil {
		t.Fatal(err)
	}
	got, err := engine.DecodeBatch(enc)
	if err != nil {
		t.Fatal(err)
	}
	e := got.Events[0]
	if e.Medium != "GPU" || e.BlockHashes[0] != h(engine.BlockHash("abc").Uint64()) {
		t.Fatalf("got %+v", e)
	}
	for _, bad := range []struct {
		shape engine.Shape
		hf    engine.HashFormat
		b     engine.EventBatch
	}{
		{0, engine.HashInt, b},
		{engine.ShapeMap, 9, b},
		{engine.ShapeMap, engine.HashInt, engine.EventBatch{Events: []engine.Event{{Kind: 42}}}},
		{engine.ShapeMap, engine.HashInt, engine.EventBatch{Events: []engine.Event{{Kind: engine.BlockStored, BlockSize: -1}}}},
	} {
		if _, err := engine.EncodeBatch(bad.b, bad.shape, bad.hf); err == nil {
			t.Errorf("EncodeBatch(%v, %d, %d) succeeded, want error", bad.b, bad.shape, bad.hf)
		}
	}
}

func TestBlockHash(t *testing.T) {
	for _, v := range []uint64{0, 1, 0xfedcba9876543210, ^uint64(0)} {
		if got := h(v).Uint64(); got != v {
			t.Errorf("HashFromUint64(%#x).Uint64() = %#x", v, got)
		}
	}
	if h(1) != engine.BlockHash("\x00\x00\x00\x00\x00\x00\x00\x01") {
		t.Error("HashFromUint64 is not big-endian")
	}
	d := seqBytes(0, 31)
	if d.Uint64() == seqBytes(1, 32).Uint64() || d.Uint64() != d.Uint64() {
		t.Error("Uint64 of a digest is not a stable hash")
	}
}

func TestDecodeErrors(t *testing.T) {
	tests := []struct {
		name    string
		payload string // hex
		wantErr string
	}{
		{"empty", "", "unexpected end"},
		{"not a batch", "01", "want array or map"},
		{"batch too short", "91cb3ff8000000000000", "want [ts, events"},
		{"ts not a number", "92a17890", "ts"},
		{"events not a list", "92cb3ff800000000000001", "events"},
		{"unknown event", "92cb3ff800000000000091" + "91a3466f6f", `unknown event type "Foo"`},
		{"stored too short", "92cb3ff800000000000091" + "92ab426c6f636b53746f72656490", "BlockStored has 1 fields"},
		{"token overflow", "92cb3ff800000000000091" + "95ab426c6f636b53746f72656490c091cf000000010000000002", "not a uint32"},
		{"negative token", "92cb3ff800000000000091" + "95ab426c6f636b53746f72656490c091ff02", "not a uint32"},
		{"huge array32", "92cb3ff8000000000000dd80000000", "exceeds"},
		{"huge str32", "92cb3ff800000000000091" + "91db7fffffff", "exceeds"},
		{"huge bin32 hash", "92cb3ff800000000000091" + "92ac426c6f636b52656d6f76656491c67fffffff", "exceeds"},
		{"huge map32", "df80000000", "exceeds"},
		{"trailing bytes", "92cb3ff80000000000009000", "trailing"},
		{"map batch without events", "81a2747301", `lacks "ts" or "events"`},
		{"map event without type", "92cb3ff800000000000091" + "81a16101", `lacks "type"`},
		{"map stored without tokens", "92cb3ff800000000000091" + "82a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657390", "lacks block_hashes, token_ids"},
		{"hash of wrong type", "92cb3ff800000000000091" + "92ac426c6f636b52656d6f76656491c3", "want int or bytes"},
		{"deep nesting", "92cb3ff800000000000090" + strings.Repeat("91", 40) + "00", "trailing"},
		{"deep skip", "94cb3ff800000000000090c0" + strings.Repeat("91", 40) + "00", "nesting"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := hex.DecodeString(tc.payload)
			if err != nil {
				t.Fatal(err)
			}
			_, err = engine.DecodeBatch(p)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("DecodeBatch error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzDecodeBatch(f *testing.F) {
	for _, name := range []string{"vllm_main_map_int.hex", "vllm_array_int.hex", "vllm_array_bytes.hex",
		"vllm_main_map_bytes.hex", "vllm_map_events.hex", "sglang_array.hex", "llmd_sim_array.hex", "oddities.hex", "vllm_lora_map.hex", "vllm_lora_array.hex"} {
		f.Add(readHex(f, name))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		b, err := engine.DecodeBatch(payload)
		if err != nil {
			return
		}
		for _, shape := range []engine.Shape{engine.ShapeArray, engine.ShapeMap, engine.ShapeMapEvents} {
			enc, err := engine.EncodeBatch(b, shape, engine.HashBytes)
			if err != nil {
				t.Fatalf("EncodeBatch of a decoded batch: %v", err)
			}
			again, err := engine.DecodeBatch(enc)
			if err != nil {
				t.Fatalf("DecodeBatch of a re-encoded batch: %v", err)
			}
			if !equalBatch(again, b) {
				t.Fatalf("re-encoded batch differs:\n got %s\nwant %s", dump(again), dump(b))
			}
		}
	})
}

// equalBatch is reflect.DeepEqual that treats NaN timestamps as equal.
func equalBatch(a, b engine.EventBatch) bool {
	if a.TS != a.TS && b.TS != b.TS {
		a.TS, b.TS = 0, 0
	}
	return reflect.DeepEqual(a, b)
}

// llm-d-inference-sim writes parent_block_hash 0 for a first block; that is "no parent".
func TestDecodeZeroParentIsNone(t *testing.T) {
	b := engine.EventBatch{TS: 1, Events: []engine.Event{{Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{engine.HashFromUint64(9)},
		Parent: engine.HashFromUint64(0), TokenIDs: []uint32{1, 2}, BlockSize: 2, Medium: "GPU"}}}
	for _, shape := range []engine.Shape{engine.ShapeArray, engine.ShapeMap} {
		raw, err := engine.EncodeBatch(b, shape, engine.HashInt)
		if err != nil {
			t.Fatal(err)
		}
		got, err := engine.DecodeBatch(raw)
		if err != nil {
			t.Fatal(err)
		}
		if p := got.Events[0].Parent; p != "" {
			t.Fatalf("shape %d: parent %q, want none", shape, p)
		}
	}
}
