package relay

import (
	"context"
	"net"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
	"github.com/kvgate/kvgate/engine"
	"github.com/kvgate/kvgate/relay/relaytest"
)

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

func TestRelaySnapshotThenEvents(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	f.h.Publish(stored(0, 1, 2))
	f.h.Publish(stored(2, 3))
	f.h.Publish(removed(1))

	rec := relaytest.NewRecorder()
	relaytest.Run(t, f.client("e0"), rec)
	relaytest.WaitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.Snapshot(); return len(b) == 1 })
	b, gaps := rec.Snapshot()
	snap := b[0]
	if snap.Seq != 3 || len(gaps) != 0 {
		t.Fatalf("snapshot seq %d gaps %v, want seq 3 and no gap", snap.Seq, gaps)
	}
	if snap.B.Events[0].Kind != engine.AllBlocksCleared {
		t.Fatalf("snapshot does not start with AllBlocksCleared: %+v", snap.B.Events[0])
	}
	if got := relaytest.StoredHashes(snap.B); !slices.Equal(got, []uint64{2, 3}) {
		t.Fatalf("snapshot blocks %v, want [2 3] in parent order", got)
	}
	three := snap.B.Events[2]
	if three.Parent.Uint64() != 2 || !slices.Equal(three.TokenIDs, []uint32{3, 4}) || three.BlockSize != 2 {
		t.Fatalf("block 3 = %+v", three)
	}

	f.h.Publish(stored(3, 4, 5))
	f.h.Publish(removed(4, 5))
	relaytest.WaitFor(t, 5*time.Second, "two live batches", func() bool { b, _ := rec.Snapshot(); return len(b) == 3 })
	b, _ = rec.Snapshot()
	if b[1].Seq != 4 || b[2].Seq != 5 {
		t.Fatalf("live seqs %d %d, want 4 5", b[1].Seq, b[2].Seq)
	}
	if got := relaytest.StoredHashes(b[1].B); !slices.Equal(got, []uint64{4, 5}) || b[1].B.Events[0].Parent.Uint64() != 3 {
		t.Fatalf("live batch = %+v", b[1].B)
	}
	if b[2].B.Events[0].Kind != engine.BlockRemoved || len(b[2].B.Events[0].BlockHashes) != 2 {
		t.Fatalf("removal batch = %+v", b[2].B)
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
			rec := relaytest.NewRecorder()
			stop := relaytest.Run(t, c, rec)
			relaytest.WaitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.Snapshot(); return len(b) == 1 })
			f.h.Publish(stored(1, 2))
			relaytest.WaitFor(t, 5*time.Second, "a live batch", func() bool { b, _ := rec.Snapshot(); return len(b) == 2 })
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
			rec2 := relaytest.NewRecorder()
			relaytest.Run(t, c, rec2)
			f.h.Publish(stored(0, 99)) // one live batch after the reconnect
			last := uint64(2 + tc.missed + 1)
			relaytest.WaitFor(t, 5*time.Second, "the batch after the reconnect", func() bool {
				b, _ := rec2.Snapshot()
				return len(b) > 0 && b[len(b)-1].Seq == last && slices.Contains(relaytest.StoredHashes(b[len(b)-1].B), 99)
			})
			b, gaps := rec2.Snapshot()
			if tc.wantResume {
				if len(gaps) != 0 || len(b) != tc.missed+1 {
					t.Fatalf("resume: %d batches, gaps %v; want %d batches and no gap", len(b), gaps, tc.missed+1)
				}
				for i, x := range b {
					if x.Seq != uint64(3+i) || x.B.Events[0].Kind == engine.AllBlocksCleared {
						t.Fatalf("batch %d: seq %d kind %v", i, x.Seq, x.B.Events[0].Kind)
					}
				}
				return
			}
			// The snapshot covers last-1, or last when the live batch won the race.
			snapSeq := b[0].Seq
			if len(gaps) != 1 || gaps[0][0] != 3 || gaps[0][1] != snapSeq || snapSeq < last-1 {
				t.Fatalf("gaps %v, snapshot seq %d; want one gap from 3 to the snapshot (>= %d)", gaps, snapSeq, last-1)
			}
			if b[0].B.Events[0].Kind != engine.AllBlocksCleared {
				t.Fatalf("first batch after resync: seq %d %+v", b[0].Seq, b[0].B.Events[0])
			}
			want := 2 + tc.missed + int(snapSeq-(last-1))
			if got := relaytest.StoredHashes(b[0].B); len(got) != want {
				t.Fatalf("snapshot holds %v, want %d blocks", got, want)
			}
		})
	}
}

