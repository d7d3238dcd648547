package router_test

import (
	"context"
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/go-zeromq/zmq4"

	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/metricstest"
	"github.com/kvgate/kvgate/porttest"
	"github.com/kvgate/kvgate/router"
)

// TestKVEventsRouteToHolder publishes, over real ZMQ, that endpoint e1 stored a prompt's
// blocks; the same prompt must then go to e1, with the overlap in the decision and header.
func TestKVEventsRouteToHolder(t *testing.T) {
	tests := []struct {
		name   string
		shape  engine.Shape
		hashes engine.HashFormat
		medium string
	}{
		{"vLLM map events, int hashes, GPU", engine.ShapeMap, engine.HashInt, ""},
		{"positional events, byte hashes", engine.ShapeArray, engine.HashBytes, "GPU"},
		{"map events in a positional batch, CPU tier", engine.ShapeMapEvents, engine.HashInt, "CPU"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps := endpoints(3)
			pubs := make([]*engine.Publisher, len(eps))
			for i := range eps {
				p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://127.0.0.1:0", Shape: tt.shape, HashFormat: tt.hashes, Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = p.Close() })
				pubs[i], eps[i].KVEvents = p, p.Addr()
			}
			r, _ := newRouter(t, eps, nil)
			run(t, r)

			content := longText("holder", 300)
			tokens := chatTokens(t, content)
			blocks := len(tokens) / 16
			// Publish until the subscription is up (ZMQ drops what is sent before it joins).
			eventually(t, "e1's blocks in the index", func() bool {
				if _, err := pubs[1].Publish(stored(tokens, 16, 1000, tt.medium)); err != nil {
					t.Fatal(err)
				}
				return loadOf(r, "e1").CachedBlocks == blocks
			})
			for range 5 {
				d := route(t, r, "/v1/chat/completions", chatBody(content, false))
				if d.Endpoint.Name != "e1" || d.CachedBlocks != blocks || d.PromptTokens != len(tokens) {
					t.Fatalf("picked %s with %d cached blocks (%d tokens), want e1 with %d (%d tokens)",
						d.Endpoint.Name, d.CachedBlocks, d.PromptTokens, blocks, len(tokens))
				}
				if got := d.Header().Get(router.HeaderCachedBlocks); got != strconv.Itoa(blocks) {
					t.Errorf("%s = %q", router.HeaderCachedBlocks, got)
				}
				d.Done(nil, nil)
			}
			// A different prompt has no overlap anywhere.
			d := route(t, r, "/v1/chat/completions", chatBody(longText("other", 300), false))
			if d.CachedBlocks != 0 {
				t.Errorf("unrelated prompt saw %d cached blocks", d.CachedBlocks)
			}
			d.Done(nil, nil)

			// Removing the blocks ends the preference.
			rm := engine.EventBatch{Events: []engine.Event{{Kind: engine.BlockRemoved, Medium: tt.medium,
				BlockHashes: stored(tokens, 16, 1000, "").Events[0].BlockHashes}}}
			if _, err := pubs[1].Publish(rm); err != nil {
				t.Fatal(err)
			}
			eventually(t, "e1's blocks removed", func() bool { return loadOf(r, "e1").CachedBlocks == 0 })
		})
	}
}

// rawPub is a minimal vLLM-format publisher with hand-picked sequence numbers, to make gaps.
type rawPub struct {
	sock zmq4.Socket
}

func newRawPub(t *testing.T) *rawPub {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := zmq4.NewPub(ctx)
	if err := s.Listen("tcp://127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(); cancel() })
	return &rawPub{sock: s}
}

func (p *rawPub) addr() string { return "tcp://" + p.sock.Addr().String() }

func (p *rawPub) send(t *testing.T, seq uint64, b engine.EventBatch) {
	t.Helper()
	payload, err := engine.EncodeBatch(b, engine.ShapeArray, engine.HashInt)
	if err != nil {
		t.Fatal(err)
	}
	var s [8]byte
	binary.BigEndian.PutUint64(s[:], seq)
	if err := p.sock.Send(zmq4.NewMsgFrom([]byte(""), s[:], payload)); err != nil {
		t.Fatal(err)
	}
}

// TestKVEventsGapClears: a sequence gap with no replay socket clears what the router knew
// about the endpoint, so the prompt is no longer credited there.
func TestKVEventsGapClears(t *testing.T) {
	pub := newRawPub(t)
	eps := endpoints(2)
	eps[1].KVEvents = pub.addr()
	r, reg := newRouter(t, eps, nil)
	run(t, r)

	content := longText("gap", 200)
	tokens := chatTokens(t, content)
	seq := uint64(0)
	eventually(t, "blocks indexed", func() bool {
		pub.send(t, seq, stored(tokens, 16, 1, ""))
		seq++
		return loadOf(r, "e1").CachedBlocks > 0
	})
	d := route(t, r, "/v1/chat/completions", chatBody(content, false))
	if d.Endpoint.Name != "e1" {
		t.Fatalf("picked %s before the gap", d.Endpoint.Name)
	}
	d.Done(nil, nil)

	before := metricstest.Value(reg, router.MetricEventGaps) // the slow-joining subscriber may have missed the first ones
	// Skip five sequence numbers: the batch after the gap stores an unrelated block.
	pub.send(t, seq+5, stored(chatTokens(t, "unrelated"), 16, 99999, ""))
	eventually(t, "gap cleared the endpoint", func() bool { return loadOf(r, "e1").CachedBlocks < len(tokens)/16 })
	d = route(t, r, "/v1/chat/completions", chatBody(content, false))
	if d.CachedBlocks != 0 {
		t.Errorf("after the gap the router still credits %d blocks on %s", d.CachedBlocks, d.Endpoint.Name)
	}
	d.Done(nil, nil)
	if v := metricstest.Value(reg, router.MetricEventGaps); v != before+1 {
		t.Errorf("%s = %v, want %v", router.MetricEventGaps, v, before+1)
	}
}

// TestKVEventsBind: for publishers that dial (llm-d-inference-sim), the router binds.
func TestKVEventsBind(t *testing.T) {
	eps := endpoints(2)
	eps[0].KVBind = true
	addr := porttest.Addr(t)
	eps[0].KVEvents = "tcp://" + addr
	r, _ := newRouter(t, eps, nil)
	run(t, r)
	p, err := engine.NewPublisher(engine.PublisherConfig{Endpoint: "tcp://" + addr, Dial: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	content := longText("bind", 100)
	tokens := chatTokens(t, content)
	eventually(t, "events through a dialing publisher", func() bool {
		if _, err := p.Publish(stored(tokens, 16, 5, "")); err != nil {
			t.Fatal(err)
		}
		return loadOf(r, "e0").CachedBlocks == len(tokens)/16
	})
	d := route(t, r, "/v1/chat/completions", chatBody(content, true))
	defer d.Done(nil, nil)
	if d.Endpoint.Name != "e0" {
		t.Errorf("picked %s", d.Endpoint.Name)
	}
}
