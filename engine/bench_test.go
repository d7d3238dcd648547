package engine_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/kvgate/kvgate/engine"
)

// realisticBatch is what a busy engine step publishes: 16 BlockStored events
// of 16 blocks of 16 tokens each.
func realisticBatch() engine.EventBatch {
	b := engine.EventBatch{TS: 1732550400.25, DPRank: intp(0)}
	tok := uint32(1000)
	for e := range 16 {
		ev := engine.Event{Kind: engine.BlockStored, BlockSize: 16, Medium: "GPU"}
		if e > 0 {
			ev.Parent = h(uint64(e)<<40 - 1)
		}
		for blk := range 16 {
			ev.BlockHashes = append(ev.BlockHashes, h(0x9e3779b97f4a7c15*uint64(e*16+blk+1)))
			for range 16 {
				ev.TokenIDs = append(ev.TokenIDs, tok%151000)
				tok += 7919
			}
		}
		b.Events = append(b.Events, ev)
	}
	return b
}

const realisticBlocks = 16 * 16

func BenchmarkDecodeBatch(b *testing.B) {
	for _, c := range []struct {
		name  string
		shape engine.Shape
		hf    engine.HashFormat
	}{
		{"map/int", engine.ShapeMap, engine.HashInt},
		{"array/int", engine.ShapeArray, engine.HashInt},
		{"map/bytes32", engine.ShapeMap, engine.HashBytes},
	} {
		batch := realisticBatch()
		if c.hf == engine.HashBytes { // 32-byte digests, as vLLM sends sha256 hashes
			for i := range batch.Events {
				for j, hh := range batch.Events[i].BlockHashes {
					batch.Events[i].BlockHashes[j] = hh + hh + hh + hh
				}
			}
		}
		payload, err := engine.EncodeBatch(batch, c.shape, c.hf)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := engine.DecodeBatch(payload); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)*realisticBlocks/b.Elapsed().Seconds(), "blocks/s")
		})
	}
}

// BenchmarkDecodeBatchBaseline decodes the same positional payload with
// vmihailenco/msgpack's reflection decoder into generic values (what a
// decoder built on msgpack.Unmarshal, as llm-d's is, starts from), for the
// ratio in docs/bench/engine.md.
func BenchmarkDecodeBatchBaseline(b *testing.B) {
	payload, err := engine.EncodeBatch(realisticBatch(), engine.ShapeArray, engine.HashInt)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(payload)))
	b.ReportAllocs()
	for b.Loop() {
		var v []any
		if err := msgpack.Unmarshal(payload, &v); err != nil || len(v) != 3 {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*realisticBlocks/b.Elapsed().Seconds(), "blocks/s")
}

func BenchmarkEncodeBatch(b *testing.B) {
	batch := realisticBatch()
	b.ReportAllocs()
	var buf []byte
	for b.Loop() {
		var err error
		if buf, err = engine.AppendBatch(buf[:0], batch, engine.ShapeMap, engine.HashInt); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(len(buf)))
	b.ReportMetric(float64(b.N)*realisticBlocks/b.Elapsed().Seconds(), "blocks/s")
}

// counter is a Handler that counts batches and remembers the last seq.
type counter struct {
	batches, gaps atomic.Int64
	last          atomic.Uint64
}

func (c *counter) Batch(seq uint64, _ engine.EventBatch) { c.batches.Add(1); c.last.Store(seq) }
func (c *counter) Gap(uint64, uint64)                    { c.gaps.Add(1) }

// BenchmarkPubSub publishes realistic batches through a Publisher to a
// Subscriber over loopback TCP and waits until the last one is decoded.
func BenchmarkPubSub(b *testing.B) {
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: p.Addr(), Logger: quiet})
	c := &counter{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, c) }()
	defer func() { cancel(); <-done }()
	batch := realisticBatch()
	// Wait for the subscription to reach the publisher.
	deadline := time.Now().Add(10 * time.Second)
	for c.batches.Load() == 0 {
		if time.Now().After(deadline) {
			b.Fatal("subscriber never connected")
		}
		if _, err := p.Publish(batch); err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.ReportAllocs()
	b.ResetTimer()
	var seq uint64
	for range b.N {
		if seq, err = p.Publish(batch); err != nil {
			b.Fatal(err)
		}
	}
	for c.last.Load() < seq {
		if time.Now().After(deadline.Add(time.Minute)) {
			b.Fatalf("received up to %d of %d", c.last.Load(), seq)
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	if g := c.gaps.Load(); g > 1 { // one gap is allowed for the slow join
		b.Fatalf("%d gaps", g)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "batches/s")
	b.ReportMetric(float64(b.N)*realisticBlocks/b.Elapsed().Seconds(), "blocks/s")
}

func ExampleDecodeBatch() {
	payload, _ := engine.EncodeBatch(engine.EventBatch{TS: 1, Events: []engine.Event{{
		Kind: engine.BlockRemoved, BlockHashes: []engine.BlockHash{engine.HashFromUint64(42)},
	}}}, engine.ShapeMap, engine.HashInt)
	b, err := engine.DecodeBatch(payload)
	fmt.Println(b.Events[0].Kind, b.Events[0].BlockHashes[0].Uint64(), b.Events[0].Medium, err)
	// Output: BlockRemoved 42 GPU <nil>
}
