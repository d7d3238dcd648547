package engine_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kvgate/kvgate/engine"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// checkLeaks verifies, after every other cleanup of t, that no goroutine
// started during t is left. zmq4 ends a closed socket's connection goroutines
// asynchronously, so the check retries for a few seconds (the machine running
// the tests may be heavily loaded).
func checkLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	// zmq4 v0.17.0 never stops a PUB socket's writer goroutine (Close does
	// not reach pubMWriter.Close): one parked goroutine per closed publisher,
	// an upstream bug outside Subscriber.Run.
	pubWriter := goleak.IgnoreAnyFunction("github.com/go-zeromq/zmq4.(*pubMWriter).run")
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			err := goleak.Find(ignore, pubWriter)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Error(err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// recorder is a Handler that records what it is told, in order.
type recorder struct {
	mu      sync.Mutex
	seqs    []uint64
	batches []engine.EventBatch
	gaps    [][2]uint64
	changed chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) Batch(seq uint64, b engine.EventBatch) {
	r.mu.Lock()
	r.seqs = append(r.seqs, seq)
	r.batches = append(r.batches, b)
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) Gap(expected, got uint64) {
	r.mu.Lock()
	r.gaps = append(r.gaps, [2]uint64{expected, got})
	r.mu.Unlock()
	r.poke()
}

func (r *recorder) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) snapshot() ([]uint64, [][2]uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]uint64(nil), r.seqs...), append([][2]uint64(nil), r.gaps...)
}

// waitFor polls cond until it holds or 10s pass, publishing with pub (when
// not nil) between polls so that a slow joiner eventually sees a batch.
func waitFor(t *testing.T, r *recorder, what string, cond func(seqs []uint64, gaps [][2]uint64) bool, poke func()) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		seqs, gaps := r.snapshot()
		if cond(seqs, gaps) {
			return
		}
		if poke != nil {
			poke()
		}
		select {
		case <-r.changed:
		case <-time.After(20 * time.Millisecond):
		case <-deadline:
			t.Fatalf("timed out waiting for %s; seqs=%v gaps=%v", what, seqs, gaps)
		}
	}
}

func testBatch(i int) engine.EventBatch {
	return engine.EventBatch{TS: float64(i), DPRank: intp(0), Events: []engine.Event{{
		Kind: engine.BlockStored, BlockHashes: []engine.BlockHash{h(uint64(i))}, TokenIDs: []uint32{uint32(i), 1},
		BlockSize: 2, Medium: "GPU",
	}}}
}

func publish(t *testing.T, p *engine.Publisher, i int) uint64 {
	t.Helper()
	seq, err := p.Publish(testBatch(i))
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// runSub runs s.Run in the background; the returned stop cancels it and
// waits for it to return.
func runSub(t *testing.T, s *engine.Subscriber, h engine.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, h) }()
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run returned early: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("subscriber not ready")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func contiguous(seqs []uint64, from, to uint64) bool {
	if uint64(len(seqs)) != to-from+1 {
		return false
	}
	for i, s := range seqs {
		if s != from+uint64(i) {
			return false
		}
	}
	return true
}

func TestPubSubReplayFillsSlowJoinAndOutage(t *testing.T) {
	checkLeaks(t)
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0",
		ReplayEndpoint: "tcp://127.0.0.1:0", Topic: "kv", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	// Published before anyone subscribed: only the replay buffer has them.
	for i := range 3 {
		publish(t, p, i)
	}
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: p.Addr(), ReplayEndpoint: p.ReplayAddr(),
		Topic: "kv", Logger: quiet})
	r := newRecorder()
	stop := runSub(t, s, r)
	n := 3
	waitFor(t, r, "first live batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 3 },
		func() { publish(t, p, n); n++ })
	stop()
	seqs, gaps := r.snapshot()
	if len(gaps) != 0 || !contiguous(seqs, 0, seqs[len(seqs)-1]) {
		t.Fatalf("slow join: seqs=%v gaps=%v, want 0.. contiguous and no gap", seqs, gaps)
	}
	// Published while the subscriber is stopped: dropped by PUB, replayed
	// when the next Run sees a later sequence.
	last := seqs[len(seqs)-1]
	for range 5 {
		publish(t, p, n)
		n++
	}
	runSub(t, s, r)
	waitFor(t, r, "batches after the outage", func(seqs []uint64, _ [][2]uint64) bool {
		return len(seqs) > 0 && seqs[len(seqs)-1] > last+5
	}, func() { publish(t, p, n); n++ })
	seqs, gaps = r.snapshot()
	if len(gaps) != 0 || !contiguous(seqs, 0, seqs[len(seqs)-1]) {
		t.Fatalf("after outage: seqs=%v gaps=%v, want contiguous and no gap", seqs, gaps)
	}
	// The batches arrive intact.
	r.mu.Lock()
	for i, b := range r.batches {
		if !reflect.DeepEqual(b, testBatch(i)) {
			t.Errorf("batch %d = %+v, want %+v", i, b, testBatch(i))
		}
	}
	r.mu.Unlock()
}

