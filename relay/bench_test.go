package relay

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/engine"
)

// lagCounter counts relayed blocks and records each batch's lag from the engine's timestamp.
type lagCounter struct {
	blocks atomic.Int64
	mu     sync.Mutex
	lags   []time.Duration
	gaps   atomic.Int64
}

func (c *lagCounter) Batch(_ uint64, b engine.EventBatch) {
	now := time.Now()
	n := 0
	for _, e := range b.Events {
		if e.Kind == engine.BlockStored {
			n += len(e.BlockHashes)
		}
	}
	if n == 0 {
		return
	}
	lag := now.Sub(time.Unix(0, int64(b.TS*1e9)))
	c.mu.Lock()
	c.lags = append(c.lags, lag)
	c.mu.Unlock()
	c.blocks.Add(int64(n))
}

func (c *lagCounter) Gap(uint64, uint64) { c.gaps.Add(1) }

// BenchmarkRelay times KV events from an engine's ZMQ PUB socket, through workerd's
// subscriber, block set and gRPC relay over loopback TCP, to a RelayClient ("workerd"): blocks
// per second end to end and the lag (engine timestamp to client) at p50 and p99. "direct" is
// the baseline without workerd: the same events read by an engine.Subscriber straight from
// the PUB socket, as a router does without a workerd. One op is one block; batches carry 32
// blocks of 16 tokens, like one 512-token prefill; at most 64 batches are in flight
// (the _window1 cases: one at a time, which measures the lag of the path itself, without queueing).
func BenchmarkRelay(b *testing.B) {
	b.Run("direct", func(b *testing.B) { benchRelay(b, false, 64) })
	b.Run("workerd", func(b *testing.B) { benchRelay(b, true, 64) })
	b.Run("direct_window1", func(b *testing.B) { benchRelay(b, false, 1) })
	b.Run("workerd_window1", func(b *testing.B) { benchRelay(b, true, 1) })
}

func benchRelay(b *testing.B, viaWorkerd bool, window int) {
	const perBatch, blockSize = 32, 16
	quiet := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	pub, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	cnt := &lagCounter{}
	if viaWorkerd {
		rs := NewServer(nil)
		h := rs.AddEngine("e0", HubOptions{})
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := grpc.NewServer()
		relayv1.RegisterRelayServer(srv, rs)
		go func() { _ = srv.Serve(lis) }()
		defer srv.Stop()
		sub := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: pub.Addr(), Logger: quiet})
		wg.Go(func() { _ = sub.Run(ctx, hubHandler{h}) })
		client := NewClient(lis.Addr().String(), "e0", quiet)
		wg.Go(func() { _ = client.Run(ctx, cnt) })
	} else {
		sub := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: pub.Addr(), Logger: quiet})
		wg.Go(func() { _ = sub.Run(ctx, cnt) })
	}

	tokens := make([]uint32, perBatch*blockSize)
	for i := range tokens {
		tokens[i] = uint32(i)
	}
	next := uint64(0)
	batch := func() engine.EventBatch {
		e := engine.Event{Kind: engine.BlockStored, BlockSize: blockSize, TokenIDs: tokens, Medium: engine.MediumGPU}
		if next > 0 {
			e.Parent = engine.HashFromUint64(next%65536 + 1)
		}
		e.BlockHashes = make([]engine.BlockHash, perBatch)
		for i := range e.BlockHashes {
			next++
			e.BlockHashes[i] = engine.HashFromUint64(next%65536 + 1) // a bounded set, as a full cache
		}
		return engine.EventBatch{TS: float64(time.Now().UnixNano()) / 1e9, Events: []engine.Event{e}}
	}

	// Warm up until the ZMQ subscription and the gRPC stream carry events.
	deadline := time.Now().Add(10 * time.Second)
	for cnt.blocks.Load() == 0 {
		if time.Now().After(deadline) {
			b.Fatal("no event reached the client")
		}
		if _, err := pub.Publish(batch()); err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	base := cnt.blocks.Load()
	cnt.gaps.Store(0) // the slow-joiner loss of the first warm-up batches
	cnt.mu.Lock()
	cnt.lags = cnt.lags[:0]
	cnt.mu.Unlock()

	batches := (b.N + perBatch - 1) / perBatch
	b.ResetTimer()
	start := time.Now()
	for i := range batches {
		for int64(i*perBatch)-(cnt.blocks.Load()-base) >= int64(window*perBatch) {
			time.Sleep(20 * time.Microsecond)
		}
		if _, err := pub.Publish(batch()); err != nil {
			b.Fatal(err)
		}
	}
	want := base + int64(batches*perBatch)
	for cnt.blocks.Load() < want {
		if time.Since(start) > time.Minute || cnt.gaps.Load() > 0 {
			b.Fatalf("relayed %d of %d blocks, %d gaps", cnt.blocks.Load()-base, want-base, cnt.gaps.Load())
		}
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	cnt.mu.Lock()
	lags := slices.Clone(cnt.lags)
	cnt.mu.Unlock()
	slices.Sort(lags)
	q := func(p float64) float64 {
		if len(lags) == 0 {
			return 0
		}
		return float64(lags[min(len(lags)-1, int(p*float64(len(lags))))].Microseconds())
	}
	b.ReportMetric(float64(batches*perBatch)/elapsed.Seconds(), "blocks/s")
	b.ReportMetric(q(0.50), "lag_p50_us")
	b.ReportMetric(q(0.99), "lag_p99_us")
}
