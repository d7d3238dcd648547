package sim

import (
	"bytes"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kvgate/kvgate/engine"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestEventsGolden pins the bytes the simulator publishes for a fixed workload (a prompt, its
// repeat, an eviction) in every shape and hash format, and checks they decode back to the
// engine's events.
func TestEventsGolden(t *testing.T) {
	e, err := New(Config{NumBlocks: 6, BlockSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	var evs []KVEvent
	evs = append(evs, KVEvent{Kind: AllBlocksCleared})
	for i, p := range [][]uint32{prompt(1, 13), prompt(1, 13), prompt(2, 17)} {
		if err := e.Add(Request{ID: string(rune('a' + i)), Prompt: p, MaxTokens: 2, LoRAName: ""}); err != nil {
			t.Fatal(err)
		}
		_, _, got := run(t, e, 0)
		evs = append(evs, got...)
	}
	kinds := map[EventKind]int{}
	for _, ev := range evs {
		kinds[ev.Kind]++
	}
	if kinds[BlockStored] == 0 || kinds[BlockRemoved] == 0 || kinds[AllBlocksCleared] != 1 {
		t.Fatalf("workload produced %v", kinds)
	}
	cases := []struct {
		name  string
		shape engine.Shape
		hash  engine.HashFormat
	}{
		{"array_int", engine.ShapeArray, engine.HashInt},
		{"array_bytes", engine.ShapeArray, engine.HashBytes},
		{"map_int", engine.ShapeMap, engine.HashInt},
		{"map_bytes", engine.ShapeMap, engine.HashBytes},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rank := 0 // the server stamps its data-parallel rank, 0 by default, as vLLM does
			batch := engine.EventBatch{TS: 1700000000.5, DPRank: &rank}
			for _, ev := range evs {
				batch.Events = append(batch.Events, toWire(ev, tc.hash))
			}
			b, err := engine.EncodeBatch(batch, tc.shape, tc.hash)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", "events_"+tc.name+".hex")
			if *update {
				if err := os.WriteFile(path, []byte(hex.EncodeToString(b)+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got := hex.EncodeToString(b); got != strings.TrimSpace(string(want)) {
				t.Fatalf("bytes differ from %s", path)
			}
			dec, err := engine.DecodeBatch(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(dec.Events) != len(evs) {
				t.Fatalf("decoded %d events, want %d", len(dec.Events), len(evs))
			}
			for i, ev := range dec.Events {
				src := evs[i]
				if ev.Kind.String() != map[EventKind]string{BlockStored: "BlockStored", BlockRemoved: "BlockRemoved", AllBlocksCleared: "AllBlocksCleared"}[src.Kind] {
					t.Fatalf("event %d kind %v", i, ev.Kind)
				}
				if len(ev.BlockHashes) != len(src.Hashes) {
					t.Fatalf("event %d: %d hashes, want %d", i, len(ev.BlockHashes), len(src.Hashes))
				}
				for j, h := range ev.BlockHashes {
					want := engine.BlockHash(src.Hashes[j][:])
					if tc.hash == engine.HashInt {
						want = engine.HashFromUint64(src.Hashes[j].Uint64())
					}
					if h != want {
						t.Fatalf("event %d hash %d differs", i, j)
					}
				}
				if src.Kind == BlockStored && (!equalU32(ev.TokenIDs, src.Tokens) || ev.BlockSize != 4 || (ev.Parent == "") == src.HasParent) {
					t.Fatalf("event %d: %+v from %+v", i, ev, src)
				}
			}
			if !bytes.Equal(b, mustEncode(t, batch, tc.shape, tc.hash)) {
				t.Fatal("encoding is not deterministic")
			}
		})
	}
}

func mustEncode(t *testing.T, b engine.EventBatch, s engine.Shape, h engine.HashFormat) []byte {
	t.Helper()
	out, err := engine.EncodeBatch(b, s, h)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
