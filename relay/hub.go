package relay

import (
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/engine"
)

// Hub is the relay of one engine: its block set, the numbered batches it sent (a ring for
// resuming clients) and the streams reading it. It is safe for concurrent use: the engine's
// subscriber and supervisor write, gRPC streams read.
type Hub struct {
	name     string
	streamID string
	subBuf   int

	mu      sync.Mutex
	seq     uint64
	set     *blockSet
	ring    []*relayv1.EventsResponse // circular, ring[(start+i)%cap]
	start   int
	n       int
	subs    map[*hubSub]struct{}
	cleared bool // the last batch sent was a lone clear and nothing was stored since
	now     func() time.Time
}

// hubSub is one stream's queue. lost is closed when the stream fell so far behind that its
// queue overflowed; it must reconnect and resume.
type hubSub struct {
	ch   chan *relayv1.EventsResponse
	lost chan struct{}
}

func newStreamID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func newHub(name string, ringSize, subBuf int) *Hub {
	if ringSize <= 0 {
		ringSize = 16384
	}
	if subBuf <= 0 {
		subBuf = 4096
	}
	return &Hub{
		name: name, streamID: newStreamID(), subBuf: subBuf,
		set: newBlockSet(), ring: make([]*relayv1.EventsResponse, ringSize),
		subs: map[*hubSub]struct{}{}, now: time.Now,
	}
}

// Publish applies an engine batch to the block set, numbers it and sends it to every stream.
func (h *Hub) Publish(b engine.EventBatch) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	evs := make([]*relayv1.Event, len(b.Events))
	lone := len(b.Events) == 1 && b.Events[0].Kind == engine.AllBlocksCleared
	for i := range b.Events {
		h.set.apply(&b.Events[i])
		evs[i] = toProto(&b.Events[i])
	}
	h.cleared = lone || (h.cleared && h.set.len() == 0)
	return h.sendLocked(&relayv1.EventBatch{Ts: b.TS, Events: evs, RelayedUnixNano: h.now().UnixNano()})
}

// Clear forgets the engine's blocks (it restarted, or its event stream lost batches) and
// tells every stream with an ALL_BLOCKS_CLEARED batch; nothing is sent when the last batch
// already said so.
func (h *Hub) Clear() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.cleared && h.set.len() == 0 {
		return
	}
	h.set.clear()
	h.cleared = true
	now := h.now()
	h.sendLocked(&relayv1.EventBatch{
		Ts:              float64(now.UnixNano()) / 1e9,
		Events:          []*relayv1.Event{{Kind: relayv1.EventKind_ALL_BLOCKS_CLEARED}},
		RelayedUnixNano: now.UnixNano(),
	})
}

func (h *Hub) sendLocked(b *relayv1.EventBatch) uint64 {
	h.seq++
	r := &relayv1.EventsResponse{StreamId: h.streamID, Seq: h.seq, Body: &relayv1.EventsResponse_Batch{Batch: b}}
	if h.n < len(h.ring) {
		h.ring[(h.start+h.n)%len(h.ring)] = r
		h.n++
	} else {
		h.ring[h.start] = r
		h.start = (h.start + 1) % len(h.ring)
	}
	for s := range h.subs {
		select {
		case s.ch <- r:
		default:
			close(s.lost)
			delete(h.subs, s)
		}
	}
	return h.seq
}

// subscribe registers a stream. When streamID is this hub's and every batch after lastSeq is
// still in the ring, it returns those batches (resume); otherwise a snapshot of the block
// set and the seq it covers. Batches after the returned point arrive on sub.ch.
func (h *Hub) subscribe(streamID string, lastSeq uint64) (snap []*relayv1.Event, snapSeq uint64, backlog []*relayv1.EventsResponse, resumed bool, sub *hubSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sub = &hubSub{ch: make(chan *relayv1.EventsResponse, h.subBuf), lost: make(chan struct{})}
	h.subs[sub] = struct{}{}
	oldest := h.seq - uint64(h.n) + 1 // seq of ring's first batch (h.seq+1 when empty)
	if streamID == h.streamID && lastSeq <= h.seq && lastSeq+1 >= oldest {
		for i := lastSeq + 1 - oldest; i < uint64(h.n); i++ {
			backlog = append(backlog, h.ring[(h.start+int(i))%len(h.ring)])
		}
		return nil, 0, backlog, true, sub
	}
	return h.set.snapshot(), h.seq, nil, false, sub
}

func (h *Hub) unsubscribe(s *hubSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
}

// Stats returns the relay's current sequence number and block count.
func (h *Hub) Stats() (seq uint64, blocks int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq, h.set.len()
}

// Handler is the hub as the engine.Handler of the engine's ZMQ subscriber.
func (h *Hub) Handler() engine.Handler { return hubHandler{h} }

// hubHandler adapts the hub to engine.Handler.
type hubHandler struct{ h *Hub }

var _ engine.Handler = hubHandler{}

func (a hubHandler) Batch(_ uint64, b engine.EventBatch) { a.h.Publish(b) }

// Gap: the engine's stream lost batches or the publisher restarted; the block set is no
// longer known, so routers are told to forget it and refill from what follows.
func (a hubHandler) Gap(uint64, uint64) { a.h.Clear() }
