package relay

import (
	"context"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/engine"
)

// recorder is an engine.Handler that keeps what it is given.
type recorder struct {
	mu      sync.Mutex
	batches []recBatch
	gaps    [][2]uint64
	loads   []engine.Load
	notify  chan struct{}
}

type recBatch struct {
	seq uint64
	b   engine.EventBatch
}

func newRecorder() *recorder { return &recorder{notify: make(chan struct{}, 1)} }

func (r *recorder) Batch(seq uint64, b engine.EventBatch) {
	r.mu.Lock()
	r.batches = append(r.batches, recBatch{seq, b})
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
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *recorder) snapshot() ([]recBatch, [][2]uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches), slices.Clone(r.gaps)
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// relayFixture serves one hub over bufconn.
type relayFixture struct {
	h    *Hub
	lis  *bufconn.Listener
	srv  *grpc.Server
	rs   *Server
	dial []grpc.DialOption
}

func newRelayFixture(t *testing.T, ring, subBuf int) *relayFixture {
	t.Helper()
	f := &relayFixture{lis: bufconn.Listen(1 << 20), rs: NewServer(nil)}
	f.h = f.rs.AddEngine("e0", HubOptions{Ring: ring, StreamBuf: subBuf})
	f.srv = grpc.NewServer()
	relayv1.RegisterRelayServer(f.srv, f.rs)
	go func() { _ = f.srv.Serve(f.lis) }()
	t.Cleanup(f.srv.Stop)
	f.dial = []grpc.DialOption{
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return f.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	}
	return f
}

func (f *relayFixture) client(name string) *Client {
	return NewClientConfig(ClientConfig{Addr: "passthrough:///bufnet", Engine: name, DialOptions: f.dial, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
}

// run starts c.Run and returns a stop function that waits for it.
func run(t *testing.T, c *Client, h engine.Handler) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(5 * time.Second):
				t.Error("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func stored(parent uint64, hashes ...uint64) engine.EventBatch {
	e := engine.Event{Kind: engine.BlockStored, BlockSize: 2, Medium: engine.MediumGPU}
	if parent != 0 {
		e.Parent = engine.HashFromUint64(parent)
	}
	for _, h := range hashes {
		e.BlockHashes = append(e.BlockHashes, engine.HashFromUint64(h))
		e.TokenIDs = append(e.TokenIDs, uint32(h), uint32(h)+1)
	}
	return engine.EventBatch{TS: float64(time.Now().UnixNano()) / 1e9, Events: []engine.Event{e}}
}

func removed(hashes ...uint64) engine.EventBatch {
	e := engine.Event{Kind: engine.BlockRemoved, Medium: engine.MediumGPU}
	for _, h := range hashes {
		e.BlockHashes = append(e.BlockHashes, engine.HashFromUint64(h))
	}
	return engine.EventBatch{Events: []engine.Event{e}}
}

// storedHashes lists the BlockStored hashes of a batch, in order.
func storedHashes(b engine.EventBatch) []uint64 {
	var out []uint64
	for _, e := range b.Events {
		if e.Kind == engine.BlockStored {
			for _, h := range e.BlockHashes {
				out = append(out, h.Uint64())
			}
		}
	}
	return out
}

func TestRelaySnapshotThenEvents(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	f.h.Publish(stored(0, 1, 2))
	f.h.Publish(stored(2, 3))
	f.h.Publish(removed(1))

	rec := newRecorder()
	run(t, f.client("e0"), rec)
	waitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.snapshot(); return len(b) == 1 })
	b, gaps := rec.snapshot()
	snap := b[0]
	if snap.seq != 3 || len(gaps) != 0 {
		t.Fatalf("snapshot seq %d gaps %v, want seq 3 and no gap", snap.seq, gaps)
	}
	if snap.b.Events[0].Kind != engine.AllBlocksCleared {
		t.Fatalf("snapshot does not start with AllBlocksCleared: %+v", snap.b.Events[0])
	}
	if got := storedHashes(snap.b); !slices.Equal(got, []uint64{2, 3}) {
		t.Fatalf("snapshot blocks %v, want [2 3] in parent order", got)
	}
	three := snap.b.Events[2]
	if three.Parent.Uint64() != 2 || !slices.Equal(three.TokenIDs, []uint32{3, 4}) || three.BlockSize != 2 {
		t.Fatalf("block 3 = %+v", three)
	}

	f.h.Publish(stored(3, 4, 5))
	f.h.Publish(removed(4, 5))
	waitFor(t, 5*time.Second, "two live batches", func() bool { b, _ := rec.snapshot(); return len(b) == 3 })
	b, _ = rec.snapshot()
	if b[1].seq != 4 || b[2].seq != 5 {
		t.Fatalf("live seqs %d %d, want 4 5", b[1].seq, b[2].seq)
	}
	if got := storedHashes(b[1].b); !slices.Equal(got, []uint64{4, 5}) || b[1].b.Events[0].Parent.Uint64() != 3 {
		t.Fatalf("live batch = %+v", b[1].b)
	}
	if b[2].b.Events[0].Kind != engine.BlockRemoved || len(b[2].b.Events[0].BlockHashes) != 2 {
		t.Fatalf("removal batch = %+v", b[2].b)
	}
}