func TestRelayClearedOnce(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	f.h.Publish(stored(0, 1))
	rec := relaytest.NewRecorder()
	relaytest.Run(t, f.client("e0"), rec)
	relaytest.WaitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.Snapshot(); return len(b) == 1 })
	f.h.Clear()
	f.h.Clear() // the engine restart and the subscriber's Gap both report it: one batch
	hubHandler{f.h}.Gap(5, 0)
	f.h.Publish(stored(0, 7))
	relaytest.WaitFor(t, 5*time.Second, "the clear and the new block", func() bool { b, _ := rec.Snapshot(); return len(b) == 3 })
	b, _ := rec.Snapshot()
	if len(b[1].B.Events) != 1 || b[1].B.Events[0].Kind != engine.AllBlocksCleared || b[1].Seq != 2 {
		t.Fatalf("batch 2 = seq %d %+v, want a lone clear", b[1].Seq, b[1].B)
	}
	if b[2].Seq != 3 || !slices.Equal(relaytest.StoredHashes(b[2].B), []uint64{7}) {
		t.Fatalf("batch 3 = seq %d %+v", b[2].Seq, b[2].B)
	}
	if seq, blocks := f.h.Stats(); seq != 3 || blocks != 1 {
		t.Fatalf("hub stats seq %d blocks %d", seq, blocks)
	}
}

// A stream that falls behind is cut; the client reconnects and resumes from the ring with
// nothing lost and nothing twice.
func TestRelaySlowClientResumes(t *testing.T) {
	f := newRelayFixture(t, 1<<14, 2)
	rec := &slowRecorder{Recorder: relaytest.NewRecorder(), delay: time.Millisecond}
	relaytest.Run(t, f.client("e0"), rec)
	relaytest.WaitFor(t, 5*time.Second, "the snapshot", func() bool { b, _ := rec.Snapshot(); return len(b) == 1 })
	const n = 300
	for i := range n {
		f.h.Publish(stored(0, uint64(i+1)))
	}
	relaytest.WaitFor(t, 20*time.Second, "every batch", func() bool { b, _ := rec.Snapshot(); return len(b) >= n+1 })
	b, gaps := rec.Snapshot()
	if len(gaps) != 0 {
		t.Fatalf("gaps %v", gaps)
	}
	for i, x := range b[1:] {
		if x.Seq != uint64(i+1) {
			t.Fatalf("batch %d has seq %d: lost or repeated", i, x.Seq)
		}
	}
}

type slowRecorder struct {
	*relaytest.Recorder
	delay time.Duration
}

func (s *slowRecorder) Batch(seq uint64, b engine.EventBatch) {
	time.Sleep(s.delay)
	s.Recorder.Batch(seq, b)
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
	rec := relaytest.NewRecorder()
	relaytest.Run(t, f.client("e0"), rec)
	relaytest.WaitFor(t, 10*time.Second, "the snapshot", func() bool { b, _ := rec.Snapshot(); return len(b) == 1 })
	b, _ := rec.Snapshot()
	got := relaytest.StoredHashes(b[0].B)
	if len(got) != n || got[0] != 1 || got[n-1] != n {
		t.Fatalf("snapshot of %d blocks, first %d last %d", len(got), got[0], got[len(got)-1])
	}
}

func TestLoadStream(t *testing.T) {
	f := newRelayFixture(t, 0, 0)
	f.rs.PutLoad(&relayv1.LoadReport{Engine: "e0", Running: 3, Waiting: 1, KvUsage: 0.5, Healthy: true})
	lr := relaytest.NewLoadRecorder()
	relaytest.Run(t, f.client("e0"), lr)
	relaytest.WaitFor(t, 5*time.Second, "the current load", func() bool { return lr.Count() == 1 })
	f.rs.PutLoad(&relayv1.LoadReport{Engine: "other", Running: 9})
	f.rs.PutLoad(&relayv1.LoadReport{Engine: "e0", Running: 4, KvUsage: 0.25, Healthy: false})
	relaytest.WaitFor(t, 5*time.Second, "the next load", func() bool { return lr.Count() == 2 })
	loads, healthy := lr.Loads()
	if loads[0].Running != 3 || loads[0].Waiting != 1 || loads[0].KVUsage != 0.5 || !healthy[0] {
		t.Fatalf("first load %+v %v", loads[0], healthy[0])
	}
	if loads[1].Running != 4 || healthy[1] {
		t.Fatalf("second load %+v %v (the other engine's report must not arrive)", loads[1], healthy[1])
	}
}
