package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/go-zeromq/zmq4"

	"github.com/kvgate/kvgate/engine"
)

// TestPublishedBatchesCarryDPRank checks what the server publishes in the array shape is
// vLLM's KVEventBatch byte for byte: [ts, events, data_parallel_rank] with the rank (0 by
// default, or the configured one) as the third element, which llm-d's decoder requires
// ("number of fields in array-encoded struct has changed" without it). The map shape
// carries "data_parallel_rank" too, as vLLM main's publisher stamps it.
func TestPublishedBatchesCarryDPRank(t *testing.T) {
	for _, tc := range []struct {
		name  string
		shape engine.Shape
		rank  int
	}{
		{"array default rank", engine.ShapeArray, 0},
		{"array rank 3", engine.ShapeArray, 3},
		{"map default rank", engine.ShapeMap, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testServer(t, ServerConfig{EventShape: tc.shape, HashFormat: engine.HashInt, DataParallelRank: tc.rank})
			c := client(t)
			completion(t, c, s, map[string]any{"model": s.cfg.Model, "prompt": longText(1, 200), "max_tokens": 2})
			raw := replayRaw(t, s)
			if len(raw) == 0 {
				t.Fatal("no batch published")
			}
			for i, p := range raw {
				b, err := engine.DecodeBatch(p)
				if err != nil {
					t.Fatalf("batch %d: %v", i, err)
				}
				if b.DPRank == nil || *b.DPRank != tc.rank {
					t.Fatalf("batch %d: data_parallel_rank %v, want %d", i, b.DPRank, tc.rank)
				}
				if tc.shape == engine.ShapeArray {
					// fixarray of 3, float64 ts first, the rank (a positive fixint) last.
					if p[0] != 0x93 || p[1] != 0xcb || p[len(p)-1] != byte(tc.rank) {
						t.Fatalf("batch %d is not [ts, events, rank]: % x ... % x", i, p[:2], p[len(p)-1:])
					}
				}
				// Byte for byte what the codec writes for vLLM (engine/testdata/vllm_array_int.hex
				// and vllm_main_map_int.hex pin the codec to vLLM's msgspec bytes).
				want, err := engine.EncodeBatch(b, tc.shape, engine.HashInt)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(p, want) {
					t.Fatalf("batch %d differs from vLLM's encoding:\n got % x\nwant % x", i, p, want)
				}
			}
		})
	}
}

// replayRaw returns the payloads of every batch the server's replay socket holds.
func replayRaw(t *testing.T, s *Server) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := zmq4.NewDealer(ctx)
	defer d.Close()
	if err := d.Dial(s.KVEventsReplayAddr()); err != nil {
		t.Fatal(err)
	}
	if err := d.Send(zmq4.NewMsgFrom([]byte{}, make([]byte, 8))); err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for {
		msg, err := d.Recv()
		if err != nil {
			t.Fatalf("replay: %v", err)
		}
		if len(msg.Frames) != 3 {
			t.Fatalf("replay frame count %d", len(msg.Frames))
		}
		if binary.BigEndian.Uint64(msg.Frames[1]) == ^uint64(0) {
			return out
		}
		out = append(out, msg.Frames[2])
	}
}