func TestRelayResumeAndResync(t *testing.T) {
	tests := []struct {
		name       string
		ring       int
		missed     int  // batches published while the client is away
		newStream  bool // workerd "restarted": its stream id changed
		wantResume bool
	}{
		{name: "resume from ring", ring: 16, missed: 5, wantResume: true},
		{name: "ring overrun", ring: 4, missed: 10, wantResume: false},
		{name: "workerd restarted", ring: 16, missed: 2, newStream: true, wantResume: false},
		{name: "nothing missed", ring: 16, missed: 0, wantResume: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newRelayFixture(t, tc.ring, 0)
			f.h.Publish(stored(0, 1))
			c := f.client("e0")
			rec := newRecorder()
			stop := run(t, c, rec)
			waitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.snapshot(); return len(b) == 1 })
			f.h.Publish(stored(1, 2))
			waitFor(t, 5*time.Second, "a live batch", func() bool { b, _ := rec.snapshot(); return len(b) == 2 })
			stop()
			if _, seq := c.LastSeq(); seq != 2 {
				t.Fatalf("last seq %d, want 2", seq)
			}

			if tc.newStream {
				f.h.mu.Lock()
				f.h.streamID = newStreamID()
				f.h.mu.Unlock()
			}
			for i := range tc.missed {
				f.h.Publish(stored(uint64(10+i), uint64(11+i)))
			}
			rec2 := newRecorder()
			run(t, c, rec2)
			f.h.Publish(stored(0, 99)) // one live batch after the reconnect
			last := uint64(2 + tc.missed + 1)
			waitFor(t, 5*time.Second, "the batch after the reconnect", func() bool {
				b, _ := rec2.snapshot()
				return len(b) > 0 && b[len(b)-1].seq == last && slices.Contains(storedHashes(b[len(b)-1].b), 99)
			})
			b, gaps := rec2.snapshot()
			if tc.wantResume {
				if len(gaps) != 0 || len(b) != tc.missed+1 {
					t.Fatalf("resume: %d batches, gaps %v; want %d batches and no gap", len(b), gaps, tc.missed+1)
				}
				for i, x := range b {
					if x.seq != uint64(3+i) || x.b.Events[0].Kind == engine.AllBlocksCleared {
						t.Fatalf("batch %d: seq %d kind %v", i, x.seq, x.b.Events[0].Kind)
					}
				}
				return
			}
			// The snapshot covers last-1, or last when the live batch won the race.
			snapSeq := b[0].seq
			if len(gaps) != 1 || gaps[0][0] != 3 || gaps[0][1] != snapSeq || snapSeq < last-1 {
				t.Fatalf("gaps %v, snapshot seq %d; want one gap from 3 to the snapshot (>= %d)", gaps, snapSeq, last-1)
			}
			if b[0].b.Events[0].Kind != engine.AllBlocksCleared {
				t.Fatalf("first batch after resync: seq %d %+v", b[0].seq, b[0].b.Events[0])
			}
			want := 2 + tc.missed + int(snapSeq-(last-1))
			if got := storedHashes(b[0].b); len(got) != want {
				t.Fatalf("snapshot holds %v, want %d blocks", got, want)
			}
		})
	}
}

func TestRelayClearedOnce(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	f.h.Publish(stored(0, 1))
	rec := newRecorder()
	run(t, f.client("e0"), rec)
	waitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.snapshot(); return len(b) == 1 })
	f.h.Clear()
	f.h.Clear() // the engine restart and the subscriber's Gap both report it: one batch
	hubHandler{f.h}.Gap(5, 0)
	f.h.Publish(stored(0, 7))
	waitFor(t, 5*time.Second, "the clear and the new block", func() bool { b, _ := rec.snapshot(); return len(b) == 3 })
	b, _ := rec.snapshot()
	if len(b[1].b.Events) != 1 || b[1].b.Events[0].Kind != engine.AllBlocksCleared || b[1].seq != 2 {
		t.Fatalf("batch 2 = seq %d %+v, want a lone clear", b[1].seq, b[1].b)
	}
	if b[2].seq != 3 || !slices.Equal(storedHashes(b[2].b), []uint64{7}) {
		t.Fatalf("batch 3 = seq %d %+v", b[2].seq, b[2].b)
	}
	if seq, blocks := f.h.Stats(); seq != 3 || blocks != 1 {
		t.Fatalf("hub stats seq %d blocks %d", seq, blocks)
	}
}

