package engine_test

import (
	"context"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/go-zeromq/zmq4"

	"github.com/kvgate/kvgate/engine"
)

// rawEngine is a hand-driven engine-side PUB socket (and optional replay
// ROUTER answering in the format of the vLLM revision that repeats the topic:
// [id, "", topic, seq, payload], ended by [id, "", "", -1, ""]), so tests
// choose exactly which sequence numbers go out.
type rawEngine struct {
	t      *testing.T
	pub    zmq4.Socket
	router zmq4.Socket
	mu     sync.Mutex
	sent   map[uint64][]byte
	wg     sync.WaitGroup
}

func newRawEngine(t *testing.T, withReplay bool) *rawEngine {
	ctx, cancel := context.WithCancel(context.Background())
	e := &rawEngine{t: t, pub: zmq4.NewPub(ctx), sent: map[uint64][]byte{}}
	if err := e.pub.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if withReplay {
		e.router = zmq4.NewRouter(ctx)
		if err := e.router.Listen("tcp://127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		e.wg.Go(e.serveReplay)
	}
	t.Cleanup(func() {
		cancel()
		e.pub.Close()
		if e.router != nil {
			e.router.Close()
		}
		e.wg.Wait()
	})
	return e
}

func (e *rawEngine) serveReplay() {
	for {
		m, err := e.router.Recv()
		if err != nil || len(m.Frames) != 3 {
			return
		}
		id, start := m.Frames[0], binary.BigEndian.Uint64(m.Frames[2])
		e.mu.Lock()
		var seqs []uint64
		for seq := range e.sent {
			if seq >= start {
				seqs = append(seqs, seq)
			}
		}
		e.mu.Unlock()
		sortU64(seqs)
		for _, seq := range seqs {
			e.mu.Lock()
			payload := e.sent[seq]
			e.mu.Unlock()
			_ = e.router.Send(zmq4.NewMsgFrom(id, nil, []byte("kv"), be(seq), payload))
		}
		_ = e.router.Send(zmq4.NewMsgFrom(id, nil, nil, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, nil))
	}
}

func sortU64(s []uint64) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func be(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// send publishes seq with the given suffix on the seq frame (a 16-byte stream
// id, or nil) and payload (a valid batch when nil).
func (e *rawEngine) send(seq uint64, stream []byte, payload []byte) {
	e.t.Helper()
	if payload == nil {
		var err error
		if payload, err = engine.EncodeBatch(testBatch(int(seq)), engine.ShapeMap, engine.HashInt); err != nil {
			e.t.Fatal(err)
		}
	}
	e.mu.Lock()
	e.sent[seq] = payload
	e.mu.Unlock()
	if err := e.pub.Send(zmq4.NewMsgFrom([]byte("kv"), append(be(seq), stream...), payload)); err != nil {
		e.t.Fatal(err)
	}
}

func addr(t *testing.T, s zmq4.Socket) string {
	t.Helper()
	return "tcp://" + s.Addr().String()
}

func TestSubscriberGapsAndRestartsWithoutReplay(t *testing.T) {
	checkLeaks(t)
	e := newRawEngine(t, false)
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: addr(t, e.pub), Topic: "kv", Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)
	var n uint64
	waitFor(t, r, "the first batch", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 0 },
		func() { e.send(n, nil, nil); n++ })
	// Everything sent so far is on its way, in order: from here on the
	// subscriber's view is deterministic.
	e.send(n+1, nil, nil) // n never sent
	waitFor(t, r, "the gap", func(seqs []uint64, _ [][2]uint64) bool { return seqs[len(seqs)-1] == n+1 }, nil)
	seqs, gaps := r.snapshot()
	if first := seqs[0]; first > 0 && gaps[0] != [2]uint64{0, first} {
		t.Fatalf("join at %d: gaps %v, want first [0 %d]", first, gaps, first)
	}
	if !contiguous(seqs[:len(seqs)-1], seqs[0], n-1) {
		t.Fatalf("seqs %v not contiguous up to %d", seqs, n-1)
	}
	if g := gaps[len(gaps)-1]; g != [2]uint64{n, n + 1} {
		t.Fatalf("gap %v, want [%d %d]", g, n, n+1)
	}

	// A malformed message is ignored; an undecodable batch is a gap of one.
	_ = e.pub.Send(zmq4.NewMsgFrom([]byte("kv"), []byte{1}))
	e.send(n+2, nil, []byte{0xc1})
	// A vLLM publisher with a snapshot endpoint appends a 16-byte stream id
	// to the seq frame; a new id means a restarted publisher.
	streamA, streamB := make([]byte, 16), make([]byte, 16)
	streamB[0] = 1
	e.send(n+3, streamA, nil)
	e.send(0, streamB, nil)
	e.send(1, streamB, nil)
	waitFor(t, r, "the restart", func(seqs []uint64, _ [][2]uint64) bool { return seqs[len(seqs)-1] == 1 }, nil)
	seqs, gaps = r.snapshot()
	tail := seqs[len(seqs)-3:]
	if tail[0] != n+3 || tail[1] != 0 || tail[2] != 1 {
		t.Fatalf("last seqs %v, want [%d 0 1]", tail, n+3)
	}
	wantGaps := [][2]uint64{{n + 2, n + 3}, {n + 4, 0}}
	if got := gaps[len(gaps)-2:]; got[0] != wantGaps[0] || got[1] != wantGaps[1] {
		t.Fatalf("gaps %v, want them to end with %v", gaps, wantGaps)
	}
	// The sequence going back without a stream id is a restart too.
	e.send(0, streamB, nil)
	waitFor(t, r, "the second restart", func(_ []uint64, gaps [][2]uint64) bool {
		return gaps[len(gaps)-1] == [2]uint64{2, 0}
	}, nil)
}

func TestSubscriberReplayTopicFramedReplies(t *testing.T) {
	checkLeaks(t)
	e := newRawEngine(t, true)
	s := engine.NewSubscriber(engine.SubscriberConfig{Endpoint: addr(t, e.pub), ReplayEndpoint: addr(t, e.router),
		Topic: "kv", Logger: quiet})
	r := newRecorder()
	runSub(t, s, r)
	var n uint64
	for range 3 { // before anyone listens
		e.send(n, nil, nil)
		n++
	}
	waitFor(t, r, "batches", func(seqs []uint64, _ [][2]uint64) bool { return len(seqs) > 3 },
		func() { e.send(n, nil, nil); n++ })
	// n is only in the replay buffer, in another shape.
	e.mu.Lock()
	e.sent[n], _ = engine.EncodeBatch(testBatch(int(n)), engine.ShapeArray, engine.HashBytes)
	e.mu.Unlock()
	e.send(n+1, nil, nil)
	waitFor(t, r, "the replayed batch", func(seqs []uint64, _ [][2]uint64) bool { return seqs[len(seqs)-1] == n+1 }, nil)
	seqs, gaps := r.snapshot()
	if len(gaps) != 0 || !contiguous(seqs, 0, n+1) {
		t.Fatalf("seqs %v gaps %v, want 0..%d and no gap", seqs, gaps, n+1)
	}
}
