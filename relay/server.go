package relay

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

// Server serves api/relay/v1 for the engines of one node: each engine's Hub (its KV events)
// and the load reports PutLoad receives. It is safe for concurrent use.
type Server struct {
	relayv1.UnimplementedRelayServer
	engines func() []*relayv1.EngineInfo
	load    *loadHub

	mu   sync.RWMutex
	hubs map[string]*Hub
}

var _ relayv1.RelayServer = (*Server)(nil)

// NewServer returns a server with no engines; engines (nil: none) answers the Engines call
// with the node's current engine list.
func NewServer(engines func() []*relayv1.EngineInfo) *Server {
	if engines == nil {
		engines = func() []*relayv1.EngineInfo { return nil }
	}
	return &Server{engines: engines, load: newLoadHub(), hubs: map[string]*Hub{}}
}

// HubOptions size an engine's hub. Zero fields take the defaults noted.
type HubOptions struct {
	Ring      int // batches kept for resuming clients (16384)
	StreamBuf int // batches queued per stream before it must reconnect (4096)
}

// AddEngine creates the hub of the engine called name (replacing one of that name) and
// returns it; its events are served from then on.
func (s *Server) AddEngine(name string, o HubOptions) *Hub {
	h := newHub(name, o.Ring, o.StreamBuf)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hubs[name] = h
	return h
}

// RemoveEngine forgets the engine called name: new Events streams for it are refused. An
// engine stopped for good (drained by the fleet API) is removed so its hub does not linger.
func (s *Server) RemoveEngine(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.hubs, name)
}

// PutLoad publishes an engine's latest load report to the Load streams.
func (s *Server) PutLoad(r *relayv1.LoadReport) { s.load.put(r) }

func (s *Server) hub(name string) *Hub {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.hubs[name]
}

// Engines answers with the node's engines.
func (s *Server) Engines(context.Context, *relayv1.EnginesRequest) (*relayv1.EnginesResponse, error) {
	return &relayv1.EnginesResponse{Engines: s.engines()}, nil
}

// Events streams an engine's KV events: a snapshot or the missed batches, then live ones.
func (s *Server) Events(req *relayv1.EventsRequest, stream grpc.ServerStreamingServer[relayv1.EventsResponse]) error {
	h := s.hub(req.GetEngine())
	if h == nil {
		return status.Errorf(codes.NotFound, "relay: no engine %q", req.GetEngine())
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
			return status.Error(codes.ResourceExhausted, "relay: stream fell behind; reconnect with the last seq to resume")
		case r := <-sub.ch:
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

// Load streams load reports: the latest of each engine, then new ones.
func (s *Server) Load(req *relayv1.LoadRequest, stream grpc.ServerStreamingServer[relayv1.LoadReport]) error {
	if req.GetEngine() != "" && s.hub(req.GetEngine()) == nil {
		return status.Errorf(codes.NotFound, "relay: no engine %q", req.GetEngine())
	}
	cur, ch, cancel := s.load.subscribe(req.GetEngine())
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