// A stream that falls behind is cut; the client reconnects and resumes from the ring with
// nothing lost and nothing twice.
func TestRelaySlowClientResumes(t *testing.T) {
	f := newRelayFixture(t, 1<<14, 2)
	rec := &slowRecorder{recorder: newRecorder(), delay: time.Millisecond}
	run(t, f.client("e0"), rec)
	waitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.snapshot(); return len(b) == 1 })
	const n = 300
	for i := range n {
		f.h.Publish(stored(0, uint64(i+1)))
	}
	waitFor(t, 20*time.Second, "every batch", func() bool { b, _ := rec.snapshot(); return len(b) >= n+1 })
	b, gaps := rec.snapshot()
	if len(gaps) != 0 {
		t.Fatalf("gaps %v", gaps)
	}
	for i, x := range b[1:] {
		if x.seq != uint64(i+1) {
			t.Fatalf("batch %d has seq %d: lost or repeated", i, x.seq)
		}
	}
}

type slowRecorder struct {
	*recorder
	delay time.Duration
}

func (s *slowRecorder) Batch(seq uint64, b engine.EventBatch) {
	time.Sleep(s.delay)
	s.recorder.Batch(seq, b)
}

func TestRelayUnknownEngine(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	conn, err := grpc.NewClient("passthrough:///bufnet", f.dial...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := relayv1.NewRelayClient(conn).Events(context.Background(), &relayv1.EventsRequest{Engine: "nope"})
	if err == nil {
		_, err = st.Recv()
	}
	if err == nil {
		t.Fatal("stream for an unknown engine succeeded")
	}
}

// Big snapshots are split into chunks that reassemble to the whole set.
func TestRelayChunkedSnapshot(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	const n = 3*snapshotChunk + 7
	for i := range n {
		f.h.Publish(stored(uint64(i), uint64(i+1)))
	}
	rec := newRecorder()
	run(t, f.client("e0"), rec)
	waitFor(t, 10*time.Second, "the snapshot", func() bool { b, _ := rec.snapshot(); return len(b) == 1 })
	b, _ := rec.snapshot()
	got := storedHashes(b[0].b)
	if len(got) != n || got[0] != 1 || got[n-1] != n {
		t.Fatalf("snapshot of %d blocks, first %d last %d", len(got), got[0], got[len(got)-1])
	}
}

func TestLoadStream(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	f.rs.PutLoad(&relayv1.LoadReport{Engine: "e0", Running: 3, Waiting: 1, KvUsage: 0.5, Healthy: true})
	lr := &loadRecorder{recorder: newRecorder()}
	run(t, f.client("e0"), lr)
	waitFor(t, 5*time.Second, "the current load", func() bool { return lr.count() == 1 })
	f.rs.PutLoad(&relayv1.LoadReport{Engine: "other", Running: 9})
	f.rs.PutLoad(&relayv1.LoadReport{Engine: "e0", Running: 4, KvUsage: 0.25, Healthy: false})
	waitFor(t, 5*time.Second, "the next load", func() bool { return lr.count() == 2 })
	lr.mu.Lock()
	defer lr.mu.Unlock()
	if lr.loads[0].Running != 3 || lr.loads[0].Waiting != 1 || lr.loads[0].KVUsage != 0.5 || !lr.healthy[0] {
		t.Fatalf("first load %+v %v", lr.loads[0], lr.healthy[0])
	}
	if lr.loads[1].Running != 4 || lr.healthy[1] {
		t.Fatalf("second load %+v %v (the other engine's report must not arrive)", lr.loads[1], lr.healthy[1])
	}
}

type loadRecorder struct {
	*recorder
	healthy []bool
}

func (l *loadRecorder) Load(x engine.Load, healthy bool) {
	l.mu.Lock()
	l.loads = append(l.loads, x)
	l.healthy = append(l.healthy, healthy)
	l.mu.Unlock()
}

func (l *loadRecorder) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.loads)
}
