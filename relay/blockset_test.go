package relay

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/engine"
)

// The block set against a naive model: a map of live hashes.
func TestBlockSetModel(t *testing.T) {
	s := newBlockSet()
	model := map[uint64]bool{}
	steps := []engine.EventBatch{
		stored(0, 1, 2, 3), stored(3, 4), removed(2), stored(0, 2), removed(9),
		{Events: []engine.Event{{Kind: engine.AllBlocksCleared}}}, stored(0, 5, 6), removed(5),
	}
	for i, b := range steps {
		for j := range b.Events {
			s.apply(&b.Events[j])
			e := b.Events[j]
			switch e.Kind {
			case engine.BlockStored:
				for _, h := range e.BlockHashes {
					model[h.Uint64()] = true
				}
			case engine.BlockRemoved:
				for _, h := range e.BlockHashes {
					delete(model, h.Uint64())
				}
			case engine.AllBlocksCleared:
				clear(model)
			}
		}
		var got []uint64
		for _, ev := range s.snapshot() {
			for _, h := range ev.GetBlockHashes() {
				got = append(got, engine.BlockHash(h).Uint64())
			}
		}
		var want []uint64
		for h := range model {
			want = append(want, h)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: set %v, model %v", i, got, want)
		}
	}
}

func TestProtoRoundTrip(t *testing.T) {
	lora := 7
	in := engine.Event{
		Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{engine.HashFromUint64(1), "a-32-byte-sha256-digest-stand-in"},
		Parent: engine.HashFromUint64(9), TokenIDs: []uint32{1, 2, 3, 4}, BlockSize: 2, LoRAID: &lora, LoRAName: "l", Medium: "CPU",
	}
	out, ok := fromProto(toProto(&in))
	if !ok || out.Kind != in.Kind || !slices.Equal(out.BlockHashes, in.BlockHashes) || out.Parent != in.Parent ||
		!slices.Equal(out.TokenIDs, in.TokenIDs) || out.BlockSize != 2 || *out.LoRAID != 7 || out.LoRAName != "l" || out.Medium != "CPU" {
		t.Fatalf("round trip: %+v", out)
	}
	if _, ok := fromProto(&relayv1.Event{Kind: 42}); ok {
		t.Fatal("unknown kind accepted")
	}
}

// FuzzRelayDecode feeds arbitrary bytes to what a relay client decodes: they must never
// panic the conversion, the block set or the snapshot.
func FuzzRelayDecode(f *testing.F) {
	seed, _ := proto.Marshal(&relayv1.EventsResponse{StreamId: "s", Seq: 3, Body: &relayv1.EventsResponse_Batch{Batch: &relayv1.EventBatch{
		Events: []*relayv1.Event{toProto(&stored(1, 2, 3).Events[0])},
	}}})
	f.Add(seed)
	f.Add([]byte{0x22, 0x02, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m relayv1.EventsResponse
		if proto.Unmarshal(b, &m) != nil {
			return
		}
		var evs []*relayv1.Event
		evs = append(evs, m.GetBatch().GetEvents()...)
		evs = append(evs, m.GetSnapshot().GetEvents()...)
		s := newBlockSet()
		for _, p := range evs {
			if e, ok := fromProto(p); ok {
				s.apply(&e)
				_ = toProto(&e)
			}
		}
		_ = s.snapshot()
	})
}
