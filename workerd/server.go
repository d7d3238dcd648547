package workerd

import (
	"context"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	relayv1 "github.com/kvgate/kvgate/api/relay/v1"
)

// snapshotChunk is how many blocks one SnapshotChunk message carries.
const snapshotChunk = 1024

// relayServer serves api/relay/v1 from the hubs.
type relayServer struct {
	relayv1.UnimplementedRelayServer
	w *Workerd
}

func (s *relayServer) Engines(context.Context, *relayv1.EnginesRequest) (*relayv1.EnginesResponse, error) {
	out := &relayv1.EnginesResponse{}
	for _, st := range s.w.Engines() {
		info := &relayv1.EngineInfo{
			Name: st.Name, Kind: st.Kind, Models: st.Models, Role: st.Role, Address: st.Address,
			BlockSize: int32(st.BlockSize), State: st.State, Restarts: uint32(st.Restarts),
		}
		for _, g := range st.GPUs {
			info.Gpus = append(info.Gpus, int32(g))
		}
		out.Engines = append(out.Engines, info)
	}
	return out, nil
}

func (s *relayServer) Events(req *relayv1.EventsRequest, stream grpc.ServerStreamingServer[relayv1.EventsResponse]) error {
	h := s.w.hub(req.GetEngine())
	if h == nil {
		return status.Errorf(codes.NotFound, "workerd: no engine %q", req.GetEngine())
	}
	snap, snapSeq, backlog, resumed, sub := h.subscribe(req.GetStreamId(), req.GetLastSeq())
	defer h.unsubscribe(sub)
	if !resumed {
		for i := 0; ; i += snapshotChunk {
			end := min(i+snapshotChunk, len(snap))
			msg := &relayv1.EventsResponse{StreamId: h.streamID, Seq: snapSeq, Body: &relayv1.EventsResponse_Snapshot{
				Snapshot: &relayv1.SnapshotChunk{Events: snap[i:end], Last: end == len(snap)},
			}}
			if err := stream.Send(msg); err != nil {
				return err
			}
			if end == len(snap) {
				break
			}
		}
	}
	for _, r := range backlog {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.lost:
			return status.Error(codes.ResourceExhausted, "workerd: stream fell behind; reconnect with the last seq to resume")
		case r := <-sub.ch:
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

func (s *relayServer) Load(req *relayv1.LoadRequest, stream grpc.ServerStreamingServer[relayv1.LoadReport]) error {
	if req.GetEngine() != "" && s.w.hub(req.GetEngine()) == nil {
		return status.Errorf(codes.NotFound, "workerd: no engine %q", req.GetEngine())
	}
	cur, ch, cancel := s.w.load.subscribe(req.GetEngine())
	defer cancel()
	for _, r := range cur {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-ch:
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

// loadHub keeps each engine's latest load report and fans new ones out. A slow stream
// misses intermediate reports, never blocks the scraper.
type loadHub struct {
	mu     sync.Mutex
	latest map[string]*relayv1.LoadReport
	subs   map[chan *relayv1.LoadReport]string // channel -> engine filter ("" = all)
}

func newLoadHub() *loadHub {
	return &loadHub{latest: map[string]*relayv1.LoadReport{}, subs: map[chan *relayv1.LoadReport]string{}}
}

func (l *loadHub) put(r *relayv1.LoadReport) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.latest[r.Engine] = r
	for ch, filter := range l.subs {
		if filter != "" && filter != r.Engine {
			continue
		}
		select {
		case ch <- r:
		default:
		}
	}
}

func (l *loadHub) subscribe(engine string) ([]*relayv1.LoadReport, <-chan *relayv1.LoadReport, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var cur []*relayv1.LoadReport
	for name, r := range l.latest {
		if engine == "" || engine == name {
			cur = append(cur, r)
		}
	}
	ch := make(chan *relayv1.LoadReport, 64)
	l.subs[ch] = engine
	return cur, ch, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.subs, ch)
	}
}