func TestPubSubBindModePublisherDials(t *testing.T) {
	checkLeaks(t)
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://127.0.0.1:0", Bind: true,
		Topic: "kv@pod@model", Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: s.Addr(), Dial: true, Topic: "kv@pod@model",
		Shape: engine.ShapeArray, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	n := 0
	waitFor(t, r, "a batch through a dialing publisher", func(seqs []uint64, _ [][2]uint64) bool {
		return len(seqs) > 3
	}, func() { publish(t, p, n); n++ })
	seqs, _ := r.snapshot()
	if !contiguous(seqs, seqs[0], seqs[len(seqs)-1]) {
		t.Fatalf("seqs %v not contiguous", seqs)
	}
}

func TestPubSubPublisherRestart(t *testing.T) {
	for _, withReplay := range []bool{false, true} {
		t.Run(fmt.Sprintf("replay=%v", withReplay), func(t *testing.T) {
			checkLeaks(t)
			cfg := engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Logger: quiet}
			if withReplay {
				cfg.ReplayEndpoint = "tcp://127.0.0.1:0"
			}
			p1, err := engine.NewPublisher(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Endpoint, cfg.ReplayEndpoint = p1.Addr(), p1.ReplayAddr()
			s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: cfg.Endpoint, ReplayEndpoint: cfg.ReplayEndpoint,
				Logger: quiet, DialRetry: 20 * time.Millisecond})
			r := newRecorder()
			runSub(t, s, r)
			n := 0
			waitFor(t, r, "batches from the first publisher", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 2 },
				func() { publish(t, p1, n); n++ })
			p1.Close()
			_, gaps := r.snapshot()
			gapsBefore := len(gaps)

			p2, err := engine.NewPublisher(cfg) // same addresses, sequence from 0 again
			if err != nil {
				t.Fatal(err)
			}
			defer p2.Close()
			// Whatever the restarted publisher's first delivered seq is, the
			// subscriber must report the state as unknown, then follow the
			// new stream (its batches have TS >= 1000).
			m := 0
			publish2 := func() {
				if _, err := p2.Publish(testBatch(1000 + m)); err != nil {
					t.Fatal(err)
				}
				m++
			}
			waitFor(t, r, "the restart and batches after it", func(_ []uint64, gaps [][2]uint64) bool {
				r.mu.Lock()
				defer r.mu.Unlock()
				return len(gaps) > gapsBefore && r.batches[len(r.batches)-1].TS >= 1003
			}, publish2)
			seqs, gaps := r.snapshot()
			// The gap starts after the last batch of the first publisher
			// that arrived: at least seq 3 arrived, at most n were sent.
			if g := gaps[gapsBefore]; g[0] < 3 || g[0] > uint64(n) {
				t.Errorf("restart gap %v, want it to start within [3, %d]", g, n)
			}
			r.mu.Lock()
			var after []uint64
			for i, b := range r.batches {
				if b.TS >= 1000 {
					after = append(after, seqs[i])
				}
			}
			r.mu.Unlock()
			if !contiguous(after, after[0], after[len(after)-1]) {
				t.Errorf("batches of the restarted publisher: seqs %v, want contiguous", after)
			}
			if withReplay && len(gaps) != gapsBefore+1 {
				t.Errorf("gaps %v: want exactly one after the restart", gaps[gapsBefore:])
			}
		})
	}
}

func TestSubscriberEndpointErrors(t *testing.T) {
	for _, cfg := range []engine.SubscriberConfig{
		{Endpoint: "tcp://256.0.0.1:bad", Bind: true},
		{Endpoint: "nope://x", Bind: true},
		{Endpoint: "nope://x"},
		{Endpoint: "tcp-without-port"},
	} {
		t.Run(fmt.Sprintf("%+v", cfg), func(t *testing.T) {
			checkLeaks(t)
			cfg.Logger = quiet
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := engine.NewSubscriber(cfg).Run(ctx, newRecorder()); err == nil || ctx.Err() != nil {
				t.Fatalf("Run = %v (ctx %v), want an error at once", err, ctx.Err())
			}
		})
	}
}

func TestPublisherConfigErrors(t *testing.T) {
	for _, cfg := range []engine.PublisherConfig{
		{Endpoint: "tcp://127.0.0.1:0", Shape: 9},
		{Endpoint: "tcp://127.0.0.1:0", HashFormat: 9},
		{Endpoint: "nope://x"},
		{Endpoint: "tcp://127.0.0.1:0", ReplayEndpoint: "nope://x"},
	} {
		t.Run(fmt.Sprintf("%+v", cfg), func(t *testing.T) {
			p, err := engine.NewPublisher(cfg)
			if err == nil {
				p.Close()
				t.Fatal("NewPublisher succeeded")
			}
		})
	}
}

// topicRecorder is a TopicHandler recording per topic.
type topicRecorder struct {
	*recorder
	mu     sync.Mutex
	seqs   map[string][]uint64
	gaps   map[string][][2]uint64
	plainN int // calls to Batch or Gap, which must not happen
}

func (r *topicRecorder) TopicBatch(topic string, seq uint64, b engine.EventBatch) {
	r.mu.Lock()
	r.seqs[topic] = append(r.seqs[topic], seq)
	r.mu.Unlock()
	r.poke()
}

func (r *topicRecorder) TopicGap(topic string, expected, got uint64) {
	r.mu.Lock()
	r.gaps[topic] = append(r.gaps[topic], [2]uint64{expected, got})
	r.mu.Unlock()
	r.poke()
}

func (r *topicRecorder) Batch(uint64, engine.EventBatch) { r.mu.Lock(); r.plainN++; r.mu.Unlock() }
func (r *topicRecorder) Gap(uint64, uint64)              { r.mu.Lock(); r.plainN++; r.mu.Unlock() }

func TestPubSubBoundSubscriberKeepsOneSequencePerTopic(t *testing.T) {
	checkLeaks(t)
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: "tcp://127.0.0.1:0", Bind: true, Topic: "kv@",
		Logger: quiet})
	r := &topicRecorder{recorder: newRecorder(), seqs: map[string][]uint64{}, gaps: map[string][][2]uint64{}}
	runSub(t, s, r)
	topics := []string{"kv@pod-a@m", "kv@pod-b@m"}
	pubs := make([]*engine.Publisher, len(topics))
	for i, topic := range topics {
		p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: s.Addr(), Dial: true, Topic: topic,
			Shape: engine.ShapeArray, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		pubs[i] = p
	}
	n := 0
	waitFor(t, r.recorder, "batches on both topics", func([]uint64, [][2]uint64) bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.seqs[topics[0]]) > 3 && len(r.seqs[topics[1]]) > 3
	}, func() {
		for _, p := range pubs {
			publish(t, p, n)
		}
		n++
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.plainN != 0 {
		t.Errorf("Batch/Gap called %d times on a TopicHandler", r.plainN)
	}
	for _, topic := range topics {
		seqs := r.seqs[topic]
		if !contiguous(seqs, seqs[0], seqs[len(seqs)-1]) {
			t.Errorf("%s: seqs %v not contiguous", topic, seqs)
		}
		for _, g := range r.gaps[topic] {
			if g[0] != 0 || g[1] != seqs[0] {
				t.Errorf("%s: gap %v, want only the join gap [0 %d]", topic, g, seqs[0])
			}
		}
	}
}

func TestPublisherConcurrentPublish(t *testing.T) {
	checkLeaks(t)
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0",
		ReplayEndpoint: "tcp://127.0.0.1:0", Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const workers, each = 4, 50
	seen := make(chan uint64, workers*each)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				seq, err := p.Publish(testBatch(w*each + i))
				if err != nil {
					t.Error(err)
					return
				}
				seen <- seq
			}
		})
	}
	wg.Wait()
	close(seen)
	got := map[uint64]bool{}
	for seq := range seen {
		if got[seq] {
			t.Fatalf("seq %d returned twice", seq)
		}
		got[seq] = true
	}
	for seq := range uint64(workers * each) {
		if !got[seq] {
			t.Fatalf("seq %d never returned", seq)
		}
	}
	// All of them are in the replay buffer: a subscriber joining now gets
	// them all from the replay socket.
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: p.Addr(), ReplayEndpoint: p.ReplayAddr(), Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)
	k := workers * each
	waitFor(t, r, "every batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > workers*each },
		func() { publish(t, p, k); k++ })
	seqs, gaps := r.snapshot()
	if len(gaps) != 0 || !contiguous(seqs, 0, seqs[len(seqs)-1]) {
		t.Fatalf("seqs %v gaps %v", seqs, gaps)
	}
}

func TestPublisherStampsDPRank(t *testing.T) {
	checkLeaks(t)
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0",
		ReplayEndpoint: "tcp://127.0.0.1:0", DPRank: intp(3), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	unranked := testBatch(0)
	unranked.DPRank = nil
	if _, err := p.Publish(unranked); err != nil {
		t.Fatal(err)
	}
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: p.Addr(), ReplayEndpoint: p.ReplayAddr(), Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)
	n := 1
	waitFor(t, r, "the replayed batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 1 },
		func() { publish(t, p, n); n++ })
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := r.batches[0].DPRank; got == nil || *got != 3 {
		t.Fatalf("DPRank = %v, want 3", deref(got))
	}
	if got := r.batches[1].DPRank; got == nil || *got != 0 {
		t.Fatalf("a batch's own DPRank was overwritten: %v", deref(got))
	}
}
